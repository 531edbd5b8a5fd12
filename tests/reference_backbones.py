r"""Plain re-implementations of the methods with a second backbone (METHODS-2025 §1, §4, §5)
for the tests, written from the spec and the authors' code: ProxyCLIP, CASS, CorrCLIP, LPOSS / LPOSS+.

They read the open_clip model's parameters directly (helpers of :mod:`tests.reference`), write
attention per head with einsum, use dense matrices, ``torch.linalg.eigvalsh`` / ``svd`` on
the full ``N × N`` graphs and a textbook conjugate-gradient loop; the backbone's features
come from the backbone library's own forward (timm's ``forward_features``), never from the
package's views.

Hard thresholds (METHODS-2025 §9): ProxyCLIP cuts attention arguments below 0, CASS matches
heads with the Hungarian algorithm, LPOSS keeps the ``k`` nearest neighbours. Each reference
also returns its decisions, so a test compares the decisions first and the maps where they
agree (:func:`assert_decisions_then_close`).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor

from tests.reference import _head, _ln, _out, _plain_block, _qkv, _vit_embed

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPENAI = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def assert_decisions_then_close(
    got_decisions: Tensor,
    expected_decisions: Tensor,
    got: Tensor,
    expected: Tensor,
    rows: Callable[[Tensor], Tensor],
    atol: float = 1e-5,
    rtol: float = 1e-5,
    max_flips: float = 1e-3,
) -> float:
    r"""At most ``max_flips`` of the decisions differ, and the maps agree within the tolerance
    wherever ``rows(decisions agree)`` (a mask over the maps' rows) is true. Returns the largest
    difference over the agreeing rows."""
    agree = got_decisions == expected_decisions
    flips = 1.0 - agree.float().mean().item()
    assert flips <= max_flips, f"{flips:.2%} of the decisions differ"
    keep = rows(agree)
    assert keep.any(), "no row left to compare"
    torch.testing.assert_close(got[keep], expected[keep], atol=atol, rtol=rtol)
    return float((got[keep] - expected[keep]).abs().max())


def renormalise(images: Tensor, source=OPENAI, target=IMAGENET) -> Tensor:
    r"""``(x · std_s + mean_s - mean_t) / std_t`` per channel, written out."""
    out = torch.empty_like(images)
    for c in range(3):
        rgb = images[:, c] * source[1][c] + source[0][c]
        out[:, c] = (rgb - target[0][c]) / target[1][c]
    return out


def _clip_last_block_inputs(model: open_clip.CLIP, images: Tensor):
    r"""The stream entering the last block, its per-head q, k, v ``[B, N, H, d]`` (class
    first), the grid and the unmodified model's class-token embedding."""
    x, grid = _vit_embed(model, images, "bicubic_offset")
    blocks = list(model.visual.transformer.resblocks)
    for blk in blocks[:-1]:
        x = _plain_block(blk, x)
    last = blocks[-1]
    q, k, v = _qkv(last, _ln(last.ln_1, x))
    pooled = _head(model, _plain_block(last, x)[:, :1])
    return x, q, k, v, grid, pooled


# ------------------------------------------------------------------------------ ProxyCLIP


def clip_tower_proxy_features(model: open_clip.CLIP, images: Tensor) -> Tensor:
    r"""ProxyCLIP's proxy features when the model's own tower is the proxy: ``ln_post`` of
    the last block's output, patch tokens only, the tower run as released
    (``"bicubic_offset"`` positional rule)."""
    x, _ = _vit_embed(model, images, "bicubic_offset")
    for blk in model.visual.transformer.resblocks:
        x = _plain_block(blk, x)
    return _ln(model.visual.ln_post, x)[:, 1:]


def proxyclip_tokens(
    model: open_clip.CLIP,
    images: Tensor,
    features: Tensor,
    feature_grid: Tuple[int, int],
    beta: float = 1.2,
    gamma: float = 3.0,
) -> Tuple[Tensor, Tensor]:
    r"""ProxyCLIP (``open_clip/transformer.py:560-587`` of the release): tokens
    ``[B, 1 + I*J, D]`` (row 0 the model's own embedding) and the decisions (the kept
    attention entries, ``[B, I*J, I*J]``).

    ``features`` are the backbone's final-normed patch tokens ``[B, I*J, C]``."""
    x, q, k, v, (h, w), pooled = _clip_last_block_inputs(model, images)
    last = model.visual.transformer.resblocks[-1]
    b, _, heads, d = v.shape
    vp = v[:, 1:].reshape(b, h, w, heads, d).permute(0, 3, 4, 1, 2).reshape(b * heads, d, h, w)
    vp = F.interpolate(vp, size=feature_grid, mode="bilinear", align_corners=False)
    vp = vp.reshape(b, heads, d, -1).permute(0, 3, 1, 2)  # [B, IJ, H, d]
    f = features / features.norm(dim=-1, keepdim=True)
    s = torch.einsum("bnc,bmc->bnm", f, f)
    outs, kept = [], []
    for i in range(b):  # the release's mean spans its batch: one image at a time
        logits = (s[i] - torch.mean(s[i]) * beta) * gamma
        keep = logits >= 0
        logits = logits.masked_fill(~keep, float("-inf"))
        a = logits.softmax(dim=-1)
        o = torch.einsum("nm,mhd->nhd", a, vp[i]).reshape(a.shape[0], heads * d)
        outs.append(_out(last, o))
        kept.append(keep)
    tokens = _head(model, torch.stack(outs))
    return torch.cat([pooled, tokens], dim=1), torch.stack(kept)


# ------------------------------------------------------------------------------ CorrCLIP


def _components(near: Tensor) -> Tensor:
    r"""Connected components of a boolean adjacency (union-find), numbered in the order
    of their lowest member: DBSCAN with ``min_samples=1``."""
    n = near.shape[0]
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(n):
        for j in range(n):
            if near[i, j]:
                a, b = root(i), root(j)
                parent[max(a, b)] = min(a, b)
    roots = [root(i) for i in range(n)]
    order = {r: c for c, r in enumerate(sorted(set(roots)))}
    return torch.tensor([order[r] for r in roots])


def corrclip_tokens(
    model: open_clip.CLIP,
    images: Tensor,
    features: Tensor,
    feature_grid: Tuple[int, int],
    labels: Tensor,
    spatial: int,
    alpha: float = 1.0,
    beta: float = 0.5,
    tau: float = 4.0,
    eps: float = 0.2,
) -> Tuple[Tensor, Tensor, Tensor]:
    r"""CorrCLIP (``CorrCLIPv1/open_clip/transformer.py:506-634`` of the release), one
    image at a time: tokens ``[B, 1 + I*J, D]`` (row 0 the model's own embedding), the
    merged labels ``[B, I*J]`` and the kept attention entries ``[B, I*J, I*J]``.

    ``features`` are the backbone's ``q + k`` ``[B, I*J, C]`` (normalised here); ``labels``
    the region labels at the images' size ``[B, H, W]``; ``spatial`` the number of block
    outputs the spatial branch averages."""
    blocks = list(model.visual.transformer.resblocks)
    depth = len(blocks)
    outs, merged_all, kept_all = [], [], []
    for i in range(images.shape[0]):
        x, (h, w) = _vit_embed(model, images[i : i + 1], "bicubic_offset")
        f = features[i] / features[i].norm(dim=-1, keepdim=True)
        sim = f @ f.t()
        masks = F.interpolate(labels[i][None, None].float(), size=feature_grid,
                              mode="nearest").int()[0, 0]
        # mask merging
        values = torch.unique(masks)
        if values.shape[0] > 2:
            regions = [masks == value for value in values]
            flat = f.reshape(*feature_grid, -1)
            means = torch.stack([flat[region].mean(dim=0) for region in regions])
            means = F.normalize(means, dim=1)[1:]
            rsim = means @ means.t()
            cluster = _components((rsim.max() - rsim) <= eps)
            merged = masks.clone()
            for idx, c in enumerate(cluster.tolist(), start=1):
                merged[regions[idx]] = c + 10000
            masks = merged
        # scope
        regions = [(masks == value).reshape(-1) for value in torch.unique(masks)]
        keep = torch.zeros_like(sim, dtype=torch.bool)
        for region in regions[1:]:
            keep |= torch.outer(region, region)
        first = regions[0]
        keep |= (first[None, :] | first[:, None]) & (sim > sim.mean())
        attn = (sim * tau).masked_fill(~keep, float("-inf")).softmax(dim=-1)
        # the semantic tokens and the attention mask of the joint sequence
        cells = F.interpolate(masks[None, None].float(), size=(h, w), mode="nearest").int()[0, 0]
        cell_regions = torch.stack([cells == value for value in torch.unique(cells)])
        r = cell_regions.shape[0]
        n = x.shape[1]
        allowed = torch.zeros(r + n, r + n, dtype=torch.bool)
        allowed[r:, r:] = True
        allowed[:r, r] = True
        allowed[:r, r + 1 :] = cell_regions.reshape(r, -1)
        # the release passes ~allowed as attn_mask: masked entries add -inf
        masked = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
        seq = torch.cat([x[:, :1].expand(1, r, -1), x], dim=1)
        feats_spatial = []
        for idx, blk in enumerate(blocks[:-1]):
            seq = _plain_block(blk, seq, masked)
            if depth - 2 - spatial <= idx <= depth - 3:
                feats_spatial.append(seq[:, r:])
        last = blocks[-1]
        x = seq[:, r:]
        branches = []
        for stream in (x, torch.stack(feats_spatial).mean(0)):
            c = stream.shape[-1]
            weight = last.attn.in_proj_weight[2 * c :]
            bias = last.attn.in_proj_bias[2 * c :]
            v = (_ln(last.ln_1, stream) @ weight.t() + bias)[0, 1:]  # [h*w, C]
            v = v.t().reshape(1, c, h, w)
            v = F.interpolate(v, size=feature_grid, mode="bilinear", align_corners=False)
            v = v.reshape(c, -1).t()
            branches.append(_out(last, attn @ v))
        mct = _plain_block(last, seq, masked)[0, :r]
        expand = F.interpolate(cell_regions[:, None].float(), size=feature_grid,
                               mode="nearest").reshape(r, -1)
        branches.append(expand.t() @ mct)
        post = [_ln(model.visual.ln_post, t) for t in branches]
        tokens = (post[0] + alpha * post[1] + beta * post[2]) @ model.visual.proj
        pooled = _head(model, _plain_block(last, x)[:, :1])
        outs.append(torch.cat([pooled, tokens[None]], dim=1))
        merged_all.append(masks.reshape(-1).long())
        kept_all.append(keep)
    return torch.cat(outs), torch.stack(merged_all), torch.stack(kept_all)


# ------------------------------------------------------------------------------ CASS


def _spectrum(a: Tensor, k: int) -> Tensor:
    vals = torch.linalg.eigvalsh(a.double())
    return vals.sort(descending=True).values[:k]


def _w1(u: Tensor, v: Tensor) -> Tensor:
    return (u.sort().values - v.sort().values).abs().sum()


def cass_tokens(
    model: open_clip.CLIP,
    images: Tensor,
    dino_keys: Tensor,
    dino_grid: Tuple[int, int],
    scale_factor: float = 10.0,
    k_eigen: int = 20,
    rank: int = 10,
    eigen_scaling: bool = True,
    sigma: float = 5.0,
    matching: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    r"""CASS's last block (``clip/model.py:240-473`` of the release), one image at a time:
    tokens ``[B, 1 + h*w, D]`` (row 0 the model's own embedding), the decisions (the
    Hungarian matching, ``[B, H]``: the DINO head mixed into each CLIP head) and the cost
    matrices ``[B, H, H]``.

    ``dino_keys`` are the backbone's last-block keys of the grid tokens, heads concatenated,
    ``[B, I*J, C]``, on the backbone's grid ``dino_grid``. ``matching`` replaces the
    Hungarian algorithm's choice (for a tie: two matchings of equal total cost)."""
    from scipy.optimize import linear_sum_assignment

    from tests.reference import naclip_omega

    x, q, k, v, (h, w), pooled = _clip_last_block_inputs(model, images)
    last = model.visual.transformer.resblocks[-1]
    b, _, heads, d = k.shape
    scale = d**-0.5
    omega = naclip_omega((h, w), sigma)[1:, 1:]
    outs, matches, costs = [], [], []
    for i in range(b):
        kc = k[i, 1:].permute(1, 0, 2)  # [H, N, d], class token dropped
        vc = v[i, 1:]  # [N, H, d]
        kd = dino_keys[i].t().reshape(heads, d, dino_grid[0], dino_grid[1])
        kd = F.interpolate(kd, size=(h, w), mode="bilinear", align_corners=False)
        kd = kd.reshape(heads, d, h * w).permute(0, 2, 1)
        kd = (kd - kd.min()) / (kd.max() - kd.min()) * (kc.max() - kc.min()) + kc.min()
        ac = torch.einsum("hnd,hmd->hnm", kc, kc) * scale
        ad = torch.einsum("hnd,hmd->hnm", kd, kd) * scale
        lam_d = F.normalize(torch.stack([_spectrum(a, k_eigen) for a in ad]), dim=1)
        lam_c = F.normalize(torch.stack([_spectrum(a, k_eigen) for a in ac]), dim=1)
        cost = torch.zeros(heads, heads, dtype=torch.float64)
        for r in range(heads):
            for c in range(heads):
                cost[r, c] = 1 - _w1(lam_d[r] / lam_d[r].abs().sum(), lam_c[c] / lam_c[c].abs().sum())
        rows, cols = linear_sum_assignment(cost.numpy())
        costs.append(cost)
        if matching is not None:
            cols = matching[i].numpy()
        combined = torch.zeros_like(ac)
        for r, c in zip(rows.tolist(), cols.tolist()):
            wd = 1 - cost[r, c]
            u, s, vh = torch.linalg.svd(ad[c].double())
            u, s, vt = u[:, :rank], s[:rank], vh[:rank].t()
            if eigen_scaling:
                lo, hi = s.min(), s.max()
                s = (s - lo) / (hi - lo) * (1.5 * hi - 0.5 * lo) + 0.5 * lo
            approx = u @ torch.diag(s) @ vt.t()
            approx.fill_diagonal_(0)
            target = ac[r].double()
            approx = (approx - approx.min()) / (approx.max() - approx.min())
            approx = approx * (target.max() - target.min()) + target.min()
            combined[r] = ((wd * scale_factor * approx + target) / (wd * scale_factor + 1)).float()
        matches.append(torch.as_tensor(cols))
        a = (combined + omega).softmax(dim=-1)
        o = torch.einsum("hnm,mhd->nhd", a, vc).reshape(h * w, heads * d)
        outs.append(_out(last, o))
    tokens = _head(model, torch.stack(outs))
    return torch.cat([pooled, tokens], dim=1), torch.stack(matches), torch.stack(costs)


def cass_text_logits(
    patches: Tensor, global_sim: Tensor, texts: Tensor, clusters: Sequence[int],
    alpha: float, weight: float,
) -> Tensor:
    r"""CASS's object-presence adjustment for one image (``cass_segmentor.py:98-212``):
    ``patches`` unit ``[N, E]``, ``global_sim`` ``[T]``, ``texts`` unit ``[T, E]``,
    ``clusters[t]`` the cluster of text ``t`` (0-based). Returns ``[N, T]`` logits."""
    adjusted = texts.clone()
    for cluster in sorted(set(clusters)):
        members = [t for t, c in enumerate(clusters) if c == cluster]
        best = max(members, key=lambda t: float(global_sim[t]))
        t = F.normalize(texts[best], dim=0)
        top = (patches @ t).topk(min(2, patches.shape[0])).indices
        mean = F.normalize(patches[top].mean(dim=0), dim=0)
        adjusted[best] = F.normalize((1 - alpha) * t + alpha * mean, dim=0)
    return (1 - weight) * (patches @ adjusted.t()) + weight * global_sim[None]


# ------------------------------------------------------------------------------ LPOSS


def lposs(
    scores: Tensor,
    features: Tensor,
    positions: Tensor,
    k: int = 400,
    gamma: float = 3.0,
    sigma: float = 0.01,
    power: float = 1.0,
    alpha: float = 0.95,
    iterations: int = 10,
    tol: float = 1e-6,
) -> Tuple[Tensor, Tensor]:
    r"""LPOSS (``lposs_eval.py:37-103``) with dense matrices in float64: the propagated
    scores ``[N, K]`` and the decisions (the kNN adjacency, ``[N, N]`` bool)."""
    f = F.normalize(features.double(), dim=-1)
    n = f.shape[0]
    sims = f @ f.t()
    vals, idx = sims.topk(min(k, n), dim=1)
    dist = torch.cdist(positions.double()[None], positions.double()[None])[0] ** power
    geometry = torch.exp(-sigma * dist)
    knn = torch.zeros(n, n, dtype=torch.bool).scatter(1, idx, True)
    sims_all = torch.zeros(n, n, dtype=torch.float64).scatter(1, idx, vals)
    w = torch.where(knn, sims_all.clamp(min=0) ** gamma * geometry, torch.zeros_like(sims_all))
    w = w + w.t()
    w.fill_diagonal_(0)
    deg = w.sum(dim=1)
    deg[deg == 0] = 1
    dm = torch.diag(deg**-0.5)
    lap = torch.eye(n, dtype=torch.float64) - alpha * dm @ w @ dm
    return conjugate_gradient(lap, scores.double(), iterations, tol), knn


def conjugate_gradient(a: Tensor, b: Tensor, iterations: int, tol: float) -> Tensor:
    r"""CuPy's ``cg`` (x0 = 0, stop when ‖r‖ <= tol·‖b‖) per column, one column at a time."""
    out = torch.zeros_like(b)
    for c in range(b.shape[1]):
        rhs = b[:, c]
        norm = float(rhs.norm())
        if norm == 0:
            continue
        x = torch.zeros_like(rhs)
        r = rhs.clone()
        p: Optional[Tensor] = None
        rho_old = 0.0
        for it in range(iterations):
            rho = float(r @ r)
            p = r.clone() if it == 0 else r + (rho / rho_old) * p
            q = a @ p
            step = rho / float(p @ q)
            x = x + step * p
            r = r - step * q
            rho_old = rho
            if float(r.norm()) <= tol * norm:
                break
        out[:, c] = x
    return out


def rgb_to_lab(rgb: Tensor) -> Tensor:
    r"""kornia's ``rgb_to_lab`` written out for one ``[3, H, W]`` image in ``[0, 1]``."""
    lin = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    r, g, b = lin
    x = 0.412453 * r + 0.357580 * g + 0.180423 * b
    y = 0.212671 * r + 0.715160 * g + 0.072169 * b
    z = 0.019334 * r + 0.119193 * g + 0.950227 * b
    xyz = torch.stack([x / 0.95047, y / 1.0, z / 1.08883])
    f = torch.where(xyz > 0.008856, xyz.clamp(min=0.008856) ** (1 / 3), 7.787 * xyz + 4.0 / 29.0)
    return torch.stack([116.0 * f[1] - 16.0, 500.0 * (f[0] - f[1]), 200.0 * (f[1] - f[2])])


def lposs_plus(
    rgb: Tensor, scores: Tensor, radius: int = 6, tau: float = 0.01, alpha: float = 0.95,
    iterations: int = 10, tol: float = 1e-6,
) -> Tensor:
    r"""LPOSS+ (``lposs_eval.py:106-155``) for one image with an explicit edge list and a
    dense Laplacian (small images only): ``rgb`` ``[3, H, W]`` in ``[0, 1]``, ``scores``
    ``[K, H, W]``; returns ``[K, H, W]``."""
    lab = rgb_to_lab(rgb.double()).permute(1, 2, 0) / torch.tensor([100.0, 128.0, 128.0],
                                                                    dtype=torch.float64)
    h, w = lab.shape[:2]
    n = h * w
    lab = lab.reshape(n, 3)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    yy, xx = yy.reshape(-1), xx.reshape(-1)
    chebyshev = torch.maximum((yy[:, None] - yy[None]).abs(), (xx[:, None] - xx[None]).abs())
    near = (chebyshev <= radius) & (chebyshev > 0)  # the (2r+1)² window, the pixel itself out
    weights = torch.where(near, torch.exp(-torch.cdist(lab, lab) / tau), torch.zeros(n, n).double())
    deg = weights.sum(dim=1)
    deg[deg == 0] = 1
    dm = torch.diag(deg**-0.5)
    lap = torch.eye(n, dtype=torch.float64) - alpha * dm @ weights @ dm
    y = scores.double().reshape(scores.shape[0], n).t()
    return conjugate_gradient(lap, y, iterations, tol).t().reshape(scores.shape)
