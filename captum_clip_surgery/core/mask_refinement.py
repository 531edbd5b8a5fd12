r"""PAMR, pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020).

In the core so that both the applications (:func:`~captum_clip_surgery.segment`) and
methods that refine a first-pass segmentation inside their forward (ResCLIP) use it;
:mod:`captum_clip_surgery.apps.mask_refinement` re-exports it.
"""

from __future__ import annotations

import warnings
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["pamr"]


def _offsets(dilations: Sequence[int]) -> List[Tuple[int, int]]:
    r"""The 8 neighbour offsets ``(dy, dx)`` at every dilation, in one list."""
    out = []
    for r in dilations:
        out.extend((dy * r, dx * r) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)
    return out


def _shift(padded: Tensor, dy: int, dx: int, pad: int, size: Tuple[int, int]) -> Tensor:
    r"""``x[p + (dy, dx)]`` for every pixel ``p`` from a replicate-padded tensor."""
    h, w = size
    return padded[..., pad + dy : pad + dy + h, pad + dx : pad + dx + w]


def _check(images: object, logits: object, iterations: object, dilations: object) -> List[int]:
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise TypeError(
            "images: expected a floating-point tensor [B, C, H, W], got "
            + (f"shape {list(images.shape)} {images.dtype}" if isinstance(images, Tensor)
               else type(images).__name__)
        )
    if not isinstance(logits, Tensor) or logits.ndim != 4 or not logits.is_floating_point():
        raise TypeError(
            "logits: expected a floating-point tensor [B, K, h, w], got "
            + (f"shape {list(logits.shape)} {logits.dtype}" if isinstance(logits, Tensor)
               else type(logits).__name__)
        )
    if logits.shape[0] != images.shape[0]:
        raise ValueError(
            f"logits: expected the images' batch size {images.shape[0]}, got {logits.shape[0]}"
        )
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations: expected an int >= 0, got {iterations!r}")
    if isinstance(dilations, (str, bytes)) or not isinstance(dilations, (list, tuple)):
        raise TypeError(f"dilations: expected a sequence of positive ints, got {dilations!r}")
    if not dilations or any(
        isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dilations
    ):
        raise ValueError(f"dilations: expected a non-empty sequence of positive ints, got {dilations!r}")
    return [int(d) for d in dilations]


def pamr(
    images: Tensor,
    logits: Tensor,
    iterations: int = 10,
    dilations: Sequence[int] = (8, 16),
) -> Tensor:
    r"""Refine class score maps with the image's local colour affinities (PAMR).

    The scores are upsampled to the image (bilinear, ``align_corners=True``).
    For every pixel ``p`` and each dilation ``r`` the 8 neighbours ``q`` at offset
    ``r`` (replicate padding at the borders) get the affinity
    ``a_pq = mean over colour channels of -|I_p - I_q| / (1e-8 + 0.1 σ_p)``, with
    ``σ_p`` the per-channel standard deviation (unbiased) of ``I`` over the 9
    positions of every dilation (``9 · len(dilations)`` values, the centre counted
    once per dilation); the affinities are normalised with a softmax over all
    ``8 · len(dilations)`` neighbours. Then ``iterations`` times every score map
    becomes the affinity-weighted mean of its neighbours,
    ``M_p ← Σ_q softmax(a)_pq M_q``.

    Used by NACLIP's published results (10 iterations, dilations 8 and 16) on the
    raw cosine scores at the image size, and inside ResCLIP's forward; usable with every
    dense method through :func:`~captum_clip_surgery.segment` (``pamr=True``).

    On CPU and CUDA each iteration is one sparse (CSR, ``8 · len(dilations)`` entries a
    row) times dense product per image, the scores of a pixel contiguous; other devices
    add shifted views. Both equal the original's convolution layout up to float32
    rounding (the order of the sums).

    Args:
        images (Tensor): ``[B, C, H, W]`` images (any normalisation; the affinity
            is invariant to a per-channel affine change of ``I``).
        logits (Tensor): ``[B, K, h, w]`` class scores (any size; upsampled).
        iterations (int): refinement steps (default 10; 0 only upsamples).
        dilations (list[int]): neighbour distances in pixels (default ``(8, 16)``).

    Returns:
        Tensor: ``[B, K, H, W]`` refined scores, float32 on the logits' device.

    Examples::

        >>> images = torch.rand(1, 3, 64, 64)
        >>> scores = torch.randn(1, 5, 8, 8)
        >>> pamr(images, scores, iterations=10, dilations=(8, 16)).shape
        torch.Size([1, 5, 64, 64])
    """
    dils = _check(images, logits, iterations, dilations)
    image = images.detach().float().to(logits.device)
    h, w = image.shape[-2:]
    m = logits.float()
    if tuple(m.shape[-2:]) != (h, w):
        m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=True)
    if iterations == 0:
        return m
    offsets = _offsets(dils)
    affinity = _affinity(image, dils, offsets)
    if m.device.type in _SPARSE_DEVICES:
        return _propagate_sparse(affinity, m, offsets, iterations)
    return _propagate_dense(affinity, m, offsets, iterations)


#: Devices whose sparse CSR x dense product runs the propagation (others use shifted views).
_SPARSE_DEVICES = ("cpu", "cuda")


def _affinity(image: Tensor, dils: Sequence[int], offsets: List[Tuple[int, int]]) -> Tensor:
    r"""``softmax`` over the neighbours of ``-|I_p - I_q| / (1e-8 + 0.1 σ_p)`` (mean over
    colour channels), ``[B, H, W, Q]``; ``σ_p`` the unbiased standard deviation over the 9
    positions of every dilation (two passes over shifted views, no stacked copy)."""
    h, w = image.shape[-2:]
    pad = max(dils)
    padded = F.pad(image, (pad,) * 4, mode="replicate")
    shifted = [_shift(padded, dy, dx, pad, (h, w)) for dy, dx in offsets]
    count = len(dils) + len(shifted)  # the centre once per dilation
    total = image * len(dils)
    for v in shifted:
        total.add_(v)
    mean = total.div_(count)
    squares = (image - mean).square_().mul_(len(dils))
    for v in shifted:
        squares.add_((v - mean).square_())
    denom = squares.div_(count - 1).sqrt_().mul_(0.1).add_(1e-8)
    scores = [(image - v).abs_().div_(denom).mean(dim=1) for v in shifted]
    return torch.stack(scores, dim=-1).neg_().softmax(dim=-1)


def _neighbour_index(h: int, w: int, offsets: List[Tuple[int, int]], device: torch.device) -> Tensor:
    r"""Flat index ``[h * w, Q]`` of every pixel's neighbours (clamped: replicate padding)."""
    rows = torch.arange(h, device=device).view(h, 1)
    cols = torch.arange(w, device=device).view(1, w)
    return torch.stack([((rows + dy).clamp(0, h - 1) * w + (cols + dx).clamp(0, w - 1)).reshape(-1)
                        for dy, dx in offsets], dim=1)


def _propagate_sparse(
    affinity: Tensor, m: Tensor, offsets: List[Tuple[int, int]], iterations: int
) -> Tensor:
    r"""``iterations`` times ``M_p ← Σ_q a_pq M_q`` as a sparse ``[HW, HW]`` (CSR, ``Q`` entries
    a row) times dense ``[HW, K]`` product per image: one pass over memory per iteration,
    the ``K`` scores of a pixel contiguous."""
    b, h, w, q = affinity.shape
    n, k = h * w, m.shape[1]
    index = torch.int32 if n * q < 2**31 else torch.int64  # int32: a fifth faster on CPU
    columns = _neighbour_index(h, w, offsets, m.device).reshape(-1).to(index)
    crow = torch.arange(0, n * q + 1, q, device=m.device, dtype=index)
    out = []
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the product is stable
        warnings.simplefilter("ignore", UserWarning)
        for i in range(b):
            a = torch.sparse_csr_tensor(crow, columns, affinity[i].reshape(-1), size=(n, n),
                                        check_invariants=False)
            x = m[i].reshape(k, n).t().contiguous()
            for _ in range(iterations):
                x = a @ x
            out.append(x.t().reshape(k, h, w))
    return torch.stack(out)


def _propagate_dense(
    affinity: Tensor, m: Tensor, offsets: List[Tuple[int, int]], iterations: int
) -> Tensor:
    r"""The same propagation with replicate-padded shifted views (any device)."""
    h, w = m.shape[-2:]
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    for _ in range(iterations):
        mp = F.pad(m, (pad,) * 4, mode="replicate")
        out = torch.zeros_like(m)
        for qi, (dy, dx) in enumerate(offsets):
            out = out + affinity[:, None, :, :, qi] * _shift(mp, dy, dx, pad, (h, w))
        m = out
    return m
