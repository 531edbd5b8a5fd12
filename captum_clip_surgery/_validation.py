r"""Argument checks shared by every public entry point; each error names its argument.

The bottom layer of the package: it imports nothing of the package itself (the model
checks read an adapter's ``device``, ``dtype`` and ``image.patch_size`` by duck typing),
so every layer, the adapters included, checks its arguments here.
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:  # annotations only: no import of the adapter layer at run time
    from captum_clip_surgery.adapters.base import CLIPAdapter

__all__ = [
    "check_blocks",
    "check_bool",
    "check_choice",
    "check_dense_tensor",
    "check_device",
    "check_feature_surgery",
    "check_image_tensor",
    "check_int",
    "check_optional_int",
    "check_positive_number",
    "check_unit_interval",
    "min_image_size",
    "padded_size",
    "prepare_images",
    "resolve_target",
    "unpack_inputs",
]


def check_bool(name: str, value: Any) -> bool:
    r"""Return ``value`` if it is a bool, else raise a ``TypeError`` naming ``name``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {type(value).__name__} ({value!r})")
    return value


def check_int(name: str, value: Any, minimum: Optional[int] = None,
              maximum: Optional[int] = None) -> int:
    r"""Return ``value`` as an int in ``[minimum, maximum]`` or raise a clear error
    (any integral number but a bool is accepted, e.g. a NumPy integer)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} ({value!r})")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if minimum is not None and maximum is not None:
            bound = f"in [{minimum}, {maximum}]"
        else:
            bound = f">= {minimum}" if minimum is not None else f"<= {maximum}"
        raise ValueError(f"{name}: expected an int {bound}, got {value}")
    return int(value)


def check_positive_number(name: str, value: Any, allow_zero: bool = False) -> float:
    r"""Return ``value`` as a finite float ``> 0`` (``>= 0`` with ``allow_zero``)."""
    bound = ">= 0" if allow_zero else "> 0"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number {bound}, got {type(value).__name__}")
    if not (math.isfinite(value) and (value >= 0 if allow_zero else value > 0)):
        raise ValueError(f"{name}: expected a finite number {bound}, got {value}")
    return float(value)


def check_optional_int(name: str, value: Any, minimum: Optional[int] = None,
                       maximum: Optional[int] = None) -> Optional[int]:
    r"""``None``, or ``value`` checked by :func:`check_int` (the message says ``None`` is
    accepted too)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int or None, got {type(value).__name__} ({value!r})")
    return check_int(name, value, minimum, maximum)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    r"""Return ``value`` if it is one of ``choices``, else a ``ValueError`` listing them."""
    if not any(value is c or (type(value) is type(c) and value == c) for c in choices):
        raise ValueError(
            f"{name}: expected one of {', '.join(repr(c) for c in choices)}, got {value!r}"
        )
    return value


def check_device(name: str, device: Any) -> torch.device:
    r"""The ``torch.device`` named by ``device``, after checking that a tensor can be made
    there (an unavailable device such as ``cuda`` on a machine without a GPU is a
    ``ValueError`` naming ``name``)."""
    try:
        resolved = torch.device(device)
        torch.empty(0, device=resolved)
    except (RuntimeError, AssertionError, ValueError, TypeError) as exc:
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        raise ValueError(f"{name}: cannot use device {device!r} ({first})") from None
    return resolved


def check_blocks(name: str, value: Any, depth: int) -> int:
    r"""``value`` as a number of (last) blocks of a tower with ``depth`` attention blocks:
    an int in ``[1, depth]``; the message names ``name`` and the tower's depth."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} ({value!r})")
    if not 1 <= value <= depth:
        raise ValueError(
            f"{name}: expected an int in [1, {depth}] (the image tower has {depth} "
            f"blocks), got {value}"
        )
    return value


def check_unit_interval(name: str, value: Any) -> float:
    r"""Return ``value`` as a float in ``[0, 1]`` or raise a clear error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number in [0, 1], got {type(value).__name__}")
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name}: expected a number in [0, 1], got {value}")
    return float(value)


def check_dense_tensor(name: str, x: Tensor) -> Tensor:
    r"""Return ``x`` if it holds its values: refuse meta tensors (shape only, no data) and
    sparse, nested or MKL-DNN layouts, which the computation cannot take (they would fail
    deep inside, e.g. ``Tensor.item() cannot be called on meta tensors``)."""
    if x.is_meta or x.device.type == "meta":
        raise TypeError(
            f"{name}: expected a tensor holding data, got a meta tensor (shape "
            f"{list(x.shape)}, no values); create it on a real device ('cpu', 'cuda', ...)"
        )
    if getattr(x, "is_nested", False):
        raise TypeError(f"{name}: expected a dense tensor, got a nested tensor")
    if x.layout != torch.strided:
        raise TypeError(
            f"{name}: expected a dense (strided) tensor, got layout {x.layout}; convert it "
            "with .to_dense()"
        )
    return x


def check_image_tensor(name: str, images: Any) -> Tensor:
    r"""Return ``images`` if it is a dense floating-point ``[B, C, H, W]`` tensor with
    ``B >= 1`` (no model involved; :func:`prepare_images` checks images against a model)."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name}: expected a Tensor [B, C, H, W], got {type(images).__name__}")
    check_dense_tensor(name, images)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"{name}: expected [B, C, H, W] with B >= 1, got {list(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {images.dtype}")
    return images


def min_image_size(adapter: CLIPAdapter) -> Tuple[int, int]:
    r"""The smallest input: one grid cell (a patch, or the trunk's total stride)."""
    return tuple(adapter.image.patch_size)  # type: ignore[return-value]


def unpack_inputs(inputs: Any) -> Tuple[Tensor, bool]:
    r"""Accept a tensor or a 1-tuple of one tensor (Captum style)."""
    if isinstance(inputs, tuple):
        if len(inputs) != 1:
            raise ValueError(
                f"inputs: expected a tensor or a 1-tuple holding the image tensor, got a "
                f"tuple of {len(inputs)} items"
            )
        return inputs[0], True
    return inputs, False


def padded_size(adapter: CLIPAdapter, size: Tuple[int, int]) -> Tuple[int, int]:
    r"""``size`` rounded up to a multiple of the grid cell (patch, or total stride)."""
    ph, pw = min_image_size(adapter)
    return (-(-int(size[0]) // ph) * ph, -(-int(size[1]) // pw) * pw)


def prepare_images(
    adapter: CLIPAdapter, images: Any, name: str = "inputs", pad: bool = True
) -> Tensor:
    r"""Validate images, move them to the model's device and dtype, and pad them.

    Rule: floating-point images on any device are moved to the model's device
    and cast to its dtype (gradients flow back through the move); integer
    images, wrong shapes, non-finite values, meta tensors and sparse (or other
    non-strided) layouts are refused, naming ``name``.

    Any image size: with ``pad`` (default) an image whose sides are not a multiple
    of the grid cell (the patch size, or a conv trunk's total stride) is padded
    with zeros at the bottom and right up to the next multiple — zero is the mean
    colour of normalised inputs — so that every pixel lies in a grid cell. Maps
    are brought back to the input's pixels by :func:`~captum_clip_surgery.core.maps.to_pixels`,
    which drops the padding again.
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor [B, 3, H, W], got {type(images).__name__}")
    check_dense_tensor(name, images)
    if images.ndim != 4:
        raise ValueError(
            f"{name}: expected a 4-D tensor [B, 3, H, W], got shape {list(images.shape)}"
        )
    if images.shape[1] != 3:
        raise ValueError(
            f"{name}: expected 3 colour channels [B, 3, H, W], got shape {list(images.shape)}"
        )
    if images.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one image, got batch size 0")
    if not images.is_floating_point():
        raise TypeError(
            f"{name}: expected a floating-point tensor (preprocessed images), got {images.dtype}"
        )
    mh, mw = min_image_size(adapter)
    if images.shape[-2] < mh or images.shape[-1] < mw:
        raise ValueError(
            f"{name}: spatial size {images.shape[-2]}x{images.shape[-1]} is below the model's "
            f"minimum {mh}x{mw} (one patch)"
        )
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{name}: images contain NaN or infinite values")
    images = images.to(device=adapter.device, dtype=adapter.dtype)
    if pad:
        h, w = images.shape[-2], images.shape[-1]
        hp, wp = padded_size(adapter, (h, w))
        if (hp, wp) != (h, w):
            images = F.pad(images, (0, wp - w, 0, hp - h))
    return images


def _one_target(item: Any, texts: Sequence[str], where: str) -> int:
    if isinstance(item, Tensor) and item.ndim == 0 and not item.is_floating_point():
        item = int(item)
    if isinstance(item, bool) or not isinstance(item, (int, str)):
        raise TypeError(
            f"target: expected an int index or one of the texts{where}, got "
            f"{type(item).__name__} ({item!r})"
        )
    if isinstance(item, str):
        if item not in texts:
            shown = ", ".join(repr(t) for t in list(texts)[:10])
            more = ", ..." if len(texts) > 10 else ""
            raise ValueError(f"target: unknown text {item!r}{where}; known texts: {shown}{more}")
        return list(texts).index(item)
    if not 0 <= item < len(texts):
        raise ValueError(
            f"target: index {item}{where} out of range for {len(texts)} texts "
            f"(expected 0..{len(texts) - 1})"
        )
    return item


def resolve_target(target: Any, batch: int, texts: Sequence[str]) -> Tensor:
    r"""Turn a Captum-style target into one text index per example.

    Accepted: ``None`` (only with one text), an int, one of ``texts``, a list or
    tuple of ints/texts of length ``batch``, a 0-d or 1-d integer tensor.

    Returns:
        Tensor: ``[batch]`` long indices (CPU).
    """
    if target is None:
        if len(texts) == 1:
            return torch.zeros(batch, dtype=torch.long)
        raise ValueError(
            f"target: required when there are {len(texts)} texts (an index, a text, or one per "
            "example)"
        )
    if isinstance(target, Tensor):
        if target.is_floating_point() or target.dtype == torch.bool:
            raise TypeError(f"target: expected an integer tensor, got {target.dtype}")
        if target.ndim == 0:
            return torch.full((batch,), _one_target(int(target), texts, ""), dtype=torch.long)
        if target.ndim != 1 or target.shape[0] != batch:
            raise ValueError(
                f"target: expected a 0-d tensor or one index per example (shape [{batch}]), "
                f"got shape {list(target.shape)}"
            )
        target = target.tolist()
    if isinstance(target, (list, tuple)):
        if len(target) != batch:
            raise ValueError(
                f"target: expected one target per example ({batch}), got {len(target)}"
            )
        indices: List[int] = [
            _one_target(t, texts, f" (example {i})") for i, t in enumerate(target)
        ]
        return torch.tensor(indices, dtype=torch.long)
    return torch.full((batch,), _one_target(target, texts, ""), dtype=torch.long)


def check_feature_surgery(mode: Union[str, Tensor]) -> None:
    r"""Check the ``feature_surgery`` argument: a mode name, or a dense, real, finite
    tensor of redundant features (a NaN or infinity would make every score NaN and
    every map zero)."""
    if isinstance(mode, Tensor):
        check_dense_tensor("feature_surgery", mode)
        if not mode.is_floating_point():
            raise TypeError(
                f"feature_surgery: expected a floating-point tensor of redundant features, "
                f"got {mode.dtype}"
            )
        if not bool(torch.isfinite(mode).all()):
            raise ValueError(
                "feature_surgery: the tensor of redundant features holds NaN or infinite "
                "values; expected finite features [C] or [T, C]"
            )
        return
    if mode not in ("auto", "classes", "empty", "none"):
        raise ValueError(
            "feature_surgery: expected 'auto', 'classes', 'empty', 'none' or a tensor of "
            f"redundant features, got {mode!r}"
        )
