r"""Adapter for open_clip 3.x models with open_clip's own image towers.

Models: ``open_clip.CLIP``, ``CustomTextCLIP`` and ``CoCa``. Image towers:
``VisionTransformer`` with either block kind open_clip builds
(``ResidualAttentionBlock`` on ``nn.MultiheadAttention``, batch first, and
``CustomResidualAttentionBlock`` on open_clip's own ``Attention``) and class-token,
average (CLIPA) or attentional-pooler (CoCa) heads; and ``ModifiedResNet`` with
its attention pool. Towers built from timm (``TimmModel``) are handled by
:mod:`captum_clip_surgery.adapters.openclip_timm`. Text towers: open_clip's
``TextTransformer`` (with the fast truncated encoding), and any other text tower
through the model's own ``encode_text``.
"""

from __future__ import annotations

import functools
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import open_clip
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import (
    Attention,
    CustomResidualAttentionBlock,
    ResidualAttentionBlock,
    TextTransformer,
    VisionTransformer,
    text_global_pool,
)
from torch import Tensor, nn

from captum_clip_surgery.adapters._common import (
    CLIPAttentionPoolHead,
    MultiheadBlockView,
    is_scale_or_identity,
)
from captum_clip_surgery.adapters.base import (
    AttentionPoolHead,
    AveragePoolHead,
    BlockView,
    ClassTokenHead,
    CLIPAdapter,
    ImageTowerView,
    PoolingHead,
    TextTowerView,
    attention,
    merge_heads,
    resize_positional_embedding,
    split_heads,
)
from captum_clip_surgery.adapters.text_batching import encode_sharing_prefixes

__all__ = ["OPEN_CLIP_MODELS", "OpenCLIPAdapter"]


class _CustomBlockView(BlockView):
    r"""``CustomResidualAttentionBlock`` (open_clip's ``Attention``)."""

    def __init__(self, block: CustomResidualAttentionBlock) -> None:
        self.block = block
        self.attn: Attention = block.attn
        self.num_heads = self.attn.num_heads
        self.head_dim = self.attn.head_dim

    def named_parameters(self) -> Iterator[Tuple[str, nn.Parameter]]:
        return self.block.named_parameters()

    def norm1(self, x: Tensor) -> Tensor:
        return self.block.ln_1(x)

    def qkv(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        q, k, v = F.linear(x, self.attn.in_proj_weight, self.attn.in_proj_bias).chunk(3, dim=-1)
        return split_heads(q, self.num_heads), split_heads(k, self.num_heads), split_heads(v, self.num_heads)

    def attention_logits(self, q: Tensor, k: Tensor) -> Tensor:
        attn = self.attn
        if attn.logit_scale is not None:
            cos = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
            return cos * torch.clamp(attn.logit_scale, max=attn.logit_scale_max).exp()
        return (attn.ln_q(q) * self.scale) @ attn.ln_k(k).transpose(-2, -1)

    def original_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        attn = self.attn
        if attn.logit_scale is None and q.dtype == torch.float32:
            return attention(attn.ln_q(q), attn.ln_k(k), v)
        return super().original_attention(q, k, v)

    def out(self, heads_out: Tensor) -> Tensor:
        attn = self.attn
        if attn.head_scale is not None:
            heads_out = heads_out * attn.head_scale
        x = attn.ln_inner(merge_heads(heads_out))
        return self.block.ln_attn(attn.out_proj(x))

    def ls1(self, x: Tensor) -> Tensor:
        return self.block.ls_1(x)

    @property
    def branch_is_affine(self) -> bool:
        return (isinstance(self.attn.ln_inner, nn.Identity)
                and isinstance(self.block.ln_attn, nn.Identity)
                and is_scale_or_identity(self.block.ls_1))

    def norm2(self, x: Tensor) -> Tensor:
        return self.block.ln_2(x)

    def mlp(self, x: Tensor) -> Tensor:
        return self.block.mlp(x)

    def ls2(self, x: Tensor) -> Tensor:
        return self.block.ls_2(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


@functools.lru_cache(maxsize=8)
def _simple_tokenizer(context_length: int) -> open_clip.SimpleTokenizer:
    r"""open_clip's CLIP BPE tokenizer, built once per context length (reading its
    vocabulary takes about 0.1 s; the tokenizer itself only memoises BPE merges)."""
    return open_clip.SimpleTokenizer(context_length=context_length)


def _block_view(block: nn.Module) -> BlockView:
    if isinstance(block, ResidualAttentionBlock):
        if hasattr(block, "ln_1_kv"):
            raise TypeError("model: cross-attention blocks are not supported in the image tower")
        return MultiheadBlockView(block)
    if isinstance(block, CustomResidualAttentionBlock):
        return _CustomBlockView(block)
    raise TypeError(
        f"model: unsupported transformer block {type(block).__qualname__}; expected open_clip "
        "ResidualAttentionBlock or CustomResidualAttentionBlock"
    )


def _identity(x: Tensor) -> Tensor:
    return x


class _TokenHead(ClassTokenHead):
    r"""Class-token head from two callables: ``projection(post_norm(token))``."""

    def __init__(
        self, post_norm: Callable[[Tensor], Tensor], projection: Callable[[Tensor], Tensor]
    ) -> None:
        self._post_norm = post_norm
        self._projection = projection

    def post_norm(self, x: Tensor) -> Tensor:
        return self._post_norm(x)

    def projection(self, x: Tensor) -> Tensor:
        return self._projection(x)


class _AverageHead(AveragePoolHead):
    r"""Average pooling from callables: ``linear(norm(mean(token_norm(grid tokens))))``.

    ``token_norm`` is a per-token norm the model applies *before* pooling (e.g. a
    final norm on every token), ``norm`` one it applies to the pooled vector.
    :meth:`dense` applies all three at every location. With ``include_prefix``
    the prefix tokens take part in the mean, as in the model.
    """

    def __init__(
        self,
        linear: Callable[[Tensor], Tensor],
        norm: Callable[[Tensor], Tensor] = _identity,
        token_norm: Callable[[Tensor], Tensor] = _identity,
        include_prefix: bool = False,
    ) -> None:
        self._linear = linear
        self._norm = norm
        self._token_norm = token_norm
        self.include_prefix = include_prefix

    def norm(self, x: Tensor) -> Tensor:
        return self._norm(x)

    def linear(self, x: Tensor) -> Tensor:
        return self._linear(x)

    def pool(self, tokens: Tensor, num_prefix_tokens: int, grid: Tuple[int, int]) -> Tensor:
        x = tokens if self.include_prefix else tokens[:, num_prefix_tokens:]
        mean = self._token_norm(x).mean(dim=1, keepdim=True)
        return self.linear(self.norm(mean))[:, 0]

    def dense(self, tokens: Tensor) -> Tensor:
        return self.linear(self.norm(self._token_norm(tokens)))


def _mha_projection(attn: nn.MultiheadAttention, index: int) -> Tuple[Tensor, Optional[Tensor]]:
    r"""Weight and bias of the q (0), k (1) or v (2) projection of an ``nn.MultiheadAttention``."""
    if attn._qkv_same_embed_dim:
        weight = attn.in_proj_weight.chunk(3, dim=0)[index]
    else:
        weight = (attn.q_proj_weight, attn.k_proj_weight, attn.v_proj_weight)[index]
    bias = None if attn.in_proj_bias is None else attn.in_proj_bias.chunk(3, dim=0)[index]
    return weight, bias


class _AttentionalPoolerHead(AttentionPoolHead):
    r"""open_clip's ``AttentionalPooler`` (CoCa): learned queries attend over every
    stream token (class token included) after ``ln_k``; then ``ln_post`` and ``proj``.

    The contrastive embedding is the first query's output (``pool_type='tok'``) or
    the mean of the others (``'avg'``), as in ``VisionTransformer._pool``.
    """

    query_kind = "probe"

    def __init__(self, visual: VisionTransformer) -> None:
        self.visual = visual
        self.pooler = visual.attn_pool
        self.attn: nn.MultiheadAttention = self.pooler.attn
        self.num_heads = self.attn.num_heads
        self.head_dim = self.attn.embed_dim // self.attn.num_heads
        self.pool_type = visual.pool_type

    def prepare(self, tokens: Tensor, num_prefix_tokens: int, grid: Tuple[int, int]) -> Tensor:
        return self.pooler.ln_k(tokens)

    def query(self, keys: Tensor) -> Tensor:
        queries = self.pooler.ln_q(self.pooler.query)
        queries = queries[:1] if self.pool_type == "tok" else queries[1:]
        return queries.to(keys.dtype).unsqueeze(0).expand(keys.shape[0], -1, -1)

    def q(self, x: Tensor) -> Tensor:
        return F.linear(x, *_mha_projection(self.attn, 0))

    def k(self, x: Tensor) -> Tensor:
        return F.linear(x, *_mha_projection(self.attn, 1))

    def v(self, x: Tensor) -> Tensor:
        return F.linear(x, *_mha_projection(self.attn, 2))

    def out(self, x: Tensor) -> Tensor:
        return self.attn.out_proj(x)

    def finish(self, x: Tensor) -> Tensor:
        return self.visual.ln_post(x) @ self.visual.proj.to(x.dtype)

    def token_query_reason(self) -> Optional[str]:
        if self.attn.kdim != self.attn.embed_dim:
            return (f"the CoCa attentional pooler takes {self.attn.embed_dim}-wide queries but "
                    f"the stream tokens are {self.attn.kdim} wide, so grid tokens cannot query "
                    "it")
        return None

    def attend(self, queries: Tensor, keys: Tensor) -> Tensor:
        if queries.shape[-1] != self.attn.embed_dim:
            raise TypeError(
                f"model: the CoCa attentional pooler takes {self.attn.embed_dim}-wide queries but "
                f"the stream tokens are {queries.shape[-1]} wide, so grid tokens cannot query it "
                "(no raw map for this tower; CLIP Surgery and MaskCLIP use its value path)"
            )
        return super().attend(queries, keys)

    def pool(self, tokens: Tensor, num_prefix_tokens: int, grid: Tuple[int, int]) -> Tensor:
        keys = self.prepare(tokens, num_prefix_tokens, grid)
        pooled = self.attend(self.query(keys), keys)
        return pooled[:, 0] if self.pool_type == "tok" else pooled.mean(dim=1)


def _vit_head(visual: VisionTransformer) -> PoolingHead:
    r"""The pooling head of an open_clip ``VisionTransformer``, or a ``TypeError`` saying why not."""
    if visual.proj is None:
        raise TypeError("model: the ViT tower has no output projection (pruned head)")

    def projection(x: Tensor) -> Tensor:
        return x @ visual.proj.to(x.dtype)

    if visual.attn_pool is not None:
        if getattr(visual, "attn_pool_contrastive", None) is not None:
            raise TypeError(
                f"model: open_clip ViT towers with attentional_pool={visual.attn_pool_type!r} "
                "(work-in-progress pooling upstream) are not supported; the CoCa pooler "
                "(attentional_pool=True) is"
            )
        if visual.pool_type not in ("tok", "avg"):
            raise TypeError(
                f"model: open_clip ViT tower with an attentional pool and pool_type="
                f"{visual.pool_type!r} returns every query, not one image embedding; expected "
                "'tok' or 'avg'"
            )
        return _AttentionalPoolerHead(visual)
    if visual.pool_type == "tok":
        return _TokenHead(visual.ln_post, projection)
    if visual.pool_type == "avg":
        if visual.final_ln_after_pool:
            return _AverageHead(projection, norm=visual.ln_post)
        return _AverageHead(projection, token_norm=visual.ln_post)
    raise TypeError(
        f"model: open_clip ViT tower with pool_type={visual.pool_type!r} returns every token, "
        "not one image embedding; expected 'tok' or 'avg'"
    )


class _OpenCLIPViTView(ImageTowerView):
    num_prefix_tokens = 1

    def __init__(self, visual: VisionTransformer) -> None:
        self.visual = visual
        self.head = _vit_head(visual)
        self.patch_size = tuple(visual.patch_size)
        self.native_grid = tuple(visual.grid_size)
        self.blocks = [_block_view(b) for b in visual.transformer.resblocks]

    def input_size(self) -> Tuple[int, int]:
        return tuple(int(s) for s in self.visual.image_size)  # type: ignore[return-value]

    def embed(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        v = self.visual
        x = v.conv1(images)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).reshape(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        pos = resize_positional_embedding(v.positional_embedding, self.native_grid, grid)
        return v.ln_pre(x + pos.to(x.dtype)), grid


class _OpenCLIPResNetView(ImageTowerView):
    num_prefix_tokens = 0
    blocks = ()

    def __init__(self, visual: ModifiedResNet) -> None:
        self.visual = visual
        self.head = CLIPAttentionPoolHead(visual.attnpool)
        self.patch_size = (32, 32)
        self.native_grid = self.head.native_grid

    def embed(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        v = self.visual
        x = v.stem(images.to(v.conv1.weight.dtype))
        x = v.layer4(v.layer3(v.layer2(v.layer1(x))))
        return x.flatten(2).transpose(1, 2), (x.shape[-2], x.shape[-1])

    def gradcam_module(self) -> nn.Module:
        return self.visual.layer4


#: Vocabulary size of the CLIP BPE tokenizer (open_clip's ``SimpleTokenizer``).
CLIP_BPE_VOCAB = 49408


class _OpenCLIPTextView(TextTowerView):
    def __init__(self, model: nn.Module) -> None:
        self.model = model
        tower: Optional[nn.Module]
        if isinstance(model, open_clip.CLIP):
            tower = model
            self._pool_type = model.text_pool_type
            self._eos_id = getattr(model, "text_eos_id", None)
            self._cls_emb = None
            self._pad_mask = False
        elif isinstance(getattr(model, "text", None), TextTransformer):
            tower = model.text
            self._pool_type = tower.pool_type
            self._eos_id = tower.eos_id
            self._cls_emb = tower.cls_emb
            self._pad_mask = tower.use_pad_mask
        else:
            tower = None
        self._tower = tower
        self.context_length = int(getattr(model, "context_length", 77) or 77)
        self._decoder: Optional[open_clip.SimpleTokenizer] = None

    def default_tokenizer(self) -> Callable[[List[str]], Tensor]:
        r"""open_clip's CLIP BPE tokenizer; refused (``TypeError``) for text towers with
        another vocabulary (SigLIP, multilingual towers), whose tokenizer the model does
        not record: pass ``tokenizer=open_clip.get_tokenizer(name)`` for those."""
        vocab = getattr(self.model, "vocab_size", None)
        if vocab is not None and int(vocab) != CLIP_BPE_VOCAB:
            raise TypeError(
                f"tokenizer: this model's text tower has a {int(vocab)}-token vocabulary, not "
                f"the CLIP BPE's {CLIP_BPE_VOCAB}; pass its own tokenizer, e.g. "
                "tokenizer=open_clip.get_tokenizer('<model name>')"
            )
        return _simple_tokenizer(self.context_length)

    def _truncation_length(self, ids: Tensor) -> Optional[int]:
        tower = self._tower
        if (
            tower is None
            or tower.attn_mask is None
            or self._cls_emb is not None
            or self._pad_mask
        ):
            return None
        if self._pool_type == "argmax":
            last = int(ids.argmax(dim=-1).max())
        elif self._pool_type == "eos" and self._eos_id is not None:
            last = int((ids == self._eos_id).int().argmax(dim=-1).max())
        elif self._pool_type == "first":
            last = 0
        else:
            return None
        return last + 1

    def encode(self, token_ids: Tensor, truncate: bool = True) -> Tensor:
        length = self._truncation_length(token_ids) if truncate else None
        if length is None:
            return self.model.encode_text(token_ids, normalize=False)
        ids = token_ids[:, :length]
        x = text_global_pool(self._final_states(ids), ids, self._pool_type,
                             eos_token_id=self._eos_id)
        return self._project(x)

    def encode_many(
        self, token_ids: Tensor, max_prompts: int = 512, overhead: float = 32.0
    ) -> Tensor:
        r"""Length buckets, and each prefix shared by several prompts computed once
        (the causal mask makes a position depend only on the tokens before it)."""
        blocks = self._shareable_blocks(token_ids)
        if blocks is None:
            return super().encode_many(token_ids, max_prompts, overhead)
        tower = self._tower
        cast_dtype = tower.transformer.get_cast_dtype()

        def embed(ids: Tensor, positions: Tensor) -> Tensor:
            return (tower.token_embedding(ids).to(cast_dtype)
                    + tower.positional_embedding[positions].to(cast_dtype))

        def finish(x: Tensor) -> Tensor:
            return self._project(tower.ln_final(x))

        return encode_sharing_prefixes(
            token_ids, self.pooled_positions(token_ids) + 1, embed, blocks, finish,
            max_prompts=max_prompts, overhead=overhead,
        )

    def _shareable_blocks(self, ids: Tensor) -> Optional[List[BlockView]]:
        r"""The text blocks as views when prefix sharing is exact for this tower: open_clip's
        causal text transformer pooling at the EOT, with blocks the views understand."""
        tower = self._tower
        if self._truncation_length(ids) is None or self._pool_type not in ("argmax", "eos"):
            return None
        expected = torch.full_like(tower.attn_mask, float("-inf")).triu(1)
        if not torch.equal(tower.attn_mask, expected):  # not the standard causal mask
            return None
        try:
            return [_block_view(b) for b in tower.transformer.resblocks]
        except TypeError:
            return None

    def _final_states(self, ids: Tensor) -> Tensor:
        r"""Every position's output of the last block after ``ln_final``, ``[N, L, width]``."""
        tower = self._tower
        length = ids.shape[1]
        cast_dtype = tower.transformer.get_cast_dtype()
        x = tower.token_embedding(ids).to(cast_dtype)
        x = x + tower.positional_embedding[:length].to(cast_dtype)
        mask = None if tower.attn_mask is None else tower.attn_mask[:length, :length]
        return tower.ln_final(tower.transformer(x, attn_mask=mask))

    def _project(self, x: Tensor) -> Tensor:
        r"""The text projection into the joint space (none, a matrix or a Linear)."""
        proj = self._tower.text_projection
        if proj is None:
            return x
        if isinstance(proj, nn.Linear):
            return proj(x)
        return x @ proj

    def token_features(self, token_ids: Tensor) -> Tensor:
        tower = self._tower
        if tower is None or self._cls_emb is not None or self._pad_mask:
            raise TypeError(
                "model: per-token text features need open_clip's text transformer without a "
                "class token or padding mask (the standard CLIP text tower)"
            )
        length = self._truncation_length(token_ids) or token_ids.shape[1]
        return self._project(self._final_states(token_ids[:, :length]))

    def pooled_positions(self, token_ids: Tensor) -> Tensor:
        if self._tower is not None and self._cls_emb is None:
            if self._pool_type == "argmax":
                return token_ids.argmax(dim=-1)
            if self._pool_type == "eos" and self._eos_id is not None:
                return (token_ids == self._eos_id).int().argmax(dim=-1)
        raise TypeError(
            f"model: the text tower pools with {getattr(self, '_pool_type', None)!r}; per-token "
            "explanations need open_clip's text transformer with end-of-text pooling ('argmax' "
            "or 'eos')"
        )

    def token_pieces(
        self, token_ids: Sequence[int], tokenizer: Optional[object] = None
    ) -> List[Tuple[bytes, bool]]:
        tok = tokenizer
        if not (hasattr(tok, "decoder") and hasattr(tok, "byte_decoder")):
            if self._decoder is None:
                self._decoder = open_clip.SimpleTokenizer(context_length=self.context_length)
            tok = self._decoder
        decoder, byte_decoder = tok.decoder, tok.byte_decoder  # type: ignore[union-attr]
        pieces = []
        for i in token_ids:
            text = decoder[int(i)]
            ends = text.endswith("</w>")
            if ends:
                text = text[: -len("</w>")]
            pieces.append((bytes(byte_decoder.get(c, ord("?")) for c in text), ends))
        return pieces


#: The open_clip model classes (``CoCa`` is not a ``CLIP`` subclass).
OPEN_CLIP_MODELS = (open_clip.CLIP, open_clip.CustomTextCLIP, open_clip.CoCa)


def _preprocess_stats(model: nn.Module) -> Tuple[Optional[tuple], Optional[tuple]]:
    r"""The model's own input normalisation ``(mean, std)`` from its preprocess config
    (set by ``open_clip.create_model``), ``(None, None)`` when it has none."""
    visual = model.visual
    cfg = getattr(visual, "preprocess_cfg", None) or {}
    mean = cfg.get("mean", getattr(visual, "image_mean", None))
    std = cfg.get("std", getattr(visual, "image_std", None))
    as_triple = lambda v: None if v is None else tuple(float(c) for c in v)  # noqa: E731
    return as_triple(mean), as_triple(std)


class OpenCLIPAdapter(CLIPAdapter):
    r"""Adapter for open_clip 3.x models with open_clip's own image towers.

    :meth:`supports` takes ``CLIP``, ``CustomTextCLIP`` and ``CoCa`` models whose image
    tower is open_clip's ``VisionTransformer`` or ``ModifiedResNet`` (towers built
    from timm belong to :class:`~captum_clip_surgery.adapters.openclip_timm.OpenCLIPTimmAdapter`).
    ViT heads: class token (``pool_type='tok'``), average (``'avg'``, CLIPA) and
    CoCa's attentional pooler (a probe head: the contrastive embedding is its first
    query); ResNets: the mean-query attention pool. A configuration these views do
    not cover is refused when the adapter is built, by a one-line ``TypeError``
    saying why.

    The input normalisation (:attr:`image_mean`, :attr:`image_std`) comes from the
    model's preprocess config when ``open_clip.create_model`` set one; sigmoid-loss
    models (a ``logit_bias``) report ``score_kind == "sigmoid"``.

    Args:
        model (nn.Module): the open_clip model; it is only read, never changed.

    Examples::

        >>> import open_clip
        >>> model = open_clip.create_model("RN50")
        >>> OpenCLIPAdapter(model).image.kind
        'attention'
    """

    family = "open_clip (CLIP, CustomTextCLIP, CoCa) with open_clip's ViT or ModifiedResNet tower"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        if not isinstance(model, OPEN_CLIP_MODELS):
            raise TypeError(
                f"model: expected an open_clip CLIP, CustomTextCLIP or CoCa model, got "
                f"{type(model).__qualname__}"
            )
        self.image = self._image_view(model.visual)
        self.text = _OpenCLIPTextView(model)
        mean, std = _preprocess_stats(model)
        if mean is not None and std is not None:
            self.image_mean, self.image_std = mean, std
        self.score_kind = "softmax" if getattr(model, "logit_bias", None) is None else "sigmoid"

    @classmethod
    def _image_view(cls, visual: nn.Module) -> ImageTowerView:
        r"""The view of ``model.visual`` (``TypeError`` with the reason when unsupported)."""
        if isinstance(visual, VisionTransformer):
            return _OpenCLIPViTView(visual)
        if isinstance(visual, ModifiedResNet):
            return _OpenCLIPResNetView(visual)
        raise TypeError(
            f"model: unsupported open_clip image tower {type(visual).__qualname__}; expected "
            "open_clip's VisionTransformer or ModifiedResNet, or a timm tower (TimmModel)"
        )

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return isinstance(model, OPEN_CLIP_MODELS) and isinstance(
            getattr(model, "visual", None), (VisionTransformer, ModifiedResNet)
        )

    def encode_image(self, images: Tensor) -> Tensor:
        return self.model.encode_image(images, normalize=False)

    def logit_scale(self) -> Tensor:
        return self.model.logit_scale.exp().reshape(())

    def logit_bias(self) -> Optional[Tensor]:
        bias = getattr(self.model, "logit_bias", None)
        return None if bias is None else bias.reshape(())

    def _input_weight(self) -> Tensor:
        r"""The weight of the layer that takes the images (sets :attr:`dtype`, :attr:`device`)."""
        return self.model.visual.conv1.weight

    @property
    def dtype(self) -> torch.dtype:
        return self._input_weight().dtype

    @property
    def device(self) -> torch.device:
        return self._input_weight().device
