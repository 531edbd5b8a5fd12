r"""LPOSS and LPOSS+ (Stojnić, Kalantidis, Tolias, CVPR 2025): label propagation over a patch
graph and then over pixels, a refinement of any token-map method's scores.

- :func:`lposs`: the scores of the nodes of a patch graph propagated over the graph of their
  second-backbone features (kNN with a spatial term);
- :func:`lposs_scores`: LPOSS for a token-map method on whole images or on sliding windows
  that share one graph per image (the release's joint inference);
- :func:`lposs_plus`: the scores propagated over the pixel graph of the image's colours;
- :func:`rgb_to_lab`: kornia's sRGB to CIE Lab conversion, written out.

Both propagations solve ``(I - α D^{-1/2} W D^{-1/2}) Z = Y`` per class with conjugate
gradients stopped after 10 iterations, as released (truncated, not converged). Used by
:func:`~captum_clip_surgery.segment` with ``refine="lposs"`` / ``refine="lposs+"``.

Source: ``vladan-stojnic/LPOSS@e489a74``, ``segmentation/evaluation/lposs_eval.py`` and
``models/lposs/lposs.py``. Differences: the kNN is exact top-k in torch (blocked dense
similarities) instead of faiss on the GPU; the graphs are torch sparse matrices instead of
CuPy's (the pixel graph: CSR with all ``(2r+1)²`` taps of every pixel, zeros included, one
fused sparse-dense product per step); conjugate gradients run in float64 on the patch graph (as released) and in float32
on the pixel graph (the release: float64), for speed, with its weights normalised in the log
domain (the release's float32 weights underflow for a pixel whose every neighbour differs by
more than about 1 in scaled Lab, and its degree then counts as 1); each image of a batch has its own
graphs (the release runs one image at a time); the method's scores are resized to the graph's
grid where the grids differ (the release resizes CLIP's features before the cosine: the same
when the grids agree, as with CLIP ViT-B/16 and DINO ViT-B/16).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_clip_surgery._validation import (
    check_image_tensor,
    check_int,
    check_positive_number,
    check_unit_interval,
    prepare_images,
)
from captum_clip_surgery.adapters.base import merge_heads
from captum_clip_surgery.apps.windows import _pair_of_positive_ints, window_spans
from captum_clip_surgery.core.maps import upsample
from captum_clip_surgery.methods.base import FeatureSurgery, TokenMapAttribution
from captum_clip_surgery.methods.second_backbone import backbone_input, resolve_backbone

__all__ = [
    "conjugate_gradient",
    "lposs",
    "lposs_plus",
    "lposs_scores",
    "rgb_to_lab",
]


def rgb_to_lab(images: Tensor) -> Tensor:
    r"""sRGB in ``[0, 1]`` to CIE Lab (D65, 2° observer), as kornia's ``rgb_to_lab``.

    Linearise (``((c + 0.055) / 1.055) ** 2.4`` above 0.04045, ``c / 12.92`` below), to XYZ with
    the sRGB matrix, divide by the D65 white ``(0.95047, 1, 1.08883)``, ``f(t) = t^(1/3)``
    above 0.008856 (else ``7.787 t + 4/29``), ``L = 116 f(y) - 16``, ``a = 500 (f(x) - f(y))``,
    ``b = 200 (f(y) - f(z))``.

    Args:
        images (Tensor): ``[..., 3, H, W]`` RGB in ``[0, 1]``.

    Returns:
        Tensor: ``[..., 3, H, W]`` ``(L, a, b)``.

    Examples::

        >>> rgb_to_lab(torch.ones(3, 1, 1)).flatten()  # white
        tensor([1.0000e+02, ...])
    """
    lin = torch.where(images > 0.04045, ((images.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4,
                      images / 12.92)
    r, g, b = lin.unbind(-3)
    x = (0.412453 * r + 0.357580 * g + 0.180423 * b) / 0.95047
    y = 0.212671 * r + 0.715160 * g + 0.072169 * b
    z = (0.019334 * r + 0.119193 * g + 0.950227 * b) / 1.08883
    xyz = torch.stack([x, y, z], dim=-3)
    f = torch.where(xyz > 0.008856, xyz.clamp(min=0.008856) ** (1.0 / 3.0),
                    7.787 * xyz + 4.0 / 29.0)
    fx, fy, fz = f.unbind(-3)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=-3)


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor], rhs: Tensor, iterations: int = 10, tol: float = 1e-6
) -> Tensor:
    r"""Conjugate gradients for ``A Z = Y``, every column of ``Y`` on its own, as CuPy's
    ``cg`` (the release's): ``x0 = 0``, at most ``iterations`` steps, a column stops once its
    residual norm is at most ``tol · ‖y‖`` (a zero column stays zero).

    Args:
        matvec (Callable): ``X [N, K] -> A X`` for a symmetric positive-definite ``A``.
        rhs (Tensor): ``Y`` ``[N, K]``.
        iterations (int): the most steps (the release: 10).
        tol (float): the relative residual at which a column stops.

    Returns:
        Tensor: ``Z`` ``[N, K]`` in ``rhs``'s dtype.
    """
    x = torch.zeros_like(rhs)
    r = rhs.clone()
    work = torch.empty_like(rhs)  # one buffer for the products (no allocation per step)
    rho = _column_dots(r, r, work)
    norm = rho.sqrt()
    active = norm > 0
    limit = tol * norm
    p = r
    rho_old = rho
    for step in range(iterations):
        if not bool(active.any()):
            break
        if step == 0:
            p = r.clone()
        else:  # p <- r + (rho / rho_old) p, in place
            torch.addcmul(r, p, rho / torch.where(rho_old != 0, rho_old, 1), out=p)
        q = matvec(p)
        curvature = _column_dots(p, q, work)
        # a stopped column takes a zero step: x + 0 p = x
        alpha = torch.where(active, rho / torch.where(curvature != 0, curvature, 1), 0)
        x.addcmul_(p, alpha)
        r.addcmul_(q, alpha, value=-1)
        rho_old = rho
        rho = _column_dots(r, r, work)
        active = active & (rho.sqrt() > limit)
    return x


def _column_dots(a: Tensor, b: Tensor, work: Tensor) -> Tensor:
    r"""``(a * b).sum(dim=0)`` for ``[N, K]`` tensors, the product written into ``work`` (a
    fresh large tensor per step costs page faults on the CPU) and summed as ``[N / m, m · K]``
    rows first: a sum over the first dimension of a narrow tensor (``K`` of about 20) runs
    several times slower on the CPU than one over a wide one."""
    product = torch.mul(a, b, out=work)
    if product.ndim != 2 or not product.is_contiguous():
        return product.sum(dim=0)
    n, k = product.shape
    fold = 16
    while fold > 1 and n % fold:
        fold //= 2
    return product.view(n // fold, fold * k).sum(dim=0).view(fold, k).sum(dim=0)


def _normalized_matvec(weights: Tensor, alpha: float) -> Callable[[Tensor], Tensor]:
    r"""``X -> (I - α D^{-1/2} W D^{-1/2}) X`` for a sparse symmetric ``W`` without self loops
    (degree 0 counted as 1)."""
    degree = torch.sparse.sum(weights, dim=1).to_dense() if weights.is_sparse else None
    if degree is None:
        ones = torch.ones(weights.shape[1], 1, dtype=weights.dtype, device=weights.device)
        degree = (weights @ ones)[:, 0]
    degree = torch.where(degree == 0, torch.ones_like(degree), degree)
    d = degree.rsqrt()[:, None]

    def matvec(x: Tensor) -> Tensor:
        return x - alpha * d * (weights @ (d * x))

    return matvec


def _check_common(k: Any, gamma: Any, sigma: Any, distance_power: Any, alpha: Any,
                  iterations: Any, tol: Any) -> None:
    check_int("k", k, minimum=1)
    check_positive_number("gamma", gamma, allow_zero=True)
    check_positive_number("sigma", sigma, allow_zero=True)
    check_positive_number("distance_power", distance_power)
    check_alpha(alpha)
    check_int("iterations", iterations, minimum=0)
    check_positive_number("tol", tol, allow_zero=True)


def check_alpha(alpha: Any) -> float:
    r"""``alpha`` in ``[0, 1)`` (1 makes the system singular)."""
    value = check_unit_interval("alpha", alpha)
    if value >= 1.0:
        raise ValueError(f"alpha: expected a number in [0, 1), got {alpha}")
    return value


def lposs(
    scores: Tensor,
    features: Tensor,
    positions: Tensor,
    k: int = 400,
    gamma: float = 3.0,
    sigma: float = 0.01,
    distance_power: float = 1.0,
    alpha: float = 0.95,
    iterations: int = 10,
    tol: float = 1e-6,
) -> Tensor:
    r"""LPOSS: propagate node scores over the kNN graph of the nodes' features.

    Every node keeps its ``k`` nearest neighbours by inner product of the L2-normalised
    features (itself included), with weight ``max(s, 0)^γ · exp(-σ · dist^p)`` (``s`` the
    cosine, ``dist`` the Euclidean distance of the nodes' positions in pixels); then
    ``W ← W + Wᵀ`` (mutual edges count twice), the diagonal is zeroed, ``Wn = D^{-1/2} W
    D^{-1/2}`` (degree 0 counted as 1) and every class column of ``Y`` is solved from ``(I - α
    Wn) Z = Y`` by :func:`conjugate_gradient` (float64).

    Args:
        scores (Tensor): ``Y`` ``[N, K]`` (raw cosines in the release, no softmax).
        features (Tensor): ``[N, C]`` the nodes' graph features (the release: the value
            projection of DINO's last block, heads concatenated).
        positions (Tensor): ``[N, 2]`` the nodes' ``(y, x)`` in pixels.
        k (int): neighbours per node (default 400; at most ``N``).
        gamma (float): the exponent of the similarity (default 3).
        sigma (float): the spatial decay per pixel (default 0.01).
        distance_power (float): ``p`` (default 1).
        alpha (float): the propagation weight in ``[0, 1)`` (default 0.95).
        iterations (int): conjugate-gradient steps (default 10, as released).
        tol (float): the relative residual at which a class stops (default 1e-6).

    Returns:
        Tensor: float32 ``[N, K]``.

    Examples::

        >>> z = lposs(torch.randn(50, 3), torch.randn(50, 8), torch.rand(50, 2) * 100, k=10)
        >>> z.shape
        torch.Size([50, 3])
    """
    _check_common(k, gamma, sigma, distance_power, alpha, iterations, tol)
    if scores.ndim != 2 or features.ndim != 2 or positions.shape != (features.shape[0], 2) or (
        scores.shape[0] != features.shape[0]
    ):
        raise ValueError(
            "scores, features, positions: expected [N, K], [N, C] and [N, 2] for the same N, got "
            f"{list(scores.shape)}, {list(features.shape)} and {list(positions.shape)}"
        )
    device = scores.device
    f = F.normalize(features.detach().to(device=device, dtype=torch.float64), dim=-1)
    pos = positions.detach().to(device=device, dtype=torch.float64)
    n = f.shape[0]
    kk = min(int(k), n)
    values, index = [], []
    block = max(1, (1 << 22) // max(n, 1))
    for start in range(0, n, block):
        sims = f[start : start + block] @ f.t()
        top = sims.topk(kk, dim=1)
        values.append(top.values)
        index.append(top.indices)
    sims, cols = torch.cat(values), torch.cat(index)
    rows = torch.arange(n, device=device)[:, None].expand(n, kk)
    dist = (pos[rows] - pos[cols]).norm(dim=-1) ** distance_power
    weight = sims.clamp(min=0) ** gamma * torch.exp(-sigma * dist)
    off = rows != cols
    r, c, w = rows[off], cols[off], weight[off]
    graph = torch.sparse_coo_tensor(
        torch.stack([torch.cat([r, c]), torch.cat([c, r])]), torch.cat([w, w]), (n, n),
        check_invariants=False,
    ).coalesce()
    z = conjugate_gradient(_normalized_matvec(graph, float(alpha)),
                           scores.detach().to(device=device, dtype=torch.float64),
                           int(iterations), float(tol))
    return z.float()


def _windows(x: Tensor, radius: int) -> Tensor:
    r"""``[..., H, W, s, s]`` view (``s = 2r + 1``) of ``[..., H, W]`` zero-padded by ``radius``:
    element ``[..., y, x, r + dy, r + dx]`` is ``x[..., y + dy, x + dx]`` (0 outside)."""
    size = 2 * radius + 1
    return F.pad(x, (radius, radius, radius, radius)).unfold(-2, size, 1).unfold(-2, size, 1)


def _pixel_graph(lab: Tensor, radius: int, tau: float) -> Tensor:
    r"""The normalised pixel graph ``D^{-1/2} W D^{-1/2}`` of one ``[3, H, W]`` (scaled) Lab
    image as a sparse CSR matrix ``[H*W, H*W]`` (row-major pixels, 32-bit indices, ``(2r+1)²``
    entries per row, zeros included): ``W``
    joins every pixel to the pixels within ``radius`` in both directions (itself excluded)
    with ``exp(-‖Δ‖₂ / τ)``; degree 0 counts as 1. ``W`` is symmetric, so is the result.

    Computed in the log domain (``log W - ½ log D_p - ½ log D_q``, the degrees by a
    log-sum-exp), so that no weight underflows before the normalisation, and normalised
    weights below ``1e-30`` are set to 0 (they change no float32 sum). Every exponential is
    taken of an argument clamped to at least -87 (``e^-87`` is still a normal float32): a
    float32 subnormal, left in, slows every operation on it by orders of magnitude; terms
    below ``e^-87`` of the largest one change no float32 sum either."""
    _, h, w = lab.shape
    r = radius
    size = 2 * r + 1
    taps = size * size
    # taps outside the image read +inf: their distance, and so their log weight, is -inf
    lab_windows = F.pad(lab, (r, r, r, r), value=float("inf")).unfold(-2, size, 1).unfold(
        -2, size, 1)  # [3, H, W, s, s], a view
    logs = torch.empty(h, w, size, size, dtype=lab.dtype, device=lab.device)
    half = torch.empty(h, w, dtype=lab.dtype, device=lab.device)
    rows = max(1, (1 << 18) // max(w * taps, 1))  # row chunks of ~1 MiB, in cache
    ninf = float("-inf")
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        part = logs[y0:y1]
        torch.sub(lab[0, y0:y1, :, None, None], lab_windows[0, y0:y1], out=part).square_()
        for c in (1, 2):
            diff = lab[c, y0:y1, :, None, None] - lab_windows[c, y0:y1]
            part.addcmul_(diff, diff)
        part.sqrt_().div_(-tau)
        part[:, :, r, r] = ninf  # no self loop
        flat = part.view(y1 - y0, w, taps)
        top = flat.amax(dim=-1, keepdim=True)
        total = (flat - top).clamp_(min=-87.0).exp_().sum(dim=-1)
        torch.add(top[..., 0], total.log_(), out=half[y0:y1])
    half.div_(2)
    half.masked_fill_(~torch.isfinite(half), 0.0)  # degree 0 -> 1
    half_windows = _windows(half, r)
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        part = logs[y0:y1]
        part.sub_(half[y0:y1, :, None, None]).sub_(half_windows[y0:y1])
        # exp of -inf or of an argument below -87 takes a slow path on the CPU (the latter
        # yields a subnormal): clamp first, then zero what is below 1e-30 (≈ e^-69)
        F.threshold_(part.clamp_(min=-87.0).exp_(), 1e-30, 0.0)
    # every pixel keeps all s*s taps (the pixel itself and those outside the image with
    # weight 0, their columns clamped into range): no compaction, the same row length
    dy = torch.arange(-r, r + 1, device=lab.device, dtype=torch.int32)
    step = (dy[:, None] * w + dy[None, :]).reshape(1, 1, size, size)
    pixel = torch.arange(h * w, device=lab.device, dtype=torch.int32).reshape(h, w, 1, 1)
    columns = (pixel + step).clamp_(0, h * w - 1).reshape(-1)
    crow = torch.arange(h * w + 1, device=lab.device, dtype=torch.int32) * taps
    with warnings.catch_warnings():  # "sparse CSR support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, columns, logs.reshape(-1), (h * w, h * w),
                                       check_invariants=False)


def _pixel_matvec(graph: Tensor, alpha: float) -> Callable[[Tensor], Tensor]:
    r"""``X -> (I - α Wn) X`` for the normalised pixel graph of :func:`_pixel_graph` on
    ``[H*W, K]`` (row-major) tensors: one fused sparse-dense product ``X - α (Wn X)``."""

    def matvec(x: Tensor) -> Tensor:
        return torch.addmm(x, graph, x, alpha=-alpha)

    return matvec


def lposs_plus(
    images: Tensor,
    scores: Tensor,
    radius: int = 6,
    tau: float = 0.01,
    alpha: float = 0.95,
    iterations: int = 10,
    tol: float = 1e-6,
) -> Tensor:
    r"""LPOSS+: propagate score maps over the pixel graph of each image's colours.

    The scores are resized bilinearly (``align_corners=False``) to the image. Every pixel is
    joined to the pixels within ``radius`` (13×13 at the release's 6, 168 neighbours) with
    weight ``exp(-‖Lab_p - Lab_q‖₂ / τ)``, Lab from :func:`rgb_to_lab` divided by
    ``(100, 128, 128)``; then ``Wn = D^{-1/2} W D^{-1/2}`` and every class map is solved from
    ``(I - α Wn) Z = Y`` by :func:`conjugate_gradient` (float32 here, float64 in the release).

    Args:
        images (Tensor): ``[B, 3, H, W]`` RGB in ``[0, 1]`` (un-normalised).
        scores (Tensor): ``[B, K, h, w]`` class scores (the LPOSS output in the release).
        radius (int): the neighbourhood radius in pixels (default 6: the release's ``r = 13``).
        tau (float): the colour scale (default 0.01).
        alpha (float): the propagation weight in ``[0, 1)`` (default 0.95).
        iterations (int): conjugate-gradient steps (default 10).
        tol (float): the relative residual at which a class stops (default 1e-6).

    Returns:
        Tensor: float32 ``[B, K, H, W]`` on the scores' device.

    Examples::

        >>> lposs_plus(torch.rand(1, 3, 24, 20), torch.randn(1, 4, 3, 3)).shape
        torch.Size([1, 4, 24, 20])
    """
    check_image_tensor("images", images)
    check_image_tensor("scores", scores)
    if images.shape[1] != 3 or scores.shape[0] != images.shape[0]:
        raise ValueError(
            f"images, scores: expected [B, 3, H, W] and [B, K, h, w] with the same B, got "
            f"{list(images.shape)} and {list(scores.shape)}"
        )
    radius = check_int("radius", radius, minimum=1)
    tau = check_positive_number("tau", tau)
    alpha = check_alpha(alpha)
    iterations = check_int("iterations", iterations, minimum=0)
    tol = check_positive_number("tol", tol, allow_zero=True)
    device = scores.device
    h, w = images.shape[-2:]
    y = upsample(scores.detach().float(), (h, w))
    scale = torch.tensor([100.0, 128.0, 128.0], device=device)[:, None, None]
    out = []
    classes = y.shape[1]
    for b in range(images.shape[0]):
        lab = rgb_to_lab(images[b].detach().float().to(device)) / scale
        matvec = _pixel_matvec(_pixel_graph(lab, radius, tau), alpha)
        rhs = y[b].reshape(classes, h * w).t().contiguous()  # [H*W, K], pixels row-major
        z = conjugate_gradient(matvec, rhs, iterations, tol)
        out.append(z.t().reshape(classes, h, w))
    return torch.stack(out)


def _positions(offset: Tuple[int, int], grid: Tuple[int, int], cell: Tuple[float, float]) -> Tensor:
    r"""``(y, x)`` of the nodes of a window's grid: ``offset + cell // 2 + index · cell``
    (the release's ``patch_size // 2``; half a cell for a fractional cell)."""
    out = []
    for o, g, c in zip(offset, grid, cell):
        half = c // 2 if float(c).is_integer() else c / 2
        out.append(o + half + torch.arange(g, dtype=torch.float64) * c)
    ys, xs = torch.meshgrid(out[0], out[1], indexing="ij")
    return torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=1)


def lposs_scores(
    explainer: TokenMapAttribution,
    images: Tensor,
    class_names: Optional[Sequence[str]] = None,
    backbone: Any = None,
    sliding_window: Optional[Tuple[int, int]] = None,
    feature_surgery: FeatureSurgery = "none",
    k: int = 400,
    gamma: float = 3.0,
    sigma: float = 0.01,
    distance_power: float = 1.0,
    alpha: float = 0.95,
    iterations: int = 10,
    tol: float = 1e-6,
) -> Tensor:
    r"""LPOSS for a token-map method: its scores propagated over a second backbone's patch
    graph, at the images' size.

    For every image, each window (the whole image, or the ``(crop, stride)`` sliding windows
    of :func:`~captum_clip_surgery.apps.windows.window_spans`; a window is padded at the
    bottom / right to a multiple of the model's patch) gives the method's raw scores
    (:meth:`~TokenMapAttribution.similarity`) and the backbone's graph features: the value
    projection of its last block, heads concatenated, class / register tokens dropped, on the
    backbone's grid (the scores are resized bilinearly to it where the grids differ). The nodes
    of all the windows of an image form one graph (positions: the window's offset plus the
    node's cell centre, in pixels) and :func:`lposs` propagates the scores; each window's
    result is then resized bilinearly to the (padded) window, cut to it, and the windows are
    averaged on a canvas.

    Args:
        explainer (TokenMapAttribution): any token-map method.
        images (Tensor): preprocessed images ``[B, 3, H, W]`` (already resized: the release
            uses a short side of 448 and 224 / 112 windows).
        class_names (list[str], optional): the classes; default the explainer's texts.
        backbone (optional): the graph's backbone (a DINO in the release: ``dino_vitb16``;
            see :func:`~captum_clip_surgery.methods.second_backbone.resolve_backbone`); default
            the explainer's own second backbone if it has one (ProxyCLIP, CASS), else the
            model's image tower.
        sliding_window (tuple[int, int], optional): ``(crop, stride)``; default the whole image.
        feature_surgery (str or Tensor): as in :meth:`~TokenMapAttribution.similarity`.
        k, gamma, sigma, distance_power, alpha, iterations, tol: as in :func:`lposs`.

    Returns:
        Tensor: float32 ``[B, K, H, W]``.
    """
    _check_common(k, gamma, sigma, distance_power, alpha, iterations, tol)
    if not isinstance(explainer, TokenMapAttribution):
        raise TypeError(
            f"explainer: expected a token-map attribution, got {type(explainer).__name__}"
        )
    adapter = explainer.adapter
    names = explainer._texts(class_names)
    if backbone is None:
        backbone = getattr(explainer, "backbone", None)
    view = resolve_backbone(backbone, adapter)
    images = prepare_images(adapter, images, "images", pad=False)
    b, _, height, width = images.shape
    if sliding_window is None:
        spans = [((0, height), (0, width))]
    else:
        crop, stride = _pair_of_positive_ints("sliding_window", sliding_window)
        spans = [(ys, xs) for ys in window_spans(height, crop, stride)
                 for xs in window_spans(width, crop, stride)]
    ph, pw = adapter.image.patch_size
    out = torch.zeros(b, len(names), height, width, device=images.device)
    count = torch.zeros(1, 1, height, width, device=images.device)
    for (y0, y1), (x0, x1) in spans:
        count[:, :, y0:y1, x0:x1] += 1
    with torch.no_grad():
        for i in range(b):
            windows = []
            for (y0, y1), (x0, x1) in spans:
                hc, wc = y1 - y0, x1 - x0
                windows.append(F.pad(images[i : i + 1, :, y0:y1, x0:x1],
                                     (0, (-wc) % pw, 0, (-hc) % ph)))
            crops = torch.cat(windows)
            with explainer.sliding_windows(images[i : i + 1]) if sliding_window is not None \
                    else contextlib.nullcontext():
                scores = explainer.similarity(crops, names, feature_surgery).float()
            with explainer.running():  # a CLIP tower as the backbone follows the method's rule
                prepared = backbone_input(view, adapter, crops)
                _, _, v, grid = view.qkv(prepared, -1)
            feats = merge_heads(v[:, :, view.num_prefix_tokens :]).to(images.device)
            if tuple(scores.shape[-2:]) != grid:
                scores = F.interpolate(scores, size=grid, mode="bilinear", align_corners=False)
            nodes = grid[0] * grid[1]
            cell = (crops.shape[-2] / grid[0], crops.shape[-1] / grid[1])
            positions: List[Tensor] = [_positions((y0, x0), grid, cell)
                                       for (y0, _), (x0, _) in spans]
            y = scores.flatten(2).transpose(1, 2).reshape(-1, len(names))
            z = lposs(y, feats.reshape(-1, feats.shape[-1]), torch.cat(positions), k, gamma,
                      sigma, distance_power, alpha, iterations, tol)
            z = z.reshape(len(spans), nodes, len(names)).transpose(1, 2)
            z = z.reshape(len(spans), len(names), grid[0], grid[1])
            z = upsample(z, (crops.shape[-2], crops.shape[-1]))
            for j, ((y0, y1), (x0, x1)) in enumerate(spans):
                out[i, :, y0:y1, x0:x1] += z[j, :, : y1 - y0, : x1 - x0].to(out.device)
    return out / count
