r"""Images and labels read as the protocol reads them (mmcv / mmsegmentation).

The releases decode an image with OpenCV into BGR ``uint8`` (``mmcv.imfrombytes``,
``flag='color'``), rescale it keeping its aspect ratio by the factor
``min(long_side / long, short_side / short)`` to ``int(x * factor + 0.5)`` pixels per
side with ``cv2.resize(..., INTER_LINEAR)`` (no antialiasing; ``mmcv.imrescale``), swap
the channels to RGB and normalise in 0-255 units (``SegDataPreProcessor``). Labels are
read with Pillow at the original size (palette indices), optionally with the reduced
zero label (``0 -> 255``, ``k -> k - 1``). The functions here do the same, with
OpenCV itself (``pip install captum-clip-surgery[benchmark]``) so that every pixel
matches.
"""

from __future__ import annotations

import os
from typing import Any, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "IGNORE_INDEX",
    "normalize_image",
    "read_image",
    "read_label",
    "rescale_image",
    "rescaled_size",
]

#: The label of pixels the metric ignores.
IGNORE_INDEX = 255


def _cv2() -> Any:
    try:
        import cv2
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the benchmark reads and resizes images with OpenCV, as the protocol does: "
            "pip install 'captum-clip-surgery[benchmark]' (or opencv-python-headless)"
        ) from None
    return cv2


def read_image(path: str) -> np.ndarray:
    r"""An image file as BGR ``uint8`` ``[H, W, 3]`` (``cv2.imdecode``, ``IMREAD_COLOR``:
    grey images get three channels, the EXIF orientation is applied, as in mmcv).

    Args:
        path (str): the file.

    Returns:
        np.ndarray: ``[H, W, 3]`` uint8, BGR.
    """
    cv2 = _cv2()
    data = np.fromfile(os.fspath(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise OSError(f"cannot decode image {path}")
    return image


def read_label(path: str, reduce_zero_label: bool = False) -> np.ndarray:
    r"""A label file as ``uint8`` ``[H, W]`` indices (Pillow; palette images give their
    indices), optionally with the reduced zero label (``0 -> 255``, ``k -> k - 1``).

    Args:
        path (str): the file.
        reduce_zero_label (bool): drop label 0 (it becomes the ignore label 255).

    Returns:
        np.ndarray: ``[H, W]`` uint8.
    """
    from PIL import Image

    with Image.open(os.fspath(path)) as im:
        label = np.array(im)
    label = label.squeeze()
    if label.ndim != 2:
        raise ValueError(
            f"label {path}: expected a single-channel (index or palette) image, got shape "
            f"{list(label.shape)}"
        )
    label = label.astype(np.uint8)
    if reduce_zero_label:
        label = label.copy()
        label[label == 0] = 255
        label = label - 1
        label[label == 254] = 255
    return label


def rescaled_size(height: int, width: int, short_side: int, long_side: int = 2048) -> Tuple[int, int]:
    r"""The size ``(h, w)`` of ``mmcv.imrescale(img, (long_side, short_side))``.

    Args:
        height, width (int): the image's size.
        short_side (int): the bound of the short side.
        long_side (int): the bound of the long side.

    Returns:
        tuple[int, int]: ``(int(height * f + 0.5), int(width * f + 0.5))`` with
        ``f = min(long_side / max(height, width), short_side / min(height, width))``.

    Examples::

        >>> rescaled_size(375, 500, 336)
        (336, 448)
    """
    factor = min(long_side / max(height, width), short_side / min(height, width))
    return int(height * float(factor) + 0.5), int(width * float(factor) + 0.5)


def rescale_image(image: np.ndarray, short_side: int, long_side: int = 2048) -> np.ndarray:
    r"""``mmcv.imrescale``: keep-ratio resize with ``cv2.resize`` (``INTER_LINEAR``).

    Args:
        image (np.ndarray): ``[H, W, 3]`` uint8.
        short_side (int): the bound of the short side.
        long_side (int): the bound of the long side.

    Returns:
        np.ndarray: the resized image (the same array when the size is unchanged is
        still a fresh copy).
    """
    cv2 = _cv2()
    h, w = rescaled_size(image.shape[0], image.shape[1], short_side, long_side)
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)


def normalize_image(
    bgr: np.ndarray, mean: Sequence[float], std: Sequence[float]
) -> Tensor:
    r"""BGR ``uint8`` ``[H, W, 3]`` → RGB ``(x - mean) / std`` float32 ``[3, H, W]``, as
    ``SegDataPreProcessor`` computes it.

    Args:
        bgr (np.ndarray): the image.
        mean, std (list[float]): RGB, in 0-255 units.

    Returns:
        Tensor: ``[3, H, W]`` float32.
    """
    chw = torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1)))
    rgb = chw[[2, 1, 0], ...].float()
    m = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)
    return (rgb - m) / s
