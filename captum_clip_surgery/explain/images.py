r"""One image reader for every command and API that explains image files.

:func:`read_rgb` opens an image file and returns it as 8-bit RGB, converting every
Pillow mode by its real range (16-bit grey scaled from 16 bits, not clipped to white;
transparency composited over a background; CMYK, palette, 1-bit, YCbCr, LAB and HSV
through Pillow's own conversions) or refusing it with a clear message. It never returns
a blank image made from one that is not: a conversion that would flatten an image with
contrast into one colour is refused.

Large images are read at a bounded working size: above ``max_pixels`` (default
:data:`MAX_PIXELS`) the image is scaled down, aspect kept, to fit (JPEGs are decoded at
a reduced scale directly). :func:`display_size` bounds the images drawn in figures.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any, Optional, Tuple

import numpy as np

from captum_clip_surgery._validation import check_optional_int

__all__ = [
    "FIGURE_MAX_SIDE",
    "MAX_PIXELS",
    "display_size",
    "read_rgb",
    "working_size",
]

#: Default pixel limit of :func:`read_rgb`: an image with more pixels (width × height)
#: is explained at a working size scaled down to fit (4096 × 4096 = 16,777,216 pixels).
MAX_PIXELS = 4096 * 4096

#: The longest side, in pixels, of an image (and its maps) drawn in a figure.
FIGURE_MAX_SIDE = 1024

#: Modes Pillow converts to RGB by their meaning (palette, bits, colour spaces).
_PLAIN_MODES = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
#: Modes with an alpha band (composited over the background).
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
#: 16-bit unsigned grey modes.
_UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def working_size(size: Tuple[int, int], max_pixels: Optional[int]) -> Tuple[int, int]:
    r"""The ``(height, width)`` an image of ``size`` is explained at: its own size when it
    has at most ``max_pixels`` pixels (or ``max_pixels`` is ``None``), else scaled down by
    one factor, aspect kept, to the largest size with at most ``max_pixels`` pixels.

    Args:
        size (tuple[int, int]): the image's ``(height, width)``.
        max_pixels (int, optional): the pixel limit (``None``: none).

    Returns:
        tuple[int, int]: ``(height, width)``, each at least 1.

    Examples::

        >>> working_size((12000, 12000), 4096 * 4096)
        (4096, 4096)
    """
    h, w = int(size[0]), int(size[1])
    if max_pixels is None or h * w <= max_pixels:
        return h, w
    scale = math.sqrt(max_pixels / (h * w))
    th, tw = max(1, int(h * scale)), max(1, int(w * scale))
    while th * tw > max_pixels:  # float rounding at the boundary
        th, tw = max(1, th - (th >= tw)), max(1, tw - (tw > th))
    return th, tw


def display_size(size: Tuple[int, int], max_side: int = FIGURE_MAX_SIDE) -> Tuple[int, int]:
    r"""The ``(height, width)`` an image of ``size`` is drawn at in a figure: its own size,
    or scaled down (aspect kept) so that its longest side is ``max_side``.

    Args:
        size (tuple[int, int]): ``(height, width)``.
        max_side (int): the longest side allowed.

    Returns:
        tuple[int, int]: ``(height, width)``.
    """
    h, w = int(size[0]), int(size[1])
    longest = max(h, w)
    if longest <= max_side:
        return h, w
    return max(1, round(h * max_side / longest)), max(1, round(w * max_side / longest))


def _uint16_to_8bit(values: np.ndarray) -> np.ndarray:
    r"""``0..65535`` → ``0..255`` by ``round(v * 255 / 65535) = round(v / 257)``, in row
    chunks so that a large image needs no 32-bit copy of itself."""
    out = np.empty(values.shape, dtype=np.uint8)
    rows = max(1, (1 << 22) // max(1, values.shape[1]))
    for start in range(0, values.shape[0], rows):
        chunk = values[start : start + rows].astype(np.uint32)
        out[start : start + rows] = (chunk + 128) // 257
    return out


def _to_8bit(im: Any, path: str) -> Any:
    r"""The image in mode ``"RGB"`` or ``"RGBA"``, 8 bits per band, by its real range."""
    from PIL import Image

    mode = im.mode
    if mode in ("RGB", "RGBA"):
        return im
    if mode == "P" and "transparency" in im.info:
        return im.convert("RGBA")
    if mode in _PLAIN_MODES:
        return im.convert("RGB")
    if mode in _ALPHA_MODES:
        return (im.convert("LA") if mode == "La" else im).convert("RGBA")
    if mode in _UINT16_MODES or mode == "I":
        values = np.asarray(im)
        lo, hi = int(values.min()), int(values.max())
        if mode == "I":
            if lo < 0 or hi > 65535:
                raise ValueError(
                    f"image: {path} is a 32-bit integer image (mode 'I') with values from {lo} "
                    f"to {hi}, outside 0..65535, so its range is unknown; save it as an 8- or "
                    "16-bit image"
                )
        else:
            values = values.astype(np.uint16, copy=False)  # native order
        grey = _uint16_to_8bit(values)
        _check_not_blank(lo, hi, grey, path, mode)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "F":
        lo, hi = (float(v) for v in im.getextrema())
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0 or hi > 1:
            raise ValueError(
                f"image: {path} is a floating-point image (mode 'F') with values from {lo:g} "
                f"to {hi:g}; only values in [0, 1] have a known range (scaled by 255); save "
                "it as an 8- or 16-bit image, or scale it to [0, 1]"
            )
        values = np.asarray(im, dtype=np.float32)
        grey = np.floor(values.astype(np.float64) * 255.0 + 0.5).astype(np.uint8)
        _check_not_blank(lo, hi, grey, path, mode)
        return Image.fromarray(grey, mode="L").convert("RGB")
    try:
        return im.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ValueError(
            f"image: {path} has image mode {mode!r}, which cannot be converted to RGB ({exc})"
        ) from None


def _check_not_blank(lo: float, hi: float, grey: np.ndarray, path: str, mode: str) -> None:
    r"""Refuse a conversion that turns values with contrast (``lo < hi``) into one colour."""
    if lo < hi and int(grey.min()) == int(grey.max()):
        raise ValueError(
            f"image: {path} (mode {mode!r}, values {lo:g} to {hi:g}) would be explained as one "
            "flat colour once converted to 8-bit RGB (its values span too little of its "
            "range); rescale it to its full range first"
        )


def read_rgb(
    path: str,
    max_pixels: Optional[int] = MAX_PIXELS,
    background: Tuple[int, int, int] = (255, 255, 255),
) -> Tuple[Any, Tuple[int, int]]:
    r"""Read an image file as an 8-bit RGB ``PIL.Image``, by its real range.

    Conversions, by Pillow mode:

    - ``RGB``, ``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: Pillow's own
      conversion (a 48-bit RGB PNG is read by Pillow as 8-bit RGB);
    - ``I;16`` (16-bit grey, any byte order): ``round(v * 255 / 65535)``;
    - ``I`` (32-bit integers): as 16-bit when every value lies in ``0..65535``, else
      refused (no known range);
    - ``F`` (floating point): ``round(v * 255)`` when every value lies in ``[0, 1]``,
      else refused;
    - with transparency (``LA``, ``PA``, ``RGBA``, ``P`` with a transparent colour, the
      premultiplied ``La`` / ``RGBa``): composited over ``background``;
    - any other mode Pillow converts to RGB, or refused.

    A conversion that would turn an image with contrast into a single colour (e.g. a
    16-bit image whose values all lie below 128) is refused, so a blank is never
    explained in place of the image. An image with more than ``max_pixels`` pixels is
    scaled down (aspect kept, see :func:`working_size`) to fit.

    Args:
        path (str): the image file.
        max_pixels (int, optional): pixel limit of the returned image (default
            :data:`MAX_PIXELS`; ``None``: the image's own size whatever it is).
        background (tuple[int, int, int]): the colour under transparent pixels.

    Returns:
        tuple: ``(image, (height, width))``: the RGB image (at the working size) and
        the file's own size.

    Raises:
        ValueError: naming ``image`` and the file, for a mode without a known range or
            a conversion that would give a blank; Pillow's own errors for files that
            are not images (``UnidentifiedImageError``, ``OSError``, ...).

    Examples::

        >>> image, size = read_rgb("scan_16bit.png")
        >>> image.mode, size
        ('RGB', (480, 640))
    """
    from PIL import Image

    check_optional_int("max_pixels", max_pixels, minimum=1)
    path = os.fspath(path)
    with warnings.catch_warnings():
        # our own pixel limit bounds what is kept; Pillow's error for decompression
        # bombs (twice its warning limit) still applies
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            width, height = im.size
            target_h, target_w = working_size((height, width), max_pixels)
            if (target_h, target_w) != (height, width) and im.format == "JPEG":
                im.draft(im.mode, (target_w, target_h))  # decode at 1/2, 1/4 or 1/8 scale
            im.load()
            converted = _to_8bit(im, path)
    if converted.size != (target_w, target_h):
        converted = converted.resize((target_w, target_h), Image.BICUBIC, reducing_gap=3.0)
    if converted.mode == "RGBA":
        base = Image.new("RGB", converted.size, tuple(int(c) for c in background))
        base.paste(converted, mask=converted.getchannel("A"))
        converted = base
    return converted, (height, width)
