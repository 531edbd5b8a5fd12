r"""The model adapter protocol.

Every algorithm in this package talks to a CLIP model only through the views
defined here, never through a model family's own classes. Supporting a new
family (Hugging Face, OpenAI ``clip``) means writing one adapter module that
subclasses :class:`CLIPAdapter` and registering it with
:func:`register_adapter`.

The views are *functional*: they call the model's own submodules and read its
parameters, but never replace a module, edit a parameter or install a hook.
"""

from __future__ import annotations

import abc
import contextlib
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Type

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AttentionPoolView",
    "BlockView",
    "CLIPAdapter",
    "ResNetImageView",
    "TextTowerView",
    "ViTImageView",
    "get_adapter",
    "inference_mode_of",
    "register_adapter",
    "resize_positional_embedding",
    "supported_families",
]


def resize_positional_embedding(
    table: Tensor, native_grid: Tuple[int, int], grid: Tuple[int, int]
) -> Tensor:
    r"""Return a positional-embedding table for another patch grid.

    The first row (the class / pooled token) is kept; the grid rows are resized
    with bilinear interpolation (``align_corners=False``) like the CLIP Surgery
    release. The input table is never modified; when ``grid`` equals
    ``native_grid`` the table itself is returned.

    Args:
        table (Tensor): ``[1 + gh * gw, C]`` table, class row first.
        native_grid (tuple[int, int]): ``(gh, gw)`` grid the table was trained for.
        grid (tuple[int, int]): ``(h, w)`` grid wanted.

    Returns:
        Tensor: ``[1 + h * w, C]`` table in the dtype of ``table``.

    Examples::

        >>> table = torch.randn(1 + 7 * 7, 32)
        >>> resize_positional_embedding(table, (7, 7), (9, 12)).shape
        torch.Size([109, 32])
    """
    gh, gw = native_grid
    h, w = grid
    if (h, w) == (gh, gw):
        return table
    channels = table.shape[-1]
    cls_row, grid_rows = table[:1], table[1:]
    grid_rows = grid_rows.float().reshape(1, gh, gw, channels).permute(0, 3, 1, 2)
    grid_rows = F.interpolate(grid_rows, size=(h, w), mode="bilinear", align_corners=False)
    grid_rows = grid_rows.permute(0, 2, 3, 1).reshape(h * w, channels).to(table.dtype)
    return torch.cat([cls_row, grid_rows], dim=0)


@contextlib.contextmanager
def inference_mode_of(module: nn.Module) -> Iterator[None]:
    r"""Temporarily put every submodule of ``module`` in eval mode.

    Explanations use inference behaviour (no dropout, frozen batch-norm
    statistics) whatever mode the user's model is in. Each submodule's own
    ``training`` flag is restored on exit, also when an error is raised.

    Args:
        module (nn.Module): the user's model.

    Examples::

        >>> with inference_mode_of(model):
        ...     features = model.encode_image(images)
    """
    flags = [(m, m.training) for m in module.modules()]
    try:
        for m, _ in flags:
            m.training = False
        yield
    finally:
        for m, flag in flags:
            m.training = flag


class BlockView(abc.ABC):
    r"""Uniform view of one pre-norm transformer block.

    A block computes ``x = x + ls1(out(softmax(qkᵀ) v))`` then
    ``x = x + ls2(mlp(norm2(x)))`` with ``q, k, v`` from ``norm1(x)``.
    The attention pieces are exposed separately so that algorithms can build
    other attention patterns (value-value, query-query, ...) from the same
    weights.
    """

    num_heads: int
    head_dim: int

    @property
    def scale(self) -> float:
        r"""The dot-product scale ``head_dim ** -0.5``."""
        return self.head_dim**-0.5

    @abc.abstractmethod
    def norm1(self, x: Tensor) -> Tensor:
        r"""The pre-attention norm."""

    @abc.abstractmethod
    def qkv(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        r"""Fused q/k/v projection of normed tokens ``[B, N, C]`` to three
        ``[B, heads, N, head_dim]`` tensors (no scaling applied)."""

    @abc.abstractmethod
    def attention_logits(self, q: Tensor, k: Tensor) -> Tensor:
        r"""The model's own attention logits ``[B, heads, N, N]`` (scale included)."""

    @abc.abstractmethod
    def out(self, heads_out: Tensor) -> Tensor:
        r"""Merge heads ``[B, heads, N, head_dim]`` and apply everything between
        the attention product and the residual sum (output projection and any
        head scale / inner norm / post-attention norm), giving ``[B, N, C]``."""

    @abc.abstractmethod
    def ls1(self, x: Tensor) -> Tensor:
        r"""Layer scale after attention (identity when the model has none)."""

    @abc.abstractmethod
    def norm2(self, x: Tensor) -> Tensor:
        r"""The pre-MLP norm."""

    @abc.abstractmethod
    def mlp(self, x: Tensor) -> Tensor:
        r"""The feed-forward network."""

    @abc.abstractmethod
    def ls2(self, x: Tensor) -> Tensor:
        r"""Layer scale after the MLP (identity when the model has none)."""

    @abc.abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        r"""The block exactly as the model runs it (``[B, N, C]`` batch first)."""

    def original_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        r"""``softmax(attention_logits(q, k)) v`` with the softmax in fp32."""
        probs = self.attention_logits(q, k).float().softmax(dim=-1).to(v.dtype)
        return probs @ v


class ViTImageView(abc.ABC):
    r"""Uniform view of a ViT image tower with a class token."""

    kind = "vit"
    patch_size: Tuple[int, int]
    native_grid: Tuple[int, int]
    blocks: Sequence[BlockView]

    @abc.abstractmethod
    def patch_embed(self, images: Tensor) -> Tensor:
        r"""Patch embedding ``[B, 3, H, W] -> [B, C, h, w]``."""

    @abc.abstractmethod
    def class_token(self) -> Tensor:
        r"""The class embedding ``[C]``."""

    @abc.abstractmethod
    def positional_embedding(self, grid: Tuple[int, int]) -> Tensor:
        r"""Positional table ``[1 + h * w, C]`` for a patch grid, resized on the fly."""

    @abc.abstractmethod
    def pre_norm(self, x: Tensor) -> Tensor:
        r"""The norm applied before the blocks (identity when absent)."""

    @abc.abstractmethod
    def post_norm(self, x: Tensor) -> Tensor:
        r"""The final norm applied to output tokens."""

    @abc.abstractmethod
    def projection(self, x: Tensor) -> Tensor:
        r"""The projection of normed tokens into the joint image-text space."""

    def embed(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        r"""Tokens entering the first block, ``[B, 1 + h * w, C]``, and the grid ``(h, w)``."""
        x = self.patch_embed(images)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_token().to(x.dtype).reshape(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + self.positional_embedding(grid).to(x.dtype)
        return self.pre_norm(x), grid

    def features(self, tokens: Tensor) -> Tensor:
        r"""``projection(post_norm(tokens))`` for every token."""
        return self.projection(self.post_norm(tokens))


class AttentionPoolView(abc.ABC):
    r"""Uniform view of CLIP's ResNet attention-pool head."""

    num_heads: int
    head_dim: int
    native_grid: Tuple[int, int]

    @abc.abstractmethod
    def q(self, x: Tensor) -> Tensor:
        r"""Query projection ``[B, N, C] -> [B, N, C]``."""

    @abc.abstractmethod
    def k(self, x: Tensor) -> Tensor:
        r"""Key projection."""

    @abc.abstractmethod
    def v(self, x: Tensor) -> Tensor:
        r"""Value projection."""

    @abc.abstractmethod
    def c(self, x: Tensor) -> Tensor:
        r"""Output projection into the joint space ``[B, N, C] -> [B, N, D]``."""

    @abc.abstractmethod
    def positional_embedding(self, grid: Tuple[int, int]) -> Tensor:
        r"""Positional table ``[1 + h * w, C]`` for a feature grid, resized on the fly."""

    def tokens(self, fmap: Tensor) -> Tensor:
        r"""``[mean token; grid tokens] + positional embedding`` from ``[B, C, h, w]``."""
        grid = (fmap.shape[-2], fmap.shape[-1])
        x = fmap.flatten(2).transpose(1, 2)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
        return x + self.positional_embedding(grid).to(x.dtype)

    def split_heads(self, x: Tensor) -> Tensor:
        r"""``[B, N, C] -> [B, heads, N, head_dim]``."""
        b, n, _ = x.shape
        return x.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    @staticmethod
    def merge_heads(x: Tensor) -> Tensor:
        r"""``[B, heads, N, head_dim] -> [B, N, C]``."""
        b, h, n, d = x.shape
        return x.transpose(1, 2).reshape(b, n, h * d)


class ResNetImageView(abc.ABC):
    r"""Uniform view of a CLIP ResNet image tower: a trunk and an attention pool."""

    kind = "resnet"
    stride: int
    pool: AttentionPoolView

    @abc.abstractmethod
    def trunk(self, images: Tensor) -> Tensor:
        r"""Convolutional trunk ``[B, 3, H, W] -> [B, C, h, w]``."""

    @property
    @abc.abstractmethod
    def last_stage(self) -> nn.Module:
        r"""The trunk's last stage (the natural GradCAM layer)."""


class TextTowerView(abc.ABC):
    r"""Uniform view of a CLIP text tower and its tokenizer."""

    context_length: int

    @abc.abstractmethod
    def default_tokenizer(self) -> Callable[[List[str]], Tensor]:
        r"""The tokenizer used when the user gives none."""

    @abc.abstractmethod
    def encode(self, token_ids: Tensor, truncate: bool = True) -> Tensor:
        r"""Token ids ``[N, L]`` to text features ``[N, D]`` (not normalised).

        With ``truncate=True`` the tower runs only up to the last pooled (EOT)
        position of the batch where that is exact (causal mask, EOT pooling).
        """

    def token_features(self, token_ids: Tensor) -> Tensor:
        r"""Every position's final hidden state, projected into the joint space.

        The text-side analogue of the image tower's per-patch features: each
        position's output of the last block goes through the final norm and the
        text projection, exactly as the pooled (EOT) position does in
        :meth:`encode`. Adapters that cannot provide it raise ``TypeError``.

        Args:
            token_ids (Tensor): ``[N, L]`` token ids.

        Returns:
            Tensor: ``[N, L', D]`` features (not normalised), ``L' <= L``: an
            adapter may stop after the last pooled position of the batch where
            that is exact (causal mask). Position ``j`` of row ``n`` is token
            ``token_ids[n, j]``.
        """
        raise TypeError(
            f"model: the {type(self).__name__} text tower does not provide per-token features"
        )

    def pooled_positions(self, token_ids: Tensor) -> Tensor:
        r"""Index of the position the tower pools (the EOT token), ``[N]`` long."""
        raise TypeError(
            f"model: the {type(self).__name__} text tower does not report its pooled positions"
        )

    def token_pieces(
        self, token_ids: Sequence[int], tokenizer: Optional[object] = None
    ) -> List[Tuple[bytes, bool]]:
        r"""The text of each token id: ``(utf-8 bytes, ends_a_word)`` per id.

        Args:
            token_ids (list[int]): token ids (special tokens included or not).
            tokenizer (object, optional): the tokenizer that produced the ids,
                used when it can decode; otherwise the default tokenizer's
                vocabulary is used.

        Returns:
            list[tuple[bytes, bool]]: one entry per id.
        """
        raise TypeError(
            f"model: the {type(self).__name__} text tower cannot decode token ids"
        )


class CLIPAdapter(abc.ABC):
    r"""Everything the algorithms need from one CLIP model.

    Subclasses implement :meth:`supports` and build the views. Adapters hold a
    reference to the model and never change it.
    """

    family: str = ""
    image: ViTImageView | ResNetImageView
    text: TextTowerView

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @classmethod
    @abc.abstractmethod
    def supports(cls, model: nn.Module) -> bool:
        r"""Whether this adapter understands ``model``."""

    @abc.abstractmethod
    def encode_image(self, images: Tensor) -> Tensor:
        r"""The unmodified model's image embedding ``[B, D]`` (not normalised)."""

    @abc.abstractmethod
    def logit_scale(self) -> Tensor:
        r"""The learnt logit scale (already exponentiated), a scalar tensor."""

    @property
    def dtype(self) -> torch.dtype:
        r"""The dtype of the image tower's weights."""
        for p in self.model.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.get_default_dtype()

    @property
    def device(self) -> torch.device:
        r"""The device of the model's weights."""
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")


_ADAPTERS: List[Type[CLIPAdapter]] = []


def register_adapter(cls: Type[CLIPAdapter]) -> Type[CLIPAdapter]:
    r"""Class decorator adding an adapter to the registry used by :func:`get_adapter`.

    Args:
        cls (type): a :class:`CLIPAdapter` subclass.

    Returns:
        type: ``cls`` unchanged.
    """
    _ADAPTERS.append(cls)
    return cls


def supported_families() -> List[str]:
    r"""Names of the model families with a registered adapter."""
    return [a.family for a in _ADAPTERS]


def get_adapter(model: object) -> CLIPAdapter:
    r"""Build the adapter for ``model``.

    Args:
        model (nn.Module): a CLIP model of a supported family, or an adapter
            (returned as is).

    Returns:
        CLIPAdapter: the adapter.

    Raises:
        TypeError: when no registered adapter understands ``model``.

    Examples::

        >>> import open_clip
        >>> model = open_clip.create_model("ViT-B-16")
        >>> get_adapter(model).image.kind
        'vit'
    """
    if isinstance(model, CLIPAdapter):
        return model
    if isinstance(model, nn.Module):
        for adapter_cls in _ADAPTERS:
            if adapter_cls.supports(model):
                return adapter_cls(model)
    raise TypeError(
        f"model: unsupported model of type {type(model).__module__}.{type(model).__qualname__}; "
        f"expected a CLIP model of a supported family: {', '.join(supported_families())}"
    )


def optional(module: Optional[nn.Module], x: Tensor) -> Tensor:
    r"""Apply ``module`` when it is not ``None``."""
    return x if module is None else module(x)
