r"""Datasets for the evaluation harness.

Every dataset yields items ``{"image": PIL.Image (RGB), "masks": BoolTensor [K, H, W],
"present": BoolTensor [K], "index": int}`` over its ``class_names`` (``K`` names,
usable as CLIP texts). A class is *present* when its mask is not empty.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

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

    Examples::

        >>> ds = ScenesSegmentation(size=200)
        >>> item = ds[0]; item["masks"].shape[0] == len(ds.class_names)
        True
    """

    def __init__(
        self, world: Optional[Any] = None, size: int = 200, start: Optional[int] = None, seed: int = 0
    ) -> None:
        from captum_clip_surgery.scenes.world import HELD_OUT_START, ScenesWorld

        if world is None:
            world = ScenesWorld(seed=seed)
        if size < 1:
            raise ValueError(f"size: expected at least 1 scene, got {size}")
        self.world = world
        self.size = size
        self.start = HELD_OUT_START if start is None else start
        self.class_names = list(world.object_classes) + list(world.background_classes)

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
        FileNotFoundError: when the VOC folder is missing, naming the path.
    """

    def __init__(
        self, root: str, year: str = "2012", image_set: str = "val", include_background: bool = True
    ) -> None:
        from torchvision.datasets import VOCSegmentation

        folder = os.path.join(str(root), "VOCdevkit", f"VOC{year}")
        if not os.path.isdir(folder):
            raise FileNotFoundError(
                f"root: PASCAL VOC {year} not found: expected the folder {folder} "
                "(download VOCtrainval and extract it under root; nothing is downloaded here)"
            )
        self.voc = VOCSegmentation(str(root), year=year, image_set=image_set, download=False)
        self.offset = 0 if include_background else 1
        self.class_names = list(VOC_CLASSES[self.offset :])

    def __len__(self) -> int:
        return len(self.voc)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        image, target = self.voc[index]
        masks = masks_from_index_map(np.asarray(target), len(VOC_CLASSES))[self.offset :]
        return self._item(image, masks, index)


class FolderSegmentation(_MaskDataset):
    r"""A generic folder: ``images/``, index-mask PNGs in ``masks/`` with the same file
    stem, and ``classes.txt`` (one class name per line; line ``i`` is label ``i``).

    Args:
        root (str): the folder.
        ignore_index (int): label of unlabelled pixels (default 255).

    Raises:
        FileNotFoundError: when a part is missing, naming it.
    """

    IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

    def __init__(self, root: str, ignore_index: int = 255) -> None:
        root = str(root)
        for part in ("images", "masks", "classes.txt"):
            if not os.path.exists(os.path.join(root, part)):
                raise FileNotFoundError(
                    f"root: {os.path.join(root, part)} not found; a folder dataset needs "
                    "images/, masks/ and classes.txt"
                )
        with open(os.path.join(root, "classes.txt"), encoding="utf-8") as fh:
            self.class_names = [line.strip() for line in fh if line.strip()]
        if not self.class_names:
            raise ValueError(f"root: {os.path.join(root, 'classes.txt')} lists no class")
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
        image = Image.open(os.path.join(self.root, "images", image_file))
        labels = np.asarray(Image.open(os.path.join(self.root, "masks", mask_file)))
        if labels.ndim == 3:
            labels = labels[..., 0]
        masks = masks_from_index_map(labels, len(self.class_names), self.ignore_index)
        return self._item(image, masks, index)


def collate_items(items: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    r"""Keep items as a list (images and masks may differ in size)."""
    return list(items)
