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

    def _token_head_scores(self, image: ImageTowerView, x: Tensor) -> Tuple[List[Tensor], List[Tensor]]:
        r"""Per chosen layer ``ℓ`` the unit feature ``z^ℓ`` ``[B, D]`` and the attention leaf
        ``A^ℓ`` ``[B, heads, N, N]`` it depends on, for class-token / average heads; ``x`` is
        the stream entering the first chosen block."""
        depth = len(image.blocks)
        leaves: List[Tensor] = []
        features: List[Tensor] = []
        for i in range(depth - self.layers, depth):
            block = image.blocks[i]
            x = x.detach()  # each layer's score reaches only its own attention
            with torch.no_grad():
                q, k, v = block.qkv(block.norm1(x))
                probs = block.attention_logits(q, k).float().softmax(dim=-1)
            probs.requires_grad_(True)
            leaves.append(probs)
            x = block.residual(x, probs.to(v.dtype) @ v)
            features.append(
                F.normalize(image.head.dense(x.mean(dim=1, keepdim=True))[:, 0].float(), dim=-1)
            )
        return features, leaves

    def _pool_head_scores(
        self, image: ImageTowerView, x: Tensor, grid: Tuple[int, int]
    ) -> Tuple[List[Tensor], List[Tensor]]:
        r"""``z^ℓ`` and the pool's attention ``A^ℓ`` ``[B, heads, 1, N']`` over each chosen
        block's output for attention-pool heads; ``x`` is the stream entering block 0."""
        head = image.head
        assert isinstance(head, AttentionPoolHead)
        depth = len(image.blocks)
        p = image.num_prefix_tokens
        leaves: List[Tensor] = []
        features: List[Tensor] = []
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
            features.append(F.normalize(pooled.float(), dim=-1))
        return features, leaves

    def _scores(self, prepared: Tensor) -> Tuple[List[Tensor], List[Tensor], Tuple[int, int], int]:
        r"""``(z^ℓ per layer, A^ℓ leaves, grid, first grid column)`` of one forward."""
        image = self.adapter.image
        with torch.no_grad():
            x, grid = image.embed(prepared)
        if isinstance(image.head, AttentionPoolHead):
            features, leaves = self._pool_head_scores(image, x, grid)
            return features, leaves, grid, dense_rows(image)
        with torch.no_grad():
            x = run_blocks(image, x, grid, len(image.blocks) - self.layers)
        features, leaves = self._token_head_scores(image, x)
        return features, leaves, grid, image.num_prefix_tokens

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
        with self.gradient_inputs(images, target, texts) as (prepared, index, e):
            t = e[index]
            features, leaves, grid, first = self._scores(prepared)
            total = torch.stack([(z * t).sum() for z in features]).sum()
            grads = torch.autograd.grad(total, leaves)
        return [g.detach().float() for g in grads], grid, first

    def layer_gradients_per_text(
        self, images: Tensor, texts: Optional[Sequence[str]] = None
    ) -> Tuple[List[Tensor], Tuple[int, int], int]:
        r"""``G^ℓ`` of every image for every text from ONE forward: the scores of all texts
        share the stream, and one batched backward through the chosen layers gives every
        text's gradients (the scores are linear in the text feature).

        Args:
            images (Tensor): ``[B, 3, H, W]``.
            texts (list[str], optional): texts (default the classifier's).

        Returns:
            tuple: (list of float32 ``[T, B, heads, Nq, N]`` gradients, the grid ``(h, w)``,
            the index of the first grid column).
        """
        texts_ = self.classifier.texts if texts is None else texts
        with self.gradient_inputs(images, 0, texts_) as (prepared, _, e):
            features, leaves, grid, first = self._scores(prepared)
            vectors = [e[:, None, :].expand(e.shape[0], *z.shape).to(z.dtype) for z in features]
            grads = torch.autograd.grad(features, leaves, grad_outputs=vectors,
                                        is_grads_batched=True)
        return [g.detach().float() for g in grads], grid, first

    def relevance_per_text(self, images: Tensor, texts: Optional[Sequence[str]] = None) -> Tensor:
        r"""``Σ_ℓ R^ℓ`` of every grid token for every text, ``[B, T, h, w]`` (float32, not
        normalised), from one forward (:meth:`layer_gradients_per_text`): row ``t`` equals
        :meth:`relevance` with target ``t`` for every image.

        Args:
            images (Tensor): ``[B, 3, H, W]``.
            texts (list[str], optional): texts (default the classifier's).

        Returns:
            Tensor: float32 ``[B, T, h, w]``.
        """
        grads, (h, w), first = self.layer_gradients_per_text(images, texts)
        r = sum(g.clamp(min=0).mean(dim=(2, 3)) for g in grads)  # [T, B, N]
        t, b = r.shape[:2]  # type: ignore[union-attr]
        return r[:, :, first:].reshape(t, b, h, w).transpose(0, 1)  # type: ignore[union-attr]

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
