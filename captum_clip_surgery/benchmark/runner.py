r"""The open-vocabulary segmentation benchmark: datasets × token-map methods under a protocol.

:func:`segmentation_benchmark` streams a dataset through a ``DataLoader`` (images decoded
and resized as the protocol reads them, in worker processes), segments each batch with
every method (:class:`~captum_clip_surgery.benchmark.inference.ProtocolSegmenter`: the
windows of several images in one forward), and sums mmsegmentation's confusion counts
(:mod:`~captum_clip_surgery.benchmark.metrics`). With a ``state_dir`` each image's counts
are appended to a per-(dataset, method, setting) file as soon as they are known, so an
interrupted run continues where it stopped; with ``save_predictions`` each prediction is
written as ``<dir>/<method>/<image id>.png``. Under ``torchrun`` each rank takes a share
of the images and the counts are summed over the ranks.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from captum_clip_surgery._validation import check_bool, check_int
from captum_clip_surgery.benchmark.datasets import (
    BENCHMARK_DATASETS,
    LAYOUTS,
    DatasetLayout,
    ScenesBenchmarkDataset,
    SegmentationFiles,
    class_file_path,
    read_class_file,
)
from captum_clip_surgery.benchmark.inference import ProtocolSegmenter
from captum_clip_surgery.benchmark.inputs import (
    IGNORE_INDEX,
    normalize_image,
    rescale_image,
)
from captum_clip_surgery.benchmark.metrics import ConfusionMatrix
from captum_clip_surgery.benchmark.presets import Preset, ProtocolSettings, get_preset
from captum_clip_surgery.core.classifier import CLIPZeroShotClassifier
from captum_clip_surgery.methods.base import TokenMapAttribution
from captum_clip_surgery.methods.registry import (
    build_method,
    get_method,
    method_defaults,
    method_names,
    method_title,
)

__all__ = [
    "BenchmarkResult",
    "DatasetResult",
    "MethodScores",
    "protocol_templates",
    "segmentation_benchmark",
]

#: The eight datasets of ``dataset="all"``, in the published tables' order.
TABLE_DATASETS: Tuple[str, ...] = tuple(LAYOUTS)


def protocol_templates(name: str) -> Tuple[str, ...]:
    r"""The prompt templates of a preset (``"openai_imagenet"``: CLIP's 80 ImageNet
    templates, the list all four repositories use)."""
    from captum_clip_surgery.adapters._common import openai_imagenet_templates

    if name != "openai_imagenet":
        raise ValueError(f"templates: expected 'openai_imagenet', got {name!r}")
    return openai_imagenet_templates()


# --- results ------------------------------------------------------------------------------


@dataclass
class MethodScores:
    r"""One method's numbers on one dataset.

    Attributes:
        method (str): the registry name.
        title (str): its display title.
        metrics (dict): :func:`~captum_clip_surgery.benchmark.metrics.segmentation_metrics`
            (fractions).
        images (int): images scored.
        seconds (float): the method's own time (forwards, windows, post-processing; data
            loading excluded), summed over images and ranks.
        confusion (Tensor): the summed ``[C + 1, C]`` counts.
    """

    method: str
    title: str
    metrics: Dict[str, Any]
    images: int
    seconds: float
    confusion: Tensor

    @property
    def images_per_second(self) -> float:
        r"""Images per second of the method's own time (per device)."""
        return self.images / self.seconds if self.seconds > 0 else math.nan


@dataclass
class DatasetResult:
    r"""Every method on one dataset under one protocol.

    Attributes:
        dataset (str): the dataset's name.
        title (str): its name in tables.
        settings (ProtocolSettings): the protocol.
        class_names (list[str]): a name per class (the class file's first query; the
            background line is called ``background``).
        scores (list[MethodScores]): per method, in order.
    """

    dataset: str
    title: str
    settings: ProtocolSettings
    class_names: List[str]
    scores: List[MethodScores]

    def score(self, method: str) -> MethodScores:
        r"""The scores of one method."""
        for s in self.scores:
            if s.method == method:
                return s
        raise KeyError(method)

    def to_markdown(self) -> str:
        r"""The summary, per-class IoU and settings tables (percentages, 2 decimals)."""
        lines = [f"### {self.title} — preset `{self.settings.preset}` "
                 f"({self.settings.source})", "",
                 "| method | mIoU | aAcc | mAcc | images | images/s |",
                 "|---|---:|---:|---:|---:|---:|"]
        for s in self.scores:
            m = s.metrics
            lines.append(f"| {s.title} | {_pct(m['mIoU'])} | {_pct(m['aAcc'])} | "
                         f"{_pct(m['mAcc'])} | {s.images} | {s.images_per_second:.2f} |")
        lines += ["", "IoU per class (%):", "",
                  "| class | " + " | ".join(s.title for s in self.scores) + " |",
                  "|---|" + "---:|" * len(self.scores)]
        for c, name in enumerate(self.class_names):
            lines.append(f"| {name} | " + " | ".join(_pct(s.metrics["IoU"][c])
                                                      for s in self.scores) + " |")
        lines += ["", "Settings (* overridden):", "", "| setting | value |", "|---|---|"]
        for key, value in self.settings.describe().items():
            lines.append(f"| {key} | {value} |")
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        r"""One row per method: the numbers (percentages) and the per-class IoU."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["dataset", "preset", "method", "mIoU", "aAcc", "mAcc", "images",
                    "images_per_s"] + [f"IoU:{n}" for n in self.class_names])
        for s in self.scores:
            m = s.metrics
            w.writerow([self.dataset, self.settings.preset, s.method, _pct(m["mIoU"]),
                        _pct(m["aAcc"]), _pct(m["mAcc"]), s.images,
                        f"{s.images_per_second:.3f}"] + [_pct(v) for v in m["IoU"]])
        return buf.getvalue()


@dataclass
class BenchmarkResult:
    r"""The benchmark's numbers: one :class:`DatasetResult` per dataset.

    Attributes:
        datasets (list[DatasetResult]): in order.
        methods (list[str]): the methods run.
        preset (str): the preset's name.
        seconds (float): wall time of the call.
    """

    datasets: List[DatasetResult]
    methods: List[str]
    preset: str
    seconds: float = 0.0
    notes: List[str] = field(default_factory=list)

    def __getitem__(self, dataset: str) -> DatasetResult:
        for d in self.datasets:
            if d.dataset == dataset:
                return d
        raise KeyError(dataset)

    def miou(self, method: str, dataset: Optional[str] = None) -> float:
        r"""A method's mIoU (fraction) on a dataset (default the only / first one)."""
        d = self.datasets[0] if dataset is None else self[dataset]
        return float(d.score(method).metrics["mIoU"])

    def summary_markdown(self) -> str:
        r"""mIoU (%) per method and dataset, with the average over the datasets."""
        names = [d.title for d in self.datasets]
        lines = ["| method | " + " | ".join(names) + " | Avg |",
                 "|---|" + "---:|" * (len(names) + 1)]
        for method in self.methods:
            values = [d.score(method).metrics["mIoU"] for d in self.datasets]
            avg = float(np.mean(values)) if values else math.nan
            lines.append(f"| {method_title(method)} | " + " | ".join(_pct(v) for v in values)
                         + f" | {_pct(avg)} |")
        return "\n".join(lines) + "\n"

    def summary_csv(self) -> str:
        r"""The summary as CSV (percentages)."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["method"] + [d.dataset for d in self.datasets] + ["avg"])
        for method in self.methods:
            values = [d.score(method).metrics["mIoU"] for d in self.datasets]
            w.writerow([method] + [_pct(v) for v in values] + [_pct(float(np.mean(values)))])
        return buf.getvalue()

    def to_markdown(self) -> str:
        r"""Every dataset's tables (and the summary when there are several)."""
        parts = []
        if len(self.datasets) > 1:
            parts.append(f"### mIoU (%) — preset `{self.preset}`\n\n" + self.summary_markdown())
        parts += [d.to_markdown() for d in self.datasets]
        return "\n".join(parts)

    def write(self, out_dir: str) -> List[str]:
        r"""Write ``<dataset>.md`` / ``<dataset>.csv`` per dataset (and ``summary.md`` /
        ``summary.csv`` for several) into ``out_dir``; returns the paths."""
        os.makedirs(out_dir, exist_ok=True)
        written = []
        files = [(f"{d.dataset}.md", d.to_markdown()) for d in self.datasets]
        files += [(f"{d.dataset}.csv", d.to_csv()) for d in self.datasets]
        if len(self.datasets) > 1:
            files += [("summary.md", self.summary_markdown()), ("summary.csv", self.summary_csv())]
        for name, text in files:
            path = os.path.join(out_dir, name)
            _atomic_write(path, text.encode("utf-8"))
            written.append(path)
        return written


def _pct(value: float) -> str:
    return "nan" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def _atomic_write(path: str, data: bytes) -> None:
    r"""Write through a temporary file and rename: a file is whole or absent."""
    tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# --- inputs -------------------------------------------------------------------------------


class _ProtocolInputs(Dataset):
    r"""Items of a base dataset as the network reads them (in ``DataLoader`` workers)."""

    def __init__(self, base: Dataset, indices: Sequence[int], settings: ProtocolSettings) -> None:
        self.base = base
        self.indices = list(indices)
        self.short_side = settings.short_side
        self.long_side = settings.long_side
        self.mean = settings.mean
        self.std = settings.std

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        item = self.base[self.indices[i]]
        image = rescale_image(item["image"], self.short_side, self.long_side)
        label = torch.from_numpy(np.ascontiguousarray(item["label"]))
        return {"id": item["id"], "image": normalize_image(image, self.mean, self.std),
                "label": label, "size": (int(label.shape[0]), int(label.shape[1]))}


def _keep(items: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return items


# --- per-image state (resume) ---------------------------------------------------------------


def model_digest(model: nn.Module) -> str:
    r"""A short digest of a model's weights (a strided sample of every tensor), so that
    stored results of another model are never taken for this one's."""
    h = hashlib.blake2b(digest_size=8)
    for name, t in sorted(model.state_dict().items()):
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // 1024)
        sample = flat[::step][:1024].float().cpu().numpy()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(sample.tobytes())
    return h.hexdigest()


class _StateFile:
    r"""Per-image results of one (dataset, method, setting), one JSON line per image.

    A line is written whole and flushed once an image's prediction is known; a partial
    last line (an interrupted write) is dropped when the file is read again."""

    def __init__(self, folder: str, stem: str, rank: int) -> None:
        self.folder = folder
        self.stem = stem
        self.path = os.path.join(folder, f"{stem}.rank{rank}.jsonl")
        self.fh: Optional[Any] = None

    def load(self) -> Dict[str, Tuple[List[List[int]], float]]:
        r"""Every stored image of every rank's file: ``{id: (sparse counts, seconds)}``."""
        done: Dict[str, Tuple[List[List[int]], float]] = {}
        if not os.path.isdir(self.folder):
            return done
        for name in sorted(os.listdir(self.folder)):
            if not (name.startswith(self.stem + ".rank") and name.endswith(".jsonl")):
                continue
            with open(os.path.join(self.folder, name), encoding="utf-8") as fh:
                for line in fh:
                    if not line.endswith("\n"):
                        break  # a partial last line
                    try:
                        rec = json.loads(line)
                        done[str(rec["id"])] = (rec["counts"], float(rec["seconds"]))
                    except (ValueError, KeyError, TypeError):
                        continue
        return done

    def open(self) -> None:
        os.makedirs(self.folder, exist_ok=True)
        if os.path.exists(self.path):  # drop a partial last line before appending
            with open(self.path, "rb+") as fh:
                data = fh.read()
                if data and not data.endswith(b"\n"):
                    fh.truncate(data.rfind(b"\n") + 1)
        self.fh = open(self.path, "a", encoding="utf-8")

    def append(self, image_id: str, counts: List[List[int]], seconds: float) -> None:
        assert self.fh is not None
        self.fh.write(json.dumps({"id": image_id, "counts": counts, "seconds": seconds}) + "\n")
        self.fh.flush()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


def _sparse(counts: Tensor) -> List[List[int]]:
    nz = torch.nonzero(counts)
    return [[int(i), int(j), int(counts[i, j])] for i, j in nz.tolist()]


def _dense(sparse: List[List[int]], num_classes: int) -> Tensor:
    m = torch.zeros(num_classes + 1, num_classes, dtype=torch.long)
    for i, j, n in sparse:
        m[i, j] += n
    return m


# --- the benchmark ------------------------------------------------------------------------


def _method_list(methods: Any, settings: ProtocolSettings) -> List[str]:
    if methods is None:
        names = [settings.method]
        default = True
    else:
        if isinstance(methods, str):
            names = [m.strip() for m in methods.split(",") if m.strip()]
        else:
            names = list(methods)
        default = False
        if not names:
            raise ValueError("methods: expected at least one method name")
    names = list(dict.fromkeys(names))
    token = method_names(kind="token")
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"methods: expected method names, got {type(name).__name__}")
        if name not in method_names():
            if default:
                raise ValueError(
                    f"methods: the {settings.preset!r} preset's method {name!r} is not registered "
                    f"(not installed with this version); name token-map methods instead, e.g. "
                    f"methods=[...] / --methods with some of {', '.join(token)}"
                )
            get_method(name)  # the registry's error: unknown name, the known ones listed
        if name not in token:
            raise ValueError(
                f"methods: {name!r} is a {get_method(name).kind!r} method; the benchmark takes "
                f"token-map methods: {', '.join(token)}"
            )
    return names


def _classes(
    classes: Any, settings: ProtocolSettings, layout: DatasetLayout, base: Dataset
) -> Tuple[List[List[str]], List[str]]:
    r"""The class lines (queries per class) and the display names."""
    if classes is not None:
        if isinstance(classes, (str, os.PathLike)):
            lines = read_class_file(os.fspath(classes), settings.synonym_separator)
        else:
            lines = [[q] if isinstance(q, str) else list(q) for q in classes]
            if not lines or any(not line or not all(isinstance(q, str) and q for q in line)
                                for line in lines):
                raise ValueError("classes: expected a class-name file or a list of classes "
                                 "(each a name or a list of synonyms)")
    elif isinstance(base, ScenesBenchmarkDataset):
        lines = base.class_lines()
    elif not settings.class_file:
        raise ValueError(f"classes: required for the {layout.title!r} dataset (a class-name file)")
    else:
        lines = read_class_file(class_file_path(settings.class_source, settings.class_file),
                                settings.synonym_separator)
    if layout.num_classes is not None and len(lines) != layout.num_classes:
        raise ValueError(
            f"classes: {len(lines)} classes given, but {layout.title} has {layout.num_classes}"
        )
    names = [line[0].strip() for line in lines]
    if layout.background:
        names[0] = "background"
    return lines, names


def _base_dataset(
    dataset: Any, root: Optional[str], img_suffix: Optional[str], scenes_size: int
) -> Tuple[str, DatasetLayout, Dataset]:
    if isinstance(dataset, DatasetLayout):
        if root is None:
            raise ValueError(f"root: required for the {dataset.title!r} layout")
        return "custom", dataset, SegmentationFiles(dataset, root, img_suffix)
    if dataset == "scenes":
        base = ScenesBenchmarkDataset(size=scenes_size)
        return "scenes", base.layout, base
    if not isinstance(dataset, str) or dataset not in LAYOUTS:
        raise ValueError(
            f"dataset: expected one of {', '.join(BENCHMARK_DATASETS)}, 'all' or a "
            f"DatasetLayout, got {dataset!r}"
        )
    if root is None:
        raise ValueError(f"root: required for dataset {dataset!r} (its folder, or a data "
                         "folder holding it)")
    files = SegmentationFiles(LAYOUTS[dataset], root, img_suffix)
    return dataset, files.layout, files


def _distributed(distributed: Optional[bool]) -> bool:
    available = dist.is_available() and dist.is_initialized()
    if distributed is None:
        return available
    check_bool("distributed", distributed)
    if distributed and not available:
        raise ValueError("distributed: True needs an initialised default process group")
    return distributed


def segmentation_benchmark(
    model: nn.Module,
    dataset: Union[str, DatasetLayout] = "scenes",
    root: Optional[str] = None,
    preset: Union[str, Preset] = "sclip",
    methods: Optional[Union[str, Sequence[str]]] = None,
    save_predictions: Optional[str] = None,
    *,
    tokenizer: Optional[Callable[..., Any]] = None,
    classes: Optional[Union[str, Sequence[Any]]] = None,
    img_suffix: Optional[str] = None,
    overrides: Optional[Mapping[str, Any]] = None,
    limit: Optional[int] = None,
    batch_size: int = 8,
    window_batch: Optional[int] = None,
    num_workers: int = 0,
    state_dir: Optional[str] = None,
    progress: bool = False,
    distributed: Optional[bool] = None,
    scenes_size: int = 200,
    method_options: Optional[Mapping[str, Mapping[str, Any]]] = None,
    refine_backbone: Any = None,
) -> BenchmarkResult:
    r"""mIoU, aAcc and per-class IoU of token-map methods on the open-vocabulary
    segmentation benchmark, under a published protocol.

    Each image is read and resized as the protocol reads it
    (:mod:`~captum_clip_surgery.benchmark.inputs`), segmented by every method with the
    preset's windows, padding, templates, synonyms, logit scale, thresholds and PAMR
    (:class:`~captum_clip_surgery.benchmark.inference.ProtocolSegmenter`, the windows of
    ``batch_size`` images in one forward), and scored at its original size with
    mmsegmentation's definitions (:mod:`~captum_clip_surgery.benchmark.metrics`).

    Args:
        model (nn.Module): a CLIP model of a supported family (the protocol's: OpenAI
            ViT-B/16), not changed.
        dataset (str or DatasetLayout): ``"voc20"``, ``"voc21"``, ``"context59"``,
            ``"context60"``, ``"coco_object"``, ``"coco_stuff"``, ``"cityscapes"``,
            ``"ade20k"``, ``"all"`` (those eight, ``root`` the data folder holding them),
            ``"scenes"`` (the package's scenes world, no files), or a
            :class:`~captum_clip_surgery.benchmark.DatasetLayout` of your own (with
            ``classes``).
        root (str, optional): the dataset's folder, or a folder holding it
            (mmsegmentation's ``data/``; for VOC also torchvision's root).
        preset (str or Preset): ``"sclip"``, ``"clearclip"``, ``"naclip"`` or
            ``"proxyclip"`` (:data:`~captum_clip_surgery.benchmark.PRESETS`).
        methods (str or list[str], optional): token-map methods of the registry; default
            the preset's own method.
        save_predictions (str, optional): write ``<dir>/<method>/<image id>.png`` (class
            indices; 255 where the label is ignored).
        tokenizer (Callable, optional): the model's tokenizer (default its family's).
        classes (str or list, optional): a class-name file in the protocol's format (one
            class per line, synonyms separated by the preset's separator, the background
            line first where the dataset has one), or a list of classes (a name or a list
            of synonyms each); replaces the preset's file.
        img_suffix (str, optional): the image files' suffix (default the layout's).
        overrides (dict, optional): protocol settings to change, e.g.
            ``{"prob_thd": 0.2, "pamr_steps": 0}`` (see
            :data:`~captum_clip_surgery.benchmark.PRESET_FIELDS`).
        limit (int, optional): the first ``limit`` images only.
        batch_size (int): images whose windows share forwards.
        window_batch (int, optional): at most this many windows per forward (default 8 on
            the CPU, 64 elsewhere: :func:`~captum_clip_surgery.benchmark.inference.default_window_batch`).
        num_workers (int): ``DataLoader`` worker processes reading images.
        state_dir (str, optional): keep each image's counts there and skip images already
            stored for the same model, dataset, classes, method and settings (resume).
        progress (bool): a progress bar (rank 0).
        distributed (bool, optional): split the images over the ranks of the default
            process group (default: when one is initialised).
        scenes_size (int): the number of scenes of ``dataset="scenes"`` (before ``limit``).
        method_options (dict, optional): ``{method: constructor keyword arguments}``,
            merged over the preset's own (:attr:`~captum_clip_surgery.benchmark.Preset.method_options`:
            ``proxyclip`` runs ``empty_rows="nan"``, as its release does); yours win per
            argument, e.g. ``{"proxyclip": {"empty_rows": "largest"}}``. The tables' settings
            show the options each method ran with; a method named here must be among
            ``methods``.
        refine_backbone (optional): the graph backbone of the LPOSS refinement
            (``overrides={"refine": "lposs+"}``); default each method's own second
            backbone, else the model's image tower.

    Returns:
        BenchmarkResult: per dataset and method the metrics, images/s and counts.

    Examples::

        >>> import open_clip
        >>> model = open_clip.create_model("ViT-B-16", pretrained="openai").eval()
        >>> result = segmentation_benchmark(model, "voc21", "data", preset="naclip",
        ...                                 methods=["naclip", "sclip"])
        >>> print(result.to_markdown())
    """
    start = time.perf_counter()
    check_int("batch_size", batch_size, minimum=1)
    if window_batch is not None:
        check_int("window_batch", window_batch, minimum=1)
    check_int("num_workers", num_workers, minimum=0)
    check_int("scenes_size", scenes_size, minimum=1)
    if limit is not None:
        check_int("limit", limit, minimum=1)
    check_bool("progress", progress)
    chosen = get_preset(preset)
    if overrides is not None and not isinstance(overrides, Mapping):
        raise TypeError(f"overrides: expected a dict, got {type(overrides).__name__}")
    if dataset == "all":
        names: List[Any] = list(TABLE_DATASETS)
        if classes is not None:
            raise ValueError("classes: give one dataset (not 'all') with a class-name file")
    else:
        names = [dataset]
    is_distributed = _distributed(distributed)
    results = []
    method_list: List[str] = []
    for name in names:
        key, layout, base = _base_dataset(name, root, img_suffix, scenes_size)
        settings = chosen.settings(key)
        if overrides:
            settings = settings.replace(**dict(overrides))
        method_list = _method_list(methods, settings)
        settings = settings.with_method_options(method_options)
        stray = [m for m in (method_options or {}) if m not in method_list]
        if stray:
            raise ValueError(
                f"method_options: options for {', '.join(map(repr, stray))}, which is not "
                f"among the methods run ({', '.join(method_list)})"
            )
        results.append(_run_dataset(
            model, key, layout, base, settings, method_list, tokenizer, classes,
            save_predictions, limit, batch_size, window_batch, num_workers, state_dir,
            progress, is_distributed, method_options or {}, refine_backbone,
        ))
    return BenchmarkResult(results, method_list, chosen.name, time.perf_counter() - start)


def _run_dataset(
    model: nn.Module,
    key: str,
    layout: DatasetLayout,
    base: Dataset,
    settings: ProtocolSettings,
    methods: List[str],
    tokenizer: Any,
    classes: Any,
    save_predictions: Optional[str],
    limit: Optional[int],
    batch_size: int,
    window_batch: Optional[int],
    num_workers: int,
    state_dir: Optional[str],
    progress: bool,
    distributed: bool,
    method_options: Mapping[str, Mapping[str, Any]],
    refine_backbone: Any = None,
) -> DatasetResult:
    from tqdm import tqdm

    lines, class_names = _classes(classes, settings, layout, base)
    queries = [q for line in lines for q in line]
    # the releases encode every prompt over the full context: so do we (bit-identical text
    # features; truncating at the EOT is exact only up to float rounding)
    clf = CLIPZeroShotClassifier(model, queries, templates=protocol_templates(settings.templates),
                                 tokenizer=tokenizer, truncate_text=False)
    patch = clf.adapter.image.patch_size
    probe = torch.zeros(1, 3, *(patch if isinstance(patch, tuple) else (patch, patch)))
    segmenters: Dict[str, ProtocolSegmenter] = {}
    for m in methods:
        options = settings.options_for(m)
        try:
            obj = build_method(m, clf, **options)
        except (TypeError, ValueError) as exc:
            if not method_options.get(m):  # the preset's own options are valid
                raise
            kind = TypeError if isinstance(exc, TypeError) else ValueError
            raise kind(f"method_options: {m}: {exc}") from None
        if not isinstance(obj, TokenMapAttribution):
            raise ValueError(f"methods: {m!r} is not a token-map method")
        mode = method_defaults(m, clf, probe).get("feature_surgery")
        segmenters[m] = ProtocolSegmenter(obj, lines, settings, mode, window_batch,
                                          refine_backbone)
    ids: List[str] = list(base.ids)
    count = len(ids) if limit is None else min(limit, len(ids))
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    c = len(lines)

    stores: Dict[str, _StateFile] = {}
    stored: Dict[str, Dict[str, Tuple[List[List[int]], float]]] = {m: {} for m in methods}
    if state_dir is not None:
        digest = model_digest(model)
        for m in methods:
            fingerprint = hashlib.blake2b(json.dumps({
                "dataset": key, "root": getattr(base, "root", ""), "classes": lines,
                "method": m, "options": sorted(
                    (k, model_digest(v) if isinstance(v, nn.Module) else repr(v))
                    for k, v in settings.options_for(m).items()),
                # the options are the method's own above (the preset's merged with the
                # caller's), not every method's
                "settings": {k: repr(getattr(settings, k)) for k in settings.describe()
                             if k != "method_options"},
                "model": digest,
                "refine_backbone": None if refine_backbone is None else (
                    model_digest(refine_backbone) if isinstance(refine_backbone, nn.Module)
                    else repr(refine_backbone)),
            }, sort_keys=True).encode(), digest_size=6).hexdigest()
            stores[m] = _StateFile(os.path.join(state_dir, key), f"{m}.{fingerprint}", rank)
            stored[m] = stores[m].load() if rank == 0 else {}
    wanted = set(ids[:count])
    done_before = {m: {k: v for k, v in stored[m].items() if k in wanted} for m in methods}
    box: List[Any] = [[i for i in range(count) if any(ids[i] not in done_before[m]
                                                      for m in methods)],
                      {m: sorted(done_before[m]) for m in methods}]
    if distributed:  # one plan for every rank, made before any rank writes
        dist.broadcast_object_list(box, src=0)
    pending: List[int] = box[0]
    skip = {m: set(box[1][m]) for m in methods}

    matrices = {m: ConfusionMatrix(c, IGNORE_INDEX) for m in methods}
    seconds = {m: 0.0 for m in methods}
    images = {m: 0 for m in methods}
    if rank == 0:
        for m in methods:
            for counts, secs in done_before[m].values():
                matrices[m].add(_dense(counts, c))
                seconds[m] += secs
                images[m] += 1
    share = pending[rank::world]
    loader = DataLoader(_ProtocolInputs(base, share, settings), batch_size=batch_size,
                        shuffle=False, num_workers=num_workers, collate_fn=_keep)
    device = clf.adapter.device
    with torch.no_grad():
        clf.encode_texts(queries)  # encode (and cache) before the first batch
    bar = tqdm(total=len(pending), desc=layout.title, unit="img", dynamic_ncols=True,
               disable=not progress or rank != 0)
    for store in stores.values():
        store.open()
    try:
        for items in loader:
            for m in methods:
                todo = [it for it in items if it["id"] not in skip[m]]
                if not todo:
                    continue
                t0 = time.perf_counter()
                labels = segmenters[m].predict([it["image"] for it in todo],
                                               [it["size"] for it in todo])
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                dt = time.perf_counter() - t0
                seconds[m] += dt
                images[m] += len(todo)
                for it, lab in zip(todo, labels):
                    lab = lab.cpu()
                    counts = matrices[m].update(lab, it["label"])
                    if save_predictions is not None:
                        _save_prediction(save_predictions, m, it["id"], lab, it["label"])
                    if m in stores:
                        stores[m].append(it["id"], _sparse(counts), dt / len(todo))
            bar.update(len(items) * (world if distributed else 1))
    finally:
        bar.close()
        for store in stores.values():
            store.close()
    scores = []
    for m in methods:
        if distributed:
            matrices[m].all_reduce(device if device.type == "cuda" else None)
            totals = torch.tensor([seconds[m], float(images[m])], dtype=torch.float64,
                                  device=device if device.type == "cuda" else "cpu")
            dist.all_reduce(totals)
            seconds[m], images[m] = float(totals[0]), int(totals[1])
        scores.append(MethodScores(m, method_title(m), matrices[m].metrics(), images[m],
                                   seconds[m], matrices[m].matrix.clone()))
    return DatasetResult(key, layout.title, settings, class_names, scores)


def _save_prediction(folder: str, method: str, image_id: str, labels: Tensor, truth: Tensor) -> None:
    r"""``<folder>/<method>/<id>.png``: class indices, 255 where the label is ignored."""
    from PIL import Image

    array = labels.to(torch.uint8).numpy().copy()
    array[truth.numpy() == IGNORE_INDEX] = IGNORE_INDEX
    path = os.path.join(folder, method, image_id + ".png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    _atomic_write(path, buf.getvalue())


def iter_predictions(folder: str, method: str) -> Iterator[Tuple[str, np.ndarray]]:
    r"""``(image id, labels)`` of predictions saved by ``save_predictions``."""
    from PIL import Image

    base = os.path.join(folder, method)
    for dirpath, _, files in os.walk(base):
        for name in sorted(files):
            if name.endswith(".png") and not name.startswith("."):
                path = os.path.join(dirpath, name)
                with Image.open(path) as im:
                    yield os.path.relpath(path, base)[: -len(".png")], np.array(im)
