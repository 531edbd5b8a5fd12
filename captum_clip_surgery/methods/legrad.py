r"""LeGrad (Bousselham et al., ICCV 2025): layer-wise gradients of the attention maps."""

from __future__ import annotations

from typing import Any, ClassVar, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_clip_surgery._validation import (
    check_blocks,
    check_optional_int,
)
from captum_clip_surgery.adapters.base import (
    AttentionPoolHead,
    ImageTowerView,
)
from captum_clip_surgery.core.architecture import dense_rows, run_blocks
from captum_clip_surgery.core.classifier import CLIPZeroShotClassifier
from captum_clip_surgery.methods.base import (
    RelevanceMapAttribution,
    Tokenizer,
    require_attention_blocks,
)

__all__ = ["LeGradAttribution"]

#: Blocks whose attention LeGrad differentiates in the authors' code.
DEFAULT_LAYERS = 2


class LeGradAttribution(RelevanceMapAttribution):
    r"""LeGrad maps: ReLU'd gradients of per-layer scores w.r.t. each layer's attention.

    The model runs unmodified. For each chosen block ``ℓ`` (the last ``layers``)
    with output tokens ``X^ℓ`` a score ``s^ℓ = ⟨t̂, z^ℓ⟩`` is read for the target
    text ``t``, and its gradient ``G^ℓ = ∂s^ℓ/∂A^ℓ`` with respect to an attention
    map ``A^ℓ`` (post-softmax, ``[heads, Nq, N]``) gives the relevance of every key
    token, ``R^ℓ_j = mean over heads and query rows of ReLU(G^ℓ[h, i, j])``. The map
    is ``Σ_ℓ R^ℓ`` over the grid tokens, min-max normalised per map. Per pooling
    head kind:

    - class-token and average heads: ``z^ℓ = normalise(dense(mean over all tokens
      of X^ℓ))`` (the class / prefix tokens included; ``dense`` is the head per
      token, i.e. the final norm and projection), and ``A^ℓ`` is block ``ℓ``'s own
      attention (all query rows);
    - attention-pool heads (SigLIP MAP heads): ``z^ℓ`` is the head's own pooled
      embedding of ``X^ℓ`` and ``A^ℓ`` the head's attention over ``X^ℓ`` (its query
      row).

    Each score's gradient reaches only its own layer's attention: the stream is
    cut (detached) between the chosen blocks and the attention map is a leaf, so
    one backward pass gives every ``G^ℓ`` without mixing layers. No
    ``create_graph``; gradients are enabled inside, so callers may run under
    ``torch.no_grad()``. Defined for image towers with attention blocks; others
    raise ``TypeError``. The texts are encoded with the classifier's templates
    (LeGrad uses the prompt as given: build the classifier with
    ``templates=["{}"]`` for that).

    The positional embedding is resized as the authors' code does it (timm's
    ``resample_abs_pos_embed``): bicubic with antialiasing to the grid
    (``positional_resize`` chooses another rule).

    Args:
        forward_func (CLIPZeroShotClassifier or nn.Module): the classifier
            explained, or a CLIP model (then ``texts`` is needed).
        layers (int, optional): the last blocks whose scores and attentions are used,
            ``1..depth``. Default ``None``: the authors' 2 (every block of a shallower
            tower).
        texts (list[str], optional): texts, when a model is given.
        templates (list[str], optional): prompt templates, when a model is given.
        tokenizer (Callable, optional): tokenizer, when a model is given.
        positional_resize (str, optional): how the positional embedding is resized at
            another input size; default ``"bicubic_antialias"``, the release's rule.

    Examples::

        >>> legrad = LeGradAttribution(clf)
        >>> legrad.attribute(images, target="dog").shape
        torch.Size([8, 1, 224, 224])
    """

    default_positional_resize: ClassVar[str] = "bicubic_antialias"
    def __init__(
        self,
        forward_func: Union[CLIPZeroShotClassifier, nn.Module],
        layers: Optional[int] = None,
        texts: Optional[Sequence[str]] = None,
        templates: Optional[Sequence[str]] = None,
        tokenizer: Tokenizer = None,
        *,
        positional_resize: Optional[str] = None,
    ) -> None:
        super().__init__(forward_func, texts, templates, tokenizer,
                         positional_resize=positional_resize)
        require_attention_blocks(self.adapter, "LeGrad", "gradients of the attention maps")
        depth = len(self.adapter.image.blocks)
        check_optional_int("layers", layers)
        self.layers = min(DEFAULT_LAYERS, depth) if layers is None else check_blocks(
            "layers", layers, depth
        )

    def _token_head_gradients(self, image: ImageTowerView, x: Tensor, t: Tensor) -> List[Tensor]:
        r"""``G^ℓ = ∂s^ℓ/∂A^ℓ`` ``[B, heads, N, N]`` for class-token / average heads;
        ``x`` is the stream entering the first chosen block."""
        depth = len(image.blocks)
        leaves: List[Tensor] = []
        scores: List[Tensor] = []
        for i in range(depth - self.layers, depth):
            block = image.blocks[i]
            x = x.detach()  # each layer's score reaches only its own attention
            with torch.no_grad():
                q, k, v = block.qkv(block.norm1(x))
                probs = block.attention_logits(q, k).float().softmax(dim=-1)
            probs.requires_grad_(True)
            leaves.append(probs)
            x = block.residual(x, probs.to(v.dtype) @ v)
            z = F.normalize(image.head.dense(x.mean(dim=1, keepdim=True))[:, 0].float(), dim=-1)
            scores.append((z * t).sum())
        return list(torch.autograd.grad(torch.stack(scores).sum(), leaves))

    def _pool_head_gradients(
        self, image: ImageTowerView, x: Tensor, grid: Tuple[int, int], t: Tensor
    ) -> List[Tensor]:
        r"""``G^ℓ`` ``[B, heads, 1, N']`` w.r.t. the pool's attention over each chosen
        block's output for attention-pool heads; ``x`` is the stream entering block 0."""
        head = image.head
        assert isinstance(head, AttentionPoolHead)
        depth = len(image.blocks)
        p = image.num_prefix_tokens
        leaves: List[Tensor] = []
        scores: List[Tensor] = []
        for i in range(depth):
            with torch.no_grad():
                x = image.blocks[i].forward(x)
            if i < depth - self.layers:
                continue
            with torch.no_grad():
                keys = head.prepare(x, p, grid)
                query = head.split_heads(head.q(head.query(keys)))
                k, v = head.split_heads(head.k(keys)), head.split_heads(head.v(keys))
                probs = ((query * head.scale) @ k.transpose(-2, -1)).float().softmax(dim=-1)
            probs.requires_grad_(True)
            leaves.append(probs)
            pooled = head.finish(head.out(head.merge_heads(probs.to(v.dtype) @ v)))[:, 0]
            scores.append((F.normalize(pooled.float(), dim=-1) * t).sum())
        return list(torch.autograd.grad(torch.stack(scores).sum(), leaves))

    def layer_gradients(
        self, images: Tensor, target: Any = None, texts: Optional[Sequence[str]] = None
    ) -> Tuple[List[Tensor], Tuple[int, int], int]:
        r"""Every chosen layer's ``G^ℓ = ∂s^ℓ/∂A^ℓ``, first chosen layer first.

        Args:
            images (Tensor): ``[B, 3, H, W]``.
            target: as in :meth:`attribute`.
            texts (list[str], optional): texts for this call.

        Returns:
            tuple: (list of float32 ``[B, heads, Nq, N]`` gradients, the grid ``(h, w)``,
            the index of the first grid column).
        """
        image = self.adapter.image
        with self.gradient_inputs(images, target, texts) as (prepared, index, e):
            t = e[index]
            with torch.no_grad():
                x, grid = image.embed(prepared)
            if isinstance(image.head, AttentionPoolHead):
                grads = self._pool_head_gradients(image, x, grid, t)
                first = dense_rows(image)
            else:
                with torch.no_grad():
                    x = run_blocks(image, x, grid, len(image.blocks) - self.layers)
                grads = self._token_head_gradients(image, x, t)
                first = image.num_prefix_tokens
        return [g.detach().float() for g in grads], grid, first

    def relevance(
        self, images: Tensor, target: Any = None, texts: Optional[Sequence[str]] = None
    ) -> Tensor:
        r"""``Σ_ℓ R^ℓ`` of every grid token, ``[B, 1, h, w]`` (float32, not normalised).

        Args:
            images (Tensor): ``[B, 3, H, W]``.
            target: as in :meth:`attribute`.
            texts (list[str], optional): texts for this call.

        Returns:
            Tensor: float32 ``[B, 1, h, w]``.
        """
        grads, (h, w), first = self.layer_gradients(images, target, texts)
        r = sum(g.clamp(min=0).mean(dim=(1, 2)) for g in grads)
        return r[:, first:].reshape(-1, 1, h, w)  # type: ignore[union-attr]
