r"""ProxyCLIP (Lan et al., ECCV 2024): a second backbone's patch affinities as CLIP's last
attention."""

from __future__ import annotations

from typing import Any, ClassVar, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_clip_surgery._validation import (
    check_choice,
    check_int,
    check_positive_number,
)
from captum_clip_surgery.adapters.backbone import VisionBackbone
from captum_clip_surgery.adapters.base import merge_heads
from captum_clip_surgery.core.architecture import run_blocks
from captum_clip_surgery.core.classifier import CLIPZeroShotClassifier
from captum_clip_surgery.methods.base import (
    Tokenizer,
    TokenMapAttribution,
    dense_features,
    original_last_block_pooled,
    require_attention_blocks,
)
from captum_clip_surgery.methods.second_backbone import (
    backbone_extent,
    backbone_input,
    resize_grid_tokens,
    resolve_backbone,
)

__all__ = ["ProxyCLIPAttribution", "proxy_attention"]


#: What :func:`proxy_attention` does with a row whose every argument is below 0.
EMPTY_ROWS: Tuple[str, ...] = ("largest", "nan")


def proxy_attention(
    features: Tensor, beta: float = 1.2, gamma: float = 3.0, empty_rows: str = "largest"
) -> Tensor:
    r"""ProxyCLIP's proxy attention from a backbone's patch features.

    ``A = softmax_j(γ (S_ij - β · mean(S)))`` with ``S = f̂ f̂ᵀ`` the cosine similarities of
    the L2-normalised features, ``mean(S)`` over the whole ``N × N`` matrix of each image
    (diagonal included), and every argument below 0 set to ``-inf`` before the softmax. A
    row whose every argument falls below 0 (every row of an image whose
    ``mean(S) > 1 / β``, as then ``S_ij <= 1 < β · mean(S)``; the row of a zero feature
    when ``β · mean(S) > 0``) is treated as ``empty_rows`` says. Computed in float32.

    Args:
        features (Tensor): ``[B, N, C]`` patch features.
        beta (float): the multiplier of the mean similarity (default 1.2).
        gamma (float): the temperature (default 3.0).
        empty_rows (str): a row whose every argument is below 0: ``"largest"`` (default)
            keeps its largest entries (a softmax over the row's maxima, so every row is a
            distribution); ``"nan"`` cuts them too, as the release does
            (``mc-lan/ProxyCLIP@e7b767f``, ``open_clip/transformer.py:573-574`` sets every
            argument below 0 to ``-inf`` and :578's softmax of an all ``-inf`` row is NaN),
            so such a row is NaN.

    Returns:
        Tensor: float32 ``[B, N, N]``, rows summing to 1 (NaN rows with ``"nan"``).

    Examples::

        >>> f = torch.eye(3)[None]                    # three orthogonal features
        >>> proxy_attention(f)[0]                     # each token attends to itself
        tensor([[1., 0., 0.],
                [0., 1., 0.],
                [0., 0., 1.]])
    """
    check_choice("empty_rows", empty_rows, EMPTY_ROWS)
    f = F.normalize(features.float(), dim=-1)
    s = f @ f.transpose(1, 2)
    logits = (s - s.mean(dim=(1, 2), keepdim=True) * beta) * gamma
    keep = logits >= 0
    if empty_rows == "largest":
        keep |= logits == logits.amax(dim=-1, keepdim=True)
    return logits.masked_fill(~keep, float("-inf")).softmax(dim=-1)


def _resize_values_first(tokens: int, proxy_tokens: int, width: int) -> bool:
    r"""Whether ``A (R V)`` takes fewer multiplications than ``(A R) V`` for ``A``
    ``[M, M]``, ``R`` ``[M, n]`` and ``V`` ``[n, C]`` (``M`` proxy tokens, ``n`` tokens of
    width ``C``; the resize ``R V`` itself is cheap)."""
    return tokens * (proxy_tokens + width) >= proxy_tokens * width


def _bilinear_resize_matrix(
    grid: Tuple[int, int], size: Tuple[int, int], device: torch.device
) -> Tensor:
    r"""``R`` ``[I*J, h*w]`` (float32) with ``R @ X`` the bilinear resize of ``[h*w, C]``
    tokens on ``grid`` to ``size`` (:func:`_bilinear_resize`): the resize of the identity."""
    n = grid[0] * grid[1]
    eye = torch.eye(n, device=device, dtype=torch.float32)[None]
    return resize_grid_tokens(eye, grid, size)[0]  # token i of basis vector j is R[i, j]


class ProxyCLIPAttribution(TokenMapAttribution):
    r"""ProxyCLIP maps: a second backbone's patch affinities replace CLIP's last attention.

    Blocks before the last run as the model does. The last block is replaced entirely (no
    residual, no MLP, no class-token output): its values ``V = W_v · norm1(x)`` of the grid
    tokens are resized per head bilinearly (``align_corners=False``) from CLIP's grid to the
    backbone's grid ``I×J``, and mixed by the proxy attention of the backbone's patch
    features ``F`` (:func:`proxy_attention`: ``softmax_j(γ (S_ij - β·mean S))``, arguments
    below 0 cut, the same attention for every head); ``T = ls1(out(A V))`` then goes
    through the pooling head per token (``ln_post`` and the projection). The maps lie on the
    backbone's grid. Row 0 of :meth:`token_features` is the unmodified model's embedding.

    The backbone sees the same image as CLIP: CLIP's normalisation undone and the
    backbone's (ImageNet's for DINO) applied, the size aligned to its patch
    (:meth:`~captum_clip_surgery.adapters.backbone.VisionBackbone.prepare`). Its features
    are the output of its last block (``backbone_layer``) through its final norm, the class
    and register tokens dropped: DINO's ``get_intermediate_layers(x)[0]``, DINOv2's
    ``get_intermediate_layers(x, reshape=True)[0]``. The release's defaults, for every
    backbone and dataset: ``β = 1.2``, ``γ = 3.0``; its default backbone is DINO ViT-B/8
    (``vit_base_patch8_224.dino`` in timm, ``facebook/dino-vitb8`` on the Hugging Face hub),
    which it runs with the DINO hub's positional rule (bicubic, ``(n + 0.1) / n`` scale
    factor), as do the backbone views by default, and so does this method for CLIP
    (``"bicubic_offset"``). With ``backbone=None`` the explained model's own image tower is
    the proxy (its final-normed last-block tokens): a baseline, not the paper's setting.

    Differences from the release (``mc-lan/ProxyCLIP@e7b767f``), all at the release's own
    setting identical or by rounding only:

    - any input shape: the release assumes square crops (its token grid is
      ``(W/p, H/p)`` and DINO's grid ``(H/p, H/p)``, so a non-square input gives a wrong,
      square map silently); here each grid is ``(H/p, W/p)``;
    - ``mean(S)`` per image: the release takes it over the whole batch tensor (it runs one
      crop at a time); here a batch equals per-image calls;
    - float32 similarities and softmax (the release runs in fp16);
    - a row with every argument below 0 keeps its maxima by default (NaN in the release;
      ``empty_rows="nan"`` gives the release's NaN);
    - the backbone's input is the image CLIP sees (padded to CLIP's patch, resized to a
      multiple of the backbone's where needed); the release pads crops to a multiple of 56.

    Args:
        forward_func (CLIPZeroShotClassifier or nn.Module): classifier or model.
        backbone (nn.Module or VisionBackbone, optional): the proxy: a DINO / DINOv2 (timm,
            Hugging Face), any model :func:`~captum_clip_surgery.adapters.get_backbone`
            understands, a view, or a CLIP model / classifier (its image tower); default
            the explained model's own image tower.
        beta (float): the multiplier of the mean similarity (default 1.2, ``>= 0``).
        gamma (float): the temperature (default 3.0, ``> 0``).
        backbone_layer (int): the backbone block whose (final-normed) output is ``F``
            (default -1, the last).
        texts (list[str], optional): texts, when a model is given.
        templates (list[str], optional): prompt templates, when a model is given.
        tokenizer (Callable, optional): tokenizer, when a model is given.
        positional_resize (str, optional): CLIP's positional rule at another size; default
            ``"bicubic_offset"``, the release's.
        empty_rows (str): an attention row whose every argument is below 0 (every row of an
            image whose mean proxy similarity exceeds ``1 / β``): ``"largest"`` (default)
            keeps the row's largest entries, so the maps stay finite; ``"nan"`` gives the
            release's NaN (its ``open_clip/transformer.py:573-574`` sets every argument
            below 0 to ``-inf``, and the softmax of such a row is NaN): the dense tokens,
            similarities and maps of those rows are NaN. The ``proxyclip``
            benchmark preset runs ``"nan"``, as the release does (see
            :func:`proxy_attention`).

    Examples::

        >>> import timm
        >>> dino = timm.create_model("vit_base_patch8_224.dino", pretrained=True)
        >>> explainer = ProxyCLIPAttribution(clf, backbone=dino)
        >>> explainer.attribute(images, target="dog").shape
        torch.Size([8, 1, 224, 224])
    """

    needs_blocks: ClassVar[bool] = True
    default_positional_resize: ClassVar[str] = "bicubic_offset"
    method_name: ClassVar[str] = "ProxyCLIP"

    def __init__(
        self,
        forward_func: Union[CLIPZeroShotClassifier, nn.Module],
        backbone: Any = None,
        beta: float = 1.2,
        gamma: float = 3.0,
        backbone_layer: int = -1,
        texts: Optional[Sequence[str]] = None,
        templates: Optional[Sequence[str]] = None,
        tokenizer: Tokenizer = None,
        *,
        positional_resize: Optional[str] = None,
        empty_rows: str = "largest",
    ) -> None:
        beta = check_positive_number("beta", beta, allow_zero=True)
        gamma = check_positive_number("gamma", gamma)
        self.empty_rows: str = check_choice("empty_rows", empty_rows, EMPTY_ROWS)
        super().__init__(forward_func, texts, templates, tokenizer,
                         positional_resize=positional_resize)
        require_attention_blocks(self.adapter, self.method_name, "the last block's attention")
        self.backbone: VisionBackbone = resolve_backbone(backbone, self.adapter)
        depth = self.backbone.depth
        self.backbone_layer = check_int("backbone_layer", backbone_layer, -depth, depth - 1)
        self.beta = beta
        self.gamma = gamma

    def proxy_features(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        r"""The backbone's patch features ``F`` ``[B, I*J, C]`` (float32, on the model's
        device) of prepared images, and the backbone's grid ``(I, J)``."""
        with self.running():  # a CLIP tower as the backbone follows the method's rule
            prepared = backbone_input(self.backbone, self.adapter, images)
            feats, grid = self.backbone.patch_tokens(prepared, self.backbone_layer, norm=True)
        return feats.to(device=images.device, dtype=torch.float32), grid

    def token_features(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        r"""Token features ``[B, 1 + I*J, D]`` on the backbone's grid ``(I, J)`` (row 0 the
        model's own embedding)."""
        image = self.adapter.image
        x, grid = image.embed(images)
        x = run_blocks(image, x, grid, len(image.blocks) - 1)
        block = image.blocks[-1]
        q, k, v = block.qkv(block.norm1(x))
        pooled = original_last_block_pooled(image, block, x, q, k, v, grid)
        feats, proxy_grid = self.proxy_features(images)
        probs = proxy_attention(feats, self.beta, self.gamma, self.empty_rows)
        p = image.num_prefix_tokens
        b, heads, n, d = v.shape
        n -= p
        # The tokens are T = branch(A · R · V): R the bilinear resize from CLIP's grid to the
        # backbone's (rows summing to 1, as A's do), one product for all heads (they share
        # A). An affine branch runs first, on CLIP's fewer tokens (it commutes with A · R),
        # and A · R is formed first when that is the cheaper order.
        affine = block.branch_is_affine
        values = block.branch(v[:, :, p:]) if affine else merge_heads(v[:, :, p:])
        mixing = probs
        if proxy_grid != grid:
            if _resize_values_first(n, probs.shape[-1], values.shape[-1]):
                values = resize_grid_tokens(values, grid, proxy_grid)
            else:
                mixing = probs @ _bilinear_resize_matrix(grid, proxy_grid, probs.device)
        tokens = mixing.to(values.dtype) @ values  # [B, I*J, C]
        if not affine:
            tokens = block.branch(tokens.view(b, -1, heads, d).transpose(1, 2))
        stream = torch.cat([tokens.new_zeros(b, p, tokens.shape[-1]), tokens], dim=1)
        dense = dense_features(image, stream, proxy_grid)
        return torch.cat([pooled[:, None], dense], dim=1), proxy_grid

    def token_extent(
        self, grid: Tuple[int, int], input_size: Tuple[int, int]
    ) -> Tuple[float, float]:
        r"""The backbone's grid spans the input padded to CLIP's patch."""
        return backbone_extent(self.adapter, input_size)
