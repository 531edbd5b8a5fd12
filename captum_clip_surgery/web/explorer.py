r"""What the web explorer computes, in plain functions (no Gradio): reading the page's
inputs, running the methods, the figures and the files offered for download.

:class:`Explorer` holds one loaded model and answers the page's three questions:

- :meth:`Explorer.explain`: each chosen method's maps for each text, exactly the maps
  ``clip-surgery explain --images FILE --text ... --method M --save-maps`` writes (the
  same :func:`~captum_clip_surgery.explain.folder.explain_images` call on the same
  classifier and square transform), and the model's probability of each text;
- :meth:`Explorer.segment`: label maps through
  :func:`~captum_clip_surgery.apps.segmentation.segment` (PAMR and sliding windows);
- :meth:`Explorer.points`: point prompts through
  :func:`~captum_clip_surgery.apps.points.text_to_points` (and SAM masks when a
  predictor is given).

Mistakes in the inputs raise :class:`InputError` (a ``ValueError``) with one line that
names the field; the page shows that line.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from captum_clip_surgery.adapters.loading import square_preprocess
from captum_clip_surgery.adapters.registry import get_adapter
from captum_clip_surgery.apps.multilabel import text_probabilities
from captum_clip_surgery.apps.points import PointPrompts, segment_with_sam, text_to_points
from captum_clip_surgery.apps.segmentation import segment
from captum_clip_surgery.core.classifier import CLIPZeroShotClassifier
from captum_clip_surgery.explain.folder import explain_images
from captum_clip_surgery.methods.registry import (
    build_method,
    get_method,
    method_names,
    method_title,
    supported_methods,
)

__all__ = [
    "Explanation",
    "Explorer",
    "InputError",
    "PointsResult",
    "Scene",
    "Segmentation",
    "check_methods",
    "parse_texts",
    "pamr_dilations",
    "read_image",
    "scene_gallery",
]

#: ``progress(fraction in [0, 1], description)``; Gradio's ``gr.Progress`` has this form.
Progress = Callable[..., Any]

#: The most texts one request may hold (each is a row of the figure).
MAX_TEXTS = 16

_BLANK = " \t\r\n,"


class InputError(ValueError):
    r"""A mistake in what the page was given: one line, naming the field."""


def parse_texts(text: Any) -> List[str]:
    r"""The texts typed into the page: one per line, or, on a single line, separated
    by commas. Spaces and commas around each text are dropped, and so are blank
    entries; a repeated text is kept once (its first occurrence).

    Args:
        text (str): what was typed.

    Returns:
        list[str]: the texts, in order.

    Raises:
        InputError: no text, or more than :data:`MAX_TEXTS`.

    Examples::

        >>> parse_texts("dog, grass")
        ['dog', 'grass']
        >>> parse_texts("a dog, lying\ngrass")
        ['a dog, lying', 'grass']
    """
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise InputError(f"texts: expected text, got {type(text).__name__}")
    lines = [line for line in text.splitlines() if line.strip(_BLANK)]
    parts = lines if len(lines) > 1 else text.split(",")
    texts = list(dict.fromkeys(p.strip(_BLANK) for p in parts if p.strip(_BLANK)))
    if not texts:
        raise InputError("texts: type at least one text to explain (several: comma-separated "
                         "or one per line)")
    if len(texts) > MAX_TEXTS:
        raise InputError(f"texts: at most {MAX_TEXTS} texts at once, got {len(texts)}")
    return texts


def check_methods(methods: Any, supported: Sequence[str]) -> List[str]:
    r"""The chosen method names, each registered and defined for the model.

    Args:
        methods (list[str] or str): the names chosen (a single name is allowed).
        supported (list[str]): the names defined for the model (see
            :func:`~captum_clip_surgery.methods.registry.supported_methods`).

    Returns:
        list[str]: the names, in the order given, repeats dropped.

    Raises:
        InputError: none chosen, an unknown name, or one not defined for the model.
    """
    if isinstance(methods, str):
        methods = [methods]
    names = list(dict.fromkeys(methods or []))
    if not names:
        raise InputError("methods: pick at least one method")
    for name in names:
        if not isinstance(name, str) or name not in method_names():
            raise InputError(f"methods: unknown method {name!r}; expected one of "
                             f"{', '.join(supported)}")
        if name not in supported:
            raise InputError(f"methods: {name!r} is not defined for this model's image tower "
                             f"(supported: {', '.join(supported)})")
    return names


def read_image(path: Any) -> Any:
    r"""The image file at ``path`` as an RGB PIL image.

    Raises:
        InputError: no file given, or one that cannot be read as an image.
    """
    from PIL import Image, UnidentifiedImageError

    if not path:
        raise InputError("image: upload an image or pick a scene from the gallery")
    path = os.fspath(path)
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise InputError(f"image: file not found: {name}")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, UnidentifiedImageError):
            detail = "not a known image format"
        raise InputError(f"image: cannot read {name} as an image ({detail})") from None


def pamr_dilations(height: int, width: int) -> Tuple[int, int]:
    r"""PAMR's published dilations ``(8, 16)`` (meant for images of about 400 pixels)
    scaled to an image's short side, at least 1: ``(2, 4)`` at 96 pixels."""
    scale = min(height, width) / 400.0
    return max(1, round(8 * scale)), max(1, round(16 * scale))


@dataclass
class Explanation:
    r"""The maps of one request.

    Attributes:
        path (str): the image file explained.
        image (PIL.Image.Image): the image, RGB.
        texts (list[str]): the texts, in order.
        maps (dict[str, np.ndarray]): per method name, float32 ``[T, H, W]`` in
            ``[0, 1]`` at the image's own size (what ``--save-maps`` writes).
        scores (np.ndarray): ``[T]`` the model's probability of each text (softmax over
            the texts; an independent sigmoid for sigmoid-loss models).
        seconds (dict[str, float]): wall time per method.
    """

    path: str
    image: Any
    texts: List[str]
    maps: Dict[str, np.ndarray]
    scores: np.ndarray
    seconds: Dict[str, float] = field(default_factory=dict)

    @property
    def stem(self) -> str:
        r"""The image file's name without its extension."""
        return os.path.splitext(os.path.basename(self.path))[0]

    def figure(self) -> Any:
        r"""The figure of :func:`~captum_clip_surgery.web.figures.plot_explanation`."""
        from captum_clip_surgery.web.figures import plot_explanation

        return plot_explanation(self.image, self.maps, self.texts, self.scores)

    def save(self, folder: str, dpi: int = 110) -> List[str]:
        r"""Write ``stem.METHOD.npy`` per method and ``stem.png`` (the figure) into
        ``folder`` (created when missing).

        Returns:
            list[str]: the files written, ``.npy`` files first.
        """
        os.makedirs(folder, exist_ok=True)
        written = []
        for name, array in self.maps.items():
            path = os.path.join(folder, f"{self.stem}.{name}.npy")
            np.save(path, np.asarray(array, dtype=np.float32))
            written.append(path)
        png = os.path.join(folder, f"{self.stem}.png")
        self.figure().savefig(png, dpi=dpi)
        written.append(png)
        return written


@dataclass
class Segmentation:
    r"""Labels of one request: ``labels`` int64 ``[H, W]`` indexing ``texts``."""

    image: Any
    texts: List[str]
    labels: np.ndarray
    method: str

    def figure(self) -> Any:
        from captum_clip_surgery.web.figures import plot_segmentation

        return plot_segmentation(self.image, self.labels, self.texts, method_title(self.method))


@dataclass
class PointsResult:
    r"""Point prompts of one request, one per text, in the image's pixels; ``masks``
    holds SAM's mask per text (``[H, W]`` bool) when a predictor was given."""

    image: Any
    prompts: List[PointPrompts]
    masks: Optional[List[np.ndarray]] = None

    def figure(self) -> Any:
        from captum_clip_surgery.web.figures import plot_points

        return plot_points(self.image, self.prompts, self.masks)


@dataclass
class Scene:
    r"""A held-out scene of the gallery: its index, image file, caption and texts
    (its objects, then its background)."""

    index: int
    path: str
    caption: str
    texts: List[str]


def scene_gallery(folder: str, count: int = 12, seed: int = 0) -> List[Scene]:
    r"""Render held-out scenes of the scenes world into ``folder`` as PNG files.

    The first is :meth:`~captum_clip_surgery.scenes.ScenesWorld.default_scene` (the one
    ``clip-surgery explain`` shows), the others the scenes after it; every index is at
    least :data:`~captum_clip_surgery.scenes.world.HELD_OUT_START`, so none was seen in
    the shipped model's training.

    Args:
        folder (str): where to write ``scene_INDEX.png`` (created when missing).
        count (int): how many scenes.
        seed (int): the world's seed.

    Returns:
        list[Scene]: the scenes, in order.
    """
    from captum_clip_surgery._validation import check_int
    from captum_clip_surgery.scenes import ScenesWorld

    check_int("count", count, minimum=1)
    world = ScenesWorld(seed=seed)
    first = world.default_scene()
    os.makedirs(folder, exist_ok=True)
    scenes = []
    for index in range(first, first + count):
        scene = world.sample(index)
        path = os.path.join(folder, f"scene_{index}.png")
        if not os.path.exists(path):
            scene["image"].save(path)
        scenes.append(Scene(index, path, scene["caption"],
                            list(scene["objects"]) + [scene["background"]]))
    return scenes


class Explorer:
    r"""One loaded model behind the page: runs the methods, segmentation and point
    prompts on image files, one request at a time.

    Args:
        model (nn.Module): a CLIP model of a supported family (never modified).
        tokenizer (Callable, optional): its tokenizer (default: the adapter's).
        preprocess (Callable, optional): PIL image → ``[3, H, W]``; default the square
            bicubic resize to the model's input size with its normalisation, the
            transform of ``clip-surgery explain``.
        name (str): the model's name shown in the page.
        sam_predictor (object, optional): a ``segment_anything.SamPredictor`` (see
            :func:`~captum_clip_surgery.apps.points.build_sam_predictor`): the points
            tab then also shows SAM's masks.
        cache_size (int): classifiers kept for recent text sets (their text features
            are cached).

    Examples::

        >>> model, _, tokenizer = load_scenes_clip()
        >>> explorer = Explorer(model, tokenizer, name="scenes CLIP")
        >>> result = explorer.explain("scene.png", "lemon, grass", ["surgery", "raw"])
        >>> result.maps["surgery"].shape, result.scores.shape
        ((2, 96, 96), (2,))
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Optional[Callable[..., Any]] = None,
        preprocess: Optional[Callable[[Any], torch.Tensor]] = None,
        name: str = "model",
        sam_predictor: Optional[Any] = None,
        cache_size: int = 8,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.adapter = get_adapter(model)
        size = int(self.adapter.input_size()[0])
        self.preprocess = preprocess or square_preprocess(
            size, self.adapter.image_mean, self.adapter.image_std
        )
        self.name = name
        self.sam_predictor = sam_predictor
        self.methods: Tuple[str, ...] = supported_methods(self.adapter)
        self.token_methods: Tuple[str, ...] = tuple(
            m for m in self.methods if get_method(m).kind == "token"
        )
        self._cache_size = cache_size
        self._classifiers: OrderedDict[Tuple[str, ...], CLIPZeroShotClassifier] = OrderedDict()
        # one request at a time on the model: the methods switch it to eval mode and back
        self._lock = threading.RLock()

    @property
    def default_methods(self) -> List[str]:
        r"""The methods the page starts with: CLIP Surgery and raw CLIP where defined
        (the pair of ``clip-surgery explain``), else the first two supported."""
        chosen = [m for m in ("surgery", "raw") if m in self.methods]
        return chosen or list(self.methods[:2])

    def classifier(self, texts: Sequence[str]) -> CLIPZeroShotClassifier:
        r"""The classifier over ``texts`` (the texts of ``clip-surgery explain
        --images``; recent ones are reused)."""
        key = tuple(texts)
        with self._lock:
            clf = self._classifiers.pop(key, None)
            if clf is None:
                clf = CLIPZeroShotClassifier(self.model, list(texts), tokenizer=self.tokenizer)
            self._classifiers[key] = clf
            while len(self._classifiers) > self._cache_size:
                self._classifiers.popitem(last=False)
            return clf

    def _tensor(self, image: Any, preprocess: Optional[Callable[[Any], torch.Tensor]] = None
                ) -> torch.Tensor:
        return (preprocess or self.preprocess)(image).unsqueeze(0)

    def explain(
        self,
        path: Any,
        texts: Any,
        methods: Any,
        progress: Optional[Progress] = None,
    ) -> Explanation:
        r"""Each method's maps for each text, and the model's probability of each text.

        Args:
            path (str): the image file.
            texts (str or list[str]): the texts (a string is split by
                :func:`parse_texts`).
            methods (list[str]): method names defined for the model.
            progress (Callable, optional): called as ``progress(fraction, desc=...)``
                before each method.

        Returns:
            Explanation: the maps (``maps[m]`` equals what ``clip-surgery explain
            --images path --text ... --method m --save-maps`` writes) and scores.
        """
        texts_ = parse_texts(texts) if isinstance(texts, str) or texts is None else \
            parse_texts("\n".join(texts))
        names = check_methods(methods, self.methods)
        image = read_image(path)
        path = os.fspath(path)
        failures: List[str] = []

        def failed(_: str, message: str) -> None:
            failures.append(message)

        with self._lock:
            clf = self.classifier(texts_)
            maps: Dict[str, np.ndarray] = {}
            seconds: Dict[str, float] = {}
            for k, name in enumerate(names):
                if progress is not None:
                    progress(k / len(names), desc=f"{method_title(name)} ({k + 1}/{len(names)})")
                start = time.perf_counter()
                results = list(explain_images([path], clf, texts_, name,
                                              preprocess=self.preprocess, batch_size=1,
                                              num_workers=0, on_error=failed))
                if failures or not results:
                    raise InputError(f"image: cannot read {os.path.basename(path)} "
                                     f"({failures[0] if failures else 'no result'})")
                maps[name] = results[0][1].numpy().astype(np.float32, copy=False)
                seconds[name] = time.perf_counter() - start
            with torch.no_grad():
                scores = text_probabilities(clf, self._tensor(image), texts_)[0]
        if progress is not None:
            progress(1.0, desc="figure")
        return Explanation(path, image, texts_, maps, scores.cpu().numpy(), seconds)

    def _token_method(self, method: Any) -> str:
        if method not in self.token_methods:
            raise InputError(
                f"method: {method!r} gives no token maps for this model; expected one of "
                f"{', '.join(self.token_methods) or '(none: this tower has no token maps)'}"
            )
        return str(method)

    def segment(
        self,
        path: Any,
        texts: Any,
        method: str = "surgery",
        pamr: bool = False,
        sliding_window: bool = False,
        progress: Optional[Progress] = None,
    ) -> Segmentation:
        r"""Label each pixel with the text whose map is highest there
        (:func:`~captum_clip_surgery.apps.segmentation.segment`, no feature surgery).

        Args:
            path (str): the image file.
            texts (str or list[str]): the classes.
            method (str): a token-map method (see :attr:`token_methods`).
            pamr (bool): refine with PAMR (10 iterations, dilations
                :func:`pamr_dilations` of the image).
            sliding_window (bool): the protocol of the segmentation benchmark: the image
                resized to 1.5× the model's input, windows of the input size, stride half
                of it.
            progress (Callable, optional): see :meth:`explain`.

        Returns:
            Segmentation: ``labels`` ``[H, W]`` at the image's own size.
        """
        texts_ = parse_texts(texts if isinstance(texts, str) or texts is None
                             else "\n".join(texts))
        name = self._token_method(method)
        image = read_image(path)
        size = int(self.adapter.input_size()[0])
        preprocess, window = None, None
        if sliding_window:
            preprocess = square_preprocess(round(1.5 * size), self.adapter.image_mean,
                                           self.adapter.image_std)
            window = (size, max(1, size // 2))
        if progress is not None:
            progress(0.0, desc=f"segmenting with {method_title(name)}")
        with self._lock:
            explainer = build_method(name, self.classifier(texts_))
            labels = segment(explainer, self._tensor(image, preprocess),
                             output_size=(image.height, image.width), sliding_window=window,
                             pamr=bool(pamr),
                             pamr_dilations=pamr_dilations(image.height, image.width))
        return Segmentation(image, texts_, labels[0].cpu().numpy(), name)

    def points(
        self,
        path: Any,
        texts: Any,
        method: str = "surgery",
        progress: Optional[Progress] = None,
    ) -> PointsResult:
        r"""Point prompts per text (:func:`~captum_clip_surgery.apps.points.text_to_points`,
        the release's rule), in the image's own pixels; with a SAM predictor, SAM's mask
        for each text's points.

        Args:
            path (str): the image file.
            texts (str or list[str]): the texts (``"a+b"`` combines two).
            method (str): a token-map method.
            progress (Callable, optional): see :meth:`explain`.

        Returns:
            PointsResult: the prompts (and masks).
        """
        texts_ = parse_texts(texts if isinstance(texts, str) or texts is None
                             else "\n".join(texts))
        name = self._token_method(method)
        image = read_image(path)
        parts = [p.strip() for t in texts_ for p in t.split("+")]
        if any(not p for p in parts):
            raise InputError("texts: a combined text 'a+b' needs a text on both sides of '+'")
        if progress is not None:
            progress(0.0, desc=f"points from {method_title(name)}")
        with self._lock:
            explainer = build_method(name, self.classifier(list(dict.fromkeys(parts))))
            prompts = text_to_points(explainer, self._tensor(image), texts_,
                                     image_size=(image.height, image.width))[0]
        masks = None
        if self.sam_predictor is not None:
            if progress is not None:
                progress(0.5, desc="Segment Anything")
            masks = []
            rgb = np.asarray(image)
            for k, prompt in enumerate(prompts):
                mask, _ = segment_with_sam(self.sam_predictor, rgb if k == 0 else None, prompt)
                masks.append(mask.cpu().numpy().astype(bool))
        return PointsResult(image, prompts, masks)
