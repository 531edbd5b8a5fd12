r"""The eight datasets of the open-vocabulary segmentation table, in the folder layouts the
protocol reads (mmsegmentation's), the scenes world as a ninth, and the class-name files.

=============  ========================================================  ==================
dataset        layout under its root (images / labels, split)             labels
=============  ========================================================  ==================
voc20          ``JPEGImages/*.jpg`` / ``SegmentationClass/*.png``,        0 (background)
               ``ImageSets/Segmentation/val.txt`` (VOC2012)               ignored, 1..20 →
                                                                          0..19
voc21          the same                                                   0 = background
context59      ``JPEGImages`` / ``SegmentationClassContext``,             0 ignored, 1..59 →
               ``ImageSets/SegmentationContext/val.txt`` (VOC2010)        0..58
context60      the same                                                   0 = background
coco_object    ``images/val2017/*.jpg`` /                                 0 = background
               ``annotations/val2017/*_instanceTrainIds.png``
               (:func:`convert_coco_object`)
coco_stuff     ``images/val2017/*.jpg`` /                                 0..170
               ``annotations/val2017/*_labelTrainIds.png``
cityscapes     ``leftImg8bit/val/**/*_leftImg8bit.png`` /                 train ids 0..18
               ``gtFine/val/**/*_gtFine_labelTrainIds.png``
ade20k         ``images/validation/*.jpg`` / ``annotations/validation``   0 ignored, 1..150
               (ADEChallengeData2016)                                     → 0..149
=============  ========================================================  ==================

255 is ignored everywhere. A dataset's root is its own folder (e.g. ``VOC2012``) or a
folder holding it as mmsegmentation's ``data/`` does (``VOCdevkit/VOC2012``,
``VOCdevkit/VOC2010``, ``coco_stuff164k``, ``cityscapes``, ``ade/ADEChallengeData2016``);
torchvision's VOC root (the folder holding ``VOCdevkit``) works too. Without a split file
the images are every file with the image suffix under the image folder (recursively,
hidden files left out), sorted by path, as mmsegmentation scans them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from torch.utils.data import Dataset

from captum_clip_surgery.benchmark.inputs import read_image, read_label

__all__ = [
    "BENCHMARK_DATASETS",
    "DatasetLayout",
    "LAYOUTS",
    "ScenesBenchmarkDataset",
    "SegmentationFiles",
    "class_file_path",
    "convert_coco_object",
    "parse_class_lines",
    "read_class_file",
    "resolve_root",
]

_HERE = os.path.dirname(os.path.abspath(__file__))
_CLASSNAMES = os.path.join(_HERE, "classnames")


@dataclass(frozen=True)
class DatasetLayout:
    r"""Where a dataset's files are and how its labels read.

    Attributes:
        name (str): the dataset's name (``"voc20"``, ...).
        title (str): its name in tables (``"VOC20"``).
        img_dir (str): image folder, relative to the root.
        ann_dir (str): label folder, relative to the root.
        img_suffix (str): the image files' suffix (``".jpg"``).
        seg_map_suffix (str): the label files' suffix (``".png"``).
        split (str, optional): a file of image names (one per line, without suffix),
            relative to the root; ``None``: every image under ``img_dir``.
        reduce_zero_label (bool): label 0 is ignored and ``k`` becomes ``k - 1``.
        num_classes (int, optional): the number of classes (``None``: the class file's
            line count).
        background (bool): class 0 is a background class (the target of ``prob_thd``).
        roots (tuple[str, ...]): sub-folders of a data folder that may hold the dataset.
    """

    name: str
    title: str
    img_dir: str
    ann_dir: str
    img_suffix: str
    seg_map_suffix: str
    split: Optional[str]
    reduce_zero_label: bool
    num_classes: Optional[int]
    background: bool
    roots: Tuple[str, ...] = ("",)

    def with_suffix(self, img_suffix: Optional[str] = None,
                    seg_map_suffix: Optional[str] = None) -> DatasetLayout:
        r"""The layout with other file suffixes (``None`` keeps one)."""
        for name, value in (("img_suffix", img_suffix), ("seg_map_suffix", seg_map_suffix)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name}: expected a non-empty string, got {value!r}")
        return replace(self, img_suffix=img_suffix or self.img_suffix,
                       seg_map_suffix=seg_map_suffix or self.seg_map_suffix)


_VOC12 = ("", "VOCdevkit/VOC2012", "VOC2012")
_VOC10 = ("", "VOCdevkit/VOC2010", "VOC2010")
_COCO = ("", "coco_stuff164k")

#: The eight datasets of the table (sources: ``docs`` of the module and
#: ``BENCHMARK-PROTOCOL.md`` §2; SCLIP's ``custom_datasets.py`` and mmsegmentation 1.1.1).
LAYOUTS: Dict[str, DatasetLayout] = {
    # S:custom_datasets.py:8-39 PascalVOC20Dataset: reduce_zero_label=True
    "voc20": DatasetLayout("voc20", "VOC20", "JPEGImages", "SegmentationClass", ".jpg", ".png",
                           "ImageSets/Segmentation/val.txt", True, 20, False, _VOC12),
    # mmseg datasets/voc.py PascalVOCDataset: 0 = background, 255 = void
    "voc21": DatasetLayout("voc21", "VOC21", "JPEGImages", "SegmentationClass", ".jpg", ".png",
                           "ImageSets/Segmentation/val.txt", False, 21, True, _VOC12),
    # S:custom_datasets.py:119-159 PascalContext59Dataset: reduce_zero_label=True
    "context59": DatasetLayout("context59", "Context59", "JPEGImages", "SegmentationClassContext",
                               ".jpg", ".png", "ImageSets/SegmentationContext/val.txt", True, 59,
                               False, _VOC10),
    # S:custom_datasets.py:77-116 PascalContext60Dataset: reduce_zero_label=False
    "context60": DatasetLayout("context60", "Context60", "JPEGImages", "SegmentationClassContext",
                               ".jpg", ".png", "ImageSets/SegmentationContext/val.txt", False, 60,
                               True, _VOC10),
    # S:custom_datasets.py:41-75 COCOObjectDataset
    "coco_object": DatasetLayout("coco_object", "COCO-Object", "images/val2017",
                                 "annotations/val2017", ".jpg", "_instanceTrainIds.png", None,
                                 False, 81, True, _COCO),
    # mmseg datasets/coco_stuff.py COCOStuffDataset
    "coco_stuff": DatasetLayout("coco_stuff", "COCO-Stuff", "images/val2017",
                                "annotations/val2017", ".jpg", "_labelTrainIds.png", None, False,
                                171, False, _COCO),
    # mmseg datasets/cityscapes.py CityscapesDataset
    "cityscapes": DatasetLayout("cityscapes", "Cityscapes", "leftImg8bit/val", "gtFine/val",
                                "_leftImg8bit.png", "_gtFine_labelTrainIds.png", None, False, 19,
                                False, ("", "cityscapes")),
    # mmseg datasets/ade.py ADE20KDataset: reduce_zero_label=True
    "ade20k": DatasetLayout("ade20k", "ADE20k", "images/validation", "annotations/validation",
                            ".jpg", ".png", None, True, 150, False,
                            ("", "ade/ADEChallengeData2016", "ADEChallengeData2016")),
}

#: The eight datasets in the order of the published tables, then ``"scenes"``.
BENCHMARK_DATASETS: Tuple[str, ...] = tuple(LAYOUTS) + ("scenes",)


def class_file_path(source: str, file: str) -> str:
    r"""The path of a class-name file shipped with the package.

    Args:
        source (str): ``"sclip"`` (SCLIP's and NACLIP's files), ``"clearclip"`` or
            ``"proxyclip"``.
        file (str): e.g. ``"voc21.txt"``.

    Returns:
        str: the path.
    """
    path = os.path.join(_CLASSNAMES, source, file)
    if not os.path.isfile(path):
        raise ValueError(f"classes: no class-name file {file!r} for source {source!r}")
    return path


def parse_class_lines(text: str, separator: str, where: str = "classes") -> List[List[str]]:
    r"""The queries of each class from the text of a class-name file, read as the releases
    read it: one class per line, split by ``separator``, the newline dropped and nothing
    else (a space kept by the separator stays part of the query).

    Args:
        text (str): the file's text.
        separator (str): the synonym separator (``", "``, ``","``, ``"; "``).
        where (str): the name used in errors.

    Returns:
        list[list[str]]: per class, its queries.
    """
    if not isinstance(separator, str) or not separator:
        raise ValueError(f"synonym_separator: expected a non-empty string, got {separator!r}")
    lines = text.splitlines(keepends=True)
    classes = []
    for number, line in enumerate(lines, 1):
        queries = [q.replace("\n", "").replace("\r", "") for q in line.split(separator)]
        if not any(q.strip() for q in queries) or any(not q for q in queries):
            raise ValueError(f"{where}: line {number} has an empty class name ({line!r})")
        classes.append(queries)
    if not classes:
        raise ValueError(f"{where}: the class-name file is empty")
    return classes


def read_class_file(path: str, separator: str) -> List[List[str]]:
    r"""The queries of each class of a class-name file (see :func:`parse_class_lines`).

    Args:
        path (str): the file.
        separator (str): the synonym separator.

    Returns:
        list[list[str]]: per class, its queries.
    """
    try:
        with open(os.fspath(path), encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ValueError(f"classes: cannot read {path} ({exc.strerror or exc})") from None
    return parse_class_lines(text, separator, f"classes ({path})")


def resolve_root(layout: DatasetLayout, root: str) -> str:
    r"""The folder that holds the dataset: ``root`` itself or one of the layout's
    sub-folders of it (a data folder), whichever has the image folder (and split file).

    Args:
        layout (DatasetLayout): the dataset.
        root (str): the folder given.

    Returns:
        str: the dataset's root.
    """
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root: expected a folder path, got {type(root).__name__}")
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise ValueError(f"root: no folder {root}")
    for sub in layout.roots:
        candidate = os.path.join(root, sub) if sub else root
        if os.path.isdir(os.path.join(candidate, layout.img_dir)) and (
            layout.split is None or os.path.isfile(os.path.join(candidate, layout.split))
        ):
            return candidate
    wanted = layout.img_dir + (f" and {layout.split}" if layout.split else "")
    subs = ", ".join(s for s in layout.roots if s)
    raise ValueError(
        f"root: {root} has no {layout.title} layout ({wanted}"
        + (f", also looked under {subs}" if subs else "") + ")"
    )


def _scan(folder: str, suffix: str) -> List[str]:
    r"""Paths relative to ``folder`` of the files ending with ``suffix``, recursively,
    hidden files left out (mmengine's ``list_dir_or_file``), sorted."""
    found = []
    for entry in os.scandir(folder):
        if not entry.name.startswith(".") and entry.is_file():
            if entry.name.endswith(suffix):
                found.append(entry.name)
        elif entry.is_dir():
            found.extend(os.path.join(entry.name, p) for p in _scan(entry.path, suffix))
    return found


class SegmentationFiles(Dataset):
    r"""A segmentation dataset in a folder layout, read as the protocol reads it.

    Each item is a dict: ``index``, ``id`` (the split file's name, or the image's path
    under the image folder without its suffix), ``image`` (BGR ``uint8`` ``[H, W, 3]``,
    :func:`~captum_clip_surgery.benchmark.inputs.read_image`) and ``label`` (``uint8``
    ``[H, W]`` class indices at the image's own size, 255 ignored, the reduced zero label
    applied where the layout says so).

    Args:
        layout (DatasetLayout or str): a layout or one of :data:`LAYOUTS`' names.
        root (str): the dataset's folder, or a folder holding it (see
            :func:`resolve_root`).
        img_suffix (str, optional): another image suffix (e.g. ``".png"``).
        seg_map_suffix (str, optional): another label suffix.

    Examples::

        >>> ds = SegmentationFiles("voc21", "data/VOCdevkit/VOC2012")
        >>> item = ds[0]; item["image"].shape, item["label"].dtype
        ((375, 500, 3), dtype('uint8'))
    """

    def __init__(
        self,
        layout: Any,
        root: str,
        img_suffix: Optional[str] = None,
        seg_map_suffix: Optional[str] = None,
    ) -> None:
        if isinstance(layout, str):
            if layout not in LAYOUTS:
                raise ValueError(f"dataset: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
            layout = LAYOUTS[layout]
        if not isinstance(layout, DatasetLayout):
            raise TypeError(f"layout: expected a DatasetLayout or a name, got {type(layout).__name__}")
        self.layout = layout.with_suffix(img_suffix, seg_map_suffix)
        self.root = resolve_root(self.layout, root)
        img_dir = os.path.join(self.root, self.layout.img_dir)
        ann_dir = os.path.join(self.root, self.layout.ann_dir)
        if self.layout.split is not None:
            with open(os.path.join(self.root, self.layout.split), encoding="utf-8") as fh:
                ids = [line.strip() for line in fh if line.strip()]
            names = [i + self.layout.img_suffix for i in ids]
        else:
            names = sorted(_scan(img_dir, self.layout.img_suffix),
                           key=lambda p: os.path.join(img_dir, p))
            ids = [n[: -len(self.layout.img_suffix)] for n in names]
        if not ids:
            raise ValueError(
                f"root: no images ({self.layout.img_suffix}) for {self.layout.title} in {img_dir}"
            )
        self.ids: List[str] = ids
        self.image_paths = [os.path.join(img_dir, n) for n in names]
        self.label_paths = [
            os.path.join(ann_dir, n.replace(self.layout.img_suffix, self.layout.seg_map_suffix))
            if self.layout.split is None else os.path.join(ann_dir, i + self.layout.seg_map_suffix)
            for n, i in zip(names, ids)
        ]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        if not 0 <= index < len(self.ids):
            raise IndexError(index)
        for path in (self.image_paths[index], self.label_paths[index]):
            if not os.path.isfile(path):
                raise OSError(f"missing file {path}")
        return {
            "index": index,
            "id": self.ids[index],
            "image": read_image(self.image_paths[index]),
            "label": read_label(self.label_paths[index], self.layout.reduce_zero_label),
        }


#: The scenes world as a layout (no files: rendered on the fly; every pixel labelled).
SCENES_LAYOUT = DatasetLayout("scenes", "scenes", "", "", "", "", None, False, None, False)


class ScenesBenchmarkDataset(Dataset):
    r"""The package's scenes world as a ninth dataset of the benchmark.

    Items as :class:`SegmentationFiles` gives them (the rendered RGB scene as BGR
    ``uint8``; labels: the world's object classes, then its background classes; every
    pixel labelled). The held-out scenes (``HELD_OUT_START`` on) are used by default.

    Args:
        size (int): the number of scenes.
        start (int, optional): the first scene (default the world's held-out start).
        seed (int): the world's seed.

    Examples::

        >>> ds = ScenesBenchmarkDataset(size=2)
        >>> ds[0]["image"].shape, ds.class_names[:2]
        ((96, 96, 3), ['tomato', 'banana'])
    """

    layout = SCENES_LAYOUT

    def __init__(self, size: int = 200, start: Optional[int] = None, seed: int = 0) -> None:
        from captum_clip_surgery._validation import check_int
        from captum_clip_surgery.scenes.world import HELD_OUT_START, ScenesWorld

        check_int("size", size, minimum=1)
        if start is not None:
            check_int("start", start, minimum=0)
        self.world = ScenesWorld(seed=check_int("seed", seed))
        self.start = HELD_OUT_START if start is None else start
        self.size = size
        self.class_names: List[str] = list(self.world.class_names)
        self.ids = [f"scene_{self.start + i}" for i in range(size)]

    def class_lines(self) -> List[List[str]]:
        r"""The class-name "file" of the scenes: one class per line, no synonyms."""
        return [[name] for name in self.class_names]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Dict[str, Any]:
        if not 0 <= index < self.size:
            raise IndexError(index)
        sample = self.world.sample(self.start + index)
        rgb = np.asarray(sample["image"], dtype=np.uint8)
        label = np.full(rgb.shape[:2], 255, dtype=np.uint8)
        for name, mask in sample["masks"].items():
            label[mask] = self.class_names.index(name)
        return {"index": index, "id": self.ids[index], "image": rgb[:, :, ::-1].copy(),
                "label": label}


# --- COCO-Object from COCO-Stuff164k ------------------------------------------------------

#: COCO-Stuff ids that no annotation uses (11 thing ids were dropped from COCO).
_UNUSED_COCO_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)


def coco_object_table() -> np.ndarray:
    r"""The 256-entry lookup table from raw COCO-Stuff164k ids to COCO-Object labels.

    The protocol's ``datasets/cvt_coco_object.py`` (the same in all four repositories)
    maps each used raw id ``0..181`` to its train id (its rank among the used ids, as
    mmsegmentation's converter does), adds 1, and sends every raw id above 90 to 0: the
    80 thing classes become ``1..80``; stuff and the unlabelled 255 become 0, the
    background, so no pixel is ignored. Unused ids keep their value.

    Returns:
        np.ndarray: ``uint8`` ``[256]``.
    """
    table = np.arange(256, dtype=np.int64)
    used = [i for i in range(182) if i not in _UNUSED_COCO_IDS]
    for train_id, raw in enumerate(used):
        table[raw] = 0 if raw > 90 else train_id + 1
    table[255] = 0
    return table.astype(np.uint8)


def convert_coco_object(
    root: str,
    out: Optional[str] = None,
    splits: Sequence[str] = ("val2017",),
    progress: bool = False,
) -> Tuple[int, int]:
    r"""Write COCO-Object labels from COCO-Stuff164k's raw labels, as the protocol does.

    For every raw label ``<root>/annotations/<split>/<name>.png`` (files with
    ``TrainIds`` in their name are left out) it writes
    ``<out>/annotations/<split>/<name>_instanceTrainIds.png`` (see
    :func:`coco_object_table`). A file already written is skipped, and each file is
    written through a temporary name, so an interrupted run resumes and never leaves a
    half-written label. Inputs are never overwritten.

    Args:
        root (str): the COCO-Stuff164k folder (holding ``annotations/<split>``).
        out (str, optional): where to write (default ``root``; images are not copied).
        splits (list[str]): the annotation sub-folders (``"val2017"``, ``"train2017"``).
        progress (bool): show a progress bar.

    Returns:
        tuple[int, int]: ``(written, skipped)``.

    Examples::

        >>> convert_coco_object("data/coco_stuff164k")
        (5000, 0)
    """
    from PIL import Image
    from tqdm import tqdm

    root = os.fspath(root)
    out = root if out is None else os.fspath(out)
    if isinstance(splits, str):
        splits = [splits]
    table = coco_object_table()
    jobs = []
    for split in splits:
        src = os.path.join(root, "annotations", split)
        if not os.path.isdir(src):
            raise ValueError(f"root: no folder {src} (COCO-Stuff164k's raw labels)")
        names = sorted(n for n in os.listdir(src)
                       if n.endswith(".png") and "TrainIds" not in n and not n.startswith("."))
        if not names:
            raise ValueError(f"root: no raw label files (*.png without TrainIds) in {src}")
        dst = os.path.join(out, "annotations", split)
        os.makedirs(dst, exist_ok=True)
        jobs += [(os.path.join(src, n), os.path.join(dst, n.split(".")[0] + "_instanceTrainIds.png"))
                 for n in names]
    written = skipped = 0
    for src_path, dst_path in tqdm(jobs, desc="coco-object", unit="label", disable=not progress):
        if os.path.exists(dst_path):
            skipped += 1
            continue
        with Image.open(src_path) as im:
            raw = np.array(im)
        if raw.ndim != 2 or raw.dtype != np.uint8:
            raise ValueError(f"root: {src_path} is not a raw COCO-Stuff label (8-bit, one channel)")
        tmp = os.path.join(os.path.dirname(dst_path), f".{os.path.basename(dst_path)}.{os.getpid()}.tmp")
        try:
            Image.fromarray(table[raw]).save(tmp, "PNG")
            os.replace(tmp, dst_path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        written += 1
    return written, skipped
