r"""CASS (Kim et al., CVPR 2025): a second backbone's attention graph distilled spectrally
into CLIP's last attention, and object-presence text adjustment."""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import math
from typing import Any, ClassVar, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_clip_surgery._validation import (
    check_bool,
    check_int,
    check_positive_number,
    check_unit_interval,
    prepare_images,
)
from captum_clip_surgery.adapters.backbone import VisionBackbone
from captum_clip_surgery.adapters.base import merge_heads
from captum_clip_surgery.core.architecture import pooled_image_features, run_blocks
from captum_clip_surgery.core.classifier import CLIPZeroShotClassifier
from captum_clip_surgery.methods.base import (
    FeatureSurgery,
    Tokenizer,
    TokenMapAttribution,
    dense_features,
    original_last_block_pooled,
    require_attention_blocks,
)
from captum_clip_surgery.methods.naclip import neighbourhood_bias
from captum_clip_surgery.methods.second_backbone import backbone_input, resolve_backbone

__all__ = [
    "CASS_SETTINGS",
    "CASSAttribution",
    "adjust_text_features",
    "spectral_distillation",
    "text_clusters",
]

#: The release's per-dataset settings (``configs/cfg_*.py``): keyword arguments of
#: :class:`CASSAttribution`. Eigen-scaling is off for VOC20 and Cityscapes
#: (``clip/model.py:465-473``). The release's probability thresholds (COCO-Object, VOC21,
#: Context60: 0.1) and windows belong to the segmentation protocol, not to the method.
CASS_SETTINGS: Dict[str, Dict[str, Any]] = {
    "voc20": dict(global_semantics_weight=0.4, mean_vector_weight=0.02, h_threshold=0.10,
                  eigen_scaling=False),
    "context59": dict(global_semantics_weight=0.25, mean_vector_weight=0.04, h_threshold=0.09),
    "coco_object": dict(global_semantics_weight=0.25, mean_vector_weight=0.01, h_threshold=0.10),
    "ade20k": dict(global_semantics_weight=0.3, mean_vector_weight=0.05, h_threshold=0.06),
    "voc21": dict(global_semantics_weight=0.1, mean_vector_weight=0.03, h_threshold=0.10),
    "context60": dict(global_semantics_weight=0.25, mean_vector_weight=0.04, h_threshold=0.09),
    "coco_stuff164k": dict(global_semantics_weight=0.2, mean_vector_weight=0.02,
                           h_threshold=0.02),
    "city_scapes": dict(global_semantics_weight=0.1, mean_vector_weight=0.03, h_threshold=0.14,
                        eigen_scaling=False),
}

#: The whole images' embeddings while their sliding windows are scored (per thread / task).
_WHOLE: contextvars.ContextVar[Optional[Tensor]] = contextvars.ContextVar(
    "captum_clip_surgery_cass_whole_image", default=None
)


def _scipy(what: str) -> Any:
    try:
        import scipy.cluster.hierarchy as hierarchy
        import scipy.optimize as optimize
    except ImportError as exc:  # pragma: no cover - scipy is in the test environment
        raise ImportError(
            f"CASS needs scipy for {what}: pip install scipy (or captum-clip-surgery[cass])"
        ) from exc
    return hierarchy if what == "the text clusters" else optimize


def _gram(keys: Tensor, scale: float) -> Tensor:
    r"""``M = keys · √scale`` in float64, so that ``M Mᵀ = keys keysᵀ · scale``."""
    return keys.double() * math.sqrt(scale)


def _top_eigen(m: Tensor, count: int) -> Tuple[Tensor, Tensor, bool]:
    r"""The ``count`` largest eigenvalues (descending) of the PSD graph ``M Mᵀ`` of every head
    ``[H, N, c]``, from the smaller of ``M Mᵀ`` (``N × N``) and ``Mᵀ M`` (``c × c``), which
    share their non-zero eigenvalues; zeros fill up when the rank is below ``count``.
    Also the eigenvectors of the matrix used and whether it was the small one."""
    n, c = m.shape[-2], m.shape[-1]
    small = c < n
    gram = m.transpose(-2, -1) @ m if small else m @ m.transpose(-2, -1)
    vals, vecs = torch.linalg.eigh(gram)
    vals, vecs = vals.flip(-1), vecs.flip(-1)
    if vals.shape[-1] < count:
        vals = F.pad(vals, (0, count - vals.shape[-1]))
        vecs = F.pad(vecs, (0, count - vecs.shape[-1]))
    return vals[..., :count], vecs[..., :count], small


def _scaled_low_rank(m: Tensor, rank: int, eigen_scaling: bool) -> Tensor:
    r"""The rank-``rank`` SVD of ``M Mᵀ`` per head with CASS's eigen-scaling of its singular
    values, ``U diag(s') Vᵀ`` ``[H, N, N]`` (float32; the decomposition in float64).
    ``M Mᵀ`` is symmetric PSD: its SVD is its eigendecomposition, computed exactly (``eigh``)
    on the smaller Gram matrix."""
    s, vecs, small = _top_eigen(m, rank)
    if eigen_scaling:
        lo, hi = s.amin(-1, keepdim=True), s.amax(-1, keepdim=True)
        span = hi - lo
        scaled = (s - lo) / torch.where(span > 0, span, torch.ones_like(span)) * (
            1.5 * hi - 0.5 * lo) + 0.5 * lo
        s_new = torch.where(span > 0, scaled, s)
    else:
        s_new = s
    if small:  # U = M W Λ^{-1/2}: U diag(s') Uᵀ = (M W) diag(s'/λ) (M W)ᵀ
        tiny = s.amax(-1, keepdim=True) * 1e-12
        ratio = torch.where(s > tiny, s_new / torch.where(s > tiny, s, torch.ones_like(s)),
                            torch.zeros_like(s))
        u = m @ vecs
    else:
        u, ratio = vecs, s_new
    u = u.float()
    return (u * ratio.float()[..., None, :]) @ u.transpose(-2, -1)


def _rescale_to(source: Tensor, target: Tensor) -> Tensor:
    r"""``source`` min-max rescaled to the range of ``target``, per head (whole matrices)."""
    smin = source.amin(dim=(-2, -1), keepdim=True)
    smax = source.amax(dim=(-2, -1), keepdim=True)
    tmin = target.amin(dim=(-2, -1), keepdim=True)
    tmax = target.amax(dim=(-2, -1), keepdim=True)
    span = smax - smin
    unit = (source - smin) / torch.where(span > 0, span, torch.ones_like(span))
    return unit * (tmax - tmin) + tmin


def spectral_distillation(
    clip_keys: Tensor,
    backbone_keys: Tensor,
    scale: float,
    scale_factor: float = 10.0,
    k_eigen: int = 20,
    rank: int = 10,
    eigen_scaling: bool = True,
) -> Tuple[Tensor, Tensor]:
    r"""CASS's distilled key graphs of one image: the attention logits of CLIP's last block
    before ``Ω``.

    With ``A_c^h = k kᵀ · scale`` (CLIP's keys of the grid tokens, head ``h``) and
    ``A_d^h = K_d K_dᵀ · scale`` (the backbone's keys, already on CLIP's grid and in CLIP's key
    range):

    1. spectra: the top ``k_eigen`` eigenvalues of every graph, L2-normalised;
    2. cost ``C_ij = 1 - W1(λ̂_d^i, λ̂_c^j)`` with ``λ̂`` the spectra L1-normalised and
       ``W1(a, b) = Σ |sort(a) - sort(b)|``; the Hungarian algorithm (scipy's
       ``linear_sum_assignment``) minimises ``C`` and so pairs the most *different* spectra,
       ``σ(i)`` for row ``i``;
    3. for every row ``i``, with ``w = W1`` of the pair: the backbone graph ``A_d^{σ(i)}``
       (the column index) is reduced to its rank-``rank`` SVD with eigen-scaled singular values
       (``s' = (s - s_min)/(s_max - s_min) · (1.5 s_max - 0.5 s_min) + 0.5 s_min``), its
       diagonal zeroed, min-max rescaled to the range of CLIP's graph ``A_c^i`` (the row index,
       as the release swaps them) and mixed ``G^i = (scale_factor · w · Â + A_c^i) /
       (scale_factor · w + 1)``.

    Args:
        clip_keys (Tensor): ``[H, N, d]`` CLIP's keys of the grid tokens.
        backbone_keys (Tensor): ``[H, N, c]`` the backbone's, on CLIP's grid.
        scale (float): the logit scale of both graphs (CLIP's ``d ** -0.5``, as released).
        scale_factor (float): the weight of the distilled graph (default 10).
        k_eigen (int): eigenvalues per spectrum (default 20).
        rank (int): the rank of the distilled graph (default 10; at most ``N``).
        eigen_scaling (bool): rescale the singular values (default True).

    Returns:
        tuple[Tensor, Tensor]: ``G`` float32 ``[H, N, N]`` and the matching ``σ`` ``[H]``
        (long; ``σ[i]`` is the backbone head mixed into CLIP head ``i``).
    """
    heads, n, _ = clip_keys.shape
    mc, md = _gram(clip_keys, scale), _gram(backbone_keys, scale)
    count = min(k_eigen, n)
    lam_c = F.normalize(_top_eigen(mc, count)[0], p=2, dim=-1)
    lam_d = F.normalize(_top_eigen(md, count)[0], p=2, dim=-1)
    pd, pc = F.normalize(lam_d, p=1, dim=-1), F.normalize(lam_c, p=1, dim=-1)
    w1 = (pd.sort(dim=-1).values[:, None] - pc.sort(dim=-1).values[None]).abs().sum(-1)
    cost = 1 - w1  # [H_d, H_c]
    rows, cols = _scipy("the head matching").linear_sum_assignment(cost.detach().cpu().numpy())
    sigma = torch.as_tensor(cols, dtype=torch.long, device=clip_keys.device)
    rows_t = torch.as_tensor(rows, dtype=torch.long, device=clip_keys.device)
    order = torch.argsort(rows_t)
    sigma = sigma[order]
    weight = 1 - cost[torch.arange(heads, device=cost.device), sigma]  # = W1 of the pair
    approx = _scaled_low_rank(md[sigma], min(rank, n), eigen_scaling)
    approx = approx * (1 - torch.eye(n, dtype=approx.dtype, device=approx.device))
    keys = clip_keys.float()
    clip_graph = (keys @ keys.transpose(-2, -1)) * scale
    approx = _rescale_to(approx, clip_graph)
    mix = (scale_factor * weight).float()[:, None, None]
    return (mix * approx + clip_graph) / (mix + 1), sigma


def text_clusters(text_features: Tensor, h_threshold: float) -> List[int]:
    r"""CASS's text clusters: Ward linkage on the cosine distances of the (unit) text
    features, cut at distance ``h_threshold`` (scipy's ``linkage`` / ``fcluster``), labels
    from 0. One text is one cluster.

    Examples::

        >>> text_clusters(torch.eye(3)[[0, 0, 1]], 0.1)   # two equal texts, one other
        [0, 0, 1]
    """
    t = text_features.shape[0]
    if t < 2:
        return [0] * t
    hierarchy = _scipy("the text clusters")
    from scipy.spatial.distance import squareform

    e = F.normalize(text_features.double(), dim=-1).cpu()
    dist = (1 - e @ e.t()).clamp(0, 2)
    dist = (dist + dist.t()) / 2
    dist.fill_diagonal_(0)
    z = hierarchy.linkage(squareform(dist.numpy(), checks=False), method="ward")
    return [int(c) - 1 for c in hierarchy.fcluster(z, t=h_threshold, criterion="distance")]


def adjust_text_features(
    patches: Tensor, global_scores: Tensor, text_features: Tensor, clusters: Sequence[int],
    mean_vector_weight: float,
) -> Tensor:
    r"""CASS's object-presence text adjustment for one image.

    In every text cluster the text ``c*`` with the highest global score moves toward the
    image: ``t_c* ← normalize((1 - α) t_c* + α m)`` with ``m`` the normalised mean of the two
    patches most similar to ``t_c*``; the other texts are unchanged.

    Args:
        patches (Tensor): ``[N, D]`` unit patch features.
        global_scores (Tensor): ``[T]`` cosines of the image's embedding with the texts.
        text_features (Tensor): ``[T, D]`` unit text features.
        clusters (list[int]): the cluster of every text (:func:`text_clusters`).
        mean_vector_weight (float): ``α``.

    Returns:
        Tensor: ``[T, D]`` text features.
    """
    adjusted = text_features.clone()
    labels = torch.as_tensor(list(clusters), device=text_features.device)
    for cluster in sorted(set(int(c) for c in clusters)):
        members = torch.nonzero(labels == cluster).flatten()
        best = int(members[int(torch.argmax(global_scores[members]))])
        t = F.normalize(text_features[best], dim=0)
        top = (patches @ t).topk(min(2, patches.shape[0])).indices
        m = F.normalize(patches[top].mean(dim=0), dim=0)
        adjusted[best] = F.normalize((1 - mean_vector_weight) * t + mean_vector_weight * m, dim=0)
    return adjusted


class CASSAttribution(TokenMapAttribution):
    r"""CASS maps: spectral distillation of a second backbone's key graph into CLIP's last
    attention, and object-presence text adjustment.

    Blocks before the last run as the model does. In the last block (``reduced``: attention
    only, no residual, no MLP) the class and other prefix tokens are dropped from ``q, k,
    v``; the backbone's last-block keys (its prefix tokens dropped, heads concatenated and
    regrouped into CLIP's head count) are resized per channel bilinearly to CLIP's grid and
    min-max rescaled to the range of CLIP's keys (all heads of the image); the graphs are
    distilled head by head (:func:`spectral_distillation`) into ``G`` and the attention is
    ``P = softmax(G + Ω)`` with NACLIP's neighbourhood term ``Ω`` (σ = ``sigma``,
    :func:`~captum_clip_surgery.methods.naclip.neighbourhood_bias`); ``T = ls1(out(P v))``
    then goes through the pooling head per token. Row 0 of :meth:`token_features` is the
    unmodified model's embedding.

    Scores (:meth:`text_scores`): with ``g`` the cosines of the image's own embedding with the
    texts (the whole image's while :func:`~captum_clip_surgery.segment` scores its sliding
    windows, as in the release's protocol), each text cluster (:func:`text_clusters`, cut at
    ``h_threshold``) moves its best text toward the image (:func:`adjust_text_features`,
    ``α = mean_vector_weight``), and the score is ``(1 - w) cos(patch, t') + w g`` with
    ``w = global_semantics_weight`` (any feature surgery applies to the cosine term).

    Defaults (``MICV-yonsei/CASS@228ecdd``): ``scale_factor`` 10, ``k_eigen`` 20, rank 10,
    σ 5, eigen-scaling on, ``positional_resize="bicubic_offset"``; the object-presence
    settings are the Pascal Context 59 config's (0.25, 0.04, 0.09; the constructor of the
    release defaults to 0, 0, 0, which turns the adjustment off); :data:`CASS_SETTINGS` holds
    every dataset's. The release's backbone is DINO ViT-B/8 (``vit_base_patch8_224.dino`` in
    timm, ``facebook/dino-vitb8`` on the Hugging Face hub); with ``backbone=None`` the
    model's own image tower stands in (a baseline). Needs scipy.

    Differences from the release:

    - ``svd_lowrank`` (randomised, unseeded) is replaced by the exact rank-10 truncated SVD
      (the graphs are symmetric PSD, so an ``eigh`` of the smaller Gram matrix, ``d × d``,
      gives it exactly; the spectra come from the same Gram matrix, whose non-zero
      eigenvalues are the ``N × N`` graph's; both in float64, the graphs in float32):
      deterministic, and what the randomised estimate approximates. The release's energy test always passes at ``q = 10``, so its
      rank is 10 too; here ``min(rank, N)`` (the release fails below 10 tokens);
    - the backbone sees the image CLIP sees, un-normalised with the CLIP model's statistics
      and normalised with the backbone's: the release inverts CLIP's normalisation with
      ImageNet's statistics (blue std typed 0.255), rounds to ``uint8`` and PIL-resizes to a
      square of the short side, so its DINO sees a squashed, ≈0.85–0.92× contrast image;
    - a backbone whose key width differs from CLIP's (the release needs equal widths, e.g.
      DINO ViT-B with CLIP ViT-B) has its keys regrouped into CLIP's head count
      (``width / heads`` channels per group);
    - one image at a time inside a batch (the release runs one crop at a time), float32
      graphs with float64 spectra and SVD (the release: fp16 graphs);
    - degenerate cases the release turns into NaN (equal singular values, constant graphs)
      keep the values unscaled.

    Args:
        forward_func (CLIPZeroShotClassifier or nn.Module): classifier or model.
        backbone (nn.Module or VisionBackbone, optional): the second backbone (DINO / DINOv2
            in timm or Hugging Face, a view, a CLIP model / classifier); default the
            explained model's own image tower.
        global_semantics_weight (float): ``w`` in ``[0, 1]`` (default 0.25).
        mean_vector_weight (float): ``α`` in ``[0, 1]`` (default 0.04).
        h_threshold (float): the cluster cut ``>= 0`` (default 0.09).
        scale_factor (float): the weight of the distilled graph ``>= 0`` (default 10).
        k_eigen (int): eigenvalues per spectrum ``>= 1`` (default 20).
        rank (int): the rank of the distilled graph ``>= 1`` (default 10).
        eigen_scaling (bool): rescale the singular values (default True; False for VOC20
            and Cityscapes in the release).
        sigma (float): the neighbourhood term's standard deviation in patches (default 5).
        backbone_layer (int): the backbone block whose keys are read (default -1, the last).
        texts (list[str], optional): texts, when a model is given.
        templates (list[str], optional): prompt templates, when a model is given.
        tokenizer (Callable, optional): tokenizer, when a model is given.
        positional_resize (str, optional): CLIP's positional rule at another size; default
            ``"bicubic_offset"``, the release's.

    Examples::

        >>> import timm
        >>> dino = timm.create_model("vit_base_patch8_224.dino", pretrained=True)
        >>> explainer = CASSAttribution(clf, backbone=dino, **CASS_SETTINGS["voc21"])
        >>> explainer.attribute(images, target="dog").shape
        torch.Size([8, 1, 224, 224])
    """

    needs_blocks: ClassVar[bool] = True
    default_positional_resize: ClassVar[str] = "bicubic_offset"
    method_name: ClassVar[str] = "CASS"

    def __init__(
        self,
        forward_func: Union[CLIPZeroShotClassifier, nn.Module],
        backbone: Any = None,
        global_semantics_weight: float = 0.25,
        mean_vector_weight: float = 0.04,
        h_threshold: float = 0.09,
        scale_factor: float = 10.0,
        k_eigen: int = 20,
        rank: int = 10,
        eigen_scaling: bool = True,
        sigma: float = 5.0,
        backbone_layer: int = -1,
        texts: Optional[Sequence[str]] = None,
        templates: Optional[Sequence[str]] = None,
        tokenizer: Tokenizer = None,
        *,
        positional_resize: Optional[str] = None,
    ) -> None:
        self.global_semantics_weight = check_unit_interval(
            "global_semantics_weight", global_semantics_weight)
        self.mean_vector_weight = check_unit_interval("mean_vector_weight", mean_vector_weight)
        self.h_threshold = check_positive_number("h_threshold", h_threshold, allow_zero=True)
        self.scale_factor = check_positive_number("scale_factor", scale_factor, allow_zero=True)
        self.k_eigen = check_int("k_eigen", k_eigen, minimum=1)
        self.rank = check_int("rank", rank, minimum=1)
        self.eigen_scaling = check_bool("eigen_scaling", eigen_scaling)
        self.sigma = check_positive_number("sigma", sigma)
        _scipy("the head matching")
        super().__init__(forward_func, texts, templates, tokenizer,
                         positional_resize=positional_resize)
        require_attention_blocks(self.adapter, self.method_name, "the last block's attention")
        self.backbone: VisionBackbone = resolve_backbone(backbone, self.adapter)
        depth = self.backbone.depth
        self.backbone_layer = check_int("backbone_layer", backbone_layer, -depth, depth - 1)
        heads = self.adapter.image.blocks[-1].num_heads
        block = self.backbone.blocks[self.backbone_layer]
        width = block.num_heads * block.head_dim
        if width % heads:
            raise ValueError(
                f"backbone: its keys are {width} wide, which does not split into CLIP's "
                f"{heads} heads; use a backbone whose key width is a multiple of {heads}"
            )
        self._clusters: Dict[Tuple[str, ...], List[int]] = {}

    @classmethod
    def unsupported_reason(cls, adapter: Any) -> Optional[str]:
        r"""Also ``"needs scipy"`` where scipy is not installed."""
        if importlib.util.find_spec("scipy") is None:
            return "needs scipy (pip install scipy)"
        return super().unsupported_reason(adapter)

    # ------------------------------------------------------------------ image side

    def backbone_keys(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        r"""The backbone's keys of its grid tokens, heads concatenated, ``[B, I*J, C]``
        (float32, on the model's device), for prepared images, and its grid ``(I, J)``."""
        with self.running():  # a CLIP tower as the backbone follows the method's rule
            prepared = backbone_input(self.backbone, self.adapter, images)
            _, k, _, grid = self.backbone.qkv(prepared, self.backbone_layer)
        k = merge_heads(k[:, :, self.backbone.num_prefix_tokens :])
        return k.to(device=images.device, dtype=torch.float32), grid

    def token_features(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        r"""Token features ``[B, 1 + h*w, D]`` (row 0 the model's own embedding) and the
        grid ``(h, w)``."""
        image = self.adapter.image
        x, grid = image.embed(images)
        x = run_blocks(image, x, grid, len(image.blocks) - 1)
        block = image.blocks[-1]
        q, k, v = block.qkv(block.norm1(x))
        pooled = original_last_block_pooled(image, block, x, q, k, v, grid)
        p = image.num_prefix_tokens
        keys, backbone_grid = self.backbone_keys(images)
        omega = neighbourhood_bias(grid, 0, self.sigma, k.device)
        probs = torch.stack([
            (self._graph(k[i, :, p:].float(), keys[i], backbone_grid, grid, block.scale)[0]
             + omega).softmax(dim=-1)
            for i in range(k.shape[0])
        ])
        tokens = block.branch(probs.to(v.dtype) @ v[:, :, p:])
        stream = torch.cat([tokens.new_zeros(tokens.shape[0], p, tokens.shape[-1]), tokens], 1)
        return torch.cat([pooled[:, None], dense_features(image, stream, grid)], dim=1), grid

    def _graph(
        self, clip_keys: Tensor, keys: Tensor, backbone_grid: Tuple[int, int],
        grid: Tuple[int, int], scale: float,
    ) -> Tuple[Tensor, Tensor]:
        r"""``G`` and the matching of one image from CLIP's keys ``[H, N, d]`` and the
        backbone's ``[I*J, C]``."""
        heads = clip_keys.shape[0]
        group = keys.shape[-1] // heads
        kd = keys.t().reshape(heads, group, backbone_grid[0], backbone_grid[1])
        if backbone_grid != grid:
            kd = F.interpolate(kd, size=grid, mode="bilinear", align_corners=False)
        kd = kd.reshape(heads, group, -1).transpose(1, 2)
        kd = _rescale_to(kd.reshape(1, -1, group), clip_keys.reshape(1, -1, clip_keys.shape[-1]))
        kd = kd.reshape(heads, -1, group)
        return spectral_distillation(clip_keys, kd, scale, self.scale_factor, self.k_eigen,
                                     self.rank, self.eigen_scaling)

    def head_matching(self, images: Tensor) -> Tensor:
        r"""The Hungarian matching of every image, ``[B, heads]`` (``σ[b, i]``: the backbone
        head group mixed into CLIP head ``i``), for prepared images."""
        with self.running():
            image = self.adapter.image
            x, grid = image.embed(images)
            x = run_blocks(image, x, grid, len(image.blocks) - 1)
            block = image.blocks[-1]
            _, k, _ = block.qkv(block.norm1(x))
            keys, backbone_grid = self.backbone_keys(images)
        p = image.num_prefix_tokens
        return torch.stack([
            self._graph(k[i, :, p:].float(), keys[i], backbone_grid, grid, block.scale)[1]
            for i in range(k.shape[0])
        ])

    # ------------------------------------------------------------------ text side

    def clusters(self, texts: Sequence[str]) -> List[int]:
        r"""The cluster of every text (:func:`text_clusters`, cached per list of texts)."""
        key = tuple(texts)
        if key not in self._clusters:
            self._clusters[key] = text_clusters(self.classifier.encode_texts(list(texts)),
                                                self.h_threshold)
        return self._clusters[key]

    @contextlib.contextmanager
    def sliding_windows(self, images: Tensor) -> Iterator[None]:
        r"""While :func:`~captum_clip_surgery.sliding_window_scores` scores the windows of
        ``images``, the global scores come from the whole images' own embeddings (the
        release's protocol, except Cityscapes, where each crop's own is used). One image
        (``[1, 3, H, W]``) serves any number of its windows per forward."""
        with torch.no_grad(), self.running():
            prepared = prepare_images(self.adapter, images, "images")
            whole = pooled_image_features(self.adapter, prepared).float()
        token = _WHOLE.set(F.normalize(whole, dim=-1))
        try:
            yield
        finally:
            _WHOLE.reset(token)

    def text_scores(
        self, features: Tensor, text_features: Tensor, texts: List[str], mode: FeatureSurgery
    ) -> Tensor:
        r"""``(1 - w) · s(patch, t') + w · g`` per image: ``t'`` the texts adjusted toward the
        image (:func:`adjust_text_features`), ``s`` the cosine under the feature surgery
        ``mode``, ``g`` the cosines of the image's embedding (row 0 of ``features``, or the
        whole image's inside :meth:`sliding_windows`)."""
        whole = _WHOLE.get()
        own = features[:, 0]
        if whole is not None and whole.shape[0] in (1, features.shape[0]):
            # one whole image for several windows: the windows of that image
            own = whole.to(features.device).expand(features.shape[0], -1)
        g = own @ text_features.t()  # [B, T]
        clusters = self.clusters(texts)
        w = self.global_semantics_weight
        out = []
        for b in range(features.shape[0]):
            adjusted = adjust_text_features(features[b, 1:], g[b], text_features, clusters,
                                            self.mean_vector_weight)
            s = super().text_scores(features[b : b + 1], adjusted, texts, mode)
            out.append((1 - w) * s + w * g[b])
        return torch.cat(out)
