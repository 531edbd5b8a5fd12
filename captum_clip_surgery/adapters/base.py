r"""The model adapter protocol.

Every algorithm in this package talks to a CLIP model only through the views
defined here, never through a model family's own classes. Supporting a new
family (Hugging Face, OpenAI ``clip``) means writing one adapter module that
subclasses :class:`CLIPAdapter` and registering it with
:func:`~captum_clip_surgery.adapters.registry.register_adapter` (or through the
``captum_clip_surgery.adapters`` entry-point group).

The views are *functional*: they call the model's own submodules and read its
parameters, but never replace a module, edit a parameter or install a hook.
"""

from __future__ import annotations

import abc
import contextlib
import contextvars
import threading
import weakref
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_clip_surgery.adapters.text_batching import length_buckets

__all__ = [
    "AttentionPoolHead",
    "AveragePoolHead",
    "BlockView",
    "CLIPAdapter",
    "ClassTokenHead",
    "ImageTowerView",
    "POSITIONAL_RESIZE_MODES",
    "PoolingHead",
    "TextTowerView",
    "attention",
    "check_positional_resize",
    "current_positional_resize",
    "inference_mode_of",
    "merge_heads",
    "positional_resize",
    "resize_positional_embedding",
    "split_heads",
]


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: Optional[float] = None,
    bias: Optional[Tensor] = None,
    causal: bool = False,
) -> Tensor:
    r"""``softmax(q kᵀ · scale + bias [+ causal mask]) v`` per head: the one attention
    function of the package.

    Float32 inputs use PyTorch's fused kernel (``scaled_dot_product_attention``);
    half-precision inputs compute the logits in their dtype and the bias, mask and
    softmax in float32, then cast the probabilities back.

    Args:
        q (Tensor): ``[B, heads, Nq, d]``.
        k (Tensor): ``[B, heads, N, d]``.
        v (Tensor): ``[B, heads, N, d]``.
        scale (float, optional): logit scale; default ``d ** -0.5``.
        bias (Tensor, optional): added to the logits, broadcastable to
            ``[B, heads, Nq, N]`` (e.g. a relative position bias or NACLIP's
            neighbourhood term).
        causal (bool): mask every key after the query's position.

    Returns:
        Tensor: ``[B, heads, Nq, d]`` in ``v``'s dtype.

    Examples::

        >>> q = torch.randn(1, 2, 5, 8)
        >>> attention(q, q, q, scale=8 ** -0.5).shape
        torch.Size([1, 2, 5, 8])
    """
    if q.dtype == torch.float32:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=causal, scale=scale)
    factor = q.shape[-1] ** -0.5 if scale is None else scale
    logits = ((q * factor) @ k.transpose(-2, -1)).float()
    if bias is not None:
        logits = logits + bias
    if causal:
        n = q.shape[-2]
        future = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
        logits = logits.masked_fill(future, float("-inf"))
    return logits.softmax(dim=-1).to(v.dtype) @ v


#: How a positional-embedding table is resized to another patch grid, as each method's
#: release does it (every mode returns the table itself at the native grid):
#:
#: - ``"bilinear"``: ``size=`` the grid, bilinear, ``align_corners=False`` (the CLIP Surgery
#:   release; the package's default);
#: - ``"bicubic"``: ``size=`` the grid, bicubic, ``align_corners=False`` (MaskCLIP's
#:   mmsegmentation ViT, Grad-ECLIP, LPOSS);
#: - ``"bicubic_antialias"``: ``size=`` the grid, bicubic with ``antialias=True`` (GEM, LeGrad:
#:   timm's ``resample_abs_pos_embed``);
#: - ``"bicubic_offset"``: bicubic with ``scale_factor = ((h + 0.1) / gh, (w + 0.1) / gw)``
#:   of the pretrained grid ``(gh, gw)`` and the kernel's coordinates from that factor
#:   (``recompute_scale_factor=False``), so every side is resampled once the grid differs,
#:   even a side that is already native (SCLIP, ClearCLIP, NACLIP, ProxyCLIP, SC-CLIP,
#:   ResCLIP, CASS, CorrCLIP, DINO).
POSITIONAL_RESIZE_MODES: Tuple[str, ...] = ("bilinear", "bicubic", "bicubic_antialias",
                                            "bicubic_offset")

_positional_resize: contextvars.ContextVar[str] = contextvars.ContextVar(
    "captum_clip_surgery_positional_resize", default="bilinear"
)


def check_positional_resize(mode: object, name: str = "positional_resize") -> str:
    r"""``mode`` if it is one of :data:`POSITIONAL_RESIZE_MODES`, else a ``ValueError``."""
    if not isinstance(mode, str) or mode not in POSITIONAL_RESIZE_MODES:
        raise ValueError(
            f"{name}: expected one of {', '.join(repr(m) for m in POSITIONAL_RESIZE_MODES)}, "
            f"got {mode!r}"
        )
    return mode


@contextlib.contextmanager
def positional_resize(mode: str) -> Iterator[None]:
    r"""Resize positional tables by ``mode`` inside the block (in this thread or task only).

    Every adapter resizes its tables through :func:`resize_positional_embedding`, whose
    default mode is the one set here; each method sets its release's mode around its own
    forward.

    Args:
        mode (str): one of :data:`POSITIONAL_RESIZE_MODES`.

    Examples::

        >>> with positional_resize("bicubic_offset"):
        ...     tokens, grid = adapter.image.embed(images)
    """
    token = _positional_resize.set(check_positional_resize(mode, "mode"))
    try:
        yield
    finally:
        _positional_resize.reset(token)


def current_positional_resize() -> str:
    r"""The mode :func:`resize_positional_embedding` uses when given none."""
    return _positional_resize.get()


def resize_positional_embedding(
    table: Tensor,
    native_grid: Tuple[int, int],
    grid: Tuple[int, int],
    prefix_rows: int = 1,
    mode: Optional[str] = None,
) -> Tensor:
    r"""Return a positional-embedding table for another patch grid.

    The first ``prefix_rows`` rows (class / register / pooled token) are kept; the grid
    rows are resized by ``mode`` (see :data:`POSITIONAL_RESIZE_MODES`), computed in
    float32. The input table is never modified; when ``grid`` equals ``native_grid`` the
    table itself is returned.

    Args:
        table (Tensor): ``[prefix_rows + gh * gw, C]`` table, prefix rows first.
        native_grid (tuple[int, int]): ``(gh, gw)`` grid the table was trained for.
        grid (tuple[int, int]): ``(h, w)`` grid wanted.
        prefix_rows (int): rows before the grid (default 1, the class row).
        mode (str, optional): the resize rule; default the one set by
            :func:`positional_resize` (``"bilinear"`` outside one).

    Returns:
        Tensor: ``[prefix_rows + h * w, C]`` table in the dtype of ``table``.

    Examples::

        >>> table = torch.randn(1 + 7 * 7, 32)
        >>> resize_positional_embedding(table, (7, 7), (9, 12)).shape
        torch.Size([109, 32])
    """
    mode = _positional_resize.get() if mode is None else check_positional_resize(mode, "mode")
    gh, gw = native_grid
    h, w = grid
    if (h, w) == (gh, gw):
        return table
    channels = table.shape[-1]
    cls_row, grid_rows = table[:prefix_rows], table[prefix_rows:]
    grid_rows = grid_rows.float().reshape(1, gh, gw, channels).permute(0, 3, 1, 2)
    if mode == "bicubic_offset":
        grid_rows = F.interpolate(
            grid_rows, scale_factor=((h + 0.1) / gh, (w + 0.1) / gw), mode="bicubic",
            align_corners=False, recompute_scale_factor=False,
        )
        if tuple(grid_rows.shape[-2:]) != (h, w):  # pragma: no cover - float rounding guard
            raise RuntimeError(f"positional resize gave {tuple(grid_rows.shape[-2:])}, not {(h, w)}")
    else:
        kind = "bilinear" if mode == "bilinear" else "bicubic"
        grid_rows = F.interpolate(grid_rows, size=(h, w), mode=kind, align_corners=False,
                                  antialias=mode == "bicubic_antialias")
    grid_rows = grid_rows.permute(0, 2, 3, 1).reshape(h * w, channels).to(table.dtype)
    return torch.cat([cls_row, grid_rows], dim=0)


class _ModeState:
    r"""Per-model bookkeeping of :func:`inference_mode_of`: how many calls are inside,
    and the flags the outermost one saved."""

    __slots__ = ("lock", "depth", "flags")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.flags: List[Tuple[nn.Module, bool]] = []


_mode_states: weakref.WeakKeyDictionary[nn.Module, _ModeState] = weakref.WeakKeyDictionary()
_mode_states_lock = threading.Lock()


def _mode_state(module: nn.Module) -> _ModeState:
    with _mode_states_lock:
        state = _mode_states.get(module)
        if state is None:
            state = _mode_states[module] = _ModeState()
        return state


@contextlib.contextmanager
def inference_mode_of(module: nn.Module) -> Iterator[None]:
    r"""Temporarily put every submodule of ``module`` in eval mode.

    Explanations use inference behaviour (no dropout, frozen batch-norm
    statistics) whatever mode the user's model is in. Each submodule's own
    ``training`` flag is restored on exit, also when an error is raised.

    Safe under threads and when nested: the calls inside the context of one model
    are counted (per model, under a lock); the first one to enter saves the flags
    and puts the model in eval mode, the last one to leave restores the saved flags.
    So while any thread explains the model, every thread sees it in eval mode (no
    dropout in any call), and the model ends in the mode it was in before the first
    call, however the calls of several threads overlap. (Flipping a flag is the only
    way to switch off dropout inside the model's own modules; a thread that *trains*
    the same model while another explains it would see eval mode too.)

    Args:
        module (nn.Module): the user's model.

    Examples::

        >>> with inference_mode_of(model):
        ...     features = model.encode_image(images)
    """
    state = _mode_state(module)
    with state.lock:
        if state.depth == 0:
            state.flags = [(m, m.training) for m in module.modules()]
            for m, _ in state.flags:
                m.training = False
        state.depth += 1
    try:
        yield
    finally:
        with state.lock:
            state.depth -= 1
            if state.depth == 0:
                for m, flag in state.flags:
                    m.training = flag
                state.flags = []


class BlockView(abc.ABC):
    r"""Uniform view of one pre-norm transformer block.

    A block computes ``x = x + ls1(out(softmax(qkᵀ) v))`` then
    ``x = x + ls2(mlp(norm2(x)))`` with ``q, k, v`` from ``norm1(x)``.
    The attention pieces are exposed separately so that algorithms can build
    other attention patterns (value-value, query-query, ...) from the same
    weights; the residual arithmetic around them is written once, here
    (:meth:`branch`, :meth:`attention_residual`, :meth:`mlp_residual`,
    :meth:`residual`).

    An adapter implements the abstract pieces; a method only combines them.
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

    @property
    def branch_is_affine(self) -> bool:
        r"""Whether :meth:`branch` is affine in its input: an output projection (per-head
        scales included) and a layer scale, with no inner or post-attention norm. An affine
        branch commutes with any mixing of tokens whose weights sum to 1, so a method may
        apply it before such a mixing, on fewer tokens. ``False`` unless the adapter knows
        the block's modules."""
        return False

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

    def named_parameters(self) -> Iterator[Tuple[str, nn.Parameter]]:
        r"""The block's own parameters as ``(name, parameter)`` pairs: its norms,
        attention, MLP and layer scales, named as its module names them (parameters
        shared with other blocks, such as a tower-wide relative position table, are not
        the block's own and are left out).

        These are the model's tensors, not copies: read them, or change them only on a
        copy of the model (the sanity checks of
        :mod:`captum_clip_surgery.evaluation.sanity` re-initialise a deep copy's blocks
        through this method). An adapter whose view wraps one module returns that
        module's ``named_parameters()``.

        Returns:
            Iterator[tuple[str, nn.Parameter]]: the pairs.

        Raises:
            NotImplementedError: for a view that does not list its parameters.
        """
        raise NotImplementedError(
            f"model: the block view {type(self).__qualname__} does not list its parameters "
            "(BlockView.named_parameters); the adapter must implement it"
        )

    def original_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        r"""``softmax(attention_logits(q, k)) v`` with the softmax in fp32."""
        probs = self.attention_logits(q, k).float().softmax(dim=-1).to(v.dtype)
        return probs @ v

    def branch(self, heads_out: Tensor) -> Tensor:
        r"""The attention branch without its residual: ``ls1(out(heads_out))``, ``[B, N, C]``
        from per-head outputs ``[B, heads, N, d]`` (the reduced last block of ClearCLIP,
        NACLIP and their kin)."""
        return self.ls1(self.out(heads_out))

    def attention_residual(self, x: Tensor, heads_out: Tensor) -> Tensor:
        r"""``x + ls1(out(heads_out))``: the stream after the attention half of the block."""
        return x + self.branch(heads_out)

    def mlp_residual(self, x: Tensor) -> Tensor:
        r"""``x + ls2(mlp(norm2(x)))``: the residual MLP tail of the block."""
        return x + self.ls2(self.mlp(self.norm2(x)))

    def residual(self, x: Tensor, heads_out: Tensor) -> Tensor:
        r"""The whole block around an attention output: :meth:`attention_residual` then
        :meth:`mlp_residual`. With ``heads_out = original_attention(q, k, v)`` of
        ``qkv(norm1(x))`` this is the model's own block (up to the kernel)."""
        return self.mlp_residual(self.attention_residual(x, heads_out))


class PoolingHead(abc.ABC):
    r"""The part of an image tower after its last block: the pooling and projection.

    Three kinds cover every CLIP tower (:attr:`kind`):

    - ``"token"`` (:class:`ClassTokenHead`): the class token, normed and projected;
    - ``"attention"`` (:class:`AttentionPoolHead`): one query attends over the
      tokens (the mean token for CLIP ResNets, a learned probe for SigLIP / PE
      MAP heads), then the head's own output projection, norm / MLP and projection;
    - ``"average"`` (:class:`AveragePoolHead`): the mean token, normed and projected
      by a linear head (ConvNeXt, FastViT, Swin towers).

    Methods state their rule once per kind; adapters only fill in the pieces.
    """

    kind: str = ""

    @abc.abstractmethod
    def pool(self, tokens: Tensor, num_prefix_tokens: int, grid: Tuple[int, int]) -> Tensor:
        r"""The model's own image embedding ``[B, D]`` from the final stream tokens
        ``[B, P + h*w, C]`` (``P = num_prefix_tokens``, ``grid = (h, w)``)."""

    @abc.abstractmethod
    def dense(self, tokens: Tensor) -> Tensor:
        r"""The head applied to every token on its own, ``[B, N, C] -> [B, N, D]``:
        the dense (per-location) features in the joint space."""


class ClassTokenHead(PoolingHead):
    r"""Class-token pooling: ``projection(post_norm(tokens[:, 0]))``."""

    kind = "token"

    @abc.abstractmethod
    def post_norm(self, x: Tensor) -> Tensor:
        r"""The final norm applied to output tokens (identity when absent)."""

    @abc.abstractmethod
    def projection(self, x: Tensor) -> Tensor:
        r"""The projection of normed tokens into the joint image-text space."""

    def pool(self, tokens: Tensor, num_prefix_tokens: int, grid: Tuple[int, int]) -> Tensor:
        return self.dense(tokens[:, :1])[:, 0]

    def dense(self, tokens: Tensor) -> Tensor:
        return self.projection(self.post_norm(tokens))


class AttentionPoolHead(PoolingHead):
    r"""Attention pooling: one query attends over the (prepared) tokens.

    ``pool = finish(out(attention(q(query), k(keys), v(keys))))`` with
    ``keys = prepare(tokens)``. :attr:`query_kind` is ``"mean"`` when the query
    is the mean token at row 0 of ``keys`` (CLIP ResNets: ``keys`` is
    ``[mean; grid] + positional embedding``) and ``"probe"`` for a learned probe
    (MAP heads). The per-token value path is ``finish(out(v(keys)))``.
    """

    kind = "attention"
    query_kind: str = "mean"
    num_heads: int
    head_dim: int

    @abc.abstractmethod
    def prepare(self, tokens: Tensor, num_prefix_tokens: int, grid: Tuple[int, int]) -> Tensor:
        r"""Stream tokens ``[B, P + h*w, C]`` to the pool's key/value tokens.

        For ``query_kind == "mean"`` the result is ``[B, 1 + h*w, C]``, the mean token
        first; for ``"probe"`` it has one row per stream token, ``[B, P + h*w, C]``.
        """

    @abc.abstractmethod
    def query(self, keys: Tensor) -> Tensor:
        r"""The pooling query ``[B, 1, C]`` (un-projected) for prepared ``keys``."""

    @abc.abstractmethod
    def q(self, x: Tensor) -> Tensor:
        r"""Query projection ``[B, N, C] -> [B, N, C']``."""

    @abc.abstractmethod
    def k(self, x: Tensor) -> Tensor:
        r"""Key projection."""

    @abc.abstractmethod
    def v(self, x: Tensor) -> Tensor:
        r"""Value projection."""

    @abc.abstractmethod
    def out(self, x: Tensor) -> Tensor:
        r"""The attention's output projection ``[B, N, C'] -> [B, N, C'']``."""

    def finish(self, x: Tensor) -> Tensor:
        r"""Everything after the output projection (the MAP head's residual
        norm/MLP and any projection into the joint space); identity by default."""
        return x

    @property
    def scale(self) -> float:
        r"""The dot-product scale ``head_dim ** -0.5``."""
        return self.head_dim**-0.5

    def split_heads(self, x: Tensor) -> Tensor:
        r"""``[B, N, C] -> [B, heads, N, head_dim]``."""
        b, n, _ = x.shape
        return x.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    @staticmethod
    def merge_heads(x: Tensor) -> Tensor:
        r"""``[B, heads, N, head_dim] -> [B, N, C]``."""
        b, h, n, d = x.shape
        return x.transpose(1, 2).reshape(b, n, h * d)

    def token_query_reason(self) -> Optional[str]:
        r"""Why the tower's tokens cannot be queries of this head's own attention (what
        the raw map asks of it), or ``None`` when they can (the default).

        Returns:
            str or None: a reason, e.g. that the pool's queries are narrower than the
            tokens.
        """
        return None

    def attend(self, queries: Tensor, keys: Tensor) -> Tensor:
        r"""The head's own q-k attention of ``queries`` over ``keys`` through
        :meth:`out` and :meth:`finish` (softmax in float32), ``[B, Nq, D]``."""
        q = self.split_heads(self.q(queries))
        k, v = self.split_heads(self.k(keys)), self.split_heads(self.v(keys))
        probs = ((q * self.scale) @ k.transpose(-2, -1)).float().softmax(dim=-1)
        return self.finish(self.out(self.merge_heads(probs.to(v.dtype) @ v)))

    def pool(self, tokens: Tensor, num_prefix_tokens: int, grid: Tuple[int, int]) -> Tensor:
        keys = self.prepare(tokens, num_prefix_tokens, grid)
        return self.attend(self.query(keys), keys)[:, 0]

    def dense(self, tokens: Tensor) -> Tensor:
        r"""The value path per token: ``finish(out(v(tokens)))`` (tokens already prepared)."""
        return self.finish(self.out(self.v(tokens)))


class AveragePoolHead(PoolingHead):
    r"""Average pooling: ``linear(norm(mean over grid tokens))``.

    :meth:`dense` applies ``linear(norm(.))`` at every location; when the norm is
    the identity the mean of the dense features is exactly the pooled embedding.
    """

    kind = "average"

    @abc.abstractmethod
    def norm(self, x: Tensor) -> Tensor:
        r"""The norm after the pool (identity when absent), on ``[B, N, C]`` tokens."""

    @abc.abstractmethod
    def linear(self, x: Tensor) -> Tensor:
        r"""The (affine) head into the joint space, ``[B, N, C] -> [B, N, D]``."""

    def pool(self, tokens: Tensor, num_prefix_tokens: int, grid: Tuple[int, int]) -> Tensor:
        mean = tokens[:, num_prefix_tokens:].mean(dim=1, keepdim=True)
        return self.linear(self.norm(mean))[:, 0]

    def dense(self, tokens: Tensor) -> Tensor:
        return self.linear(self.norm(tokens))


class ImageTowerView(abc.ABC):
    r"""Uniform view of any CLIP image tower: a token stream, blocks and a head.

    - token stream: :meth:`embed` turns images into the tokens entering the first
      block, ``[B, P + h*w, C]``: :attr:`num_prefix_tokens` ``P`` prefix tokens (class
      and register tokens; 0 for SigLIP and conv trunks) then the grid in row-major
      order; positional tables are resized per call, never written back;
    - :attr:`blocks`: the attention blocks (empty for conv trunks, whose whole
      network is the stream);
    - :attr:`head`: a :class:`PoolingHead` of one of three kinds.

    Attributes:
        patch_size (tuple[int, int]): input pixels per grid cell (patch size, or
            the trunk's total stride).
        native_grid (tuple[int, int]): the grid at the pretrained input size.
    """

    patch_size: Tuple[int, int]
    native_grid: Tuple[int, int]
    num_prefix_tokens: int = 1
    blocks: Sequence[BlockView] = ()
    head: PoolingHead

    @property
    def kind(self) -> str:
        r"""The head's kind: ``"token"``, ``"attention"`` or ``"average"``."""
        return self.head.kind

    @abc.abstractmethod
    def embed(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        r"""Tokens entering the first block ``[B, P + h*w, C]`` and the grid ``(h, w)``.

        For a tower without attention blocks these are the trunk's output tokens.
        """

    def input_size(self) -> Tuple[int, int]:
        r"""The pretrained input size ``(H, W)`` in pixels."""
        return (
            self.native_grid[0] * self.patch_size[0],
            self.native_grid[1] * self.patch_size[1],
        )

    def gradcam_module(self) -> Optional[nn.Module]:
        r"""For towers without attention blocks: the model's module whose output is
        the stream (its last stage), for reference; ``None`` otherwise."""
        return None


def split_heads(x: Tensor, heads: int) -> Tensor:
    r"""``[B, N, C] -> [B, heads, N, C // heads]``."""
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    r"""``[B, heads, N, d] -> [B, N, heads * d]``."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


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

    def encode_many(
        self, token_ids: Tensor, max_prompts: int = 512, overhead: float = 32.0
    ) -> Tensor:
        r"""Features ``[N, D]`` (not normalised) of many prompts, in order, each as
        :meth:`encode` with ``truncate=True`` gives it, computed as cheaply as the
        tower allows.

        The default sorts the prompts into length buckets
        (:func:`~captum_clip_surgery.adapters.text_batching.length_buckets`) and encodes
        each bucket, so a bucket of short prompts runs only up to its own longest
        one. Towers with a causal mask may also compute shared prefixes once.

        Args:
            token_ids (Tensor): ``[N, L]`` token ids.
            max_prompts (int): most prompts per forward.
            overhead (float): the cost of one forward, in tokens, which decides
                how far prompts of different lengths share a bucket.

        Returns:
            Tensor: ``[N, D]``.
        """
        try:
            lengths = self.pooled_positions(token_ids) + 1
        except TypeError:  # towers that do not say where they pool: the EOT (argmax) rule
            lengths = token_ids.argmax(dim=-1) + 1
        out = None
        for index in length_buckets(lengths, max_prompts, overhead):
            feats = self.encode(token_ids[index], truncate=True)
            if out is None:
                out = feats.new_empty(token_ids.shape[0], feats.shape[-1])
            out[index] = feats
        if out is None:
            raise ValueError("token_ids: expected at least one prompt, got none")
        return out

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

    A subclass (one module per model family) implements :meth:`supports`,
    :meth:`encode_image` and :meth:`logit_scale`, builds :attr:`image` (an
    :class:`ImageTowerView` with :class:`BlockView` blocks and a :class:`PoolingHead`)
    and :attr:`text` (a :class:`TextTowerView`) in its constructor, and may override
    :meth:`load` so that :func:`~captum_clip_surgery.adapters.load_clip` (and the
    command line's ``--model``) can load models of its family by name. Adapters hold a
    reference to the model and never change it.
    """

    family: str = ""
    image: ImageTowerView
    text: TextTowerView

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @classmethod
    @abc.abstractmethod
    def supports(cls, model: nn.Module) -> bool:
        r"""Whether this adapter understands ``model``."""

    @classmethod
    def load(
        cls, name: str, pretrained: Optional[str], device: str
    ) -> Optional[Tuple[nn.Module, Optional[Callable[[List[str]], Tensor]]]]:
        r"""Load a model of this family by name, for
        :func:`~captum_clip_surgery.adapters.load_clip` and ``--model``.

        Args:
            name (str): the name the user gave.
            pretrained (str, optional): the ``--pretrained`` value.
            device (str): where to put the model.

        Returns:
            tuple or None: ``(model in eval mode, tokenizer or None)``, or ``None`` when
            ``name`` is not a model of this family (the default: the built-in families
            are loaded by :func:`~captum_clip_surgery.adapters.load_clip` itself).
        """
        return None

    @abc.abstractmethod
    def encode_image(self, images: Tensor) -> Tensor:
        r"""The unmodified model's image embedding ``[B, D]`` (not normalised)."""

    @abc.abstractmethod
    def logit_scale(self) -> Tensor:
        r"""The learnt logit scale (already exponentiated), a scalar tensor."""

    def logit_bias(self) -> Optional[Tensor]:
        r"""The learnt logit bias of sigmoid-loss models (SigLIP), else ``None``."""
        return None

    #: ``"softmax"`` for CLIP's contrastive loss, ``"sigmoid"`` for SigLIP's.
    score_kind: str = "softmax"

    #: Per-channel normalisation of the model's inputs (OpenAI CLIP's by default).
    image_mean: Tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: Tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    def input_size(self) -> Tuple[int, int]:
        r"""The model's pretrained input size ``(H, W)``."""
        return self.image.input_size()

    def logits(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        r"""The model's own logits from unit features: ``scale · cos (+ bias)``.

        Args:
            image_features (Tensor): ``[B, D]`` unit-norm.
            text_features (Tensor): ``[T, D]`` unit-norm.

        Returns:
            Tensor: ``[B, T]`` in the features' dtype.
        """
        out = self.logit_scale().to(image_features.dtype) * image_features @ text_features.t()
        bias = self.logit_bias()
        return out if bias is None else out + bias.to(out.dtype)

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
