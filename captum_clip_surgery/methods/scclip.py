r"""SC-CLIP (Bai, Liu, Han, Zhang, Tang, arXiv 2411.15869): self-calibrated CLIP.

Anomaly tokens found by the local outlier factor are repaired from their neighbours, a
mid-layer self-similarity smooths the features and guides the last attention, and
multi-level features are fused through the last block.
"""

from __future__ import annotations

import math
from typing import ClassVar, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_clip_surgery._validation import (
    check_int,
    check_positive_number,
    check_unit_interval,
    prepare_images,
)
from captum_clip_surgery.adapters.base import (
    BlockView,
    CLIPAdapter,
    attention,
    inference_mode_of,
)
from captum_clip_surgery.core.classifier import CLIPZeroShotClassifier
from captum_clip_surgery.methods.base import (
    FeatureSurgery,
    Tokenizer,
    TokenMapAttribution,
    original_last_block_pooled,
    require_attention_blocks,
)

__all__ = [
    "SCCLIPAttribution",
    "lof_outliers",
    "repair_outliers",
    "scclip_layers",
]

#: The release's layers for its 12-block ViT-B/16 (1-based: x^(l) is the stream after
#: block l): pre-adjustment 9, post-adjustment 4, fusion 4..10 (``scclip_segmentor.py:22``,
#: ``configs/base_config.py:4-8``: indices 8, 3, ``range(3, 10)`` of the block outputs).
RELEASE_DEPTH = 12
RELEASE_PRE_ADJUST = 9
RELEASE_POST_ADJUST = 4
RELEASE_FUSION = (4, 10)


def scclip_layers(depth: int) -> Tuple[int, int, Tuple[int, int]]:
    r"""SC-CLIP's layers for a tower of ``depth`` attention blocks.

    At 12 blocks these are the release's: pre-adjustment ``9``, post-adjustment ``4``,
    fusion ``(4, 10)`` (first and last, inclusive; 1-based stream indices, ``x^(l)``
    the stream after block ``l``). Any other depth maps each of them proportionally,
    ``l -> floor(l * depth / 12 + 1/2)``, clipped to ``[1, max(1, depth - 2)]`` (the release
    never uses the stream entering the last block, ``x^(depth-1)``, for them): 7 blocks
    give ``5, 2, (2, 5)``, 24 blocks ``18, 8, (8, 20)``.

    Args:
        depth (int): attention blocks of the tower (``>= 2``).

    Returns:
        tuple: ``(pre_adjust_layer, post_adjust_layer, (first, last) fusion layers)``.

    Examples::

        >>> scclip_layers(12)
        (9, 4, (4, 10))
        >>> scclip_layers(7)
        (5, 2, (2, 5))
    """
    top = max(1, depth - 2)

    def scaled(layer: int) -> int:
        if depth == RELEASE_DEPTH:
            return layer
        return min(top, max(1, int(math.floor(layer * depth / RELEASE_DEPTH + 0.5))))

    return (scaled(RELEASE_PRE_ADJUST), scaled(RELEASE_POST_ADJUST),
            (scaled(RELEASE_FUSION[0]), scaled(RELEASE_FUSION[1])))


def lof_outliers(tokens: Tensor, neighbors: int = 30, contamination: float = 0.05) -> Tensor:
    r"""SC-CLIP's anomaly tokens: the local outlier factor as the release computes it.

    Per image, with ``δ_ij = ‖x_i - x_j‖²`` (squared distances, float32) and the ``k``
    nearest neighbours of each token (itself excluded; ``k = min(neighbors, N - 1)``),
    ``kd_i`` the distance to the ``k``-th: the release's "reach distance"
    ``max(δ_ij, kd_i)`` takes the *query's* k-distance, so it always equals ``kd_i``
    (the textbook LOF takes ``max(δ_ij, kd_j)``); ``lrd_i = k / mean_j reach_ij`` and
    ``LOF_i = mean_{j ∈ kNN(i)} lrd_j / lrd_i``. Outliers are the tokens whose LOF is
    above the ``1 - contamination`` quantile (linear interpolation) of the image's LOFs.

    Args:
        tokens (Tensor): ``[B, N, C]`` tokens (one image per row of the batch).
        neighbors (int): ``k`` (the release's 30).
        contamination (float): the outlier share, in ``[0, 1]`` (the release's 0.05).

    Returns:
        Tensor: ``[B, N]`` bool, True for an outlier.

    Examples::

        >>> x = torch.randn(1, 20, 8)
        >>> x[0, 7] += 50.0                      # one token far away from the rest
        >>> lof_outliers(x, neighbors=5, contamination=0.05).nonzero()[:, 1].tolist()
        [7]
    """
    b, n, _ = tokens.shape
    k = min(int(neighbors), n - 1)
    if k < 1:
        return torch.zeros(b, n, dtype=torch.bool, device=tokens.device)
    x = tokens.float()
    # each pair's difference summed directly (no ‖a‖² + ‖b‖² - 2ab cancellation)
    dist = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist") ** 2
    dist.diagonal(dim1=-2, dim2=-1).fill_(float("inf"))  # the release drops itself
    knn, index = dist.topk(k, dim=-1, largest=False)
    kd = knn[..., -1:]
    reach = torch.maximum(knn, kd)  # = kd_i everywhere, as released
    lrd = k / torch.nan_to_num(reach.mean(dim=-1), nan=1e-6)
    ratios = torch.gather(lrd, 1, index.reshape(b, n * k)).reshape(b, n, k) / lrd[..., None]
    lof = ratios.mean(dim=-1)
    threshold = torch.quantile(lof, 1.0 - float(contamination), dim=-1, keepdim=True)
    return lof > threshold


def repair_outliers(tokens: Tensor, outliers: Tensor, grid: Tuple[int, int]) -> Tensor:
    r"""Each outlier token replaced by the mean of its non-outlier 8-neighbours.

    Tokens are on the grid in row-major order (token ``r * w + c`` at row ``r``, column
    ``c``); neighbours outside the grid do not count; an outlier without a non-outlier
    neighbour is left as it is. Computed in float32, returned in the tokens' dtype.

    Args:
        tokens (Tensor): ``[B, h * w, C]``.
        outliers (Tensor): ``[B, h * w]`` bool.
        grid (tuple[int, int]): ``(h, w)``.

    Returns:
        Tensor: ``[B, h * w, C]``, a new tensor.

    Examples::

        >>> x = torch.arange(9.0).reshape(1, 9, 1)
        >>> bad = torch.zeros(1, 9, dtype=torch.bool); bad[0, 4] = True
        >>> repair_outliers(x, bad, (3, 3))[0, 4, 0].item()   # mean of 0,1,2,3,5,6,7,8
        4.0
    """
    b, n, c = tokens.shape
    h, w = grid
    keep = (~outliers).float().reshape(b, 1, h, w)
    fmap = tokens.float().transpose(1, 2).reshape(b, c, h, w)
    ring = torch.ones(1, 1, 3, 3, device=tokens.device)
    ring[..., 1, 1] = 0.0
    sums = F.conv2d(F.pad(fmap * keep, (1, 1, 1, 1)), ring.expand(c, 1, 3, 3), groups=c)
    count = F.conv2d(F.pad(keep, (1, 1, 1, 1)), ring)
    update = outliers.reshape(b, 1, h, w) & (count > 0)
    fixed = torch.where(update, sums / count.clamp(min=1.0), fmap)
    return fixed.reshape(b, c, n).transpose(1, 2).to(tokens.dtype)


def _row_normalized(corr: Tensor) -> Tensor:
    r"""``corr / (row sum + 1e-6)`` (the release's ``adaptively_aggregate`` weights)."""
    return corr / (corr.sum(dim=-1, keepdim=True) + 1e-6)


def _self_similarity(tokens: Tensor) -> Tensor:
    r"""Cosine similarity of every pair of tokens, ``[B, N, N]`` float32."""
    f = F.normalize(tokens.float(), dim=-1)
    return f @ f.transpose(1, 2)


class SCCLIPAttribution(TokenMapAttribution):
    r"""SC-CLIP maps: anomaly tokens repaired, self-adjusted last attention, multi-level fusion.

    With ``x^(l)`` the stream after block ``l`` of an ``L``-block tower (its layers at
    12 blocks: LOF on ``x^(11)``, pre-adjustment 9, post-adjustment 4, fusion 4..10; see
    :func:`scclip_layers` for other depths), ``c`` the class token of ``x^(L-1)``, the
    method follows the authors' code (``clip/model.py:254-393``, ``SuleBai/SC-CLIP``):

    1. blocks ``1..L-1`` run as in the model;
    2. **anomalies** (:func:`lof_outliers`): the local outlier factor of the grid tokens
       of ``x^(L-1)`` (30 neighbours, contamination 0.05); the outliers are **repaired**
       (:func:`repair_outliers`) from their non-outlier 8-neighbours; the stream
       continues as the grid tokens only;
    3. **pre-adjustment**: ``F`` = the grid tokens of ``x^(pre)`` repaired with the same
       outliers, ``M = cos(F_i, F_j)``; ``x ← rownorm(M·[M ≥ β]) x`` with ``β = 0.4``
       and ``rownorm(A) = A / (row sum + 1e-6)``;
    4. **last block, self-adjusting attention**, no residual and no MLP:
       ``A = ½ softmax_j(3 (M_ij - mean M))`` (``-∞`` where ``M_ij < mean M``, the mean
       over the whole ``N×N`` matrix) ``+ ½ softmax(k kᵀ/√d)`` with ``q, k, v`` of
       ``norm1(x)``; ``x ← ls1(out(A v)) + 0.3 c``;
    5. **post-adjustment**: ``S = cos`` of the grid tokens of ``x^(post)`` (not
       repaired), ``W = rownorm(S·[S ≥ β])``; ``x ← W x``;
    6. **multi-level fusion**: ``R = Σ_{l = first..last} x^(l)`` (class token included);
       ``r = ls1(out(A_R v_R)) + 0.3 R_cls`` with step 4's attention computed from
       ``norm1`` of the grid tokens of ``R`` (the same ``M`` term); ``x ← x + W r``;
    7. every grid token goes through the head (final norm and projection).

    Row 0 of :meth:`token_features` is the unmodified model's embedding. Computed
    functionally from the model's own weights; nothing is modified.

    Differences from the release, all deliberate: the release runs one image at a
    time (``B = 1``) and breaks on a non-square grid (it maps an outlier's index to
    ``(index // rows, index % rows)``); here any grid works (``(index // w, index %
    w)``) and a batch gives each image exactly its own single-image result (every mean,
    quantile and threshold is per image). The release computes the LOF distances in the
    model's dtype (fp16 overflows once a distance passes 256); here they are float32.
    The release drops the first of the 31 nearest tokens as "itself"; here a token's
    own distance is excluded (the same unless two tokens coincide). A grid of at most
    30 tokens uses ``N - 1`` neighbours (the release fails there). Similarities,
    softmaxes and the repair are computed in float32 for half-precision models.
    ``ls1`` is the block's layer scale (identity for OpenAI CLIP, the release's model).

    Defined for image towers with a class token and a class-token head (CLIP ViTs);
    others raise ``TypeError``. No feature surgery by default. The authors' protocol
    (logit scale 40, 80 templates, short side 336, window 224 / stride 112, no PAMR;
    per dataset: COCO-Object logit scale 55 and probability threshold 0.35, VOC21 50 /
    0.15 / area threshold 0.1, Context60 threshold 0.15, Cityscapes short side 560) is
    available through :func:`~captum_clip_surgery.segment`. The positional embedding is
    resized as the release does it, bicubic with a scale factor of ``(n + 0.1) /
    n_native`` per side (``"bicubic_offset"``).

    Args:
        forward_func (CLIPZeroShotClassifier or nn.Module): classifier or model.
        pre_adjust_layer (int, optional): ``pre`` in ``[1, L - 1]``; default
            :func:`scclip_layers` (9 at 12 blocks).
        post_adjust_layer (int, optional): ``post`` in ``[1, L - 1]``; default 4 at 12
            blocks.
        fusion_layers (tuple[int, int], optional): first and last fused stream,
            inclusive, in ``[1, L - 1]``; default ``(4, 10)`` at 12 blocks.
        beta (float): similarity threshold of the adjustments (default 0.4).
        temperature (float): of the self-adjusting attention's ``M`` term (default 3).
        res_cls (float): weight of the class token added in the last block (default 0.3).
        lof_neighbors (int): LOF's ``k`` (default 30).
        contamination (float): LOF's outlier share in ``[0, 1]`` (default 0.05).
        texts (list[str], optional): texts, when a model is given.
        templates (list[str], optional): prompt templates, when a model is given.
        tokenizer (Callable, optional): tokenizer, when a model is given.
        positional_resize (str, optional): how the positional embedding is resized at
            another input size; default ``"bicubic_offset"``, the release's rule.

    Examples::

        >>> explainer = SCCLIPAttribution(clf)
        >>> explainer.attribute(images, target="dog").shape
        torch.Size([8, 1, 224, 224])
        >>> explainer.anomalies(images).shape            # the LOF outliers, [B, h*w]
        torch.Size([8, 196])
    """

    method_name = "SC-CLIP"
    default_positional_resize: ClassVar[str] = "bicubic_offset"
    head_kinds: ClassVar[Tuple[str, ...]] = ("token",)
    needs_blocks: ClassVar[bool] = True
    default_feature_surgery: FeatureSurgery = "none"

    @classmethod
    def unsupported_reason(cls, adapter: CLIPAdapter) -> Optional[str]:
        image = adapter.image
        if not image.blocks:
            return "needs attention blocks in the image tower"
        if image.kind != "token" or image.num_prefix_tokens < 1:
            return "needs a class token and a class-token head (a CLIP ViT)"
        if len(image.blocks) < 2:
            return "needs at least 2 attention blocks"
        return None

    def __init__(
        self,
        forward_func: Union[CLIPZeroShotClassifier, nn.Module],
        pre_adjust_layer: Optional[int] = None,
        post_adjust_layer: Optional[int] = None,
        fusion_layers: Optional[Tuple[int, int]] = None,
        beta: float = 0.4,
        temperature: float = 3.0,
        res_cls: float = 0.3,
        lof_neighbors: int = 30,
        contamination: float = 0.05,
        texts: Optional[Sequence[str]] = None,
        templates: Optional[Sequence[str]] = None,
        tokenizer: Tokenizer = None,
        *,
        positional_resize: Optional[str] = None,
    ) -> None:
        super().__init__(forward_func, texts, templates, tokenizer,
                         positional_resize=positional_resize)
        require_attention_blocks(self.adapter, self.method_name, "the last block's attention")
        reason = self.unsupported_reason(self.adapter)
        if reason is not None:
            raise TypeError(f"forward_func: {self.method_name} {reason}; this model's image "
                            f"tower has pooling head kind {self.adapter.image.kind!r}, "
                            f"{self.adapter.image.num_prefix_tokens} prefix token(s) and "
                            f"{len(self.adapter.image.blocks)} block(s)")
        depth = len(self.adapter.image.blocks)
        pre, post, fusion = scclip_layers(depth)
        top = depth - 1
        self.pre_adjust_layer = pre if pre_adjust_layer is None else check_int(
            "pre_adjust_layer", pre_adjust_layer, 1, top)
        self.post_adjust_layer = post if post_adjust_layer is None else check_int(
            "post_adjust_layer", post_adjust_layer, 1, top)
        if fusion_layers is not None:
            if not isinstance(fusion_layers, (tuple, list)) or len(fusion_layers) != 2:
                raise TypeError("fusion_layers: expected a pair (first, last) of ints, got "
                                f"{fusion_layers!r}")
            first = check_int("fusion_layers", fusion_layers[0], 1, top)
            last = check_int("fusion_layers", fusion_layers[1], 1, top)
            if first > last:
                raise ValueError(f"fusion_layers: expected first <= last, got {fusion_layers!r}")
            fusion = (first, last)
        self.fusion_layers = (int(fusion[0]), int(fusion[1]))
        self.beta = check_unit_interval("beta", beta)
        self.temperature = check_positive_number("temperature", temperature)
        self.res_cls = check_positive_number("res_cls", res_cls, allow_zero=True)
        self.lof_neighbors = check_int("lof_neighbors", lof_neighbors, minimum=1)
        self.contamination = check_unit_interval("contamination", contamination)

    # ---- the pieces -------------------------------------------------------------------

    def _stream(self, images: Tensor) -> Tuple[Tensor, dict, Tuple[int, int]]:
        r"""``x^(L-1)`` and the kept streams ``{l: x^(l)}``."""
        image = self.adapter.image
        x, grid = image.embed(images)
        first, last = self.fusion_layers
        wanted = {self.pre_adjust_layer, self.post_adjust_layer, *range(first, last + 1)}
        states = {}
        for i, block in enumerate(list(image.blocks)[:-1]):
            x = block.forward(x)
            if i + 1 in wanted:
                states[i + 1] = x
        return x, states, grid

    def _outliers(self, x: Tensor) -> Tensor:
        p = self.adapter.image.num_prefix_tokens
        return lof_outliers(x[:, p:], self.lof_neighbors, self.contamination)

    def anomalies(self, images: Tensor) -> Tensor:
        r"""The anomaly tokens SC-CLIP repairs: ``[B, h*w]`` bool (row-major grid).

        Args:
            images (Tensor): preprocessed images ``[B, 3, H, W]`` (padded to a multiple
                of the patch at the bottom / right, as in :meth:`attribute`).

        Returns:
            Tensor: ``[B, h*w]`` bool on the model's device, True for an outlier of the
            stream entering the last block.
        """
        prepared = prepare_images(self.adapter, images, "images")
        with torch.no_grad(), inference_mode_of(self.classifier.model), self.running():
            x, _, _ = self._stream(prepared)
            return self._outliers(x)

    def _self_adjusting(
        self, block: BlockView, tokens: Tensor, cls: Tensor, mid_probs: Tensor
    ) -> Tensor:
        r"""Step 4's last block on grid ``tokens`` ``[B, N, C]``: ``ls1(out(A v)) + res_cls·cls``."""
        _, k, v = block.qkv(block.norm1(tokens))
        o = 0.5 * (mid_probs[:, None].to(v.dtype) @ v) + 0.5 * attention(k, k, v, block.scale)
        return block.branch(o) + self.res_cls * cls

    def token_features(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        r"""SC-CLIP token features ``[B, 1 + h*w, D]`` (row 0 the model's own embedding)
        and the grid ``(h, w)``."""
        image = self.adapter.image
        p = image.num_prefix_tokens
        x, states, grid = self._stream(images)
        last = image.blocks[-1]
        q, k, v = last.qkv(last.norm1(x))
        pooled = original_last_block_pooled(image, last, x, q, k, v, grid)

        outliers = self._outliers(x)
        cls = x[:, :1]
        tokens = repair_outliers(x[:, p:], outliers, grid)
        # pre-adjustment with the mid-layer self-similarity
        mid = _self_similarity(repair_outliers(states[self.pre_adjust_layer][:, p:], outliers, grid))
        weights = _row_normalized(mid.masked_fill(mid < self.beta, 0.0))
        tokens = (weights @ tokens.float()).to(x.dtype)
        # the M term of the self-adjusting attention: -inf below the mean, per image
        centred = (mid - mid.mean(dim=(-2, -1), keepdim=True)) * self.temperature
        mid_probs = centred.masked_fill(centred < 0, float("-inf")).softmax(dim=-1)
        tokens = self._self_adjusting(last, tokens, cls, mid_probs)
        # post-adjustment with an early layer's self-similarity
        early = _self_similarity(states[self.post_adjust_layer][:, p:])
        post = _row_normalized(early.masked_fill(early < self.beta, 0.0))
        tokens = (post @ tokens.float()).to(x.dtype)
        # multi-level fusion through the same last block
        first, last_layer = self.fusion_layers
        fused = states[first]
        for layer in range(first + 1, last_layer + 1):
            fused = fused + states[layer]
        extra = self._self_adjusting(last, fused[:, p:], fused[:, :1], mid_probs)
        tokens = tokens + (post @ extra.float()).to(x.dtype)
        dense = image.head.dense(tokens)
        return torch.cat([pooled[:, None], dense], dim=1), grid
