r"""A deliberately plain re-implementation of ``docs/method.md`` §2–7 for the tests.

It reads the open_clip model's parameters directly (no adapter, no package
code), writes attention with einsum per head, runs the dual path exactly as the
spec's pseudo-code (full MLP on every token of the original stream, also in the
last block) and computes feature surgery in the element-wise B×N×T×C form.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor


def _ln(module: torch.nn.Module, x: Tensor) -> Tensor:
    if isinstance(module, torch.nn.Identity):
        return x
    return F.layer_norm(x, module.normalized_shape, module.weight, module.bias, module.eps)


def _ls(module: torch.nn.Module, x: Tensor) -> Tensor:
    return x * module.gamma if hasattr(module, "gamma") else x


def _resize_pos(
    table: Tensor, native: Tuple[int, int], grid: Tuple[int, int], mode: str = "bilinear"
) -> Tensor:
    r"""The positional table at another grid, written from each release's code:
    ``"bilinear"`` CLIP Surgery (``size=``); ``"bicubic"`` MaskCLIP's mmseg ViT and
    Grad-ECLIP (``size=``); ``"bicubic_antialias"`` GEM / LeGrad (``size=``, antialias);
    ``"bicubic_offset"`` SCLIP / ClearCLIP / NACLIP (``scale_factor = (n + 0.1) / native``
    per side, the kernel's coordinates from that factor)."""
    if native == grid:
        return table
    c = table.shape[1]
    g = table[1:].reshape(1, native[0], native[1], c).permute(0, 3, 1, 2)
    if mode == "bicubic_offset":
        rows, cols = grid[0] + 0.1, grid[1] + 0.1
        g = F.interpolate(g, scale_factor=(rows / native[0], cols / native[1]), mode="bicubic",
                          align_corners=False, recompute_scale_factor=False)
        assert tuple(g.shape[-2:]) == (int(rows), int(cols))
    elif mode == "bicubic_antialias":
        g = F.interpolate(g, size=grid, mode="bicubic", antialias=True)
    elif mode == "bicubic":
        g = F.interpolate(g, size=grid, mode="bicubic", align_corners=False)
    else:
        assert mode == "bilinear", mode
        g = F.interpolate(g, size=grid, mode="bilinear", align_corners=False)
    return torch.cat([table[:1], g.permute(0, 2, 3, 1).reshape(-1, c)], dim=0)


def _heads(x: Tensor, h: int) -> Tensor:
    b, n, c = x.shape
    return x.reshape(b, n, h, c // h)


def _attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    d = q.shape[-1]
    a = torch.einsum("bnhd,bmhd->bhnm", q, k) / d**0.5
    a = a.softmax(dim=-1)
    o = torch.einsum("bhnm,bmhd->bnhd", a, v)
    return o.reshape(o.shape[0], o.shape[1], -1)


def _attention_parts(block: torch.nn.Module, x: Tensor) -> Tuple[Tensor, Tensor]:
    r"""(o_orig, o_vv) of one block for normed input ``x``."""
    attn = block.attn
    heads = attn.num_heads
    qkv = x @ attn.in_proj_weight.t() + attn.in_proj_bias
    q, k, v = (_heads(t, heads) for t in qkv.chunk(3, dim=-1))
    o_orig = _attend(q, k, v)
    o_vv = _attend(v, v, v)
    w, b = attn.out_proj.weight, attn.out_proj.bias
    return o_orig @ w.t() + b, o_vv @ w.t() + b


def _mlp(block: torch.nn.Module, x: Tensor) -> Tensor:
    return block.mlp(x)


def vit_tokens(model: open_clip.CLIP, images: Tensor, surgery_blocks: int) -> Tensor:
    r"""Output features of every token ``[B, 1+N, D]`` (not normalised)."""
    v = model.visual
    x = F.conv2d(images, v.conv1.weight, stride=v.patch_size)
    b, c, h, w = x.shape
    x = x.reshape(b, c, h * w).permute(0, 2, 1)
    x = torch.cat([v.class_embedding.reshape(1, 1, c).expand(b, 1, c), x], dim=1)
    x = x + _resize_pos(v.positional_embedding, tuple(v.grid_size), (h, w))
    x = _ln(v.ln_pre, x)
    blocks = list(v.transformer.resblocks)
    first = len(blocks) - surgery_blocks
    x_new: Optional[Tensor] = None
    for i, blk in enumerate(blocks):
        o_orig, o_vv = _attention_parts(blk, _ln(blk.ln_1, x))
        if i >= first:
            x_new = (x if x_new is None else x_new) + _ls(blk.ls_1, o_vv)
        x = x + _ls(blk.ls_1, o_orig)
        x = x + _ls(blk.ls_2, _mlp(blk, _ln(blk.ln_2, x)))
    t = x if x_new is None else torch.cat([x[:, :1], x_new[:, 1:]], dim=1)
    return _ln(v.ln_post, t) @ v.proj


def resnet_tokens(
    model: open_clip.CLIP, images: Tensor, surgery: bool, query_token: str = "release"
) -> Tensor:
    r"""Attention-pool outputs of every token ``[B, 1+N, D]``.

    With ``surgery`` the release replaces q and k by v for every token, the
    mean (query) token included (``query_token="release"``); ``"model"`` keeps the
    pool's own q-k attention for the mean token."""
    v = model.visual
    fmap = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(images)))))
    b, c, h, w = fmap.shape
    pool = v.attnpool
    x = fmap.reshape(b, c, h * w).permute(0, 2, 1)
    x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
    side = int(round((pool.positional_embedding.shape[0] - 1) ** 0.5))
    x = x + _resize_pos(pool.positional_embedding, (side, side), (h, w))
    heads = pool.num_heads
    q = _heads(pool.q_proj(x), heads)
    k = _heads(pool.k_proj(x), heads)
    val = _heads(pool.v_proj(x), heads)
    orig = pool.c_proj(_attend(q, k, val))
    if not surgery:
        return orig
    new = pool.c_proj(_attend(val, val, val))
    if query_token == "release":
        return new
    return torch.cat([orig[:, :1], new[:, 1:]], dim=1)


def text_features(model: open_clip.CLIP, texts: List[str], templates: List[str]) -> Tensor:
    r"""Prompt ensemble with full-context encoding, one text at a time (like the release)."""
    out = []
    for t in texts:
        ids = open_clip.tokenize([tpl.format(t) for tpl in templates], model.context_length)
        e = F.normalize(model.encode_text(ids), dim=-1).mean(dim=0)
        out.append(F.normalize(e, dim=-1))
    return torch.stack(out)


def feature_surgery(
    f: Tensor, e: Tensor, mode: str, redundant: Optional[Tensor] = None
) -> Tensor:
    r"""``docs/method.md`` §6 in the element-wise form, ``[B, N, T]``."""
    if mode == "none":
        return torch.einsum("bnc,tc->bnt", f, e)
    if mode == "redundant":
        return torch.einsum("bnc,tc->bnt", f, e - redundant)
    p = (2 * torch.einsum("bc,tc->bt", f[:, 0], e)).softmax(dim=-1)
    wts = p / p.mean(dim=-1, keepdim=True)
    m = f[:, :, None, :] * e[None, None, :, :] * wts[:, None, :, None]
    r = m.mean(dim=2, keepdim=True)
    return (m - r).sum(dim=-1)


def pad(images: Tensor, stride: int) -> Tensor:
    r"""Zero padding at the bottom and right up to a multiple of ``stride``."""
    h, w = images.shape[-2:]
    return F.pad(images, (0, -w % stride, 0, -h % stride))


def maps(
    scores: Tensor, grid: Tuple[int, int], size: Tuple[int, int], stride: Optional[int] = None
) -> Tensor:
    r"""Min-max per (image, text) over patch tokens, reshape, bilinear up: ``[B, T, H, W]``.

    With ``stride`` the grid covers the input padded to a multiple of it: the maps are
    upsampled to the padded size and the padding is cut off.
    """
    s = scores[:, 1:, :]
    lo = s.min(dim=1, keepdim=True).values
    hi = s.max(dim=1, keepdim=True).values
    s = (s - lo) / (hi - lo)
    b, _, t = s.shape
    s = s.permute(0, 2, 1).reshape(b, t, grid[0], grid[1])
    if stride is None:
        return F.interpolate(s, size=size, mode="bilinear", align_corners=False)
    full = F.interpolate(s, size=(grid[0] * stride, grid[1] * stride), mode="bilinear",
                         align_corners=False)
    return full[..., : size[0], : size[1]]


def maskclip_tokens(model: open_clip.CLIP, images: Tensor) -> Tensor:
    r"""MaskCLIP: last block's value path (residual kept, no q-k attention, no FFN)."""
    v = model.visual
    if model.visual.__class__.__name__ == "ModifiedResNet":
        orig = resnet_tokens(model, images, surgery=False)
        fmap = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(images)))))
        b, c, h, w = fmap.shape
        pool = v.attnpool
        x = fmap.reshape(b, c, h * w).permute(0, 2, 1)
        dense = pool.c_proj(pool.v_proj(x + _resize_pos(pool.positional_embedding, (
            int(round((pool.positional_embedding.shape[0] - 1) ** 0.5)),) * 2, (h, w), "bicubic")[1:]))
        return torch.cat([orig[:, :1], dense], dim=1)
    x = F.conv2d(images, v.conv1.weight, stride=v.patch_size)
    b, c, h, w = x.shape
    x = x.reshape(b, c, h * w).permute(0, 2, 1)
    x = torch.cat([v.class_embedding.reshape(1, 1, c).expand(b, 1, c), x], dim=1)
    x = x + _resize_pos(v.positional_embedding, tuple(v.grid_size), (h, w), "bicubic")
    x = _ln(v.ln_pre, x)
    blocks = list(v.transformer.resblocks)
    for blk in blocks[:-1]:
        o_orig, _ = _attention_parts(blk, _ln(blk.ln_1, x))
        x = x + _ls(blk.ls_1, o_orig)
        x = x + _ls(blk.ls_2, _mlp(blk, _ln(blk.ln_2, x)))
    last = blocks[-1]
    attn = last.attn
    y = _ln(last.ln_1, x)
    val = y @ attn.in_proj_weight[2 * c :].t() + attn.in_proj_bias[2 * c :]
    dense = x + _ls(last.ls_1, val @ attn.out_proj.weight.t() + attn.out_proj.bias)
    o_orig, _ = _attention_parts(last, y)
    cls = x + _ls(last.ls_1, o_orig)
    cls = cls + _ls(last.ls_2, _mlp(last, _ln(last.ln_2, cls)))
    t = torch.cat([cls[:, :1], dense[:, 1:]], dim=1)
    return _ln(v.ln_post, t) @ v.proj


def chefer_relevance(model: open_clip.CLIP, image: Tensor, text_feature: Tensor) -> Tensor:
    r"""Chefer et al. relevance for ONE image ``[1, 3, H, W]`` and one unit text feature
    ``[D]``, with explicit per-head loops: ``[h, w]``."""
    v = model.visual
    x = F.conv2d(image, v.conv1.weight, stride=v.patch_size)
    _, c, h, w = x.shape
    x = x.reshape(1, c, h * w).permute(0, 2, 1)
    x = torch.cat([v.class_embedding.reshape(1, 1, c), x], dim=1)
    x = _ln(v.ln_pre, x + v.positional_embedding)
    attentions = []
    for blk in v.transformer.resblocks:
        attn = blk.attn
        heads = attn.num_heads
        y = _ln(blk.ln_1, x)
        qkv = y @ attn.in_proj_weight.t() + attn.in_proj_bias
        q, k, val = (_heads(t, heads) for t in qkv.chunk(3, dim=-1))
        a = (torch.einsum("bnhd,bmhd->bhnm", q, k) / q.shape[-1] ** 0.5).softmax(-1)
        attentions.append(a)
        o = torch.einsum("bhnm,bmhd->bnhd", a, val).reshape(1, x.shape[1], c)
        x = x + _ls(blk.ls_1, o @ attn.out_proj.weight.t() + attn.out_proj.bias)
        x = x + _ls(blk.ls_2, _mlp(blk, _ln(blk.ln_2, x)))
    pooled = F.normalize(_ln(v.ln_post, x[:, 0]) @ v.proj, dim=-1)
    logit = model.logit_scale.exp() * (pooled[0] * text_feature).sum()
    grads = torch.autograd.grad(logit, attentions)
    n = x.shape[1]
    r = torch.eye(n)
    for a, g in zip(attentions, grads):
        heads_cam = [torch.clamp(g[0, i] * a[0, i], min=0) for i in range(a.shape[1])]
        cam = sum(heads_cam) / len(heads_cam)
        r = r + cam @ r
    return r[0, 1:].reshape(h, w)


# ---------------------------------------------------------------------------------------
# The training-free family (METHODS-FAMILY): GEM, SCLIP, ClearCLIP, NACLIP, LeGrad, PAMR.
# Plain per-head einsum forms on the open_clip ViT's own parameters.
# ---------------------------------------------------------------------------------------


def _vit_embed(
    model: open_clip.CLIP, images: Tensor, pos: str = "bilinear"
) -> Tuple[Tensor, Tuple[int, int]]:
    v = model.visual
    x = F.conv2d(images, v.conv1.weight, stride=v.patch_size)
    b, c, h, w = x.shape
    x = x.reshape(b, c, h * w).permute(0, 2, 1)
    x = torch.cat([v.class_embedding.reshape(1, 1, c).expand(b, 1, c), x], dim=1)
    x = x + _resize_pos(v.positional_embedding, tuple(v.grid_size), (h, w), pos)
    return _ln(v.ln_pre, x), (h, w)


def _qkv(block: torch.nn.Module, y: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    r"""Per-head ``[B, N, heads, d]`` q, k, v of normed tokens ``y``."""
    attn = block.attn
    qkv = y @ attn.in_proj_weight.t() + attn.in_proj_bias
    return tuple(_heads(t, attn.num_heads) for t in qkv.chunk(3, dim=-1))  # type: ignore[return-value]


def _probs(a: Tensor, b: Tensor, scale: float, bias: Optional[Tensor] = None) -> Tensor:
    logits = torch.einsum("bnhd,bmhd->bhnm", a, b) * scale
    if bias is not None:
        logits = logits + bias
    return logits.softmax(dim=-1)


def _mix(probs: Tensor, v: Tensor) -> Tensor:
    o = torch.einsum("bhnm,bmhd->bnhd", probs, v)
    return o.reshape(o.shape[0], o.shape[1], -1)


def _out(block: torch.nn.Module, o: Tensor) -> Tensor:
    return o @ block.attn.out_proj.weight.t() + block.attn.out_proj.bias


def _plain_block(block: torch.nn.Module, x: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    r"""open_clip's block, with an optional additive attention bias (``-inf``: masked)."""
    q, k, v = _qkv(block, _ln(block.ln_1, x))
    x = x + _ls(block.ls_1, _out(block, _mix(_probs(q, k, q.shape[-1] ** -0.5, bias), v)))
    return x + _ls(block.ls_2, _mlp(block, _ln(block.ln_2, x)))


def _head(model: open_clip.CLIP, tokens: Tensor) -> Tensor:
    return _ln(model.visual.ln_post, tokens) @ model.visual.proj


def _last_block_method(
    model: open_clip.CLIP, images: Tensor, new_tokens, pos: str = "bicubic_offset"
) -> Tensor:
    r"""Blocks before the last plain; ``new_tokens(block, x, q, k, v, grid)`` gives the
    method's tokens; row 0 is the unmodified model's class token. The positional table is
    resized as SCLIP, ClearCLIP and NACLIP resize it."""
    x, grid = _vit_embed(model, images, pos)
    blocks = list(model.visual.transformer.resblocks)
    for blk in blocks[:-1]:
        x = _plain_block(blk, x)
    last = blocks[-1]
    q, k, v = _qkv(last, _ln(last.ln_1, x))
    new = new_tokens(last, x, q, k, v, grid)
    original = _plain_block(last, x)
    return _head(model, torch.cat([original[:, :1], new[:, 1:]], dim=1))


def sclip_tokens(model: open_clip.CLIP, images: Tensor) -> Tensor:
    r"""SCLIP: last block with softmax(qqᵀ/√d) + softmax(kkᵀ/√d), residual and MLP kept."""

    def new(blk, x, q, k, v, grid):
        s = q.shape[-1] ** -0.5
        a = _probs(q, q, s) + _probs(k, k, s)
        z = x + _ls(blk.ls_1, _out(blk, _mix(a, v)))
        return z + _ls(blk.ls_2, _mlp(blk, _ln(blk.ln_2, z)))

    return _last_block_method(model, images, new)


def clearclip_tokens(model: open_clip.CLIP, images: Tensor) -> Tensor:
    r"""ClearCLIP: last block's softmax(qqᵀ/√d) branch alone (no residual, no MLP)."""

    def new(blk, x, q, k, v, grid):
        return _ls(blk.ls_1, _out(blk, _mix(_probs(q, q, q.shape[-1] ** -0.5), v)))

    return _last_block_method(model, images, new)


def naclip_omega(grid: Tuple[int, int], sigma: float) -> Tensor:
    r"""Ω with explicit loops: Gaussian of the patch distance, 0 on the class row/column."""
    h, w = grid
    n = 1 + h * w
    omega = torch.zeros(n, n)
    for i in range(h * w):
        for j in range(h * w):
            ri, ci = divmod(i, w)
            rj, cj = divmod(j, w)
            d2 = (ri - rj) ** 2 + (ci - cj) ** 2
            omega[1 + i, 1 + j] = float(torch.exp(torch.tensor(-d2 / (2 * sigma**2))))
    return omega


def naclip_tokens(model: open_clip.CLIP, images: Tensor, sigma: float = 5.0) -> Tensor:
    r"""NACLIP: last block's softmax(kkᵀ/√d + Ω) branch alone (no residual, no MLP)."""

    def new(blk, x, q, k, v, grid):
        a = _probs(k, k, k.shape[-1] ** -0.5, naclip_omega(grid, sigma))
        return _ls(blk.ls_1, _out(blk, _mix(a, v)))

    return _last_block_method(model, images, new)


def gem_tokens(
    model: open_clip.CLIP,
    images: Tensor,
    blocks: int = 6,
    iterations: int = 1,
    temperature: Optional[float] = None,
) -> Tensor:
    r"""GEM: the self-self attention path over the last ``blocks`` blocks, own class token."""
    x, grid = _vit_embed(model, images, "bicubic_antialias")
    layers = list(model.visual.transformer.resblocks)
    first = len(layers) - blocks
    x_new: Optional[Tensor] = None
    for i, blk in enumerate(layers):
        if i >= first:
            y = _ln(blk.ln_1, x)
            q, k, v = _qkv(blk, y)
            d = q.shape[-1]
            if temperature is None:  # per image: mean token norm of y over √d
                beta = (y.norm(dim=-1).mean(dim=1) / d**0.5)[:, None, None, None]
            else:
                beta = torch.tensor(temperature)
            outs = []
            for z in (q, k, v):
                for _ in range(iterations):
                    zn = z / z.norm(dim=-1, keepdim=True)
                    a = (torch.einsum("bnhd,bmhd->bhnm", zn, zn) * beta).softmax(-1)
                    z = torch.einsum("bhnm,bmhd->bnhd", a, zn)
                zn = z / z.norm(dim=-1, keepdim=True)
                a = (torch.einsum("bnhd,bmhd->bhnm", zn, zn) * beta).softmax(-1)
                outs.append(_mix(a, v))
            o = (outs[0] + outs[1] + outs[2]) / 3
            x_new = (x if x_new is None else x_new) + _ls(blk.ls_1, _out(blk, o))
        x = _plain_block(blk, x)
    assert x_new is not None
    return _head(model, x_new)


def legrad_scores(
    model: open_clip.CLIP,
    image: Tensor,
    text_feature: Tensor,
    layers: int,
    deltas: Optional[dict] = None,
) -> Tuple[List[Tensor], List[Tensor], Tuple[int, int]]:
    r"""For ONE image: the per-layer scores s^ℓ of the last ``layers`` blocks and their
    attention maps (one full, uncut graph). ``deltas[ℓ]`` is added to block ℓ's
    post-softmax attention (for finite differences)."""
    x, grid = _vit_embed(model, image, "bicubic_antialias")
    blocks = list(model.visual.transformer.resblocks)
    scores, attentions = [], []
    for i, blk in enumerate(blocks):
        q, k, v = _qkv(blk, _ln(blk.ln_1, x))
        a = _probs(q, k, q.shape[-1] ** -0.5)
        if deltas and i in deltas:
            a = a + deltas[i]
        attentions.append(a)
        x = x + _ls(blk.ls_1, _out(blk, _mix(a, v)))
        x = x + _ls(blk.ls_2, _mlp(blk, _ln(blk.ln_2, x)))
        if i >= len(blocks) - layers:
            z = _head(model, x.mean(dim=1))
            z = z / z.norm(dim=-1, keepdim=True)
            scores.append((z[0] * text_feature).sum())
    return scores, attentions[len(blocks) - layers :], grid


def legrad_map(model: open_clip.CLIP, image: Tensor, text_feature: Tensor, layers: int = 2) -> Tensor:
    r"""LeGrad for ONE image: each layer's score differentiated separately w.r.t. its own
    attention, ReLU, mean over heads and query rows, patch columns, summed: ``[h, w]``."""
    scores, attentions, (h, w) = legrad_scores(model, image, text_feature, layers)
    total = torch.zeros(h * w)
    for s, a in zip(scores, attentions):
        (g,) = torch.autograd.grad(s, a, retain_graph=True)
        heads = [g[0, i].clamp(min=0).mean(dim=0) for i in range(g.shape[1])]
        total = total + (sum(heads) / len(heads))[1:]
    return total.reshape(h, w)


def pamr(images: Tensor, logits: Tensor, iterations: int, dilations: List[int]) -> Tensor:
    r"""PAMR with 3×3 dilated shift kernels applied by ``conv2d`` (the original's layout)."""
    m = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=True)
    shift = torch.zeros(8, 1, 3, 3)
    positions = [(r, c) for r in range(3) for c in range(3) if (r, c) != (1, 1)]
    for n, (r, c) in enumerate(positions):
        shift[n, 0, r, c] = 1.0
    window = torch.zeros(9, 1, 3, 3)
    for n in range(9):
        window[n, 0, n // 3, n % 3] = 1.0

    def neighbours(x: Tensor, kernel: Tensor) -> Tensor:
        b, k, h, w = x.shape
        flat = x.reshape(b * k, 1, h, w)
        outs = [F.conv2d(F.pad(flat, [d] * 4, mode="replicate"), kernel, dilation=d) for d in dilations]
        return torch.cat(outs, dim=1).reshape(b, k, -1, h, w)

    std = neighbours(images, window).std(dim=2, keepdim=True)
    diff = (neighbours(images, shift) - images[:, :, None]).abs()
    aff = (-diff / (1e-8 + 0.1 * std)).mean(dim=1, keepdim=True).softmax(dim=2)
    for _ in range(iterations):
        m = (neighbours(m, shift) * aff).sum(dim=2)
    return m


def gradeclip_map(model: open_clip.CLIP, image: Tensor, text_feature: Tensor) -> Tensor:
    r"""Grad-ECLIP for ONE image: the last block with one full-width head, w = ∂S/∂o_cls,
    λ = min-max over patches of cos(q_cls, k_i), H_i = ReLU(λ_i Σ_c w_c v_ic): ``[h, w]``."""
    x, (h, w) = _vit_embed(model, image, "bicubic")
    blocks = list(model.visual.transformer.resblocks)
    for blk in blocks[:-1]:
        x = _plain_block(blk, x)
    last = blocks[-1]
    attn = last.attn
    y = _ln(last.ln_1, x)
    q, k, v = (y @ attn.in_proj_weight.t() + attn.in_proj_bias).chunk(3, dim=-1)
    width = q.shape[-1]
    a = torch.einsum("bc,bnc->bn", q[:, 0], k) / width**0.5
    o = torch.einsum("bn,bnc->bc", a.softmax(dim=-1), v).detach().requires_grad_(True)
    cls = x[:, 0] + _ls(last.ls_1, _out(last, o))
    cls = cls + _ls(last.ls_2, _mlp(last, _ln(last.ln_2, cls)))
    z = _head(model, cls)
    score = (z[0] / z[0].norm() * text_feature).sum()
    (grad,) = torch.autograd.grad(score, o)
    lam = torch.stack([F.cosine_similarity(q[0, 0], k[0, i], dim=0) for i in range(1, k.shape[1])])
    lam = (lam - lam.min()) / (lam.max() - lam.min())
    heat = torch.stack([torch.relu(lam[i] * (grad[0] * v[0, 1 + i]).sum()) for i in range(h * w)])
    return heat.detach().reshape(h, w)


# ---------------------------------------------------------------------------------------
# The 2024-25 CLIP-only methods (METHODS-2025 §2-3): SC-CLIP and ResCLIP, written from
# the releases (SuleBai/SC-CLIP clip/model.py, yvhangyang/ResCLIP clip/model.py) one
# image at a time as they run, with einsum attention; grid indices are row * w + col.
# ---------------------------------------------------------------------------------------


def scclip_lof(x: Tensor, neighbors: int = 30, contamination: float = 0.05) -> Tensor:
    r"""The release's ``lof_pytorch`` on ONE image's tokens ``[N, C]``: outlier mask ``[N]``.
    Pairwise differences summed explicitly; the 31 nearest, the first (itself) dropped."""
    k = min(neighbors, x.shape[0] - 1)
    d = torch.norm(x[:, None] - x[None, :], dim=2, p=2) ** 2
    knn_d, knn_i = torch.topk(d, k=k + 1, largest=False)
    knn_d, knn_i = knn_d[:, 1:], knn_i[:, 1:]
    k_dist = knn_d[:, -1].unsqueeze(1).expand_as(knn_d)
    reach = torch.max(knn_d, k_dist)
    lrd = k / torch.nan_to_num(reach.mean(dim=1), nan=1e-6)
    lof = (lrd[knn_i] / lrd.unsqueeze(1)).mean(dim=1)
    return lof > torch.quantile(lof.float(), 1 - contamination)


def scclip_repair(x: Tensor, outliers: Tensor, grid: Tuple[int, int]) -> Tensor:
    r"""Each outlier of ONE image's grid tokens ``[N, C]`` replaced by the mean of its
    non-outlier 8-neighbours inside the grid (unchanged without one), by loops."""
    h, w = grid
    out = x.clone()
    for index in torch.nonzero(outliers).flatten().tolist():
        r, c = divmod(index, w)
        near = [rr * w + cc for rr in (r - 1, r, r + 1) for cc in (c - 1, c, c + 1)
                if (rr, cc) != (r, c) and 0 <= rr < h and 0 <= cc < w
                and not bool(outliers[rr * w + cc])]
        if near:
            out[index] = x[near].sum(dim=0) / len(near)
    return out


def scclip_tokens(
    model: open_clip.CLIP,
    images: Tensor,
    pre: int = 9,
    post: int = 4,
    fusion: Tuple[int, int] = (4, 10),
    beta: float = 0.4,
    temperature: float = 3.0,
    res_cls: float = 0.3,
    neighbors: int = 30,
    contamination: float = 0.05,
) -> Tuple[Tensor, Tensor]:
    r"""SC-CLIP: ``([B, 1+N, D]`` tokens (row 0 the plain class token), ``[B, N]`` outliers).
    Layers are 1-based stream indices (x^(l) after block l); one image at a time."""
    out = [_scclip_image(model, image, pre, post, fusion, beta, temperature, res_cls, neighbors,
                         contamination) for image in images.split(1)]
    return torch.cat([t for t, _ in out]), torch.stack([m for _, m in out])


def _scclip_image(
    model: open_clip.CLIP,
    image: Tensor,
    pre: int,
    post: int,
    fusion: Tuple[int, int],
    beta: float,
    temperature: float,
    res_cls: float,
    neighbors: int,
    contamination: float,
) -> Tuple[Tensor, Tensor]:
    blocks = list(model.visual.transformer.resblocks)
    last = blocks[-1]
    x, grid = _vit_embed(model, image, "bicubic_offset")
    feats = []
    for blk in blocks[:-1]:
        x = _plain_block(blk, x)
        feats.append(x)
    plain_cls = _plain_block(last, x)[:, :1]
    outliers = scclip_lof(x[0, 1:], neighbors, contamination)
    cls = x[:, :1]
    y = scclip_repair(x[0, 1:], outliers, grid)[None]
    f = scclip_repair(feats[pre - 1][0, 1:], outliers, grid)
    f = f / f.norm(dim=1, keepdim=True)
    mid = f @ f.t()
    before = torch.where(mid < beta, torch.zeros_like(mid), mid)
    y = (before / (before.sum(dim=-1, keepdim=True) + 1e-6)) @ y

    def adjust(t: Tensor, c: Tensor) -> Tensor:
        q, k, v = _qkv(last, _ln(last.ln_1, t))
        m = (mid - mid.mean()) * temperature
        m = m.masked_fill(m < 0.0, float("-inf")).softmax(dim=-1)
        a = (m[None, None] + _probs(k, k, k.shape[-1] ** -0.5)) / 2
        return _ls(last.ls_1, _out(last, _mix(a, v))) + res_cls * c

    y = adjust(y, cls)
    g = feats[post - 1][0, 1:]
    g = g / g.norm(dim=1, keepdim=True)
    after = g @ g.t()
    after = torch.where(after < beta, torch.zeros_like(after), after)
    after = after / (after.sum(dim=-1, keepdim=True) + 1e-6)
    y = after @ y
    fused = torch.zeros_like(feats[0])
    for layer in range(fusion[0], fusion[1] + 1):
        fused = fused + feats[layer - 1]
    y = y + after @ adjust(fused[:, 1:], fused[:, :1])
    return _head(model, torch.cat([plain_cls, y], dim=1)), outliers


def resclip_prior(labels: Tensor, grid: Tuple[int, int], sigma: float) -> Tensor:
    r"""The release's ``generate_attention_sfr`` (delete_same_entity on) for ONE image's
    patch labels ``[h, w]``, then ``/ max`` and the float16 cast of ``custom_attn``:
    ``[1 + N, 1 + N]`` with a zero class row and column. Paths as ``check_path`` does
    them: all pairs at once, ``t = linspace(0, 1, M + 1)`` in float32."""
    h, w = grid
    n = h * w
    out = torch.zeros(n + 1, n + 1)
    idx = torch.arange(n)
    i, j = torch.meshgrid(idx, idx, indexing="ij")
    i_r, i_c, j_r, j_c = i // w, i % w, j // w, j % w
    same = (labels[i_r, i_c] == labels[j_r, j_c]).float()
    start = torch.stack((i_r, i_c), dim=-1).view(-1, 2)
    end = torch.stack((j_r, j_c), dim=-1).view(-1, 2)
    steps = torch.max(torch.abs(end - start), dim=1)[0]
    top = int(steps.max())
    t = torch.linspace(0, 1, steps=top + 1).unsqueeze(1).unsqueeze(0)
    coords = (start.unsqueeze(1) * (1 - t) + end.unsqueeze(1) * t).round().long()
    valid = torch.arange(top + 1).unsqueeze(0) <= steps.unsqueeze(1)
    first = labels[start[:, 0], start[:, 1]].unsqueeze(1)
    seen = labels[coords[:, :, 0], coords[:, :, 1]]
    paths = ((seen == first) | ~valid).all(dim=1).view(n, n)
    decay = torch.exp(-steps.view(n, n) / top)
    same = torch.where(paths, same, same * decay)
    size = min(n, int(6 * sigma + 1))
    size = size if size % 2 == 1 else size + 1
    x = torch.arange(size) - size // 2
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    blurred = F.relu(F.conv1d(same.unsqueeze(1), kernel.view(1, 1, -1), padding=size // 2).squeeze(1))
    out[1:, 1:] = blurred / (blurred.sum(dim=1, keepdim=True) + 1e-8)
    return (out / out.max()).half().float()


def resclip_tokens(
    model: open_clip.CLIP,
    images: Tensor,
    text_features: Tensor,
    base: str = "naclip",
    rcs: Tuple[float, float] = (2.0, 0.6),
    sfr: Tuple[float, float] = (2.1, 0.6),
    temp_thd: float = 0.1,
    use_rcs: bool = True,
    use_sfr: bool = True,
    rcs_layers: Tuple[int, ...] = (6, 7, 8, 9),
    sigma: float = 5.0,
    logit_scale: float = 40.0,
    pamr_steps: int = 10,
    dilations: Tuple[int, ...] = (8, 16),
) -> Tuple[Tensor, Tensor]:
    r"""ResCLIP: ``([B, 1+N, D]`` tokens (row 0 the plain class token), ``[B, N]`` patch
    labels of the first pass (zeros without SFR)); one image at a time.
    ``text_features`` ``[T, D]`` unit."""
    out = [_resclip_image(model, image, text_features, base, rcs, sfr, temp_thd, use_rcs, use_sfr,
                          rcs_layers, sigma, logit_scale, pamr_steps, dilations)
           for image in images.split(1)]
    return torch.cat([t for t, _ in out]), torch.stack([m for _, m in out])


_OMEGAS: Dict[Tuple[Tuple[int, int], float], Tensor] = {}


def _resclip_image(
    model: open_clip.CLIP,
    image: Tensor,
    text_features: Tensor,
    base: str,
    rcs: Tuple[float, float],
    sfr: Tuple[float, float],
    temp_thd: float,
    use_rcs: bool,
    use_sfr: bool,
    rcs_layers: Tuple[int, ...],
    sigma: float,
    logit_scale: float,
    pamr_steps: int,
    dilations: Tuple[int, ...],
) -> Tuple[Tensor, Tensor]:
    blocks = list(model.visual.transformer.resblocks)
    last = blocks[-1]
    patch = model.visual.patch_size[0]
    x, grid = _vit_embed(model, image, "bicubic_offset")
    h, w = grid
    maps = []
    for layer, blk in enumerate(blocks[:-1], start=1):
        q, k, v = _qkv(blk, _ln(blk.ln_1, x))
        a = _probs(q, k, q.shape[-1] ** -0.5)
        x = x + _ls(blk.ls_1, _out(blk, _mix(a, v)))
        x = x + _ls(blk.ls_2, _mlp(blk, _ln(blk.ln_2, x)))
        if layer in rcs_layers:
            maps.append(a)
    a_rcs = torch.stack(maps).mean(dim=0) if maps else None
    q, k, v = _qkv(last, _ln(last.ln_1, x))
    scale = q.shape[-1] ** -0.5
    if (grid, sigma) not in _OMEGAS:  # the loops are slow; the grid repeats across images
        _OMEGAS[(grid, sigma)] = naclip_omega(grid, sigma)
    omega = _OMEGAS[(grid, sigma)]

    def final(prior: Optional[Tensor]) -> Tensor:
        def logits(a: Tensor, b: Tensor) -> Tensor:
            s = torch.einsum("bnhd,bmhd->bhnm", a, b) * scale
            if prior is not None:
                s = sfr[0] * ((1 - sfr[1]) * s + sfr[1] * prior)
            return s

        if base == "naclip":
            p = (logits(k, k) + omega).softmax(dim=-1)
        elif base == "clearclip":
            p = logits(q, q).softmax(dim=-1)
        else:
            p = logits(q, q).softmax(dim=-1) + logits(k, k).softmax(dim=-1)
        if use_rcs:
            p = rcs[0] * ((1 - rcs[1]) * p + rcs[1] * a_rcs)
        o = _ls(last.ls_1, _out(last, _mix(p, v)))
        if base != "sclip":
            return o
        z = x + o
        return z + _ls(last.ls_2, _mlp(last, _ln(last.ln_2, z)))

    prior = None
    labels = torch.zeros(h * w, dtype=torch.long)
    if use_sfr:
        f = _head(model, final(None)[:, 1:])
        f = f / f.norm(dim=-1, keepdim=True)
        s = (f @ text_features.t()).permute(0, 2, 1).reshape(1, -1, h, w)
        s = F.interpolate(s, size=image.shape[-2:], mode="bilinear", align_corners=False)
        s = pamr(image, s, pamr_steps, list(dilations))
        probs = torch.softmax(s[0] * logit_scale, dim=0)
        pixel = probs.argmax(dim=0)
        pixel[probs.max(dim=0)[0] < temp_thd] = 0
        for r in range(h):
            for c in range(w):
                cell = pixel[r * patch:(r + 1) * patch, c * patch:(c + 1) * patch].flatten()
                counts = torch.bincount(cell, minlength=text_features.shape[0])
                labels[r * w + c] = int(torch.nonzero(counts == counts.max())[0])
        prior = resclip_prior(labels.reshape(h, w), grid, sigma)
    plain_cls = _plain_block(last, x)[:, :1]
    return _head(model, torch.cat([plain_cls, final(prior)[:, 1:]], dim=1)), labels
