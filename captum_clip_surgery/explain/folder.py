r"""Explain many images: a streaming generator of maps and a resumable folder writer.

:func:`explain_images` streams image files through a ``DataLoader`` (decoding and
preprocessing in worker processes), explains each batch for every text in one
pass where the method allows it, and yields one image's maps at a time, resized
back to that image's own size: memory stays flat in the number of images.

:func:`explain_to_folder` writes ``stem.npy`` (the maps) and ``stem.png`` (a
figure) per image, skips images whose outputs already exist (so an interrupted
run resumes), reports unreadable images without stopping, and under ``torchrun``
splits the images over the ranks so that each image is written exactly once.
"""

from __future__ import annotations

import glob
import os
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

from captum_clip_surgery._validation import check_int
from captum_clip_surgery.apps.comparison import compare, plot_text_grid
from captum_clip_surgery.core.classifier import CLIPZeroShotClassifier
from captum_clip_surgery.core.maps import minmax_normalize, upsample
from captum_clip_surgery.core.text import validate_texts
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
    "ExplainSummary",
    "ImageFiles",
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
    r"""Image files, each read as RGB and preprocessed; unreadable files are
    returned as errors, not raised, so one bad file does not stop a loader.

    Args:
        paths (list[str]): image files.
        preprocess (Callable): PIL image → ``[3, H, W]`` tensor.

    Each item is a dict: ``index``, ``path``, ``image`` (the preprocessed tensor,
    or ``None``), ``size`` (the file's ``(H, W)``) and ``error`` (``None`` or a
    one-line message).
    """

    def __init__(self, paths: Sequence[str], preprocess: Callable[[Any], Tensor]) -> None:
        self.paths = list(paths)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        from PIL import Image

        path = self.paths[index]
        item: Dict[str, Any] = {"index": index, "path": path, "image": None, "size": None,
                                "error": None}
        try:
            with Image.open(path) as im:
                rgb = im.convert("RGB")
            item["size"] = (rgb.height, rgb.width)
            image = self.preprocess(rgb)
            if not isinstance(image, Tensor) or image.ndim != 3:
                raise TypeError("preprocess: expected a [3, H, W] tensor, got "
                                f"{type(image).__name__}")
            item["image"] = image
        except Exception as exc:  # corrupt, truncated, missing, unsupported: all reported
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            item["error"] = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        return item


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
) -> Iterator[Tuple[str, Tensor]]:
    r"""Explain image files for several texts, one image at a time.

    Images are read and preprocessed by a ``DataLoader`` (in ``num_workers``
    worker processes), explained in batches, and yielded one by one as
    ``(path, maps)``: ``maps`` is float32 ``[T, H, W]`` on the CPU, one map per
    text in order, in ``[0, 1]``, at the image file's own size ``H×W``. Nothing
    is kept once an image is yielded, so memory does not grow with the number of
    images.

    Token-map methods (CLIP Surgery, the raw similarity map, MaskCLIP, ...)
    score every text in one pass over the batch: the token-grid scores are
    min-max normalised per map and resized bilinearly straight to the image's
    size, as the CLIP Surgery release does. With CLIP Surgery's class-set
    feature surgery the texts are the class set (one text: empty-string
    surgery). Other methods (GradCAM, Integrated Gradients, ...) explain each
    (image, text) pair through :func:`~captum_clip_surgery.compare`; their texts
    must be among the classifier's.

    An image that cannot be read is skipped: ``on_error(path, message)`` is
    called (default: a warning). Under ``torchrun`` (an initialised process
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
    transform = preprocess or _default_preprocess(classifier)
    return _stream([os.fspath(p) for p in paths], classifier, name, spec, texts_, transform,
                   batch_size, num_workers, on_error, progress, bool(distributed))


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
) -> Iterator[Tuple[str, Tensor]]:
    from tqdm import tqdm

    report = on_error or _warn
    dataset = ImageFiles(paths, preprocess)
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
                batch = torch.stack([item["image"] for item in members])
                batch = batch.to(device, non_blocking=True)
                maps = _batch_maps(classifier, name, method, batch, texts)
                for k, item in enumerate(members):
                    bar.update(1)
                    # no local name for the yielded maps: once the caller drops them they are gone
                    yield item["path"], _resized(maps[k : k + 1], item["size"])
                del maps, batch
    finally:
        bar.close()


def _resized(maps: Tensor, size: Tuple[int, int]) -> Tensor:
    r"""``[1, T, h, w]`` → float32 ``[T, H, W]`` on the CPU, in ``[0, 1]``."""
    return upsample(maps, size)[0].clamp(0, 1).float().cpu()


@dataclass
class ExplainSummary:
    r"""What :func:`explain_to_folder` did (totals over every rank).

    Attributes:
        done (int): images explained and written.
        skipped (int): images whose outputs already existed.
        failed (int): images that could not be read.
        failures (list[tuple[str, str]]): ``(path, message)`` per failed image.
        seconds (float): wall time.
    """

    done: int = 0
    skipped: int = 0
    failed: int = 0
    failures: List[Tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def __str__(self) -> str:
        rate = self.done / self.seconds if self.seconds > 0 else 0.0
        return (f"done {self.done}, skipped {self.skipped} (already written), failed "
                f"{self.failed} in {self.seconds:.1f} s ({rate:.2f} images/s)")


def output_paths(path: str, out_dir: str, save_maps: bool, figures: bool) -> List[str]:
    r"""The files :func:`explain_to_folder` writes for one image."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return ([os.path.join(out_dir, stem + ".npy")] if save_maps else []) + (
        [os.path.join(out_dir, stem + ".png")] if figures else []
    )


def _replace_into(target: str, write: Callable[[Any], None]) -> None:
    r"""Write through a temporary file and rename it: an interrupted run never leaves a
    half-written output that a resumed run would take for finished."""
    folder, base = os.path.split(target)
    tmp = os.path.join(folder, f".{base}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _save_figure(path: str, maps: Tensor, texts: List[str], title: str, target: str,
                 dpi: int) -> None:
    from PIL import Image

    with Image.open(path) as im:
        image = im.convert("RGB")
    fig = plot_text_grid(image, {title: maps[:, None]}, texts)
    _replace_into(target, lambda fh: fig.savefig(fh, dpi=dpi, format="png"))


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
) -> ExplainSummary:
    r"""Explain image files and write the results into a folder, resumably.

    For each image ``stem.ext`` it writes ``out_dir/stem.npy`` (with
    ``save_maps``: the maps of :func:`explain_images`, float32 ``[T, H, W]`` at
    the image's own size, in ``[0, 1]``) and ``out_dir/stem.png`` (with
    ``figures``: the image and its map per text). Images whose outputs all exist
    are skipped, so rerunning an interrupted command finishes the job; outputs
    are written through a temporary file, so a half-written file never counts as
    done. Unreadable images are reported (``on_error``) and counted, never
    fatal. Under ``torchrun`` rank 0 decides which images are still to do, each
    rank explains and writes its own share, and the returned totals cover every
    rank.

    Args:
        images (str or list[str]): image files, or a folder / glob pattern.
        explainer (CLIPZeroShotClassifier or Attribution): see :func:`explain_images`.
        out_dir (str): output folder (created when missing).
        texts (list[str], optional): texts to explain (default the classifier's).
        method (str, optional): method name (default ``"surgery"``).
        save_maps (bool): write ``stem.npy``.
        figures (bool): write ``stem.png``.
        preprocess (Callable, optional): see :func:`explain_images`.
        batch_size (int): images per forward.
        num_workers (int): ``DataLoader`` worker processes.
        on_error (Callable, optional): ``on_error(path, message)`` per failed image
            (default: a warning).
        progress (bool): show a progress bar (rank 0).
        dpi (int): figure resolution.
        method_options (dict, optional): see :func:`explain_images`.

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
    paths = [os.fspath(p) for p in _paths(images)]
    seen: Dict[str, str] = {}
    for p in paths:
        stem = os.path.splitext(os.path.basename(p))[0]
        if stem in seen:
            raise ValueError(
                f"images: {seen[stem]} and {p} would both write {stem}.* into {out_dir}; "
                "rename one or explain them into different folders"
            )
        seen[stem] = p
    os.makedirs(out_dir, exist_ok=True)
    classifier, name, _ = _resolve(explainer, method)
    texts_ = list(classifier.texts) if texts is None else validate_texts(texts)

    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    pending: Optional[List[str]] = None
    if rank == 0:
        pending = [p for p in paths
                   if not all(os.path.exists(o) for o in output_paths(p, out_dir, save_maps, figures))]
    if distributed:  # one list for every rank, made before any rank writes
        box = [pending]
        dist.broadcast_object_list(box, src=0)
        pending = box[0]
    assert pending is not None
    summary = ExplainSummary(skipped=len(paths) - len(pending))

    def failed(path: str, message: str) -> None:
        summary.failures.append((path, message))
        (on_error or _warn)(path, message)

    title = method_title(name) if isinstance(name, str) else str(name)
    stream = explain_images(pending, explainer, texts_, method, preprocess, batch_size,
                            num_workers, failed, progress, distributed, method_options)
    for path, maps in stream:
        npy, png = (os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0] + ext)
                    for ext in (".npy", ".png"))
        if save_maps:
            array = maps.numpy().astype(np.float32, copy=False)
            _replace_into(npy, lambda fh, a=array: np.save(fh, a))
        if figures:
            try:
                _save_figure(path, maps, texts_, title, png, dpi)
            except OSError as exc:  # the file vanished or changed since it was read
                failed(path, f"{type(exc).__name__}: {exc}")
                continue
        summary.done += 1
    if distributed:
        parts: List[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (summary.done, summary.failures))
        summary.done = sum(d for d, _ in parts)
        summary.failures = [f for _, fs in parts for f in fs]
    summary.failed = len(summary.failures)
    summary.seconds = time.perf_counter() - start
    return summary
