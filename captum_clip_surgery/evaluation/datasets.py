r"""Datasets for the evaluation harness.

Every dataset yields items ``{"image": PIL.Image (RGB), "masks": BoolTensor [K, H, W],
"present": BoolTensor [K], "index": int}`` over its ``class_names`` (``K`` names,
usable as CLIP texts). A class is *present* when its mask is not empty. A dataset may
also give ``class_kinds`` (class name → kind, e.g. ``"object"`` / ``"background"``),
by which :meth:`EvaluationResult.breakdown` groups the records.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from captum_clip_surgery._validation import check_bool, check_int

__all__ = [
    "FolderSegmentation",
    "ScenesSegmentation",
    "VOC_CLASSES",
    "VOCSegmentationMasks",
    "masks_from_index_map",
]

#: PASCAL VOC class names as CLIP texts (index 0 is the background, 255 is "void").
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "dining table", "dog", "horse", "motorbike", "person", "potted plant",
    "sheep", "sofa", "train", "tv monitor",
)


def masks_from_index_map(
    index_map: np.ndarray, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    r"""Boolean per-class masks ``[K, H, W]`` from an ``H×W`` index map.

    Pixels equal to ``ignore_index`` (or outside ``0..K-1``) belong to no class.

    Args:
        index_map (np.ndarray): integer label map.
        num_classes (int): ``K``.
        ignore_index (int): label of unlabelled pixels.

    Returns:
        Tensor: ``[K, H, W]`` bool.
    """
    labels = torch.as_tensor(np.asarray(index_map, dtype=np.int64))
    classes = torch.arange(num_classes).reshape(-1, 1, 1)
    masks = labels.unsqueeze(0) == classes
    if 0 <= ignore_index < num_classes:
        masks[ignore_index] = False
    return masks


class _MaskDataset(Dataset):
    class_names: List[str]
    #: The deletion / insertion baseline :func:`~captum_clip_surgery.evaluation.evaluate`
    #: uses for this dataset when none is given: ``"blur"`` for natural images (a blurred
    #: photo keeps its colours but loses the shapes and textures a model reads).
    default_baseline: str = "blur"

    def _item(self, image: Image.Image, masks: torch.Tensor, index: int) -> Dict[str, Any]:
        return {
            "image": image.convert("RGB"),
            "masks": masks,
            "present": masks.flatten(1).any(dim=1),
            "index": index,
        }


class ScenesSegmentation(_MaskDataset):
    r"""The package's procedural scenes world as an evaluation dataset.

    Classes: the world's object classes, then its background classes. Generated
    on the fly from the world's seed, so every run sees the same scenes.

    Args:
        world (ScenesWorld, optional): default ``ScenesWorld(seed=seed)``.
        size (int): number of scenes.
        start (int, optional): index of the first scene; default the world's
            ``HELD_OUT_START`` (scenes the shipped model never saw).
        seed (int): world seed when ``world`` is not given.

    Its deletion / insertion baseline (:attr:`default_baseline`) is ``"mean"``: the
    scenes are flat-coloured objects on textured backgrounds and the shipped model reads
    colour, so a blurred scene still shows every object's class (deleting pixels then
    removes almost no evidence, and every method gets the same AUCs); the image's mean
    colour removes it.

    Examples::

        >>> ds = ScenesSegmentation(size=200)
        >>> item = ds[0]; item["masks"].shape[0] == len(ds.class_names)
        True
    """

    default_baseline: str = "mean"

    def __init__(
        self, world: Optional[Any] = None, size: int = 200, start: Optional[int] = None, seed: int = 0
    ) -> None:
        from captum_clip_surgery.scenes.world import HELD_OUT_START, ScenesWorld

        check_int("size", size, minimum=1)
        if start is not None:
            check_int("start", start, minimum=0)
        check_int("seed", seed)
        if world is None:
            world = ScenesWorld(seed=seed)
        self.world = world
        self.size = size
        self.start = HELD_OUT_START if start is None else start
        self.class_names = list(world.object_classes) + list(world.background_classes)
        self.class_kinds = {**{c: "object" for c in world.object_classes},
                            **{c: "background" for c in world.background_classes}}

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Dict[str, Any]:
        if not 0 <= index < self.size:
            raise IndexError(index)
        s = self.world.sample(self.start + index)
        h, w = s["image"].height, s["image"].width
        masks = torch.zeros(len(self.class_names), h, w, dtype=torch.bool)
        for name, mask in s["masks"].items():
            masks[self.class_names.index(name)] = torch.as_tensor(np.asarray(mask, dtype=bool))
        return self._item(s["image"], masks, index)


class VOCSegmentationMasks(_MaskDataset):
    r"""PASCAL VOC segmentation from a local folder (never downloaded).

    Wraps ``torchvision.datasets.VOCSegmentation(root, year, image_set,
    download=False)``; ``root`` is the folder holding ``VOCdevkit``.

    Args:
        root (str): dataset root.
        year (str): e.g. ``"2012"``.
        image_set (str): ``"train"``, ``"val"`` or ``"trainval"``.
        include_background (bool): keep the ``"background"`` class.

    Raises:
        FileNotFoundError: when the VOC folder, its split file or (on access) an
            image or mask file listed in the split is missing, naming the path.
    """

    YEARS = tuple(str(y) for y in range(2007, 2013))
    IMAGE_SETS = ("train", "trainval", "val")

    def __init__(
        self, root: str, year: str = "2012", image_set: str = "val", include_background: bool = True
    ) -> None:
        from torchvision.datasets import VOCSegmentation

        if year not in self.YEARS:
            raise ValueError(f"year: expected one of {', '.join(self.YEARS)}, got {year!r}")
        if image_set not in self.IMAGE_SETS:
            raise ValueError(
                f"image_set: expected one of {', '.join(self.IMAGE_SETS)}, got {image_set!r}"
            )
        check_bool("include_background", include_background)
        folder = os.path.join(str(root), "VOCdevkit", f"VOC{year}")
        if not os.path.isdir(folder):
            raise FileNotFoundError(
                f"root: PASCAL VOC {year} not found: expected the folder {folder} "
                "(download VOCtrainval and extract it under root; nothing is downloaded here)"
            )
        split = os.path.join(folder, "ImageSets", "Segmentation", f"{image_set}.txt")
        if not os.path.isfile(split):
            raise FileNotFoundError(f"root: the split file {split} is missing")
        self.voc = VOCSegmentation(str(root), year=year, image_set=image_set, download=False)
        self.offset = 0 if include_background else 1
        self.class_names = list(VOC_CLASSES[self.offset :])
        self.class_kinds = {c: "background" if c == "background" else "object"
                            for c in self.class_names}

    def __len__(self) -> int:
        return len(self.voc)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        for path in (self.voc.images[index], self.voc.targets[index]):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"root: {path} is missing (listed in the split file)")
        image, target = self.voc[index]
        labels = np.asarray(target)
        _check_mask(labels, image, self.voc.targets[index], len(VOC_CLASSES), 255)
        masks = masks_from_index_map(labels, len(VOC_CLASSES))[self.offset :]
        return self._item(image, masks, index)


class FolderSegmentation(_MaskDataset):
    r"""A generic folder: ``images/``, index-mask PNGs in ``masks/`` with the same file
    stem, and ``classes.txt`` (one class name per line; the first line is label 0).

    Masks are single-channel label maps (palette or grey PNGs; for RGB files the first
    channel is read) of the image's size; pixels labelled ``ignore_index`` belong to
    no class.

    Args:
        root (str): the folder.
        ignore_index (int): label of unlabelled pixels (default 255).

    Raises:
        FileNotFoundError: when a part or an image's mask is missing, naming it.
        ValueError: for an empty or duplicated class name, and (on access) a mask of
            another size than its image or with a label that names no class.
    """

    IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

    def __init__(self, root: str, ignore_index: int = 255) -> None:
        check_int("ignore_index", ignore_index)
        root = str(root)
        for part in ("images", "masks", "classes.txt"):
            if not os.path.exists(os.path.join(root, part)):
                raise FileNotFoundError(
                    f"root: {os.path.join(root, part)} not found; a folder dataset needs "
                    "images/, masks/ and classes.txt"
                )
        names_file = os.path.join(root, "classes.txt")
        with open(names_file, encoding="utf-8") as fh:
            lines = [line.strip() for line in fh.read().splitlines()]
        while lines and not lines[-1]:
            lines.pop()
        if not lines:
            raise ValueError(f"root: {names_file} lists no class")
        for i, name in enumerate(lines):
            if not name:
                raise ValueError(
                    f"root: line {i + 1} of {names_file} is empty; each line names one class "
                    "(line 1 is label 0)"
                )
            if name in lines[:i]:
                raise ValueError(f"root: class {name!r} appears twice in {names_file}")
        if 0 <= ignore_index < len(lines):
            raise ValueError(
                f"ignore_index: {ignore_index} is the label of class {lines[ignore_index]!r}; "
                f"expected a label outside 0..{len(lines) - 1}"
            )
        self.class_names = lines
        self.root = root
        self.ignore_index = ignore_index
        masks = {os.path.splitext(f)[0]: f for f in os.listdir(os.path.join(root, "masks"))}
        self.items = []
        for f in sorted(os.listdir(os.path.join(root, "images"))):
            stem, ext = os.path.splitext(f)
            if ext.lower() in self.IMAGE_EXTENSIONS:
                if stem not in masks:
                    raise FileNotFoundError(f"root: no mask in masks/ for image {f}")
                self.items.append((f, masks[stem]))
        if not self.items:
            raise ValueError(f"root: no images found in {os.path.join(root, 'images')}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        image_file, mask_file = self.items[index]
        image = _open(os.path.join(self.root, "images", image_file))
        mask_path = os.path.join(self.root, "masks", mask_file)
        labels = np.asarray(_open(mask_path))
        if labels.ndim == 3:
            labels = labels[..., 0]
        _check_mask(labels, image, mask_path, len(self.class_names), self.ignore_index)
        masks = masks_from_index_map(labels, len(self.class_names), self.ignore_index)
        return self._item(image, masks, index)


def _open(path: str) -> Image.Image:
    r"""Open an image file or raise an error naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"root: {path} is missing")
    try:
        return Image.open(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"root: cannot read {path} as an image ({exc})") from None


def _check_mask(labels: np.ndarray, image: Image.Image, path: str, num_classes: int,
                ignore_index: int) -> None:
    r"""A label map must have the image's size and only class labels or ``ignore_index``."""
    if labels.ndim != 2 or labels.shape != (image.height, image.width):
        raise ValueError(
            f"root: mask {path} is {'x'.join(map(str, labels.shape))}, expected the image's "
            f"{image.height}x{image.width} labels"
        )
    values = np.unique(labels)
    bad = [int(v) for v in values if not (0 <= v < num_classes or v == ignore_index)]
    if bad:
        raise ValueError(
            f"root: mask {path} has label(s) {', '.join(map(str, bad[:5]))} outside the "
            f"{num_classes} classes (labels 0..{num_classes - 1}, {ignore_index} = ignore)"
        )


def collate_items(items: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    r"""Keep items as a list (images and masks may differ in size)."""
    return list(items)
