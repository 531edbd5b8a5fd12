r"""Explain many images: a streaming generator of maps and a resumable folder writer.

:func:`explain_images` streams image files through a ``DataLoader`` (decoding and
preprocessing in worker processes), explains each batch for every text in one
pass where the method allows it, and yields one image's maps at a time, resized
back to that image's own size: memory stays flat in the number of images.

:func:`explain_to_folder` writes ``stem.npy`` (the maps) and ``stem.png`` (a
figure) per image and a record of what produced them (``out_dir/.clip-surgery/``);
it skips images whose outputs were already written with the same settings (so an
interrupted run resumes), refuses to write over the input images or over files it
did not write, reports unreadable images without stopping, and under ``torchrun``
splits the images over the ranks so that each image is written exactly once.

Every image file is read by :func:`~captum_clip_surgery.explain.images.read_rgb`:
every Pillow mode by its real range, large images at a bounded working size.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import (
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import numpy as np
import torch
import torch.distributed as dist
from captum.attr import Attribution
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from captum_clip_surgery._validation import check_bool, check_int, check_optional_int
from captum_clip_surgery.apps.comparison import compare, plot_text_grid
from captum_clip_surgery.core.classifier import CLIPZeroShotClassifier
from captum_clip_surgery.core.maps import minmax_normalize, upsample
from captum_clip_surgery.core.text import validate_texts
from captum_clip_surgery.explain.images import MAX_PIXELS, display_size, read_rgb
from captum_clip_surgery.methods.base import RelevanceMapAttribution, TokenMapAttribution
from captum_clip_surgery.methods.registry import (
    build_method,
    get_method,
    method_defaults,
    method_names,
    method_title,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "RECORDS_DIR",
    "ExplainInterrupted",
    "ExplainSummary",
    "ImageFiles",
    "OutputsExist",
    "check_out_dir",
    "explain_images",
    "explain_to_folder",
    "find_images",
]

#: File extensions :func:`find_images` takes for images in a folder (lower case).
IMAGE_EXTENSIONS = (
    ".bmp", ".gif", ".jpeg", ".jpg", ".png", ".ppm", ".tif", ".tiff", ".webp",
)

Explainer = Union[CLIPZeroShotClassifier, Attribution]
ErrorHandler = Callable[[str, str], None]


def find_images(spec: str) -> List[str]:
    r"""The image files a folder, a glob pattern or a file path names, sorted.

    Args:
        spec (str): a folder (its image files, by :data:`IMAGE_EXTENSIONS`, not
            recursing), a glob pattern (``**`` recurses; every matching file is
            taken, whatever its extension) or one file.

    Returns:
        list[str]: the paths, sorted; empty when nothing matches.

    Examples::

        >>> find_images("photos/*.jpg")
        ['photos/a.jpg', 'photos/b.jpg']
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"images: expected a folder, glob pattern or list of paths, got "
                        f"{type(spec).__name__}")
    spec = os.fspath(spec)
    if os.path.isdir(spec):
        names = sorted(os.listdir(spec))
        return [os.path.join(spec, n) for n in names
                if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(spec, n))]
    if glob.has_magic(spec):
        return sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
    return [spec] if os.path.isfile(spec) else []


def _paths(images: Any) -> List[Any]:
    r"""A folder / glob pattern resolved (it must match something), or the list given."""
    if isinstance(images, (str, os.PathLike)):
        paths = find_images(images)
        if not paths:
            raise ValueError(f"images: no image files match {os.fspath(images)!r}")
        return list(paths)
    if isinstance(images, (bytes, Tensor)) or not hasattr(images, "__iter__"):
        raise TypeError("images: expected a folder, a glob pattern or a list of file paths, got "
                        f"{type(images).__name__}")
    return list(images)


def _default_preprocess(classifier: CLIPZeroShotClassifier) -> Callable[[Any], Tensor]:
    from torchvision import transforms as T

    adapter = classifier.adapter
    h, w = adapter.input_size()
    return T.Compose([
        T.Resize((int(h), int(w)), interpolation=T.InterpolationMode.BICUBIC),
        T.ToTensor(),
        T.Normalize(adapter.image_mean, adapter.image_std),
    ])


class ImageFiles(Dataset):
    r"""Image files, each read as RGB by
    :func:`~captum_clip_surgery.explain.images.read_rgb` (every mode by its real range,
    at most ``max_pixels`` pixels) and preprocessed; unreadable files are returned as
    errors, not raised, so one bad file does not stop a loader.

    Args:
        paths (list[str]): image files.
        preprocess (Callable): PIL image → ``[3, H, W]`` tensor.
        max_pixels (int, optional): pixel limit of the working size (default
            :data:`~captum_clip_surgery.explain.images.MAX_PIXELS`; ``None``: none).

    Each item is a dict: ``index``, ``path``, ``image`` (the preprocessed tensor,
    or ``None``), ``size`` (the working ``(H, W)``: the file's own size, or scaled
    down to ``max_pixels``), ``full_size`` (the file's ``(H, W)``), ``state`` (the
    file's name, size in bytes and modification time, taken before it is read) and
    ``error`` (``None`` or a one-line message).
    """

    def __init__(self, paths: Sequence[str], preprocess: Callable[[Any], Tensor],
                 max_pixels: Optional[int] = MAX_PIXELS) -> None:
        self.paths = list(paths)
        self.preprocess = preprocess
        self.max_pixels = check_optional_int("max_pixels", max_pixels, minimum=1)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        path = self.paths[index]
        item: Dict[str, Any] = {"index": index, "path": path, "image": None, "size": None,
                                "full_size": None, "state": None, "error": None}
        try:
            item["state"] = _image_state(path)
            rgb, full_size = read_rgb(path, self.max_pixels)
            item["size"] = (rgb.height, rgb.width)
            item["full_size"] = full_size
            image = self.preprocess(rgb)
            if not isinstance(image, Tensor) or image.ndim != 3:
                raise TypeError("preprocess: expected a [3, H, W] tensor, got "
                                f"{type(image).__name__}")
            item["image"] = image
        except Exception as exc:  # corrupt, truncated, missing, unsupported: all reported
            item["error"] = _message(exc)
        return item


def _message(exc: BaseException) -> str:
    r"""``"Type: first line of the message"`` of an exception."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _keep_items(items: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return items


class _ShardSampler(DistributedSampler):
    r"""``DistributedSampler`` without the padding: rank ``r`` of ``W`` takes items
    ``r, r + W, ...`` once each, so no item is explained (or written) twice."""

    def __init__(
        self, dataset: Any, num_replicas: Optional[int] = None, rank: Optional[int] = None
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False,
                         drop_last=False)
        self.size = len(dataset)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.num_replicas))


def _resolve(explainer: Explainer, method: Optional[str]) -> Tuple[CLIPZeroShotClassifier, str, Any]:
    r"""``(classifier, display name, method)``: the method is a registered name (see
    :func:`~captum_clip_surgery.methods.registry.method_names`) or the user's attribution
    object."""
    if isinstance(explainer, CLIPZeroShotClassifier):
        name = "surgery" if method is None else method
        names = method_names()
        if not isinstance(name, str) or name not in names:
            raise ValueError(f"method: expected one of {', '.join(names)}, got {name!r}")
        return explainer, name, name
    if isinstance(explainer, Attribution):
        if method is not None:
            raise ValueError(
                "method: give a method name only with a CLIPZeroShotClassifier; an attribution "
                f"object ({type(explainer).__name__}) is its own method"
            )
        classifier = explainer.forward_func
        if not isinstance(classifier, CLIPZeroShotClassifier):
            raise TypeError(
                "explainer: expected an attribution built on a CLIPZeroShotClassifier, got one on "
                f"{type(classifier).__name__}"
            )
        return classifier, type(explainer).__name__, explainer
    raise TypeError(
        "explainer: expected a CLIPZeroShotClassifier or a Captum Attribution on one, got "
        f"{type(explainer).__name__}"
    )


def _batch_maps(
    classifier: CLIPZeroShotClassifier,
    name: str,
    method: Any,
    images: Tensor,
    texts: List[str],
) -> Tensor:
    r"""``[B, T, h, w]`` maps in ``[0, 1]`` (float32): the token grid for token-map
    methods (one pass for every text), the input-size map for the others (relevance
    methods through their per-text path: LeGrad shares one forward across the texts)."""
    if isinstance(method, TokenMapAttribution):
        mode = None
        if isinstance(name, str) and name in method_names():
            mode = method_defaults(name, classifier, images).get("feature_surgery")
        with torch.no_grad():
            grid = method.similarity(images, texts, feature_surgery=mode)
        return minmax_normalize(grid)
    if isinstance(method, RelevanceMapAttribution):  # on compare's footing: min-max again
        return minmax_normalize(method.attribute_per_text(images, texts).float())
    b, t = images.shape[0], len(texts)
    targets = [classifier.texts.index(text) for text in texts] * b
    expanded = images.repeat_interleave(t, dim=0)
    maps = compare(classifier, expanded, targets, methods={name: method})[name]
    return maps.reshape(b, t, *maps.shape[-2:])


def explain_images(
    images: Union[str, Sequence[str]],
    explainer: Explainer,
    texts: Optional[Sequence[str]] = None,
    method: Optional[str] = None,
    preprocess: Optional[Callable[[Any], Tensor]] = None,
    batch_size: int = 8,
    num_workers: int = 0,
    on_error: Optional[ErrorHandler] = None,
    progress: bool = False,
    distributed: Optional[bool] = None,
    method_options: Optional[Mapping[str, Any]] = None,
    max_pixels: Optional[int] = MAX_PIXELS,
) -> Iterator[Tuple[str, Tensor]]:
    r"""Explain image files for several texts, one image at a time.

    Images are read and preprocessed by a ``DataLoader`` (in ``num_workers``
    worker processes), explained in batches, and yielded one by one as
    ``(path, maps)``: ``maps`` is float32 ``[T, H, W]`` on the CPU, one map per
    text in order, in ``[0, 1]``, at the image file's own size ``H×W`` (for an
    image of more than ``max_pixels`` pixels: at its working size, the image scaled
    down to fit, see :func:`~captum_clip_surgery.explain.images.working_size`).
    Nothing is kept once an image is yielded, so memory does not grow with the
    number of images. Files are read by
    :func:`~captum_clip_surgery.explain.images.read_rgb` (16-bit, float, palette,
    CMYK and transparent images by their real range; a mode without a known range is
    reported as an unreadable image).

    Token-map methods (CLIP Surgery, the raw similarity map, MaskCLIP, ...)
    score every text in one pass over the batch: the token-grid scores are
    min-max normalised per map and resized bilinearly straight to the image's
    size, as the CLIP Surgery release does. With CLIP Surgery's class-set
    feature surgery the texts are the class set (one text: empty-string
    surgery). Other methods (GradCAM, Integrated Gradients, ...) explain each
    (image, text) pair through :func:`~captum_clip_surgery.compare`; their texts
    must be among the classifier's.

    An image that cannot be read or explained is skipped: ``on_error(path,
    message)`` is called (default: a warning); when a batch fails, its images are
    tried one by one, so one bad image does not take the others with it. Under ``torchrun`` (an initialised process
    group, or ``distributed=True``) each rank explains its own share (images
    ``rank, rank + world_size, ...``), every image on exactly one rank.

    Args:
        images (str or list[str]): image files, or a folder / glob pattern
            (see :func:`find_images`).
        explainer (CLIPZeroShotClassifier or Attribution): a classifier (the
            method is then named by ``method``), or an attribution built on one.
        texts (list[str], optional): the texts to explain; default the
            classifier's texts.
        method (str, optional): a registered method name (see
            :func:`~captum_clip_surgery.methods.registry.method_names`; default
            ``"surgery"``); only with a classifier.
        preprocess (Callable, optional): PIL image → ``[3, H, W]``; default the
            model's input size (square bicubic resize, no crop: the whole image
            is explained) and its normalisation. It must give one size for every
            image (images of different preprocessed sizes are run separately).
        batch_size (int): images per forward.
        num_workers (int): ``DataLoader`` worker processes (0: in this process).
        on_error (Callable, optional): called as ``on_error(path, message)`` for
            each image that cannot be read or preprocessed.
        progress (bool): show a tqdm bar (images / s), on rank 0 only.
        distributed (bool, optional): split the images over the ranks of the
            default process group; default: when one is initialised.
        method_options (dict, optional): keyword arguments for the constructor of
            a token-map method named by ``method``, e.g. ``{"surgery_blocks": 4}``.
        max_pixels (int, optional): pixel limit of the working size (default
            :data:`~captum_clip_surgery.explain.images.MAX_PIXELS` = 4096 × 4096;
            ``None``: every image at its own size, whatever the memory it takes).

    Returns:
        Iterator[tuple[str, Tensor]]: a generator of ``(path, maps)``.

    Examples::

        >>> from captum_clip_surgery.scenes import load_scenes_clip
        >>> model, preprocess, tokenizer = load_scenes_clip()
        >>> clf = CLIPZeroShotClassifier(model, ["tomato", "grass"], tokenizer=tokenizer)
        >>> for path, maps in explain_images("photos/*.png", clf, batch_size=16):
        ...     print(path, tuple(maps.shape))
        photos/a.png (2, 480, 640)
    """
    return _explain(images, explainer, texts, method, preprocess, batch_size, num_workers,
                    on_error, progress, distributed, method_options, max_pixels, sizes=False)


def _explain(
    images: Union[str, Sequence[str]],
    explainer: Explainer,
    texts: Optional[Sequence[str]],
    method: Optional[str],
    preprocess: Optional[Callable[[Any], Tensor]],
    batch_size: int,
    num_workers: int,
    on_error: Optional[ErrorHandler],
    progress: bool,
    distributed: Optional[bool],
    method_options: Optional[Mapping[str, Any]],
    max_pixels: Optional[int],
    sizes: bool,
) -> Iterator[Any]:
    r""":func:`explain_images`, its arguments checked; with ``sizes`` the generator
    yields ``(path, maps, file's (H, W))``."""
    classifier, name, spec = _resolve(explainer, method)
    texts_ = list(classifier.texts) if texts is None else validate_texts(texts)
    obj = build_method(spec, classifier) if isinstance(spec, str) else spec
    if method_options:
        if not isinstance(spec, str) or not isinstance(obj, TokenMapAttribution):
            raise ValueError(
                "method_options: only for token-map methods given by name (surgery, raw, "
                f"maskclip, ...), got method {name!r}"
            )
        try:
            obj = get_method(spec).build(classifier, **dict(method_options))
        except TypeError as exc:
            raise TypeError(f"method_options: {exc}") from None
    if isinstance(obj, (TokenMapAttribution, RelevanceMapAttribution)):
        spec = obj  # one object for the whole stream; any texts
    else:
        unknown = [t for t in texts_ if t not in classifier.texts]
        if unknown:
            raise ValueError(
                f"texts: method {name!r} explains the classifier's own texts; not among them: "
                f"{', '.join(repr(t) for t in unknown)}"
            )
    paths = _paths(images)
    for i, p in enumerate(paths):
        if not isinstance(p, (str, os.PathLike)):
            raise TypeError(f"images: expected file paths, item {i} is {type(p).__name__}")
    check_int("batch_size", batch_size, minimum=1)
    check_int("num_workers", num_workers, minimum=0)
    if distributed is None:
        distributed = dist.is_available() and dist.is_initialized()
    elif distributed and not (dist.is_available() and dist.is_initialized()):
        raise ValueError("distributed: True needs an initialised default process group")
    check_optional_int("max_pixels", max_pixels, minimum=1)
    transform = preprocess or _default_preprocess(classifier)
    return _stream([os.fspath(p) for p in paths], classifier, name, spec, texts_, transform,
                   batch_size, num_workers, on_error, progress, bool(distributed), max_pixels,
                   sizes)


def _warn(path: str, message: str) -> None:
    warnings.warn(f"skipped {path}: {message}", RuntimeWarning, stacklevel=3)


def _stream(
    paths: List[str],
    classifier: CLIPZeroShotClassifier,
    name: str,
    method: Any,
    texts: List[str],
    preprocess: Callable[[Any], Tensor],
    batch_size: int,
    num_workers: int,
    on_error: Optional[ErrorHandler],
    progress: bool,
    distributed: bool,
    max_pixels: Optional[int],
    sizes: bool,
) -> Iterator[Any]:
    from tqdm import tqdm

    report = on_error or _warn
    dataset = ImageFiles(paths, preprocess, max_pixels)
    sampler = _ShardSampler(dataset) if distributed else None
    device = classifier.adapter.device
    loader = DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
        num_workers=num_workers, collate_fn=_keep_items,
        pin_memory=device.type == "cuda",
    )
    rank = dist.get_rank() if distributed else 0
    total = len(sampler) if sampler is not None else len(dataset)
    bar = tqdm(total=total, desc="explain", unit="img", disable=not progress or rank != 0,
               dynamic_ncols=True)
    if isinstance(method, TokenMapAttribution):
        with torch.no_grad():
            classifier.encode_texts(texts)  # encode (and cache) before the first batch
    try:
        for items in loader:
            for item in items:
                if item["error"] is not None:
                    report(item["path"], item["error"])
                    bar.update(1)
            good = [item for item in items if item["error"] is None]
            # one forward per preprocessed size (a fixed-size preprocess gives one group)
            groups: Dict[Tuple[int, ...], List[Dict[str, Any]]] = {}
            for item in good:
                groups.setdefault(tuple(item["image"].shape), []).append(item)
            for members in groups.values():
                # a batch that fails is tried image by image: one image's failure (out of
                # memory, a method's error) is reported for that image alone
                runs = [members]
                while runs:
                    run = runs.pop(0)
                    try:
                        batch = torch.stack([item["image"] for item in run])
                        maps = _batch_maps(classifier, name, method,
                                           batch.to(device, non_blocking=True), texts)
                    except Exception as exc:
                        if len(run) > 1:
                            runs = [[item] for item in run] + runs
                        else:
                            report(run[0]["path"], _message(exc))
                            bar.update(1)
                        continue
                    finally:
                        batch = None
                    for k, item in enumerate(run):
                        bar.update(1)
                        try:
                            resized = _resized(maps[k : k + 1], item["size"])
                        except Exception as exc:
                            report(item["path"], _message(exc))
                            continue
                        # no local name is left holding the maps once they are yielded
                        if sizes:
                            facts = {"full_size": item["full_size"], "state": item["state"]}
                            yield item["path"], _pop(resized), facts
                        else:
                            yield item["path"], _pop(resized)
                    maps = None
    finally:
        bar.close()


def _pop(box: List[Tensor]) -> Tensor:
    r"""The only item of ``box``, removed from it (so that the caller's frame keeps no
    reference)."""
    return box.pop()


def _resized(maps: Tensor, size: Tuple[int, int]) -> List[Tensor]:
    r"""``[1, T, h, w]`` → ``[float32 [T, H, W]]`` on the CPU, in ``[0, 1]`` (in a list, see
    :func:`_pop`)."""
    return [upsample(maps, size)[0].clamp(0, 1).float().cpu()]


@dataclass
class ExplainSummary:
    r"""What :func:`explain_to_folder` did (totals over every rank).

    Attributes:
        done (int): images explained and written.
        skipped (int): images whose outputs were already written, with the same
            settings, from the same image file.
        failed (int): images that could not be read, explained or written.
        failures (list[tuple[str, str]]): ``(path, message)`` per failed image.
        seconds (float): wall time.
        reduced (int): images written at a working size below their own (more than
            ``max_pixels`` pixels).
    """

    done: int = 0
    skipped: int = 0
    failed: int = 0
    failures: List[Tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    reduced: int = 0

    def __str__(self) -> str:
        rate = self.done / self.seconds if self.seconds > 0 else 0.0
        text = (f"done {self.done}, skipped {self.skipped} (already written), failed "
                f"{self.failed} in {self.seconds:.1f} s ({rate:.2f} images/s)")
        if self.reduced:
            text += (f"; {self.reduced} above the pixel limit written at a reduced size "
                     "(see their records)")
        return text


class ExplainInterrupted(KeyboardInterrupt):
    r"""A ``KeyboardInterrupt`` (Ctrl-C) during :func:`explain_to_folder`, carrying what
    was done so far (``summary``). Every output already written is complete and
    recorded; running the same call again resumes.

    Args:
        summary (ExplainSummary): the totals of this process up to the interruption.
    """

    def __init__(self, summary: ExplainSummary) -> None:
        super().__init__(f"interrupted after writing {summary.done} images")
        self.summary = summary


class OutputsExist(ValueError):
    r"""``out_dir`` holds files that :func:`explain_to_folder` would replace but that are
    not its own outputs of the same settings: outputs of other settings, files it did not
    write, or outputs changed since it wrote them. Nothing has been written.

    Attributes:
        out_dir (str): the output folder.
        counts (dict[str, int]): images per reason (``"made with other settings"``,
            ``"not written here"`` (no record of this function), ``"changed since
            written"``).
        example (str): one of the files.
        differences (list[str]): for other settings, the settings that differ.
    """

    def __init__(self, out_dir: str, counts: Mapping[str, int], example: str,
                 differences: Sequence[str]) -> None:
        self.out_dir = out_dir
        self.counts = dict(counts)
        self.example = example
        self.differences = list(differences)
        super().__init__(f"out_dir: {self.describe()}; write into another folder, or pass "
                         "overwrite=True to replace them")

    def describe(self) -> str:
        r"""What is in the way, in one line (without the remedy)."""
        parts = []
        for reason, n in self.counts.items():
            what = f"{n} {reason}"
            if reason == _OTHER_SETTINGS and self.differences:
                what += f" ({', '.join(self.differences)} differ)"
            parts.append(what)
        return (f"{self.out_dir!r} holds outputs this run would replace (images: "
                f"{', '.join(parts)}; e.g. {os.path.basename(self.example)!r})")


_OTHER_SETTINGS = "made with other settings"
_NOT_OURS = "not written here"
_CHANGED = "changed since written"


#: The folder inside ``out_dir`` that holds what produced each output.
RECORDS_DIR = ".clip-surgery"
_RECORD_FORMAT = 1
#: Our temporary files: ``.NAME.PID.tmp`` for an output or record ``NAME``.
_TEMPORARY = re.compile(r"^\.(?P<base>.+\.(?:npy|png|json))\.(?P<pid>\d+)\.tmp$")


def output_paths(path: str, out_dir: str, save_maps: bool, figures: bool) -> List[str]:
    r"""The files :func:`explain_to_folder` writes for one image."""
    stem = _stem(path)
    return ([os.path.join(out_dir, stem + ".npy")] if save_maps else []) + (
        [os.path.join(out_dir, stem + ".png")] if figures else []
    )


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def check_out_dir(images: Sequence[str], out_dir: str) -> None:
    r"""Refuse an output folder that holds input images, or where an output would
    replace an input file (the same file under another name included).

    Args:
        images (list[str]): the input image files.
        out_dir (str): the output folder (it need not exist).

    Raises:
        ValueError: naming ``out_dir``, the folder and the input image.

    Examples::

        >>> check_out_dir(["photos/a.png"], "photos")
        Traceback (most recent call last):
        ValueError: out_dir: 'photos' is the folder of the input image 'photos/a.png'; ...
    """
    out = os.path.abspath(os.fspath(out_dir))
    if not os.path.isdir(out):
        return  # nothing in it yet: it holds no input
    out_stat = os.stat(out)
    inputs: Dict[Tuple[int, int], str] = {}
    folders: Dict[str, bool] = {}
    for p in images:
        p = os.fspath(p)
        folder = os.path.dirname(os.path.abspath(p))
        if folder not in folders:
            try:
                folders[folder] = os.path.samestat(os.stat(folder), out_stat)
            except OSError:
                folders[folder] = False
        if folders[folder]:
            raise ValueError(
                f"out_dir: {out_dir!r} is the folder of the input image {p!r}; explaining "
                "into it would write over your images (figures and maps are named like "
                "them); choose another output folder"
            )
        try:
            st = os.stat(p)
        except OSError:
            continue
        inputs[(st.st_dev, st.st_ino)] = p
    for p in images:
        for target in output_paths(os.fspath(p), out, True, True):
            try:
                st = os.stat(target)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in inputs:
                raise ValueError(
                    f"out_dir: {target!r} would be written over the input image "
                    f"{inputs[(st.st_dev, st.st_ino)]!r}; choose another output folder"
                )


def _replace_into(target: str, write: Callable[[Any], None]) -> None:
    r"""Write through a temporary file and rename it: an interrupted run never leaves a
    half-written output that a resumed run would take for finished (a temporary left by
    a killed process is removed by the next run, see :func:`_remove_stale_temporaries`)."""
    folder, base = os.path.split(target)
    tmp = os.path.join(folder, f".{base}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
        os.replace(tmp, target)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process has not written yet: an earlier one with our pid left it
    if os.name == "nt":  # os.kill(pid, 0) would end the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process
    return True


def _remove_stale_temporaries(folder: str) -> List[str]:
    r"""Remove the temporary files of our own pattern (``.NAME.PID.tmp`` with ``NAME`` an
    output or record name) whose process is gone; nothing else is touched."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = _TEMPORARY.match(name)
        path = os.path.join(folder, name)
        if match is None or not os.path.isfile(path) or os.path.islink(path):
            continue
        if os.name == "nt" and time.time() - os.path.getmtime(path) < 3600:
            continue
        if _process_alive(int(match.group("pid"))):
            continue
        try:
            os.remove(path)
            removed.append(path)
        except OSError:
            pass
    return removed


def _json_ready(value: Any) -> Any:
    r"""``value`` as plain JSON types (tuples as lists, anything else by its ``repr``
    without memory addresses)."""
    return json.loads(json.dumps(value, default=_stable_repr, sort_keys=True))


def _stable_repr(value: Any) -> Any:
    if isinstance(value, torch.nn.Module):  # e.g. a backbone= option: its weights, not its repr
        return {"module": _model_fingerprint(value)}
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))


def _model_fingerprint(model: torch.nn.Module) -> Dict[str, Any]:
    r"""The model's class, dtype, size and a digest of every parameter and buffer (the
    sum and norm of each tensor, to 12 significant digits: other weights, another
    precision or another architecture give another digest)."""
    digest = hashlib.sha256()
    count = 0
    stats: List[Tensor] = []
    names: List[str] = []
    with torch.no_grad():
        tensors = list(model.named_parameters()) + list(model.named_buffers())
        for name, t in tensors:
            count += t.numel()
            names.append(f"{name}:{tuple(t.shape)}:{t.dtype}")
            if t.numel() == 0 or t.is_meta:
                continue
            x = t.detach()
            if x.device.type == "mps":  # no float64 there
                x = x.cpu()
            if x.is_complex():
                x = torch.view_as_real(x)
            elif not x.is_floating_point():  # integer and bool buffers (small)
                x = x.double()
            stats.append(torch.stack([x.sum(dtype=torch.float64),
                                      torch.linalg.vector_norm(x, dtype=torch.float64)]))
    if stats:  # one transfer (a model on one device: no copies until here)
        values = torch.stack([s.to(stats[0].device) for s in stats]).cpu().flatten().tolist()
    else:
        values = []
    digest.update("\n".join(names).encode())
    for value in values:
        digest.update(f"{value:.12e}".encode())
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
    return {"class": f"{type(model).__module__}.{type(model).__qualname__}",
            "dtypes": dtypes, "values": count, "digest": digest.hexdigest()[:32]}


def _method_settings(spec: Any) -> Dict[str, Any]:
    r"""An attribution object's class and its plain settings (public scalar attributes)."""
    settings = {k: v for k, v in sorted(vars(spec).items())
                if not k.startswith("_") and isinstance(v, (bool, int, float, str, type(None)))}
    return {"class": f"{type(spec).__module__}.{type(spec).__qualname__}", **settings}


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("captum-clip-surgery")
    except PackageNotFoundError:
        return "unknown"


def _run_settings(
    classifier: CLIPZeroShotClassifier,
    name: str,
    spec: Any,
    texts: List[str],
    method_options: Optional[Mapping[str, Any]],
    preprocess: Optional[Callable[[Any], Tensor]],
    max_pixels: Optional[int],
    run_info: Optional[Mapping[str, Any]],
) -> Dict[str, Any]:
    r"""Everything the outputs depend on, as plain JSON."""
    return _json_ready({
        "package": _package_version(),
        "method": name if isinstance(spec, str) else _method_settings(spec),
        "method_options": dict(method_options or {}),
        "texts": list(texts),
        "classifier_texts": list(classifier.texts),
        "templates": list(classifier.templates),
        "model": _model_fingerprint(classifier.model),
        "preprocess": "default" if preprocess is None else _stable_repr(preprocess),
        "max_pixels": max_pixels,
        "info": dict(run_info or {}),
    })


def _digest(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]


def _image_state(path: str) -> Dict[str, Any]:
    st = os.stat(path)
    return {"name": os.path.basename(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _state_or_none(path: str) -> Optional[Dict[str, Any]]:
    try:
        return _image_state(path)
    except OSError:  # gone: the loader reports it
        return None


def _write_json(target: str, value: Any) -> None:
    data = json.dumps(value, indent=1, sort_keys=True).encode()
    _replace_into(target, lambda fh: fh.write(data))


def _read_json(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path, "rb") as fh:
            value = json.load(fh)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _record_path(out_dir: str, path: str) -> str:
    return os.path.join(out_dir, RECORDS_DIR, "images", _stem(path) + ".json")


def _plan(
    paths: List[str],
    out_dir: str,
    save_maps: bool,
    figures: bool,
    run: str,
    settings: Mapping[str, Any],
    overwrite: bool,
) -> Tuple[List[str], List[Tuple[str, str]], Optional[str]]:
    r"""``(images to do, (path, message) per image that cannot be written, refusal)``:
    an image is skipped when its record is complete, of the same settings and the same
    image file, and its outputs are there as written; refused (the whole call) when its
    outputs would replace files of other settings, files not written here, or outputs
    changed since; otherwise done (again)."""
    pending: List[str] = []
    blocked: List[Tuple[str, str]] = []
    counts: Dict[str, int] = {}
    example = ""
    other_runs: List[str] = []
    for p in paths:
        outputs = output_paths(p, out_dir, save_maps, figures)
        not_files = [o for o in outputs if os.path.lexists(o) and not os.path.isfile(o)]
        if not_files:
            blocked.append((p, f"IsADirectoryError: {not_files[0]} exists and is not a file; "
                               "remove or rename it to write this output"))
            continue
        existing = [o for o in outputs if os.path.exists(o)]
        record = _read_json(_record_path(out_dir, p))
        reason = None
        if record is None or record.get("format") != _RECORD_FORMAT:
            if existing:
                reason = _NOT_OURS
        elif record.get("status") != "complete":
            pass  # an interrupted write of ours: do it again
        elif record.get("run") != run:
            if existing:
                reason = _OTHER_SETTINGS
                other_runs.append(str(record.get("run")))
        else:
            written = record.get("outputs", {})
            foreign = [o for o in existing if os.path.basename(o) not in written]
            changed = [o for o in existing
                       if o not in foreign and written[os.path.basename(o)] != os.path.getsize(o)]
            if foreign or changed:
                reason = _NOT_OURS if foreign else _CHANGED
                existing = foreign or changed
            elif len(existing) == len(outputs) and record.get("image") == _state_or_none(p):
                continue  # done before, with these settings, from this very file
        if reason is not None and not overwrite:
            counts[reason] = counts.get(reason, 0) + 1
            example = example or existing[0]
            continue
        pending.append(p)
    refusal = None
    if counts:
        differences: List[str] = []
        for other in dict.fromkeys(other_runs):
            old = _read_json(os.path.join(out_dir, RECORDS_DIR, "runs", other + ".json"))
            old_settings = (old or {}).get("settings", {})
            differences += [k for k in settings if old_settings.get(k) != settings[k]]
        error = OutputsExist(out_dir, counts, example, list(dict.fromkeys(differences)))
        refusal = json.dumps([out_dir, counts, example, error.differences])
    return pending, blocked, refusal


def _save_figure(path: str, maps: Tensor, texts: List[str], title: str, target: str,
                 dpi: int, max_pixels: Optional[int]) -> None:
    r"""The figure of one image, drawn at a bounded size (see
    :func:`~captum_clip_surgery.explain.images.display_size`)."""
    from PIL import Image

    image, _ = read_rgb(path, max_pixels)
    if (image.height, image.width) != tuple(maps.shape[-2:]):
        raise OSError(f"{path} changed while it was explained")
    h, w = display_size((image.height, image.width))
    if (h, w) != (image.height, image.width):
        image = image.resize((w, h), Image.BICUBIC, reducing_gap=3.0)
        maps = torch.nn.functional.interpolate(maps[:, None], size=(h, w), mode="bilinear",
                                               align_corners=False, antialias=True)[:, 0]
        maps = maps.clamp(0, 1)
    fig = plot_text_grid(image, {title: maps[:, None]}, texts)
    _replace_into(target, lambda fh: fig.savefig(fh, dpi=dpi, format="png"))


def _write_outputs(
    path: str,
    maps: Tensor,
    facts: Mapping[str, Any],
    out_dir: str,
    save_maps: bool,
    figures: bool,
    texts: List[str],
    title: str,
    dpi: int,
    max_pixels: Optional[int],
    run: str,
) -> None:
    r"""One image's outputs, between its record marked ``pending`` (written first) and
    ``complete`` (written once every output is in place, with their sizes)."""
    stem = _stem(path)
    record_path = _record_path(out_dir, path)
    record: Dict[str, Any] = {
        "format": _RECORD_FORMAT, "status": "pending", "run": run, "image": facts["state"],
        "path": os.path.abspath(path), "size": list(facts["full_size"]),
        "map_size": list(maps.shape[-2:]), "outputs": {},
    }
    _write_json(record_path, record)
    outputs: Dict[str, int] = {}
    if save_maps:
        target = os.path.join(out_dir, stem + ".npy")
        array = maps.numpy().astype(np.float32, copy=False)
        _replace_into(target, lambda fh: np.save(fh, array))
        outputs[stem + ".npy"] = os.path.getsize(target)
    if figures:
        target = os.path.join(out_dir, stem + ".png")
        _save_figure(path, maps, texts, title, target, dpi, max_pixels)
        outputs[stem + ".png"] = os.path.getsize(target)
    record.update(status="complete", outputs=outputs)
    _write_json(record_path, record)


def explain_to_folder(
    images: Union[str, Sequence[str]],
    explainer: Explainer,
    out_dir: str,
    texts: Optional[Sequence[str]] = None,
    method: Optional[str] = None,
    save_maps: bool = True,
    figures: bool = True,
    preprocess: Optional[Callable[[Any], Tensor]] = None,
    batch_size: int = 8,
    num_workers: int = 0,
    on_error: Optional[ErrorHandler] = None,
    progress: bool = False,
    dpi: int = 110,
    method_options: Optional[Mapping[str, Any]] = None,
    max_pixels: Optional[int] = MAX_PIXELS,
    overwrite: bool = False,
    run_info: Optional[Mapping[str, Any]] = None,
) -> ExplainSummary:
    r"""Explain image files and write the results into a folder, resumably.

    For each image ``stem.ext`` it writes ``out_dir/stem.npy`` (with
    ``save_maps``: the maps of :func:`explain_images`, float32 ``[T, H, W]`` at
    the image's own size, or its working size above ``max_pixels``, in ``[0, 1]``),
    ``out_dir/stem.png`` (with ``figures``: the image and its map per text, drawn at
    most 1024 pixels on a side) and its record ``out_dir/.clip-surgery/images/stem.json``
    (what produced the outputs: the settings' digest, whose full text is in
    ``out_dir/.clip-surgery/runs/DIGEST.json``, the image file's name, size in bytes
    and modification time, the image's own and working size, and each output's size).

    Resuming: an image is skipped when its record says its outputs were written with
    the same settings (texts, method and its options, the model's weights and
    precision, the preprocessing, ``max_pixels``, the package version, ``run_info``)
    from the same image file, and they are still there as written. An image whose
    file changed, or whose outputs are missing or half-written, is done again. When
    outputs would replace files of other settings, files this function did not write,
    or outputs changed since they were written, nothing is written and
    :class:`OutputsExist` (a ``ValueError`` naming ``out_dir``) is raised, unless
    ``overwrite`` is set. Outputs and records are written through a temporary file
    and renamed; an image's record says ``complete`` only once all its outputs are in
    place, so an interrupted run never leaves an output taken for finished.
    Temporary files of a killed run (``.NAME.PID.tmp``) are removed by the next one.

    ``out_dir`` must not be the folder of an input image (a ``ValueError`` naming
    ``out_dir``, before anything is written). An image that cannot be read,
    explained or written (an unknown image mode, out of memory, a directory in the
    way of an output, ...) is reported (``on_error``), counted and skipped, never
    the end of the run. Ctrl-C raises :class:`ExplainInterrupted` (a
    ``KeyboardInterrupt``) carrying the summary so far. Under ``torchrun`` rank 0
    decides which images are still to do, each rank explains and writes its own
    share, and the returned totals cover every rank.

    Args:
        images (str or list[str]): image files, or a folder / glob pattern.
        explainer (CLIPZeroShotClassifier or Attribution): see :func:`explain_images`.
        out_dir (str): output folder (created when missing).
        texts (list[str], optional): texts to explain (default the classifier's).
        method (str, optional): method name (default ``"surgery"``).
        save_maps (bool): write ``stem.npy``.
        figures (bool): write ``stem.png``.
        preprocess (Callable, optional): see :func:`explain_images` (recorded by its
            ``repr``, memory addresses left out).
        batch_size (int): images per forward.
        num_workers (int): ``DataLoader`` worker processes.
        on_error (Callable, optional): ``on_error(path, message)`` per failed image
            (default: a warning).
        progress (bool): show a progress bar (rank 0).
        dpi (int): figure resolution.
        method_options (dict, optional): see :func:`explain_images`.
        max_pixels (int, optional): pixel limit of the working size (default
            :data:`~captum_clip_surgery.explain.images.MAX_PIXELS` = 4096 × 4096;
            ``None``: none).
        overwrite (bool): replace outputs of other settings and files in the way.
        run_info (dict, optional): anything else the outputs depend on (JSON
            values), recorded and compared like the settings (the command line
            records its ``--model``, ``--pretrained``, ``--size`` and
            ``--precision``).

    Returns:
        ExplainSummary: done / skipped / failed counts.

    Examples::

        >>> summary = explain_to_folder("photos", clf, "maps", texts=["dog", "grass"],
        ...                             figures=False)
        >>> print(summary)
        done 120, skipped 0 (already written), failed 1 in 14.2 s (8.45 images/s)
    """
    start = time.perf_counter()
    if not save_maps and not figures:
        raise ValueError("save_maps, figures: nothing to write; enable at least one")
    check_bool("overwrite", overwrite)
    check_optional_int("max_pixels", max_pixels, minimum=1)
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir: expected a folder path, got {type(out_dir).__name__}")
    out_dir = os.fspath(out_dir)
    paths = [os.fspath(p) for p in _paths(images)]
    seen: Dict[str, str] = {}
    for p in paths:
        stem = _stem(p)
        if stem in seen:
            raise ValueError(
                f"images: {seen[stem]} and {p} would both write {stem}.* into {out_dir}; "
                "rename one or explain them into different folders"
            )
        seen[stem] = p
    check_out_dir(paths, out_dir)
    classifier, name, spec = _resolve(explainer, method)
    texts_ = list(classifier.texts) if texts is None else validate_texts(texts)
    settings = _run_settings(classifier, name, spec, texts_, method_options, preprocess,
                             max_pixels, run_info)
    run = _digest(settings)

    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    plan: Any = None
    if rank == 0:
        os.makedirs(out_dir, exist_ok=True)
        for sub in ("", os.path.join(RECORDS_DIR, "images"), os.path.join(RECORDS_DIR, "runs")):
            _remove_stale_temporaries(os.path.join(out_dir, sub))
        plan = _plan(paths, out_dir, save_maps, figures, run, settings, overwrite)
    if distributed:  # one plan for every rank, made before any rank writes
        box = [plan]
        dist.broadcast_object_list(box, src=0)
        plan = box[0]
    pending, blocked, refusal = plan
    if refusal is not None:
        where, counts, example, differences = json.loads(refusal)
        raise OutputsExist(where, counts, example, differences)
    if rank == 0 and pending:
        os.makedirs(os.path.join(out_dir, RECORDS_DIR, "images"), exist_ok=True)
        os.makedirs(os.path.join(out_dir, RECORDS_DIR, "runs"), exist_ok=True)
        run_file = os.path.join(out_dir, RECORDS_DIR, "runs", run + ".json")
        if _read_json(run_file) is None:
            _write_json(run_file, {"format": _RECORD_FORMAT, "run": run, "settings": settings})
    if distributed:
        dist.barrier()
    summary = ExplainSummary(skipped=len(paths) - len(pending) - len(blocked))

    def failed(path: str, message: str) -> None:
        summary.failures.append((path, message))
        (on_error or _warn)(path, message)

    if rank == 0:
        for path, message in blocked:
            failed(path, message)
    title = method_title(name) if isinstance(name, str) else str(name)
    stream = _explain(pending, explainer, texts_, method, preprocess, batch_size, num_workers,
                      failed, progress, distributed, method_options, max_pixels, sizes=True)
    try:
        for path, maps, facts in stream:
            reduced = tuple(facts["full_size"]) != tuple(maps.shape[-2:])
            try:
                _write_outputs(path, maps, facts, out_dir, save_maps, figures, texts_, title,
                               dpi, max_pixels, run)
            except Exception as exc:  # one image's failure is counted, never the run's end
                failed(path, _message(exc))
                continue
            finally:
                maps = None
            summary.done += 1
            summary.reduced += int(reduced)
    except KeyboardInterrupt:
        summary.failed = len(summary.failures)
        summary.seconds = time.perf_counter() - start
        raise ExplainInterrupted(summary) from None
    finally:
        stream.close()
    if distributed:
        parts: List[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (summary.done, summary.failures, summary.reduced))
        summary.done = sum(d for d, _, _ in parts)
        summary.failures = [f for _, fs, _ in parts for f in fs]
        summary.reduced = sum(r for _, _, r in parts)
    summary.failed = len(summary.failures)
    summary.seconds = time.perf_counter() - start
    return summary
