r"""A deliberately plain re-implementation of ``docs/method.md`` §2–7 for the tests.

It reads the open_clip model's parameters directly (no adapter, no package
code), writes attention with einsum per head, runs the dual path exactly as the
spec's pseudo-code (full MLP on every token of the original stream, also in the
last block) and computes feature surgery in the element-wise B×N×T×C form.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

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


def _resize_pos(table: Tensor, native: Tuple[int, int], grid: Tuple[int, int]) -> Tensor:
    if native == grid:
        return table
    c = table.shape[1]
    g = table[1:].reshape(1, native[0], native[1], c).permute(0, 3, 1, 2)
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
            int(round((pool.positional_embedding.shape[0] - 1) ** 0.5)),) * 2, (h, w))[1:]))
        return torch.cat([orig[:, :1], dense], dim=1)
    x = F.conv2d(images, v.conv1.weight, stride=v.patch_size)
    b, c, h, w = x.shape
    x = x.reshape(b, c, h * w).permute(0, 2, 1)
    x = torch.cat([v.class_embedding.reshape(1, 1, c).expand(b, 1, c), x], dim=1)
    x = x + _resize_pos(v.positional_embedding, tuple(v.grid_size), (h, w))
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
