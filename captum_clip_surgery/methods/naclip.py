r"""NACLIP (Hajimiri, Ben Ayed, Dolz, WACV 2025): neighbour-aware attention in the last block."""

from __future__ import annotations

from typing import ClassVar, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_clip_surgery._validation import check_positive_number
from captum_clip_surgery.adapters.base import BlockView, attention
from captum_clip_surgery.core.classifier import CLIPZeroShotClassifier
from captum_clip_surgery.methods.base import LastBlockAttribution, Tokenizer

__all__ = ["NACLIPAttribution", "neighbourhood_bias"]


def neighbourhood_bias(
    grid: Tuple[int, int],
    num_prefix_tokens: int,
    sigma: float,
    device: Optional[torch.device] = None,
) -> Tensor:
    r"""NACLIP's Gaussian neighbourhood term ``Ω`` added to the attention logits.

    ``Ω[i, j] = exp(-‖p_i - p_j‖² / (2σ²))`` for grid tokens at positions
    ``p = (row, col)`` in patch units; the rows and columns of the prefix tokens
    (class / register tokens) are 0.

    Args:
        grid (tuple[int, int]): the patch grid ``(h, w)``.
        num_prefix_tokens (int): tokens before the grid in the stream.
        sigma (float): the Gaussian's standard deviation in patches.
        device (torch.device, optional): where to build it.

    Returns:
        Tensor: float32 ``[P + h*w, P + h*w]``.

    Examples::

        >>> omega = neighbourhood_bias((2, 2), 1, sigma=1.0)
        >>> omega[0].tolist(), round(float(omega[1, 4]), 4)   # class row; diagonal neighbours
        ([0.0, 0.0, 0.0, 0.0, 0.0], 0.3679)
    """
    h, w = grid
    rows = torch.arange(h, device=device, dtype=torch.float32).repeat_interleave(w)
    cols = torch.arange(w, device=device, dtype=torch.float32).repeat(h)
    d2 = (rows[:, None] - rows[None, :]) ** 2 + (cols[:, None] - cols[None, :]) ** 2
    gauss = torch.exp(-d2 / (2.0 * sigma**2))
    return F.pad(gauss, (num_prefix_tokens, 0, num_prefix_tokens, 0))


class NACLIPAttribution(LastBlockAttribution):
    r"""NACLIP maps: neighbour-aware k-k attention in the last block, reduced like ClearCLIP.

    In the last attention block of the image tower the attention becomes
    ``A = softmax(k kᵀ/√d + Ω)`` with the block's own keys and NACLIP's Gaussian
    neighbourhood term ``Ω`` (:func:`neighbourhood_bias`: ``exp(-‖p_i - p_j‖² /
    (2σ²))`` between grid tokens at patch positions ``p``, 0 on the class / prefix
    rows and columns, shared by all heads, no other scaling). As in ClearCLIP the
    output is the attention branch alone, ``T = ls1(out(A v))`` (no residual, no
    MLP). Every grid token of ``T`` then goes through the pooling head applied per
    token (:meth:`~PoolingHead.dense`). Row 0 of :meth:`token_features` is the
    unmodified model's embedding. Computed functionally; nothing is modified.

    Defined for every image tower with attention blocks over a patch grid (any
    pooling head); a tower without them (CLIP ResNets, conv trunks) raises
    ``TypeError``. No feature surgery by default. The published protocol (logit
    scale 40, short side 336, window 224 / stride 112, PAMR with 10 iterations and
    dilations 8 and 16) is available through :func:`~captum_clip_surgery.segment`.

    The positional embedding is resized as the authors' code does it: bicubic with a
    scale factor of ``(n + 0.1) / n_native`` per side (``"bicubic_offset"``;
    ``positional_resize`` chooses another rule).

    Args:
        forward_func (CLIPZeroShotClassifier or nn.Module): classifier or model.
        sigma (float): the Gaussian's standard deviation in patches (default 5).
        texts (list[str], optional): texts, when a model is given.
        templates (list[str], optional): prompt templates, when a model is given.
        tokenizer (Callable, optional): tokenizer, when a model is given.
        positional_resize (str, optional): how the positional embedding is resized at
            another input size; default ``"bicubic_offset"``, the release's rule.

    Examples::

        >>> explainer = NACLIPAttribution(clf, sigma=5.0)
        >>> explainer.attribute(images, target="dog").shape
        torch.Size([8, 1, 224, 224])
    """

    default_positional_resize: ClassVar[str] = "bicubic_offset"
    method_name = "NACLIP"

    def __init__(
        self,
        forward_func: Union[CLIPZeroShotClassifier, nn.Module],
        sigma: float = 5.0,
        texts: Optional[Sequence[str]] = None,
        templates: Optional[Sequence[str]] = None,
        tokenizer: Tokenizer = None,
        *,
        positional_resize: Optional[str] = None,
    ) -> None:
        sigma = check_positive_number("sigma", sigma)
        super().__init__(forward_func, texts, templates, tokenizer,
                         positional_resize=positional_resize)
        self.sigma = sigma

    def last_block_tokens(
        self, block: BlockView, x: Tensor, q: Tensor, k: Tensor, v: Tensor, grid: Tuple[int, int]
    ) -> Tensor:
        r"""``T``: neighbour-aware k-k attention branch, no residual, no MLP."""
        omega = neighbourhood_bias(grid, self.adapter.image.num_prefix_tokens, self.sigma, k.device)
        return block.branch(attention(k, k, v, block.scale, bias=omega))
