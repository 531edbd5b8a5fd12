r"""GEM, Grounding Everything (Bousselham et al., CVPR 2024): a self-self attention path."""

from __future__ import annotations

import math
from typing import ClassVar, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_clip_surgery._validation import (
    check_blocks,
    check_choice,
    check_int,
    check_optional_int,
    check_positive_number,
)
from captum_clip_surgery.adapters.base import BlockView, attention
from captum_clip_surgery.core.architecture import run_blocks
from captum_clip_surgery.core.classifier import CLIPZeroShotClassifier
from captum_clip_surgery.methods.base import (
    FeatureSurgery,
    Tokenizer,
    TokenMapAttribution,
    dense_features,
    original_last_block_pooled,
    require_attention_blocks,
)

__all__ = ["GEMAttribution"]

#: Blocks with the GEM path in the authors' code (``gem_depth=7`` means 6 modified blocks).
DEFAULT_BLOCKS = 6
_BRANCHES = ("q", "k", "v")


class GEMAttribution(TokenMapAttribution):
    r"""GEM maps: a parallel path of normalised self-self attention over the last blocks.

    Over the last ``blocks`` attention blocks of the image tower a new path runs
    beside the model's own stream, starting as the stream entering the first of
    them. In each of these blocks ``q, k, v`` come from ``norm1`` of the original
    stream, which runs unchanged (attention and MLP); the new path adds
    ``ls1(out(o))`` (the block's output projection, no MLP) with
    ``o = (o_q + o_k + o_v) / 3`` where, for each ``z`` in ``q, k, v`` (per head):

    1. ``iterations`` times: ``ẑ = z / ‖z‖`` per token, ``z ← softmax(β ẑ ẑᵀ) ẑ``;
    2. ``ẑ = z / ‖z‖``; ``o_z = softmax(β ẑ ẑᵀ) v`` (the block's raw ``v``).

    The inverse temperature ``β`` is, per image and block, the mean over tokens of
    the full-width norm of ``norm1(x)`` divided by ``√d`` (``d`` the head width),
    unless a fixed ``temperature`` is given. Every token of the new path then
    goes through the pooling head applied per token (:meth:`~PoolingHead.dense`:
    final norm and projection for a class-token head). GEM keeps its own class
    token: row 0 of :meth:`token_features` is the new path's class token through
    the head (a tower without a class token, e.g. SigLIP, gives the unmodified
    model's embedding there). Computed functionally from the model's own
    weights; nothing is modified.

    Defined for every image tower with attention blocks (any pooling head); a
    tower without them (CLIP ResNets, conv trunks) raises ``TypeError``. No
    feature surgery by default. The authors use the single template ``"a photo
    of a {}."`` and 448-pixel inputs (any input size works here).

    With only the value branch, no normalisation, ``β = 1/√d``, no iterations and
    the original class token, GEM is CLIP Surgery's architecture path; the
    private keyword arguments ``_branches=("v",)``, ``_normalize=False`` and
    ``_class_token="original"`` (with ``iterations=0`` and ``temperature=d ** -0.5``)
    give that reduction, for tests and ablations.

    The positional embedding is resized as the authors' code does it: bicubic with
    antialiasing to the grid (``positional_resize`` chooses another rule).

    Args:
        forward_func (CLIPZeroShotClassifier or nn.Module): classifier or model.
        blocks (int, optional): last attention blocks with the GEM path,
            ``1..depth``. Default ``None``: the authors' 6 (every block of a
            shallower tower).
        iterations (int): self-self attention iterations ``T >= 0`` (default 1).
        temperature (float, optional): a fixed inverse temperature ``β``
            multiplying the cosine logits; default the adaptive rule above.
        texts (list[str], optional): texts, when a model is given.
        templates (list[str], optional): prompt templates, when a model is given.
        tokenizer (Callable, optional): tokenizer, when a model is given.
        positional_resize (str, optional): how the positional embedding is resized at
            another input size; default ``"bicubic_antialias"``, the release's rule.

    Examples::

        >>> explainer = GEMAttribution(clf)          # 6 blocks, 1 iteration
        >>> explainer.attribute(images, target="dog").shape
        torch.Size([8, 1, 224, 224])
    """

    default_positional_resize: ClassVar[str] = "bicubic_antialias"
    needs_blocks: ClassVar[bool] = True
    default_feature_surgery: FeatureSurgery = "none"

    def __init__(
        self,
        forward_func: Union[CLIPZeroShotClassifier, nn.Module],
        blocks: Optional[int] = None,
        iterations: int = 1,
        temperature: Optional[float] = None,
        texts: Optional[Sequence[str]] = None,
        templates: Optional[Sequence[str]] = None,
        tokenizer: Tokenizer = None,
        *,
        positional_resize: Optional[str] = None,
        _branches: Sequence[str] = _BRANCHES,
        _normalize: bool = True,
        _class_token: str = "gem",
    ) -> None:
        super().__init__(forward_func, texts, templates, tokenizer,
                         positional_resize=positional_resize)
        require_attention_blocks(self.adapter, "GEM", "the attention of the last blocks")
        depth = len(self.adapter.image.blocks)
        check_optional_int("blocks", blocks)
        blocks = min(DEFAULT_BLOCKS, depth) if blocks is None else check_blocks("blocks", blocks, depth)
        check_int("iterations", iterations, minimum=0)
        if temperature is not None:
            temperature = check_positive_number("temperature", temperature)
        branches = tuple(_branches)
        if not branches:
            raise ValueError(f"_branches: expected a non-empty subset of {_BRANCHES}, got {branches}")
        for branch in branches:
            check_choice("_branches", branch, _BRANCHES)
        check_choice("_class_token", _class_token, ("gem", "original"))
        self.blocks = blocks
        self.iterations = iterations
        self.temperature = temperature
        self._branches = branches
        self._normalize = bool(_normalize)
        self._class_token = _class_token

    def _unit(self, z: Tensor) -> Tensor:
        return F.normalize(z, dim=-1) if self._normalize else z

    def _gem_output(self, block: BlockView, y: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        r"""``o = mean over branches of o_z``, ``[B, heads, N, d]``, for ``y = norm1(x)``."""
        if self.temperature is None:
            beta: Union[Tensor, float] = (
                y.float().norm(dim=-1).mean(dim=-1) / math.sqrt(block.head_dim)
            ).to(q.dtype)[:, None, None, None]
        else:
            beta = self.temperature

        n = len(self._branches)
        if isinstance(beta, Tensor):  # per-image β, repeated for the stacked branches
            beta = beta.repeat(n, 1, 1, 1)

        def attend(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
            if isinstance(beta, Tensor):  # per-image β folded into the queries
                return attention(query * beta, key, value, 1.0)
            return attention(query, key, value, beta)

        # the branches run stacked along the batch: one attention call per step for all
        zs = {"q": q, "k": k, "v": v}
        z = torch.cat([zs[name] for name in self._branches], dim=0)
        for _ in range(self.iterations):
            unit = self._unit(z)
            z = attend(unit, unit, unit)
        unit = self._unit(z)
        o = attend(unit, unit, v.repeat(n, 1, 1, 1)).unflatten(0, (n, v.shape[0]))
        total = o[0]
        for i in range(1, n):
            total = total + o[i]
        return total / n

    def token_features(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        r"""GEM token features ``[B, 1 + h*w, D]`` and the grid ``(h, w)``."""
        image = self.adapter.image
        head = image.head
        p = image.num_prefix_tokens
        own_cls = self._class_token == "gem" and head.kind == "token" and p > 0
        x, grid = image.embed(images)
        depth = len(image.blocks)
        start = depth - self.blocks
        x = run_blocks(image, x, grid, start)
        x_new: Optional[Tensor] = None
        pooled: Optional[Tensor] = None
        for i in range(start, depth):
            block = image.blocks[i]
            y = block.norm1(x)
            q, k, v = block.qkv(y)
            o = self._gem_output(block, y, q, k, v)
            x_new = block.attention_residual(x if x_new is None else x_new, o)
            if i < depth - 1:
                x = block.residual(x, block.original_attention(q, k, v))
            elif not own_cls:  # the model's own embedding from its last block
                pooled = original_last_block_pooled(image, block, x, q, k, v, grid)
        assert x_new is not None
        if own_cls:
            pooled = head.dense(x_new[:, :1])[:, 0]
        assert pooled is not None
        return torch.cat([pooled[:, None], dense_features(image, x_new, grid)], dim=1), grid
