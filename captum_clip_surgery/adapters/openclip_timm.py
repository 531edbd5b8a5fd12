r"""Adapter for open_clip models whose image tower is built from timm (``TimmModel``).

``model.visual`` is open_clip's ``TimmModel``: a timm network ``visual.trunk``
(its own pooling, norms and classifier ``trunk.head``) followed by open_clip's
``visual.head`` (a projection, an MLP or nothing). Trunks covered:

- timm ``VisionTransformer`` (SigLIP / SigLIP2 FixRes with a MAP head, ViTamin's
  hybrid conv stem with average pooling, MobileCLIP ViTs with a class token): any
  number of class / register tokens, q/k norm, layer scale;
- timm ``Eva`` (EVA01, EVA02, PE-Core): separate or fused q/k/v without a k bias,
  rotary embeddings on the grid tokens' q and k (rebuilt per grid for
  non-native sizes), SwiGLU, class-token or MAP heads;
- timm ``VisionTransformerRelPos``: relative position bias, native size only;
- conv / windowed trunks without exposed attention blocks (``ConvNeXt``,
  ``FastVit`` for MobileCLIP, ``SwinTransformer``, native size only): the trunk's
  output map is the token stream (``blocks=()``) and the head is an average pool
  whose norm and linear layers are applied at every location.

Every view is computed from the model's own submodules; nothing is replaced,
edited or hooked. Unsupported configurations raise a one-line ``TypeError``
(starting with ``model:``) that says why.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from open_clip.timm_model import TimmModel
from torch import Tensor, nn

from captum_clip_surgery.adapters._timm_common import (
    HybridEmbed,
    PatchEmbed,
    RelPosBlock,
    TimmAttention,
    TimmBlock,
    TimmVisionTransformer,
    _timm,
    _TimmBlockView,
)
from captum_clip_surgery.adapters.base import (
    AttentionPoolHead,
    BlockView,
    ImageTowerView,
    PoolingHead,
    attention,
    merge_heads,
    resize_positional_embedding,
)
from captum_clip_surgery.adapters.openclip import (
    OPEN_CLIP_MODELS,
    OpenCLIPAdapter,
    _AverageHead,
    _identity,
    _TokenHead,
)

__all__ = ["OpenCLIPTimmAdapter"]


Eva = _timm("timm.models.eva", "Eva")
EvaBlock = _timm("timm.models.eva", "EvaBlock")
EvaBlockPostNorm = _timm("timm.models.eva", "EvaBlockPostNorm")
EvaAttention = _timm("timm.models.eva", "EvaAttention")
AttentionRope = _timm("timm.layers", "AttentionRope")
RelPosViT = _timm("timm.models.vision_transformer_relpos", "VisionTransformerRelPos")
AttentionPoolLatent = _timm("timm.layers", "AttentionPoolLatent")
ConvNeXt = _timm("timm.models.convnext", "ConvNeXt")
FastVit = _timm("timm.models.fastvit", "FastVit")
SwinTransformer = _timm("timm.models.swin_transformer", "SwinTransformer")
ClassifierHead = _timm("timm.layers", "ClassifierHead")
NormMlpClassifierHead = _timm("timm.layers", "NormMlpClassifierHead")
RotaryEmbeddingCat = _timm("timm.layers", "RotaryEmbeddingCat")
_apply_rot_embed_cat = _timm("timm.layers", "apply_rot_embed_cat")
if isinstance(_apply_rot_embed_cat, type):  # a placeholder: this timm lacks the function
    _apply_rot_embed_cat = None

#: Average pool types of timm's ``SelectAdaptivePool2d``.
_AVERAGE_POOLS = ("avg", "fast", "fastavg")


def _module(owner: nn.Module, name: str) -> nn.Module:
    r"""``owner.name``, or an identity when it is absent or ``None``."""
    module = getattr(owner, name, None)
    return nn.Identity() if module is None else module


def _tail(visual: TimmModel, trunk: nn.Module) -> Callable[[Tensor], Tensor]:
    r"""Everything after the trunk's pooling: its ``fc_norm`` and classifier ``head``
    (dropouts are identities at inference), then open_clip's ``visual.head``."""
    fc_norm = _module(trunk, "fc_norm")

    def tail(x: Tensor) -> Tensor:
        return visual.head(trunk.head(fc_norm(x)))

    return tail


# ---------------------------------------------------------------------------------------------
# attention blocks


class _EvaBlockView(BlockView):
    r"""timm ``EvaBlock`` / ``EvaBlockPostNorm`` with ``EvaAttention`` or ``AttentionRope``:
    fused or separate q/k/v (EVA's k has no bias), q/k norm, rotary embeddings on the grid
    tokens' q and k, grouped k/v heads, inner norm, ``gamma`` layer scales. :meth:`qkv`
    returns q and k with the rotary embedding applied, exactly as the model attends.

    A post-norm block (EVA02-E) computes ``x + norm1(attn(x))`` and
    ``x + norm2(mlp(x))``: its pre-norms are identities, ``norm1`` belongs to :meth:`out`
    and ``norm2`` to :meth:`mlp`."""

    def __init__(self, block: nn.Module, tower: _TimmViTView) -> None:
        attn = block.attn
        if getattr(attn, "gate", None) is not None:
            raise TypeError(
                "model: gated attention (an input-dependent gate on the attention output) is "
                "not supported"
            )
        self.block = block
        self.attn = attn
        self.tower = tower
        self.num_heads = attn.num_heads
        self.head_dim = attn.head_dim
        self.kv_groups = int(getattr(attn, "num_kv_groups", 1) or 1)
        self.post_norm = isinstance(block, EvaBlockPostNorm)

    def named_parameters(self) -> Iterator[Tuple[str, nn.Parameter]]:
        return self.block.named_parameters()

    def norm1(self, x: Tensor) -> Tensor:
        return x if self.post_norm else self.block.norm1(x)

    def _project(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        attn, (b, n, _) = self.attn, x.shape
        if attn.qkv is not None:
            if getattr(attn, "q_bias", None) is not None:
                bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
                if attn.qkv_bias_separate:
                    qkv = attn.qkv(x) + bias
                else:
                    qkv = F.linear(x, attn.qkv.weight, bias)
            else:
                qkv = attn.qkv(x)
            q, k, v = qkv.reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            return q, k, v
        q = attn.q_proj(x).reshape(b, n, -1, self.head_dim).transpose(1, 2)
        k = attn.k_proj(x).reshape(b, n, -1, self.head_dim).transpose(1, 2)
        v = attn.v_proj(x).reshape(b, n, -1, self.head_dim).transpose(1, 2)
        return q, k, v

    def qkv(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        attn = self.attn
        q, k, v = self._project(x)
        q, k = attn.q_norm(q), attn.k_norm(k)
        rope = self.tower.rope_for(x.shape[1])
        if rope is not None:
            p = attn.num_prefix_tokens
            half = bool(getattr(attn, "rotate_half", False))
            q = torch.cat([q[:, :, :p], _apply_rot_embed_cat(q[:, :, p:], rope, half=half)], 2)
            k = torch.cat([k[:, :, :p], _apply_rot_embed_cat(k[:, :, p:], rope, half=half)], 2)
            q, k = q.type_as(v), k.type_as(v)
        if self.kv_groups > 1:
            k = k.repeat_interleave(self.kv_groups, dim=1)
            v = v.repeat_interleave(self.kv_groups, dim=1)
        return q, k, v

    def attention_logits(self, q: Tensor, k: Tensor) -> Tensor:
        return (q * self.scale) @ k.transpose(-2, -1)

    def original_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return attention(q, k, v, self.scale)

    def out(self, heads_out: Tensor) -> Tensor:
        x = self.attn.proj(self.attn.norm(merge_heads(heads_out)))
        return self.block.norm1(x) if self.post_norm else x

    def ls1(self, x: Tensor) -> Tensor:
        gamma = getattr(self.block, "gamma_1", None)
        return x if gamma is None else gamma * x

    @property
    def branch_is_affine(self) -> bool:  # gamma_1 is a plain scale
        return not self.post_norm and isinstance(self.attn.norm, nn.Identity)

    def norm2(self, x: Tensor) -> Tensor:
        return x if self.post_norm else self.block.norm2(x)

    def mlp(self, x: Tensor) -> Tensor:
        x = self.block.mlp(x)
        return self.block.norm2(x) if self.post_norm else x

    def ls2(self, x: Tensor) -> Tensor:
        gamma = getattr(self.block, "gamma_2", None)
        return x if gamma is None else gamma * x

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x, rope=self.tower.rope_for(x.shape[1]))


# ---------------------------------------------------------------------------------------------
# heads


class _LatentPoolHead(AttentionPoolHead):
    r"""timm's MAP head ``AttentionPoolLatent``: learned latent probe(s) attend over the
    (normed) tokens, then ``proj``, the head's own ``x + mlp(norm(x))`` and the tower's
    tail (``fc_norm``, classifier, open_clip projection).

    ``key_start`` is the first stream row the pool attends to (timm's
    ``VisionTransformer`` drops prefix tokens, ``Eva`` keeps them).
    """

    query_kind = "probe"

    def __init__(
        self,
        pool: nn.Module,
        key_start: int,
        token_norm: Callable[[Tensor], Tensor],
        tail: Callable[[Tensor], Tensor],
    ) -> None:
        if getattr(pool, "pos_embed", None) is not None:
            raise TypeError("model: MAP heads with their own positional embedding are not supported")
        if pool.pool not in ("token", "avg"):
            raise TypeError(
                f"model: MAP head with pool={pool.pool!r} returns every latent, not one image "
                "embedding; expected 'token' or 'avg'"
            )
        self.pool_module = pool
        self.key_start = key_start
        self._token_norm = token_norm
        self._tail = tail
        self.num_heads = pool.num_heads
        self.head_dim = pool.head_dim
        self._width = pool.kv.out_features // 2

    def prepare(self, tokens: Tensor, num_prefix_tokens: int, grid: Tuple[int, int]) -> Tensor:
        return self._token_norm(tokens)

    def query(self, keys: Tensor) -> Tensor:
        latent = self.pool_module.latent.to(keys.dtype)
        return latent.expand(keys.shape[0], -1, -1)

    def q(self, x: Tensor) -> Tensor:
        return self.pool_module.q(x)

    def _kv(self, x: Tensor, index: int) -> Tensor:
        kv, w = self.pool_module.kv, self._width
        bias = None if kv.bias is None else kv.bias[index * w : (index + 1) * w]
        return F.linear(x, kv.weight[index * w : (index + 1) * w], bias)

    def k(self, x: Tensor) -> Tensor:
        return self._kv(x, 0)

    def v(self, x: Tensor) -> Tensor:
        return self._kv(x, 1)

    def out(self, x: Tensor) -> Tensor:
        return self.pool_module.proj(x)

    def _residual(self, x: Tensor) -> Tensor:
        pool = self.pool_module
        return x if pool.mlp is None else x + pool.mlp(pool.norm(x))

    def finish(self, x: Tensor) -> Tensor:
        return self._tail(self._residual(x))

    def _attend_rows(self, queries: Tensor, keys: Tensor) -> Tensor:
        r"""The pool's attention of ``queries`` over ``keys`` through ``proj`` and its MLP
        residual (before the tower's tail), ``[B, Nq, C]``."""
        pool = self.pool_module
        width = pool.q.in_features if isinstance(pool.q, nn.Linear) else pool.latent_dim
        if queries.shape[-1] != width:
            raise TypeError(
                f"model: the MAP head's latent is {width} wide but the tokens are "
                f"{queries.shape[-1]} wide, so grid tokens cannot query it (no raw map)"
            )
        keys = keys[:, self.key_start :]
        q = pool.q_norm(self.split_heads(self.q(queries)))
        k = pool.k_norm(self.split_heads(self.k(keys)))
        v = self.split_heads(self.v(keys))
        return self._residual(self.out(self.merge_heads(attention(q, k, v, self.scale))))

    def attend(self, queries: Tensor, keys: Tensor) -> Tensor:
        return self._tail(self._attend_rows(queries, keys))

    def pool(self, tokens: Tensor, num_prefix_tokens: int, grid: Tuple[int, int]) -> Tensor:
        keys = self.prepare(tokens, num_prefix_tokens, grid)
        rows = self._attend_rows(self.query(keys), keys)
        pooled = rows[:, 0] if self.pool_module.pool == "token" else rows.mean(dim=1)
        return self._tail(pooled)


def _channels_first_norm(norm: nn.Module) -> Callable[[Tensor], Tensor]:
    r"""Apply a norm written for ``[B, C, H, W]`` maps (e.g. ``LayerNorm2d``) to tokens ``[B, N, C]``."""
    if isinstance(norm, nn.Identity):
        return _identity

    def apply(x: Tensor) -> Tensor:
        return norm(x.transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2)

    return apply


def _conv_head(visual: TimmModel, trunk: nn.Module) -> _AverageHead:
    r"""The average head of a conv / windowed trunk: timm's ``ClassifierHead`` or
    ``NormMlpClassifierHead`` (average pool, norm, pre-logits, fc), then open_clip's head."""
    head = trunk.head
    if not isinstance(head, (ClassifierHead, NormMlpClassifierHead)):
        raise TypeError(
            f"model: unsupported classifier head {type(head).__qualname__} on a "
            f"{type(trunk).__qualname__} trunk; expected timm's ClassifierHead or "
            "NormMlpClassifierHead"
        )
    pool_type = getattr(head.global_pool, "pool_type", "")
    if pool_type not in _AVERAGE_POOLS:
        raise TypeError(
            f"model: the {type(trunk).__qualname__} trunk pools with {pool_type!r}; only average "
            "pooling has a per-location decomposition"
        )
    fc = head.fc
    if not isinstance(fc, (nn.Linear, nn.Identity)):
        raise TypeError(f"model: unsupported classifier layer {type(fc).__qualname__} (expected Linear)")
    pre_logits, norm = _module(head, "pre_logits"), _module(head, "norm")

    def linear(x: Tensor) -> Tensor:
        return visual.head(fc(pre_logits(x)))

    return _AverageHead(linear, norm=_channels_first_norm(norm))


# ---------------------------------------------------------------------------------------------
# towers


class _TimmViTView(ImageTowerView):
    r"""timm ``VisionTransformer`` / ``Eva`` / ``VisionTransformerRelPos`` as a token stream."""

    def __init__(self, visual: TimmModel) -> None:
        trunk = visual.trunk
        self.visual = visual
        self.trunk = trunk
        pe = trunk.patch_embed
        if not isinstance(pe, (PatchEmbed, HybridEmbed)):
            raise TypeError(
                f"model: unsupported patch embedding {type(pe).__qualname__}; expected timm's "
                "PatchEmbed or HybridEmbed"
            )
        self.num_prefix_tokens = int(trunk.num_prefix_tokens)
        self.native_grid = tuple(int(g) for g in pe.grid_size)
        size = tuple(int(s) for s in pe.img_size)
        self._size = size
        self.patch_size = (size[0] // self.native_grid[0], size[1] // self.native_grid[1])
        self._ropes: Dict[int, Optional[Tensor]] = {}
        self.native_only = isinstance(trunk, RelPosViT)
        if isinstance(trunk, Eva):
            self._check_eva(trunk)
            self.blocks: List[BlockView] = [_EvaBlockView(b, self) for b in trunk.blocks]
        elif isinstance(trunk, RelPosViT):
            for block in trunk.blocks:
                if not isinstance(block, RelPosBlock):
                    raise TypeError(
                        f"model: unsupported relative-position block {type(block).__qualname__}; "
                        "expected timm's pre-norm RelPosBlock"
                    )
            self.blocks = [_TimmBlockView(b, trunk.shared_rel_pos) for b in trunk.blocks]
        else:
            for block in trunk.blocks:
                if not (isinstance(block, TimmBlock) and isinstance(block.attn, TimmAttention)):
                    raise TypeError(
                        f"model: unsupported timm ViT block {type(block).__qualname__} with "
                        f"{type(getattr(block, 'attn', None)).__qualname__}; expected timm's "
                        "pre-norm Block with Attention"
                    )
            self.blocks = [_TimmBlockView(b) for b in trunk.blocks]
        self.head = self._head()

    @staticmethod
    def _check_eva(trunk: nn.Module) -> None:
        if getattr(trunk, "rope_mixed", False):
            raise TypeError(
                "model: Eva trunks with mixed (per-block learned) rotary embeddings are not supported"
            )
        for block in trunk.blocks:
            if not (
                isinstance(block, (EvaBlock, EvaBlockPostNorm))
                and isinstance(block.attn, (EvaAttention, AttentionRope))
            ):
                raise TypeError(
                    f"model: unsupported Eva block {type(block).__qualname__}; expected timm's "
                    "EvaBlock or EvaBlockPostNorm with EvaAttention or AttentionRope"
                )
        if trunk.rope is not None and not isinstance(trunk.rope, RotaryEmbeddingCat):
            raise TypeError(
                f"model: unsupported rotary embedding {type(trunk.rope).__qualname__}; expected "
                "timm's RotaryEmbeddingCat"
            )
        if trunk.rope is not None and _apply_rot_embed_cat is None:
            raise TypeError("model: this timm release lacks apply_rot_embed_cat (update timm)")

    def _head(self) -> PoolingHead:
        visual, trunk = self.visual, self.trunk
        tail = _tail(visual, trunk)
        norm = trunk.norm
        attn_pool = getattr(trunk, "attn_pool", None)
        pool = trunk.global_pool
        if attn_pool is not None:
            if not isinstance(attn_pool, AttentionPoolLatent):
                raise TypeError(
                    f"model: unsupported attention pool {type(attn_pool).__qualname__}; expected "
                    "timm's AttentionPoolLatent (MAP)"
                )
            include = isinstance(trunk, Eva) or getattr(trunk, "pool_include_prefix", False)
            key_start = 0 if include else self.num_prefix_tokens
            return _LatentPoolHead(attn_pool, key_start, norm, tail)
        if pool == "token":
            projection = lambda x: visual.head(trunk.head(x))  # noqa: E731
            fc_norm = _module(trunk, "fc_norm")
            return _TokenHead(lambda x: fc_norm(norm(x)), projection)
        if pool == "avg":
            include = bool(getattr(trunk, "pool_include_prefix", False))
            return _AverageHead(
                lambda x: visual.head(trunk.head(x)),
                norm=_module(trunk, "fc_norm"),
                token_norm=norm,
                include_prefix=include,
            )
        raise TypeError(
            f"model: the {type(trunk).__qualname__} trunk pools with global_pool={pool!r}; "
            "expected 'token', 'avg' or 'map'"
        )

    def input_size(self) -> Tuple[int, int]:
        r"""The size the patch embedding was built for (it may exceed grid × patch: a
        patch-14 trunk at 384 px drops the last 6 pixels, as the model does)."""
        return self._size  # type: ignore[return-value]

    def rope_for(self, num_tokens: int) -> Optional[Tensor]:
        r"""The rotary embedding of the last grid embedded with ``num_tokens`` tokens."""
        rope = getattr(self.trunk, "rope", None)
        if rope is None:
            return None
        if num_tokens not in self._ropes:
            gh, gw = self.native_grid
            if num_tokens != self.num_prefix_tokens + gh * gw:
                raise ValueError(
                    f"x: {num_tokens} tokens match no grid embedded by this view; call embed() "
                    "first so the rotary embedding of its grid is known"
                )
            return self._rope(self.native_grid)
        return self._ropes[num_tokens]

    def _rope(self, grid: Tuple[int, int]) -> Tensor:
        r"""The model's rotary embedding for ``grid``: its own cached table at the native
        grid, otherwise rebuilt from its frequency bands as timm does for dynamic sizes."""
        rope = self.trunk.rope
        if grid == self.native_grid:
            return rope.get_embed() if hasattr(rope, "feat_shape") else rope.get_embed(shape=grid)
        if not getattr(rope, "_use_cached_embed", True):
            return rope.get_embed(shape=list(grid))
        build = getattr(rope, "_build_embed_cat", None)
        if build is None:
            h, w = self.input_size()
            raise ValueError(
                f"images: this model's rotary embedding is fixed to its native input size "
                f"{h}x{w}; resize the images to it"
            )
        return build(list(grid), rope.bands)

    def _patch_tokens(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        pe = self.trunk.patch_embed
        x = images
        if isinstance(pe, HybridEmbed):
            x = pe.backbone(x)
            if isinstance(x, (list, tuple)):
                x = x[-1]
        if pe.dynamic_img_pad:
            ph, pw = pe.patch_size
            x = F.pad(x, (0, (pw - x.shape[-1] % pw) % pw, 0, (ph - x.shape[-2] % ph) % ph))
        x = pe.proj(x)
        grid = (int(x.shape[-2]), int(x.shape[-1]))
        x = x.flatten(2).transpose(1, 2)
        norm = getattr(pe, "norm", None)
        return (x if norm is None else norm(x)), grid

    def embed(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        trunk = self.trunk
        if self.native_only and tuple(images.shape[-2:]) != self.input_size():
            h, w = self.input_size()
            raise ValueError(
                f"images: the {type(trunk).__qualname__} trunk's relative position bias is fixed "
                f"to its native input size {h}x{w}, got {images.shape[-2]}x{images.shape[-1]}"
            )
        x, grid = self._patch_tokens(images)
        b = x.shape[0]
        prefix = [
            t.to(x.dtype).expand(b, -1, -1)
            for t in (getattr(trunk, "cls_token", None), getattr(trunk, "reg_token", None))
            if t is not None
        ]
        table = getattr(trunk, "pos_embed", None)
        no_embed_class = bool(getattr(trunk, "no_embed_class", False))
        if table is not None:
            rows = 0 if no_embed_class else self.num_prefix_tokens
            table = resize_positional_embedding(table[0], self.native_grid, grid, rows).to(x.dtype)
        if no_embed_class:
            x = x if table is None else x + table
            x = torch.cat(prefix + [x], dim=1)
        else:
            x = torch.cat(prefix + [x], dim=1)
            x = x if table is None else x + table
        if getattr(trunk, "rope", None) is not None:
            if len(self._ropes) >= 8:
                self._ropes.clear()
            self._ropes[x.shape[1]] = self._rope(grid)
        norm_pre = getattr(trunk, "norm_pre", None)
        return (x if norm_pre is None else norm_pre(x)), grid


class _TimmConvView(ImageTowerView):
    r"""A trunk without exposed attention blocks (ConvNeXt, FastViT, Swin): its output
    map is the token stream, its classifier head an average head."""

    num_prefix_tokens = 0
    blocks = ()

    def __init__(self, visual: TimmModel) -> None:
        trunk = visual.trunk
        self.visual = visual
        self.trunk = trunk
        self.channels_last = isinstance(trunk, SwinTransformer)
        self.native_only = self.channels_last and getattr(trunk.patch_embed, "strict_img_size", True)
        stride = int(trunk.feature_info[-1]["reduction"])
        size = tuple(int(s) for s in visual.image_size)
        self.patch_size = (stride, stride)
        self.native_grid = (size[0] // stride, size[1] // stride)
        self._size = size
        self.head = _conv_head(visual, trunk)

    def input_size(self) -> Tuple[int, int]:
        return self._size  # type: ignore[return-value]

    def embed(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        if self.native_only and tuple(images.shape[-2:]) != self._size:
            h, w = self._size
            raise ValueError(
                f"images: the {type(self.trunk).__qualname__} trunk's windowed attention is fixed "
                f"to its native input size {h}x{w}, got {images.shape[-2]}x{images.shape[-1]}"
            )
        x = self.trunk.forward_features(images)
        if self.channels_last:
            b, h, w, c = x.shape
            return x.reshape(b, h * w, c), (h, w)
        return x.flatten(2).transpose(1, 2), (int(x.shape[-2]), int(x.shape[-1]))

    def gradcam_module(self) -> nn.Module:
        trunk = self.trunk
        if isinstance(trunk, SwinTransformer):
            return trunk.norm
        if isinstance(trunk, FastVit):
            return trunk.final_conv
        norm_pre = getattr(trunk, "norm_pre", None)
        return trunk.stages[-1] if norm_pre is None or isinstance(norm_pre, nn.Identity) else norm_pre


def timm_tower_view(visual: nn.Module) -> ImageTowerView:
    r"""The view of an open_clip ``TimmModel`` tower, or a one-line ``TypeError`` saying why not.

    Args:
        visual (nn.Module): ``model.visual``.

    Returns:
        ImageTowerView: the tower's view.
    """
    if not isinstance(visual, TimmModel):
        raise TypeError(f"model: expected an open_clip TimmModel image tower, got {type(visual).__qualname__}")
    if "pool" in dict(visual.head.named_children()):
        raise TypeError(
            "model: open_clip timm towers with an attention-pool head (timm_pool 'abs_attn' / "
            "'rot_attn') are not supported"
        )
    trunk = visual.trunk
    if isinstance(trunk, (TimmVisionTransformer, Eva, RelPosViT)):
        return _TimmViTView(visual)
    if isinstance(trunk, (ConvNeXt, FastVit, SwinTransformer)):
        if getattr(trunk, "fork_feat", False):
            raise TypeError("model: FastViT trunks built for dense features (fork_feat) have no head")
        return _TimmConvView(visual)
    raise TypeError(
        f"model: unsupported timm trunk {type(trunk).__qualname__}; expected VisionTransformer, "
        "Eva, VisionTransformerRelPos, ConvNeXt, FastVit or SwinTransformer"
    )


class OpenCLIPTimmAdapter(OpenCLIPAdapter):
    r"""Adapter for open_clip models whose image tower is built from timm (``TimmModel``).

    :meth:`supports` takes open_clip ``CLIP`` / ``CustomTextCLIP`` / ``CoCa`` models whose
    ``model.visual`` is a ``TimmModel``; trunks the views do not cover are refused when
    the adapter is built, with a one-line ``TypeError`` saying why. Head kinds: MAP
    heads (SigLIP, SigLIP2, PE-Core) are ``"attention"`` heads with a learned probe
    query; class-token trunks (EVA, MobileCLIP ViTs) ``"token"``; average-pooled ViTs
    (ViTamin) and conv / windowed trunks (ConvNeXt, FastViT, Swin) ``"average"``.
    The text tower, logit scale / bias and input normalisation are read as in
    :class:`~captum_clip_surgery.adapters.openclip.OpenCLIPAdapter`.

    Args:
        model (nn.Module): the open_clip model; it is only read, never changed.

    Examples::

        >>> import open_clip
        >>> model = open_clip.create_model("ViT-B-16-SigLIP")
        >>> adapter = OpenCLIPTimmAdapter(model)
        >>> adapter.image.kind, adapter.image.head.query_kind, adapter.score_kind
        ('attention', 'probe', 'sigmoid')
    """

    family = (
        "open_clip with a timm image tower (ViT: SigLIP, SigLIP2, ViTamin, MobileCLIP; Eva: "
        "EVA01/02, PE-Core; RelPos ViT; ConvNeXt; FastViT: MobileCLIP; Swin)"
    )

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self._first_conv = next(
            (m for m in model.visual.trunk.modules() if isinstance(m, nn.Conv2d)), None
        )

    @classmethod
    def _image_view(cls, visual: nn.Module) -> ImageTowerView:
        return timm_tower_view(visual)

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return isinstance(model, OPEN_CLIP_MODELS) and isinstance(
            getattr(model, "visual", None), TimmModel
        )

    def _input_weight(self) -> Tensor:
        if self._first_conv is not None:
            return self._first_conv.weight
        return next(p for p in self.model.visual.parameters() if p.is_floating_point())
