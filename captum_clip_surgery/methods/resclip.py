r"""ResCLIP (Yang, Deng, Li, Duan, CVPR 2025): residual attention for training-free dense inference.

Residual cross-correlation self-attention (RCS) mixes the mean q-k attention of middle
blocks into the last block's attention; semantic feedback refinement (SFR) turns a first
segmentation pass into a same-class attention prior. A plug-in over SCLIP, ClearCLIP and
NACLIP (the release's default).
"""

from __future__ import annotations

import contextvars
import math
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_clip_surgery._validation import (
    check_bool,
    check_choice,
    check_int,
    check_positive_number,
    check_unit_interval,
    prepare_images,
)
from captum_clip_surgery.adapters.base import BlockView, attention, inference_mode_of
from captum_clip_surgery.core.classifier import CLIPZeroShotClassifier
from captum_clip_surgery.core.mask_refinement import pamr
from captum_clip_surgery.core.text import validate_texts
from captum_clip_surgery.methods.base import (
    FeatureSurgery,
    Tokenizer,
    TokenMapAttribution,
    dense_features,
    original_last_block_pooled,
    require_attention_blocks,
)
from captum_clip_surgery.methods.naclip import neighbourhood_bias

__all__ = [
    "RESCLIP_BASES",
    "RESCLIP_SETTINGS",
    "ResCLIPAttribution",
    "patch_mode",
    "resclip_rcs_layers",
    "sfr_prior",
]

#: The attention each plug-in changes (``clip/model.py:473-563`` of ``yvhangyang/ResCLIP``):
#: ``"naclip"`` (the release's ``resclip`` strategy is code-identical), ``"clearclip"``,
#: ``"sclip"``.
RESCLIP_BASES: Tuple[str, ...] = ("naclip", "clearclip", "sclip")

#: The release's per-dataset settings, ``(τ_r, λ_r)`` of RCS, ``(τ_s, λ_s)`` of SFR and
#: the first pass's probability threshold ``temp_thd``, keyed by the name of the release's
#: config file ``configs/cfg_<name>.py`` (``attn_rcs_weights``, ``attn_sfr_weights``,
#: ``temp_thd`` in lines 4-11 of each, at ``yvhangyang/ResCLIP@0e085f7``). The
#: segmentor's own defaults are ``None`` (they raise), so the class default is the
#: setting ``demo.py`` uses for an arbitrary class list, which is VOC20's.
RESCLIP_SETTINGS: Dict[str, Dict[str, Any]] = {
    # cfg_voc20.py:6-9 (also demo.py:41-47); whole image (slide_crop=0)
    "voc20": dict(rcs_weights=(2.0, 0.6), sfr_weights=(2.1, 0.6), temp_thd=0.10),
    # cfg_context59.py:6-9
    "context59": dict(rcs_weights=(2.0, 0.4), sfr_weights=(1.8, 0.7), temp_thd=0.25),
    # cfg_coco_object.py:7-10 (prob_thd 0.1)
    "coco_object": dict(rcs_weights=(2.0, 0.4), sfr_weights=(1.8, 0.7), temp_thd=0.11),
    # cfg_ade20k.py:6-9
    "ade20k": dict(rcs_weights=(2.0, 0.3), sfr_weights=(2.1, 0.7), temp_thd=0.25),
    # cfg_voc21.py:8-11 (prob_thd 0.1, whole image)
    "voc21": dict(rcs_weights=(2.0, 0.3), sfr_weights=(2.2, 0.7), temp_thd=0.50),
    # cfg_context60.py:7-10 (prob_thd 0.1)
    "context60": dict(rcs_weights=(2.0, 0.3), sfr_weights=(1.8, 0.7), temp_thd=0.30),
    # cfg_coco_stuff164k.py:6-9
    "coco_stuff164k": dict(rcs_weights=(2.0, 0.4), sfr_weights=(1.8, 0.7), temp_thd=0.11),
    # cfg_city_scapes.py:6-9 (short side 560)
    "city_scapes": dict(rcs_weights=(2.0, 0.2), sfr_weights=(2.1, 0.6), temp_thd=0.10),
}

#: RCS blocks of the release (``clip/model.py:326-330``: ``attn_map[5:9]``, 1-based 6..9),
#: hard-coded for every tower of at least 10 blocks (ViT-L/14 included).
RELEASE_RCS_LAYERS: Tuple[int, ...] = (6, 7, 8, 9)
_RELEASE_DEPTH = 12

#: The texts of the current :meth:`ResCLIPAttribution.similarity` / ``attribute`` call,
#: which the first (SFR) pass labels the patches with.
_CALL_TEXTS: contextvars.ContextVar[Optional[List[str]]] = contextvars.ContextVar(
    "captum_clip_surgery_resclip_texts", default=None
)


def resclip_rcs_layers(depth: int) -> Tuple[int, ...]:
    r"""The blocks whose attention RCS averages, for a tower of ``depth`` blocks.

    A tower of at least 10 blocks gets the release's hard-coded blocks 6, 7, 8, 9
    (1-based; the release uses them for ViT-L/14 too). A shallower tower maps each of
    them proportionally, ``l -> floor(l * depth / 12 + 1/2)`` clipped to ``[1, depth -
    1]`` (blocks before the last), duplicates removed: 7 blocks give ``(4, 5)``, 3
    blocks ``(2,)``; a one-block tower has none.

    Args:
        depth (int): attention blocks of the tower.

    Returns:
        tuple[int, ...]: 1-based block indices, increasing.

    Examples::

        >>> resclip_rcs_layers(12), resclip_rcs_layers(24), resclip_rcs_layers(7)
        ((6, 7, 8, 9), (6, 7, 8, 9), (4, 5))
    """
    if depth >= 10:
        return RELEASE_RCS_LAYERS
    if depth < 2:
        return ()
    return tuple(sorted({
        min(depth - 1, max(1, int(math.floor(layer * depth / _RELEASE_DEPTH + 0.5))))
        for layer in RELEASE_RCS_LAYERS
    }))


def _same_entity_paths(labels: Tensor, grid: Tuple[int, int], steps: Tensor) -> Tensor:
    r"""The release's ``check_path`` (``clip/model.py:130-148``) for every pair, ``[B, N, N]``.

    For a pair ``(i, j)`` at Chebyshev distance ``d`` the points ``(1 - t_s) p_i + t_s
    p_j`` with ``t = linspace(0, 1, M + 1)`` (float32; ``M`` the largest distance of any
    pair) are rounded half-to-even for ``s = 0..d``; the pair keeps its path when every
    sampled patch has ``i``'s label. The float32 arithmetic is the release's, step by step.
    """
    b, n = labels.shape
    _, w = grid
    device = labels.device
    index = torch.arange(n, device=device)
    rows, cols = index // w, index % w
    top = int(steps.max())
    t = torch.linspace(0, 1, steps=top + 1, device=device)
    start = labels[:, :, None]
    ok = torch.ones(b, n, n, dtype=torch.bool, device=device)
    for s in range(top + 1):
        ts = t[s]
        r = (rows[:, None] * (1 - ts) + rows[None, :] * ts).round().long()
        c = (cols[:, None] * (1 - ts) + cols[None, :] * ts).round().long()
        sampled = labels[:, (r * w + c).reshape(-1)].reshape(b, n, n)
        ok &= (sampled == start) | (steps < s)
    return ok


def sfr_prior(
    labels: Tensor, grid: Tuple[int, int], sigma: float = 5.0, delete_same_entity: bool = True
) -> Tensor:
    r"""ResCLIP's semantic-feedback attention prior from patch labels, as released.

    ``S_ij = 1`` when patches ``i`` and ``j`` share a label (the diagonal is 1). With
    ``delete_same_entity`` (on in every config) a same-label pair whose sampled path
    (:func:`_same_entity_paths`: ``s = 0..d`` of ``M + 1`` evenly spaced points, i.e. the
    first ``d / M`` of the way from ``i`` to ``j``) meets another label gets ``S_ij =
    exp(-d / M)`` (``d`` the pair's Chebyshev distance, ``M`` the largest of the grid).
    Each row is then smoothed by a 1-D Gaussian along the raster index (``σ``, kernel
    ``int(6σ + 1)`` made odd and at most ``N (+1)``, zero padding), passed through ReLU,
    divided by its sum ``+ 1e-8``, the whole matrix divided by its maximum, and rounded
    to float16 values (``clip/model.py:152-240, 477-478``).

    Args:
        labels (Tensor): ``[B, h * w]`` integer patch labels (row-major grid).
        grid (tuple[int, int]): ``(h, w)``.
        sigma (float): the Gaussian's standard deviation in patches (default 5).
        delete_same_entity (bool): decay pairs whose path leaves their label.

    Returns:
        Tensor: ``[B, h * w, h * w]`` float32 (values representable in float16).

    Examples::

        >>> labels = torch.tensor([[0, 1, 0]])                # a 1 x 3 grid
        >>> sfr_prior(labels, (1, 3), sigma=1.0).shape
        torch.Size([1, 3, 3])
    """
    b, n = labels.shape
    h, w = grid
    same = (labels[:, :, None] == labels[:, None, :]).float()
    if delete_same_entity and n > 1:
        index = torch.arange(n, device=labels.device)
        rows, cols = index // w, index % w
        steps = torch.maximum((rows[:, None] - rows[None, :]).abs(),
                              (cols[:, None] - cols[None, :]).abs())
        ok = _same_entity_paths(labels, grid, steps)
        decay = torch.exp(-steps / int(steps.max()))
        same = torch.where(ok, same, same * decay)
    size = min(n, int(6 * sigma + 1))
    size = size if size % 2 == 1 else size + 1
    x = torch.arange(size, device=labels.device) - size // 2
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    blurred = F.conv1d(same.reshape(b * n, 1, n), kernel.view(1, 1, -1), padding=size // 2)
    blurred = F.relu(blurred.reshape(b, n, n))
    blurred = blurred / (blurred.sum(dim=-1, keepdim=True) + 1e-8)
    prior = blurred / blurred.amax(dim=(-2, -1), keepdim=True)
    return prior.half().float()


def patch_mode(labels: Tensor, patch_size: Tuple[int, int], num_labels: int) -> Tensor:
    r"""The most frequent pixel label of every patch; on a tie the smallest label (the
    release's ``torch.mode``, ``clip/model.py:106-126``).

    Args:
        labels (Tensor): ``[B, H, W]`` integer pixel labels in ``[0, num_labels)``, ``H``
            and ``W`` multiples of the patch.
        patch_size (tuple[int, int]): ``(ph, pw)``.
        num_labels (int): the number of labels.

    Returns:
        Tensor: ``[B, (H / ph) * (W / pw)]`` long, row-major grid.

    Examples::

        >>> patch_mode(torch.tensor([[[2, 2], [1, 1]]]), (2, 2), 3).tolist()   # a tie: 1
        [[1]]
    """
    b, hh, ww = labels.shape
    ph, pw = patch_size
    h, w = hh // ph, ww // pw
    cells = labels.reshape(b, h, ph, w, pw).permute(0, 1, 3, 2, 4).reshape(b, h * w, ph * pw)
    counts = torch.zeros(b, h * w, num_labels, dtype=torch.int32, device=labels.device)
    counts.scatter_add_(2, cells, torch.ones_like(cells, dtype=torch.int32))
    return counts.argmax(dim=-1)  # the first (smallest) of the most frequent labels


def _check_weights(name: str, value: Any) -> Tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name}: expected a pair (tau, lambda) of numbers, got {value!r}")
    tau = check_positive_number(name, value[0])
    lam = check_unit_interval(name, value[1])
    return tau, lam


class ResCLIPAttribution(TokenMapAttribution):
    r"""ResCLIP maps: the last attention mixed with middle blocks' attention and a semantic prior.

    With ``A^(l) = softmax(q kᵀ/√d)`` the model's own attention of block ``l`` (per
    head, class rows and columns included) and ``q, k, v`` of ``norm1`` of the stream
    entering the last block, following the authors' code (``clip/model.py:294-373``):

    1. **RCS**: ``A_rcs = mean of A^(l)`` over the blocks of :func:`resclip_rcs_layers`
       (6..9 at 12 blocks);
    2. **SFR pass**: the last block with ``A = τ_r[(1 - λ_r) P + λ_r A_rcs]`` (``P`` below,
       without the prior), the head per token, cosine with the call's texts, bilinear to
       the (padded) input, PAMR (10 iterations, dilations 8 and 16) on the input,
       ``softmax(40 ·)`` over the texts; pixel label = argmax, ``0`` (the first text)
       where the top probability is below ``temp_thd``; patch label = the most frequent
       pixel label of its cell (the smallest label on a tie); the prior ``S`` =
       :func:`sfr_prior` (same-entity decay, 1-D Gaussian smoothing along the raster
       index, ReLU, row normalisation, global max, float16 values);
    3. **final attention** ``A = τ_r[(1 - λ_r) P + λ_r A_rcs]`` with, per ``base``,
       ``G(a, b) = τ_s[(1 - λ_s) a bᵀ/√d + λ_s S]``:

       - ``"naclip"`` (default; the release's ``resclip`` strategy): ``P = softmax(G(k, k)
         + Ω)``, ``Ω`` NACLIP's Gaussian (``σ``, :func:`~captum_clip_surgery.methods.naclip.neighbourhood_bias`);
       - ``"clearclip"``: ``P = softmax(G(q, q))``;
       - ``"sclip"``: ``P = softmax(G(q, q)) + softmax(G(k, k))``;

       the output is ``ls1(out(A v))`` without residual and MLP (``wo_resi``) for NACLIP
       and ClearCLIP, ``X + ls1(out(A v))`` then the MLP (``w_resi``) for SCLIP;
    4. every grid token goes through the pooling head applied per token
       (:meth:`~PoolingHead.dense`).

    Row 0 of :meth:`token_features` is the unmodified model's embedding. The prior's
    class / prefix rows and columns are 0. Without RCS (``use_rcs=False``) ``A = P`` (no
    ``τ_r``); without SFR ``P`` has no prior.

    **Reductions** (tested): ``use_rcs=False, use_sfr=False`` is exactly the base method
    (:class:`~captum_clip_surgery.NACLIPAttribution` with the same ``σ``,
    :class:`~captum_clip_surgery.ClearCLIPAttribution`,
    :class:`~captum_clip_surgery.SCLIPAttribution`); so is ``rcs_weights=(1.0, 0.0),
    use_sfr=False`` up to float rounding of the explicit middle blocks. With ``τ_r ≠ 1``
    and ``λ_r = 0`` it is *not* the base method: ``A = τ_r P`` scales ``A v`` but not the
    output projection's bias, and the final norm then sees another vector (the release's
    rows sum to ``τ_r = 2``). ``sfr_weights=(1.0, 0.0)`` makes the prior a no-op.

    The texts labelling the SFR pass are the call's texts (the classifier's by default;
    :meth:`similarity` with ``texts=`` or :func:`~captum_clip_surgery.segment` use theirs),
    encoded as everywhere in the package (the classifier's templates), scored by plain
    cosine (no feature surgery, no synonym merge); label 0 is the first text.

    Differences from the release, all deliberate: the release runs one image at a time
    (a batch of 2 raises); here a batch gives each image exactly its own result (every
    max and threshold per image). ``use_rcs`` / ``use_sfr`` really switch the modules off
    (the release stores them as 1-tuples, which are always true). PAMR always runs (the
    release skips it silently when it raises, e.g. out of memory); ``pamr_iterations=0``
    skips it. The first pass sees the input padded to a multiple of the patch at the
    bottom / right (the release's crops are multiples). Softmaxes and PAMR are computed
    in float32 for half-precision models (the release runs fp16 throughout).
    Blocks 6..9 are the release's for every tower of at least 10 blocks; shallower
    towers use :func:`resclip_rcs_layers`.

    Defined for every image tower with attention blocks (any pooling head); a tower
    without them raises ``TypeError``. No feature surgery by default. The release's
    protocol: logit scale 40, short side 336, window 224 / stride 112 (VOC20 and VOC21
    the whole image), probability threshold 0.1 on VOC21, Context60 and COCO-Object,
    no final PAMR, Cityscapes short side 560; per-dataset ``(τ_r, λ_r)``, ``(τ_s, λ_s)``
    and ``temp_thd`` in :data:`RESCLIP_SETTINGS` (``dataset=``). The positional
    embedding is resized as the release does it (``"bicubic_offset"``).

    Args:
        forward_func (CLIPZeroShotClassifier or nn.Module): classifier or model.
        base (str): ``"naclip"`` (default), ``"clearclip"`` or ``"sclip"``.
        dataset (str): the key of :data:`RESCLIP_SETTINGS` giving the defaults of
            ``rcs_weights``, ``sfr_weights`` and ``temp_thd`` (default ``"voc20"``,
            the settings of the release's ``demo.py``).
        rcs_weights (tuple[float, float], optional): ``(τ_r, λ_r)``, ``τ_r > 0``,
            ``λ_r ∈ [0, 1]``.
        sfr_weights (tuple[float, float], optional): ``(τ_s, λ_s)``.
        temp_thd (float, optional): first-pass probability threshold in ``[0, 1]``.
        use_rcs (bool): mix in the middle blocks' attention (default True).
        use_sfr (bool): the semantic feedback prior (default True).
        rcs_layers (list[int], optional): 1-based blocks ``< L`` averaged by RCS;
            default :func:`resclip_rcs_layers`.
        sigma (float): the Gaussian's standard deviation of ``Ω`` and of the prior's
            smoothing, in patches (default 5).
        delete_same_entity (bool): the prior's same-entity decay (default True).
        sfr_logit_scale (float): the first pass's softmax scale (default 40).
        pamr_iterations (int): PAMR iterations of the first pass (default 10; 0: none).
        pamr_dilations (list[int]): PAMR dilations in pixels (default ``(8, 16)``).
        texts (list[str], optional): texts, when a model is given.
        templates (list[str], optional): prompt templates, when a model is given.
        tokenizer (Callable, optional): tokenizer, when a model is given.
        positional_resize (str, optional): how the positional embedding is resized at
            another input size; default ``"bicubic_offset"``, the release's rule.

    Examples::

        >>> explainer = ResCLIPAttribution(clf)                     # NACLIP + RCS + SFR
        >>> explainer.attribute(images, target="dog").shape
        torch.Size([8, 1, 224, 224])
        >>> ResCLIPAttribution(clf, base="sclip", dataset="ade20k").patch_labels(images).shape
        torch.Size([8, 196])
    """

    method_name = "ResCLIP"
    default_positional_resize: ClassVar[str] = "bicubic_offset"
    needs_blocks: ClassVar[bool] = True
    default_feature_surgery: FeatureSurgery = "none"

    def __init__(
        self,
        forward_func: Union[CLIPZeroShotClassifier, nn.Module],
        base: str = "naclip",
        dataset: str = "voc20",
        rcs_weights: Optional[Tuple[float, float]] = None,
        sfr_weights: Optional[Tuple[float, float]] = None,
        temp_thd: Optional[float] = None,
        use_rcs: bool = True,
        use_sfr: bool = True,
        rcs_layers: Optional[Sequence[int]] = None,
        sigma: float = 5.0,
        delete_same_entity: bool = True,
        sfr_logit_scale: float = 40.0,
        pamr_iterations: int = 10,
        pamr_dilations: Sequence[int] = (8, 16),
        texts: Optional[Sequence[str]] = None,
        templates: Optional[Sequence[str]] = None,
        tokenizer: Tokenizer = None,
        *,
        positional_resize: Optional[str] = None,
    ) -> None:
        self.base = check_choice("base", base, RESCLIP_BASES)
        settings = RESCLIP_SETTINGS[check_choice("dataset", dataset, tuple(RESCLIP_SETTINGS))]
        self.dataset = dataset
        self.rcs_weights = _check_weights(
            "rcs_weights", settings["rcs_weights"] if rcs_weights is None else rcs_weights)
        self.sfr_weights = _check_weights(
            "sfr_weights", settings["sfr_weights"] if sfr_weights is None else sfr_weights)
        self.temp_thd = check_unit_interval(
            "temp_thd", settings["temp_thd"] if temp_thd is None else temp_thd)
        self.use_rcs = check_bool("use_rcs", use_rcs)
        self.use_sfr = check_bool("use_sfr", use_sfr)
        self.sigma = check_positive_number("sigma", sigma)
        self.delete_same_entity = check_bool("delete_same_entity", delete_same_entity)
        self.sfr_logit_scale = check_positive_number("sfr_logit_scale", sfr_logit_scale)
        self.pamr_iterations = check_int("pamr_iterations", pamr_iterations, minimum=0)
        if isinstance(pamr_dilations, (str, bytes)) or not isinstance(pamr_dilations, (list, tuple)) \
                or not pamr_dilations:
            raise TypeError("pamr_dilations: expected a non-empty sequence of positive ints, got "
                            f"{pamr_dilations!r}")
        self.pamr_dilations = tuple(check_int("pamr_dilations", d, minimum=1) for d in pamr_dilations)
        super().__init__(forward_func, texts, templates, tokenizer,
                         positional_resize=positional_resize)
        require_attention_blocks(self.adapter, self.method_name, "the last block's attention")
        depth = len(self.adapter.image.blocks)
        if rcs_layers is None:
            layers = resclip_rcs_layers(depth)
        else:
            if isinstance(rcs_layers, (str, bytes)) or not isinstance(rcs_layers, (list, tuple)) \
                    or not rcs_layers:
                raise TypeError("rcs_layers: expected a non-empty sequence of block indices, got "
                                f"{rcs_layers!r}")
            layers = tuple(sorted({check_int("rcs_layers", b, 1, depth - 1) for b in rcs_layers}))
        if self.use_rcs and not layers:
            raise ValueError(f"use_rcs: RCS averages blocks before the last, but this image tower "
                             f"has {depth} block(s); pass use_rcs=False")
        self.rcs_layers = layers

    # ---- the forward --------------------------------------------------------------------

    def _trunk(self, images: Tensor) -> Tuple[Tensor, Optional[Tensor], Tuple[int, int]]:
        r"""The stream entering the last block, ``A_rcs`` (float32 or ``None``), the grid."""
        image = self.adapter.image
        x, grid = image.embed(images)
        total: Optional[Tensor] = None
        for i, block in enumerate(list(image.blocks)[:-1]):
            if self.use_rcs and i + 1 in self.rcs_layers:
                q, k, v = block.qkv(block.norm1(x))
                probs = block.attention_logits(q, k).float().softmax(dim=-1)
                x = block.residual(x, probs.to(v.dtype) @ v)
                total = probs if total is None else total + probs
            else:
                x = block.forward(x)
        rcs = None if total is None else total / len(self.rcs_layers)
        return x, rcs, grid

    def _last_block(
        self,
        block: BlockView,
        x: Tensor,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        grid: Tuple[int, int],
        rcs: Optional[Tensor],
        prior: Optional[Tensor],
    ) -> Tensor:
        r"""The last block's output tokens ``[B, P + h*w, C]`` with attention ``A``."""
        p = self.adapter.image.num_prefix_tokens
        scale = block.scale
        sfr_bias: Optional[Tensor] = None
        if prior is not None:
            tau_s, lam_s = self.sfr_weights
            sfr_bias = (tau_s * lam_s) * F.pad(prior, (p, 0, p, 0))[:, None]
            scale = scale * tau_s * (1.0 - lam_s)

        def probs_v(a: Tensor, b: Tensor, extra: Optional[Tensor]) -> Tensor:
            if sfr_bias is None:
                bias = extra
            else:
                bias = sfr_bias if extra is None else sfr_bias + extra
            return attention(a, b, v, scale, bias=bias)

        if self.base == "naclip":
            omega = neighbourhood_bias(grid, p, self.sigma, k.device)
            o = probs_v(k, k, omega)
        elif self.base == "clearclip":
            o = probs_v(q, q, None)
        else:
            o = probs_v(q, q, None) + probs_v(k, k, None)
        if rcs is not None:
            tau_r, lam_r = self.rcs_weights
            o = (tau_r * (1.0 - lam_r)) * o + (tau_r * lam_r) * (rcs.to(v.dtype) @ v)
        if self.base == "sclip":
            return block.residual(x, o)
        return block.branch(o)

    def _labels(
        self, images: Tensor, tokens: Tensor, grid: Tuple[int, int], texts: List[str]
    ) -> Tensor:
        r"""SFR's patch labels ``[B, h*w]`` from the first pass's tokens."""
        image = self.adapter.image
        b = images.shape[0]
        h, w = grid
        feats = F.normalize(dense_features(image, tokens, grid).float(), dim=-1)
        e = self.classifier.encode_texts(texts).to(feats.device)
        logits = (feats @ e.t()).transpose(1, 2).reshape(b, len(texts), h, w)
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        if self.pamr_iterations:
            logits = pamr(images, logits, self.pamr_iterations, self.pamr_dilations)
        top, label = (self.sfr_logit_scale * logits).softmax(dim=1).max(dim=1)  # first max
        label = label.masked_fill(top < self.temp_thd, 0)
        return patch_mode(label, image.patch_size, len(texts))

    def _call_texts(self, texts: Optional[Sequence[str]]) -> List[str]:
        if texts is not None:
            return validate_texts(texts)
        current = _CALL_TEXTS.get()
        return list(self.classifier.texts) if current is None else current

    def _scores(
        self, images: Tensor, texts: List[str], mode: FeatureSurgery
    ) -> Tuple[Tensor, Tuple[int, int]]:
        token = _CALL_TEXTS.set(list(texts))
        try:
            return super()._scores(images, texts, mode)
        finally:
            _CALL_TEXTS.reset(token)

    def patch_labels(self, images: Tensor, texts: Optional[Sequence[str]] = None) -> Tensor:
        r"""The first (SFR) pass's patch labels: ``[B, h*w]`` indices into the texts.

        Args:
            images (Tensor): preprocessed images ``[B, 3, H, W]``.
            texts (list[str], optional): the texts labelling the patches; default the
                classifier's.

        Returns:
            Tensor: ``[B, h*w]`` long, row-major grid, on the model's device.
        """
        texts_ = self._call_texts(texts)
        prepared = prepare_images(self.adapter, images, "images")
        with torch.no_grad(), inference_mode_of(self.classifier.model), self.running():
            image = self.adapter.image
            x, rcs, grid = self._trunk(prepared)
            last = image.blocks[-1]
            q, k, v = last.qkv(last.norm1(x))
            first = self._last_block(last, x, q, k, v, grid, rcs, None)
            return self._labels(prepared, first, grid, texts_)

    def token_features(
        self, images: Tensor, texts: Optional[Sequence[str]] = None
    ) -> Tuple[Tensor, Tuple[int, int]]:
        r"""ResCLIP token features ``[B, 1 + h*w, D]`` (row 0 the model's own embedding)
        and the grid ``(h, w)``.

        Args:
            images (Tensor): prepared images ``[B, 3, H, W]``.
            texts (list[str], optional): the texts labelling the SFR pass; default those
                of the running call, else the classifier's.
        """
        image = self.adapter.image
        x, rcs, grid = self._trunk(images)
        last = image.blocks[-1]
        q, k, v = last.qkv(last.norm1(x))
        pooled = original_last_block_pooled(image, last, x, q, k, v, grid)
        prior = None
        if self.use_sfr:
            with torch.no_grad():
                first = self._last_block(last, x, q, k, v, grid, rcs, None)
                labels = self._labels(images.detach(), first, grid, self._call_texts(texts))
                prior = sfr_prior(labels, grid, self.sigma, self.delete_same_entity)
        tokens = self._last_block(last, x, q, k, v, grid, rcs, prior)
        return torch.cat([pooled[:, None], dense_features(image, tokens, grid)], dim=1), grid
