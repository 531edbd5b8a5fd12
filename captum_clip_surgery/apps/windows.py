r"""Sliding windows over an image: where they lie (mmsegmentation's rule, shared by
:func:`~captum_clip_surgery.segment` and :func:`~captum_clip_surgery.apps.label_propagation.lposs_scores`)."""

from __future__ import annotations

from typing import List, Tuple

__all__ = ["window_spans"]


def _pair_of_positive_ints(name: str, value: object) -> Tuple[int, int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
        raise TypeError(f"{name}: expected a (crop, stride) pair of ints, got {type(value).__name__}")
    if len(value) != 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
    ):
        raise ValueError(f"{name}: expected two positive ints (crop, stride), got {value!r}")
    return int(value[0]), int(value[1])


def window_spans(size: int, crop: int, stride: int) -> List[Tuple[int, int]]:
    r"""The ``[start, end)`` spans of the sliding windows along one axis.

    Windows start every ``stride`` pixels; the last one is moved back so that it
    ends at the border (mmsegmentation's rule, used by SCLIP, ClearCLIP and
    NACLIP). An axis shorter than ``crop`` gets one window, the whole axis.

    Args:
        size (int): the axis length.
        crop (int): the window length.
        stride (int): the distance between window starts.

    Returns:
        list[tuple[int, int]]: spans covering ``[0, size)``.

    Examples::

        >>> window_spans(10, 4, 3)
        [(0, 4), (3, 7), (6, 10)]
    """
    count = max(size - crop + stride - 1, 0) // stride + 1
    spans = []
    for i in range(count):
        end = min(i * stride + crop, size)
        spans.append((max(end - crop, 0), end))
    return spans
