r"""Adapters for Hugging Face ``transformers`` CLIP and SigLIP models (4.4x to 5.x).

Supported:

- ``CLIPModel`` (OpenAI CLIP, MetaCLIP and every other checkpoint that loads as one);
- a ``CLIPVisionModelWithProjection`` and a ``CLIPTextModelWithProjection`` held
  together in an :class:`HFCLIPPair`;
- ``SiglipModel`` (SigLIP, and SigLIP2 FixRes checkpoints, which load as one).

Towers are found by their attributes, never by class: transformers 5.6 removed the
inner ``CLIPVisionTransformer`` / ``CLIPTextTransformer`` wrappers, so
``model.vision_model`` is the tower itself in some versions and a wrapper holding
it as ``.vision_model`` in others. The image views compute every attention
themselves and call the model's own encoder layers for the original stream, in
the calling form of the installed version; the text towers run functionally from
the layers' weights. The model's decorated ``forward`` methods are never called
(in transformers 5.x they install output-capturing hooks on first use).

``transformers`` is not imported by this module; a user holding one of its
models has imported it.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_clip_surgery.adapters._common import (
    TOKENIZER_HELP,
    check_tokenizer_distinguishes,
    clip_bpe_pieces,
    run_text_blocks,
)
from captum_clip_surgery.adapters.base import (
    AttentionPoolHead,
    BlockView,
    ClassTokenHead,
    CLIPAdapter,
    ImageTowerView,
    TextTowerView,
    attention,
    merge_heads,
    resize_positional_embedding,
    split_heads,
)

__all__ = ["HFCLIPAdapter", "HFCLIPPair", "HFCLIPPairAdapter", "HFSiglipAdapter"]

#: SigLIP's input normalisation (every released checkpoint).
SIGLIP_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _transformers_class(name: str) -> Optional[type]:
    module = sys.modules.get("transformers")
    if module is None:
        return None
    try:
        return getattr(module, name)
    except (AttributeError, ImportError):
        return None


def _is_instance(model: object, name: str) -> bool:
    cls = _transformers_class(name)
    return cls is not None and isinstance(model, cls)


def _require(obj: object, names: Sequence[str], where: str) -> None:
    missing = [n for n in names if not hasattr(obj, n)]
    if missing:
        raise TypeError(
            f"model: the {where} ({type(obj).__qualname__}) has no {', '.join(missing)}; expected "
            "the layout of transformers' CLIP / SigLIP towers"
        )


def _tower(container: nn.Module, attr: str, where: str) -> nn.Module:
    r"""``container.<attr>``, descending through wrappers that hold the tower under
    the same name again (``CLIPVisionModel.vision_model`` before transformers 5.6)."""
    tower = getattr(container, attr, None)
    while tower is not None and not hasattr(tower, "embeddings") and hasattr(tower, attr):
        tower = getattr(tower, attr)
    if not isinstance(tower, nn.Module):
        raise TypeError(f"model: no {where} found as .{attr} on {type(container).__qualname__}")
    _require(tower, ("embeddings", "encoder"), where)
    _require(tower.encoder, ("layers",), f"{where} encoder")
    return tower


class _HFBlockView(BlockView):
    r"""A transformers encoder layer (``CLIPEncoderLayer``, ``SiglipEncoderLayer``):
    ``layer_norm1``, ``self_attn.{q,k,v,out}_proj``, ``layer_norm2``, ``mlp``."""

    def __init__(self, layer: nn.Module) -> None:
        _require(layer, ("layer_norm1", "self_attn", "layer_norm2", "mlp"), "encoder layer")
        attn = layer.self_attn
        _require(attn, ("q_proj", "k_proj", "v_proj", "out_proj"), "attention layer")
        self.layer = layer
        self.attn = attn
        self.num_heads = int(getattr(attn, "num_heads", 0) or attn.config.num_attention_heads)
        self.head_dim = int(getattr(attn, "head_dim", 0) or attn.q_proj.out_features // self.num_heads)
        # transformers 4.x: layer(x, attention_mask, causal_attention_mask) -> tuple (CLIP);
        # 5.x: layer(x, attention_mask) -> tensor
        self._three_args = "causal_attention_mask" in inspect.signature(layer.forward).parameters

    def named_parameters(self) -> Iterator[Tuple[str, nn.Parameter]]:
        return self.layer.named_parameters()

    def norm1(self, x: Tensor) -> Tensor:
        return self.layer.layer_norm1(x)

    def qkv(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        a, h = self.attn, self.num_heads
        return split_heads(a.q_proj(x), h), split_heads(a.k_proj(x), h), split_heads(a.v_proj(x), h)

    def attention_logits(self, q: Tensor, k: Tensor) -> Tensor:
        return (q * self.scale) @ k.transpose(-2, -1)

    def original_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return attention(q, k, v, self.scale)

    def out(self, heads_out: Tensor) -> Tensor:
        return self.attn.out_proj(merge_heads(heads_out))

    def ls1(self, x: Tensor) -> Tensor:
        return x

    @property
    def branch_is_affine(self) -> bool:
        return isinstance(self.attn.out_proj, nn.Linear)

    def norm2(self, x: Tensor) -> Tensor:
        return self.layer.layer_norm2(x)

    def mlp(self, x: Tensor) -> Tensor:
        return self.layer.mlp(x)

    def ls2(self, x: Tensor) -> Tensor:
        return x

    def forward(self, x: Tensor) -> Tensor:
        out = self.layer(x, None, None) if self._three_args else self.layer(x, None)
        return out[0] if isinstance(out, (tuple, list)) else out


def _native_grid(embeddings: nn.Module, prefix_rows: int) -> Tuple[int, int]:
    rows = embeddings.position_embedding.weight.shape[0] - prefix_rows
    size = getattr(embeddings, "image_size", None)
    patch = getattr(embeddings, "patch_size", None)
    if isinstance(size, int) and isinstance(patch, int) and (size // patch) ** 2 == rows:
        return (size // patch, size // patch)
    side = int(round(rows**0.5))
    if side * side != rows:
        raise TypeError(f"model: positional table of {rows} grid rows is not a square grid")
    return (side, side)


class _HFTokenHead(ClassTokenHead):
    def __init__(self, post_norm: nn.Module, projection: nn.Module) -> None:
        self._post_norm = post_norm
        self._projection = projection

    def post_norm(self, x: Tensor) -> Tensor:
        return self._post_norm(x)

    def projection(self, x: Tensor) -> Tensor:
        return self._projection(x)


class _HFCLIPVisionView(ImageTowerView):
    r"""CLIP vision tower: class token, ``pre_layrnorm``, class-token head."""

    num_prefix_tokens = 1

    def __init__(self, tower: nn.Module, projection: nn.Module) -> None:
        emb = tower.embeddings
        _require(emb, ("patch_embedding", "class_embedding", "position_embedding"),
                 "vision embeddings")
        _require(tower, ("pre_layrnorm", "post_layernorm"), "vision tower")
        self.tower = tower
        self.patch_size = tuple(emb.patch_embedding.kernel_size)
        self.native_grid = _native_grid(emb, 1)
        self.blocks = [_HFBlockView(layer) for layer in tower.encoder.layers]
        self.head = _HFTokenHead(tower.post_layernorm, projection)

    def embed(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        emb = self.tower.embeddings
        x = emb.patch_embedding(images.to(emb.patch_embedding.weight.dtype))
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        cls = emb.class_embedding.to(x.dtype).reshape(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        pos = resize_positional_embedding(emb.position_embedding.weight, self.native_grid, grid, 1)
        return self.tower.pre_layrnorm(x + pos.to(x.dtype)), grid


class _SiglipMAPHead(AttentionPoolHead):
    r"""SigLIP's multihead attention pooling: a learned probe attends (a fused
    ``nn.MultiheadAttention``) over the post-normed tokens, then ``h + mlp(ln(h))``."""

    query_kind = "probe"

    def __init__(self, post_norm: nn.Module, head: nn.Module) -> None:
        _require(head, ("probe", "attention", "layernorm", "mlp"), "attention-pool head")
        mha = head.attention
        if not isinstance(mha, nn.MultiheadAttention) or mha.in_proj_weight is None:
            raise TypeError(
                "model: the SigLIP attention-pool head needs an nn.MultiheadAttention with a fused "
                f"in_proj_weight, got {type(mha).__qualname__}"
            )
        self.post_norm = post_norm
        self.head_module = head
        self.mha = mha
        self.num_heads = mha.num_heads
        self.head_dim = mha.embed_dim // mha.num_heads
        self._width = mha.embed_dim

    def _in_proj(self, x: Tensor, index: int) -> Tensor:
        c = self._width
        bias = self.mha.in_proj_bias
        return F.linear(x, self.mha.in_proj_weight[index * c : (index + 1) * c],
                        None if bias is None else bias[index * c : (index + 1) * c])

    def prepare(self, tokens: Tensor, num_prefix_tokens: int, grid: Tuple[int, int]) -> Tensor:
        return self.post_norm(tokens)

    def query(self, keys: Tensor) -> Tensor:
        probe = self.head_module.probe.to(keys.dtype)
        return probe.reshape(1, 1, -1).expand(keys.shape[0], 1, -1)

    def q(self, x: Tensor) -> Tensor:
        return self._in_proj(x, 0)

    def k(self, x: Tensor) -> Tensor:
        return self._in_proj(x, 1)

    def v(self, x: Tensor) -> Tensor:
        return self._in_proj(x, 2)

    def out(self, x: Tensor) -> Tensor:
        proj = self.mha.out_proj
        return F.linear(x, proj.weight, proj.bias)

    def finish(self, x: Tensor) -> Tensor:
        return x + self.head_module.mlp(self.head_module.layernorm(x))


class _HFSiglipVisionView(ImageTowerView):
    r"""SigLIP vision tower: no class token, no pre-norm, MAP head."""

    num_prefix_tokens = 0

    def __init__(self, tower: nn.Module) -> None:
        emb = tower.embeddings
        _require(emb, ("patch_embedding", "position_embedding"), "vision embeddings")
        _require(tower, ("post_layernorm",), "vision tower")
        head = getattr(tower, "head", None)
        if head is None or not getattr(tower, "use_head", True):
            raise TypeError(
                "model: this SigLIP vision tower has no attention-pool head (vision_use_head=False); "
                "it has no image embedding to explain"
            )
        self.tower = tower
        self.patch_size = tuple(emb.patch_embedding.kernel_size)
        self.native_grid = _native_grid(emb, 0)
        self.blocks = [_HFBlockView(layer) for layer in tower.encoder.layers]
        self.head = _SiglipMAPHead(tower.post_layernorm, head)

    def embed(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        emb = self.tower.embeddings
        x = emb.patch_embedding(images.to(emb.patch_embedding.weight.dtype))
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        pos = resize_positional_embedding(emb.position_embedding.weight, self.native_grid, grid, 0)
        return x + pos.to(x.dtype), grid


def _auto_tokenizer(name_or_path: str, context_length: int) -> Any:
    r"""``AutoTokenizer.from_pretrained(name_or_path)`` from local files only; a tokenizer
    that cannot be loaded, or one that cannot tell texts apart (a folder saved without its
    tokenizer files), is a one-line ``ValueError`` naming ``tokenizer`` and saying what to
    pass."""
    if not name_or_path:
        raise ValueError(
            "tokenizer: this transformers model was not loaded with from_pretrained (its "
            "name_or_path is empty), so its tokenizer is unknown; " + TOKENIZER_HELP
        )
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
    except Exception as error:  # noqa: BLE001 - any loading failure becomes one clear message
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0].rstrip(". ")
        raise ValueError(
            f"tokenizer: no tokenizer for {name_or_path!r} in local files (transformers: "
            f"{reason}); " + TOKENIZER_HELP
        ) from None
    check_tokenizer_distinguishes(tokenizer, context_length,
                                  f" (AutoTokenizer of {name_or_path!r})")
    return tokenizer


class _HFTextView(TextTowerView):
    r"""A transformers text tower run functionally: token + position embedding,
    the encoder layers, ``final_layer_norm``, then pooling and projection."""

    causal = True

    def __init__(self, tower: nn.Module, projection: nn.Module, name_or_path: str) -> None:
        _require(tower, ("final_layer_norm",), "text tower")
        _require(tower.embeddings, ("token_embedding", "position_embedding"), "text embeddings")
        self.tower = tower
        self.projection = projection
        self.name_or_path = name_or_path
        self.blocks = [_HFBlockView(layer) for layer in tower.encoder.layers]
        self.context_length = int(tower.embeddings.position_embedding.weight.shape[0])

    def default_tokenizer(self) -> Callable[[List[str]], Tensor]:
        return _auto_tokenizer(self.name_or_path, self.context_length)

    def _final_states(self, ids: Tensor) -> Tensor:
        r"""Every position after ``final_layer_norm``, ``[N, L, width]``."""
        emb = self.tower.embeddings
        length = ids.shape[1]
        if length > self.context_length:
            raise ValueError(
                f"tokenizer: token ids of length {length} exceed the text tower's context length "
                f"{self.context_length}"
            )
        x = emb.token_embedding(ids)
        x = x + emb.position_embedding.weight[:length].to(x.dtype)
        return self.tower.final_layer_norm(run_text_blocks(self.blocks, x, self.causal))


class _HFCLIPTextView(_HFTextView):
    r"""CLIP text tower: causal, pooled at the end-of-text token."""

    def __init__(self, tower: nn.Module, projection: nn.Module, name_or_path: str) -> None:
        super().__init__(tower, projection, name_or_path)
        eos = getattr(tower, "eos_token_id", None)
        if eos is None:
            eos = getattr(getattr(tower, "config", None), "eos_token_id", None)
        self.eos_token_id = eos

    def pooled_positions(self, token_ids: Tensor) -> Tensor:
        # transformers' rule: legacy configs (eos_token_id == 2) pool at the highest id
        if self.eos_token_id is None or self.eos_token_id == 2:
            return token_ids.argmax(dim=-1)
        return (token_ids == self.eos_token_id).int().argmax(dim=-1)

    def encode(self, token_ids: Tensor, truncate: bool = True) -> Tensor:
        pooled = self.pooled_positions(token_ids)
        # the causal mask makes every position up to the pooled one independent of the rest
        length = int(pooled.max()) + 1 if truncate else token_ids.shape[1]
        states = self._final_states(token_ids[:, :length])
        rows = torch.arange(states.shape[0], device=states.device)
        return self.projection(states[rows, pooled.to(states.device)])

    def token_features(self, token_ids: Tensor) -> Tensor:
        length = int(self.pooled_positions(token_ids).max()) + 1
        return self.projection(self._final_states(token_ids[:, :length]))

    def token_pieces(
        self, token_ids: Sequence[int], tokenizer: Optional[object] = None
    ) -> List[Tuple[bytes, bool]]:
        return clip_bpe_pieces(token_ids, tokenizer)


class _HFSiglipTextView(_HFTextView):
    r"""SigLIP text tower: bidirectional, pooled at the last position, then ``head``."""

    causal = False

    def encode(self, token_ids: Tensor, truncate: bool = True) -> Tensor:
        # no truncation: with full attention every position sees the padding
        return self.projection(self._final_states(token_ids)[:, -1])

    def _no_tokens(self, what: str) -> TypeError:
        return TypeError(
            f"model: SigLIP's text tower has no {what}: it attends in both directions and pools "
            "its last (padding) position, so no token carries the text's embedding; per-token "
            "text explanations need a CLIP text tower (causal, end-of-text pooling)"
        )

    def token_features(self, token_ids: Tensor) -> Tensor:
        raise self._no_tokens("per-token features")

    def pooled_positions(self, token_ids: Tensor) -> Tensor:
        raise self._no_tokens("end-of-text position")

    def token_pieces(
        self, token_ids: Sequence[int], tokenizer: Optional[object] = None
    ) -> List[Tuple[bytes, bool]]:
        raise self._no_tokens("token pieces")


def _mean_std(
    processor: Optional[object], default: Tuple[Tuple[float, ...], Tuple[float, ...]]
) -> Tuple[Tuple[float, float, float], Tuple[float, float, float]]:
    if processor is None:
        return default  # type: ignore[return-value]
    source = getattr(processor, "image_processor", processor)
    mean, std = getattr(source, "image_mean", None), getattr(source, "image_std", None)
    if mean is None or std is None:
        raise TypeError(
            f"processor: expected a transformers processor or image processor with image_mean and "
            f"image_std, got {type(processor).__name__}"
        )

    def three(values: Any) -> Tuple[float, float, float]:
        values = [float(values)] * 3 if isinstance(values, (int, float)) else [float(v) for v in values]
        if len(values) != 3:
            raise ValueError(f"processor: expected 3 channel values, got {values}")
        return (values[0], values[1], values[2])

    return three(mean), three(std)


class HFCLIPPair(nn.Module):
    r"""A Hugging Face CLIP held as two models: the vision and the text tower with
    their projections (``CLIPVisionModelWithProjection``, ``CLIPTextModelWithProjection``).

    Pass the pair wherever a model is expected (``CLIPZeroShotClassifier(HFCLIPPair(v, t),
    texts)``). The pair only holds references: the two models are not copied or
    changed. Neither half stores CLIP's logit scale, so it is given here (every
    OpenAI checkpoint uses 100); maps do not depend on it, logits do.

    Args:
        vision (nn.Module): ``CLIPVisionModelWithProjection``.
        text (nn.Module): ``CLIPTextModelWithProjection``.
        logit_scale (float): the exponentiated logit scale, ``CLIPModel.logit_scale.exp()``
            of the checkpoint (default 100.0).

    Examples::

        >>> from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection
        >>> name = "openai/clip-vit-base-patch16"
        >>> pair = HFCLIPPair(CLIPVisionModelWithProjection.from_pretrained(name),
        ...                   CLIPTextModelWithProjection.from_pretrained(name))
        >>> clf = CLIPZeroShotClassifier(pair, ["dog", "cat"])
    """

    def __init__(self, vision: nn.Module, text: nn.Module, logit_scale: float = 100.0) -> None:
        super().__init__()
        if not isinstance(vision, nn.Module) or not hasattr(vision, "visual_projection"):
            raise TypeError(
                f"vision: expected a transformers CLIPVisionModelWithProjection, got "
                f"{type(vision).__name__}"
            )
        if not isinstance(text, nn.Module) or not hasattr(text, "text_projection"):
            raise TypeError(
                f"text: expected a transformers CLIPTextModelWithProjection, got {type(text).__name__}"
            )
        if isinstance(logit_scale, bool) or not isinstance(logit_scale, (int, float)) or not (
            0 < float(logit_scale) < float("inf")
        ):
            raise ValueError(f"logit_scale: expected a positive finite number, got {logit_scale!r}")
        self.vision = vision
        self.text = text
        self.logit_scale = float(logit_scale)


class _HFAdapterBase(CLIPAdapter):
    image_tower: nn.Module

    def __init__(self, model: nn.Module, processor: Optional[object] = None) -> None:
        super().__init__(model)
        self.processor = processor

    @property
    def dtype(self) -> torch.dtype:
        return self.image_tower.embeddings.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.image_tower.embeddings.patch_embedding.weight.device

    def _own_stream(self, images: Tensor) -> Tensor:
        r"""The tower's last hidden state at the native size through its own modules."""
        tower = self.image_tower
        x = tower.embeddings(images)
        pre = getattr(tower, "pre_layrnorm", None)
        if pre is not None:
            x = pre(x)
        for block in self.image.blocks:
            x = block.forward(x)
        return x


class HFCLIPPairAdapter(_HFAdapterBase):
    r"""Adapter for an :class:`HFCLIPPair` (``CLIPVisionModelWithProjection`` +
    ``CLIPTextModelWithProjection``).

    Args:
        model (HFCLIPPair): the pair; only read, never changed.
        processor (object, optional): a transformers ``CLIPProcessor`` or image
            processor; its ``image_mean`` / ``image_std`` replace OpenAI's.
    """

    family = "transformers CLIPVisionModelWithProjection + CLIPTextModelWithProjection (HFCLIPPair)"

    def __init__(self, model: nn.Module, processor: Optional[object] = None) -> None:
        super().__init__(model, processor)
        vision, text = model.vision, model.text
        self.image_tower = _tower(vision, "vision_model", "vision tower")
        self.image = _HFCLIPVisionView(self.image_tower, vision.visual_projection)
        text_tower = _tower(text, "text_model", "text tower")
        name = getattr(text, "name_or_path", "") or getattr(vision, "name_or_path", "")
        self.text = _HFCLIPTextView(text_tower, text.text_projection, name)
        self.image_mean, self.image_std = _mean_std(processor, (self.image_mean, self.image_std))

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return isinstance(model, HFCLIPPair)

    def encode_image(self, images: Tensor) -> Tensor:
        x = self._own_stream(images)
        return self.model.vision.visual_projection(self.image_tower.post_layernorm(x[:, 0]))

    def logit_scale(self) -> Tensor:
        return torch.tensor(self.model.logit_scale, device=self.device)


class HFCLIPAdapter(_HFAdapterBase):
    r"""Adapter for transformers ``CLIPModel`` (4.4x to 5.x).

    Image tower: class token, ``pre_layrnorm``, encoder layers with separate
    q/k/v projections, ``post_layernorm`` on the class token and
    ``visual_projection``. Text tower: causal, pooled at the end-of-text token
    (``argmax`` for legacy configs with ``eos_token_id == 2``), ``text_projection``.

    Args:
        model (nn.Module): the ``CLIPModel``; only read, never changed.
        processor (object, optional): a transformers ``CLIPProcessor`` or image
            processor; its ``image_mean`` / ``image_std`` replace OpenAI's.

    Examples::

        >>> from transformers import CLIPModel
        >>> model = CLIPModel.from_pretrained("openai/clip-vit-base-patch16").eval()
        >>> HFCLIPAdapter(model).image.kind
        'token'
    """

    family = "transformers CLIPModel"

    def __init__(self, model: nn.Module, processor: Optional[object] = None) -> None:
        super().__init__(model, processor)
        _require(model, ("visual_projection", "text_projection", "logit_scale"), "CLIP model")
        self.image_tower = _tower(model, "vision_model", "vision tower")
        self.image = _HFCLIPVisionView(self.image_tower, model.visual_projection)
        text_tower = _tower(model, "text_model", "text tower")
        self.text = _HFCLIPTextView(text_tower, model.text_projection,
                                    getattr(model, "name_or_path", ""))
        self.image_mean, self.image_std = _mean_std(processor, (self.image_mean, self.image_std))

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return _is_instance(model, "CLIPModel")

    def encode_image(self, images: Tensor) -> Tensor:
        x = self._own_stream(images)
        return self.model.visual_projection(self.image_tower.post_layernorm(x[:, 0]))

    def logit_scale(self) -> Tensor:
        return self.model.logit_scale.exp().reshape(())


class HFSiglipAdapter(_HFAdapterBase):
    r"""Adapter for transformers ``SiglipModel`` (SigLIP; SigLIP2 FixRes checkpoints).

    Image tower: no class token (``num_prefix_tokens == 0``), ``post_layernorm`` on
    every token, a multihead attention-pooling (MAP) head with a learned probe.
    Text tower: bidirectional, pooled at the last position, then ``head``.
    Logits are ``exp(logit_scale) · cos + logit_bias``; probabilities are sigmoids.

    Args:
        model (nn.Module): the ``SiglipModel``; only read, never changed.
        processor (object, optional): a transformers ``SiglipProcessor`` or image
            processor; its ``image_mean`` / ``image_std`` replace SigLIP's 0.5 / 0.5.

    Examples::

        >>> from transformers import SiglipModel
        >>> model = SiglipModel.from_pretrained("google/siglip-base-patch16-224").eval()
        >>> HFSiglipAdapter(model).image.head.query_kind
        'probe'
    """

    family = "transformers SiglipModel (SigLIP, SigLIP2 FixRes)"
    score_kind = "sigmoid"

    def __init__(self, model: nn.Module, processor: Optional[object] = None) -> None:
        super().__init__(model, processor)
        _require(model, ("logit_scale", "logit_bias"), "SigLIP model")
        self.image_tower = _tower(model, "vision_model", "vision tower")
        self.image = _HFSiglipVisionView(self.image_tower)
        text_tower = _tower(model, "text_model", "text tower")
        _require(text_tower, ("head",), "text tower")
        self.text = _HFSiglipTextView(text_tower, text_tower.head, getattr(model, "name_or_path", ""))
        self.image_mean, self.image_std = _mean_std(processor, SIGLIP_MEAN_STD)

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return _is_instance(model, "SiglipModel")

    def encode_image(self, images: Tensor) -> Tensor:
        x = self._own_stream(images)
        return self.image_tower.head(self.image_tower.post_layernorm(x))

    def logit_scale(self) -> Tensor:
        return self.model.logit_scale.exp().reshape(())

    def logit_bias(self) -> Optional[Tensor]:
        return self.model.logit_bias.reshape(())
