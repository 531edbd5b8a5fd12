r"""CorrCLIP (Zhang et al., ICCV 2025): CLIP's last attention rebuilt from a second backbone's
patch correlations, restricted to the regions of a mask generator."""

from __future__ import annotations

from typing import Any, Callable, ClassVar, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_clip_surgery._validation import check_int, check_positive_number
from captum_clip_surgery.adapters.backbone import VisionBackbone
from captum_clip_surgery.adapters.base import BlockView, merge_heads
from captum_clip_surgery.core.classifier import CLIPZeroShotClassifier
from captum_clip_surgery.methods.base import (
    Tokenizer,
    TokenMapAttribution,
    original_last_block_pooled,
    require_attention_blocks,
)
from captum_clip_surgery.methods.second_backbone import (
    backbone_extent,
    backbone_input,
    resize_grid_tokens,
    resolve_backbone,
)

__all__ = [
    "CorrCLIPAttribution",
    "corrclip_attention",
    "merge_regions",
    "region_clusters",
    "spatial_layer_count",
]

#: A mask generator: RGB images ``[B, 3, H, W]`` in ``[0, 1]`` to integer region labels
#: ``[B, H', W']`` (each image's lowest label is its unsegmented area).
MaskGenerator = Callable[[Tensor], Tensor]

#: The release's offset of merged region labels.
MERGED_LABEL_OFFSET = 10000


def spatial_layer_count(depth: int) -> int:
    r"""How many block outputs the release's spatial branch averages for a tower of
    ``depth`` blocks: 5 for 12, 12 for 24, 28 for 32, otherwise ``depth - 4``
    (``CorrCLIPv1/open_clip/transformer.py:526-534``)."""
    return {12: 5, 24: 12, 32: 28}.get(int(depth), int(depth) - 4)


def region_clusters(distances: Tensor, eps: float) -> Tensor:
    r"""DBSCAN with ``min_samples=1`` on a precomputed distance matrix, as scikit-learn's:
    every point is a core point, so the clusters are the connected components of the
    graph joining points at distance ``<= eps``, numbered in the order of their lowest
    point.

    Args:
        distances (Tensor): ``[R, R]`` symmetric distances.
        eps (float): the neighbourhood radius.

    Returns:
        Tensor: int64 ``[R]`` cluster numbers from 0.

    Examples::

        >>> d = torch.tensor([[0.0, 0.1, 0.9], [0.1, 0.0, 0.9], [0.9, 0.9, 0.0]])
        >>> region_clusters(d, 0.2)
        tensor([0, 0, 1])
    """
    near = (distances <= eps).cpu()
    count = near.shape[0]
    labels = [-1] * count
    cluster = 0
    for start in range(count):
        if labels[start] != -1:
            continue
        labels[start] = cluster
        stack = [start]
        while stack:
            point = stack.pop()
            for other in near[point].nonzero().flatten().tolist():
                if labels[other] == -1:
                    labels[other] = cluster
                    stack.append(other)
        cluster += 1
    return torch.tensor(labels, dtype=torch.int64)


def merge_regions(labels: Tensor, features: Tensor, eps: float = 0.2) -> Tensor:
    r"""The release's mask merging: the regions other than the lowest-labelled one
    (the unsegmented area) whose mean features are close are merged.

    With more than two labels, each region's feature is the mean of its tokens' features,
    L2-normalised; the regions but the first are clustered by :func:`region_clusters` on
    ``max(S) - S`` (``S`` their cosine similarities, ``max`` over the whole matrix) and
    every one of them is relabelled ``10000 + cluster`` (above all input labels where
    these reach 10000). The lowest-labelled region keeps its label.

    Args:
        labels (Tensor): ``[N]`` integer region labels of the tokens.
        features (Tensor): ``[N, C]`` the tokens' L2-normalised features.
        eps (float): DBSCAN's radius (default 0.2).

    Returns:
        Tensor: int64 ``[N]`` merged labels.

    Examples::

        >>> f = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.98, 0.2]])
        >>> merge_regions(torch.tensor([0, 1, 2, 3]), F.normalize(f, dim=1))
        tensor([    0, 10000, 10001, 10000])
    """
    labels = labels.to(torch.int64)
    values = torch.unique(labels)
    if values.numel() <= 2:
        return labels
    members = values[:, None] == labels[None, :]  # [R, N]
    means = (members.to(features.dtype) @ features) / members.sum(1, keepdim=True)
    means = F.normalize(means.float(), dim=1)[1:]
    similarity = means @ means.t()
    clusters = region_clusters(similarity.max() - similarity, eps).to(labels.device)
    offset = max(MERGED_LABEL_OFFSET, int(values.max()) + 1)
    merged = labels.clone()
    for row, cluster in enumerate(clusters.tolist(), start=1):
        merged[members[row]] = offset + cluster
    return merged


def corrclip_attention(features: Tensor, labels: Tensor, tau: float = 4.0) -> Tensor:
    r"""CorrCLIP's reconstructed attention of one image: ``softmax_j(τ S_ij)`` over the
    kept pairs, ``S = F Fᵀ`` of the L2-normalised backbone features.

    A pair is kept when both tokens lie in the same region other than the lowest-labelled
    one, or when either lies in the lowest-labelled region (the unsegmented area) and
    ``S_ij > mean(S)`` (mean over the whole matrix); every other argument is ``-inf``
    (``CorrCLIPv1/open_clip/transformer.py:564-578``).

    Args:
        features (Tensor): ``[N, C]`` L2-normalised features.
        labels (Tensor): ``[N]`` region labels (after :func:`merge_regions`).
        tau (float): the temperature (default 4).

    Returns:
        Tensor: float32 ``[N, N]``, rows summing to 1 (a row with no kept entry is NaN,
        as in the release).

    Examples::

        >>> f = torch.eye(3)                  # token 0 unsegmented, 1 and 2 one region
        >>> corrclip_attention(f, torch.tensor([0, 1, 1]))[1]
        tensor([0.0000, 0.9820, 0.0180])
    """
    f = features.float()
    similarity = f @ f.t()
    unsegmented = labels == labels.min()
    same = (labels[:, None] == labels[None, :]) & ~unsegmented[:, None]
    touching = unsegmented[:, None] | unsegmented[None, :]
    keep = same | (touching & (similarity > similarity.mean()))
    return (similarity * tau).masked_fill(~keep, float("-inf")).softmax(dim=-1)


def resize_labels(labels: Tensor, size: Tuple[int, int]) -> Tensor:
    r"""``[B, H, W]`` integer labels resized by nearest neighbour (``F.interpolate``'s, as
    the release resizes its masks), int64."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels.long()
    return F.interpolate(labels[:, None].double(), size=size, mode="nearest")[:, 0].to(
        torch.int64)


class CorrCLIPAttribution(TokenMapAttribution):
    r"""CorrCLIP maps: CLIP's last attention rebuilt from a second backbone's patch
    correlations within the regions of a mask generator, with a spatial and a semantic
    branch (Zhang et al., "CorrCLIP: Reconstructing Patch Correlations in CLIP for
    Open-Vocabulary Semantic Segmentation", ICCV 2025; ``zdk258/CorrCLIP@103bc18``,
    ``CorrCLIPv1/open_clip/transformer.py:506-634``).

    - **Correlations:** ``F = q + k`` of the backbone's last block (heads concatenated,
      prefix tokens dropped, L2-normalised), ``S = F Fᵀ``.
    - **Regions:** the generator's labels, resized by nearest neighbour to the backbone's
      grid, merged by :func:`merge_regions` (DBSCAN, ``eps``).
    - **Attention:** :func:`corrclip_attention` (``softmax(τ S)`` within regions; the
      unsegmented area reaches pairs above the mean similarity).
    - **Main and spatial branches:** the last block's values ``W_v · norm1(x)`` of the
      stream entering it (main) and of the mean of the outputs of the
      :func:`spatial_layer_count` blocks before the last but one (spatial), grid tokens
      resized bilinearly to the backbone's grid, mixed by the attention and projected by
      the attention's output projection (no residual, no MLP).
    - **Semantic branch:** one token per region of CLIP's grid, started from the class
      token entering block 0, runs through every block (the last one whole), attending
      to the class token and its own region's patches only; every token of the
      backbone's grid receives its region's token.
    - **Fusion:** ``proj(ln_post(main) + α ln_post(spatial) + β ln_post(semantic))``.

    The maps lie on the backbone's grid. Row 0 of :meth:`token_features` is the
    unmodified model's embedding. Without a mask generator the whole image is one
    unsegmented area (the release needs masks: SAM2's, pre-generated, by default).

    Differences from the release: float32 (the release runs CLIP and DINO in fp16); every
    image of a batch has its own regions (the release's semantic branch takes the first
    image's); the generator sees the image as CLIP does (padded to CLIP's patch; the
    release pads crops to 56 and labels the padding 10000); merged labels start above the
    input labels where these reach 10000 (the release always adds 10000).

    Args:
        forward_func (CLIPZeroShotClassifier or nn.Module): classifier or model (a tower
            with a class token).
        backbone (nn.Module or VisionBackbone, optional): the correlations' backbone: a
            DINO (the release: ``dino_vitb8``, timm ``vit_base_patch8_224.dino``), any
            model :func:`~captum_clip_surgery.adapters.get_backbone` understands, or a CLIP;
            default the explained model's own image tower (a baseline).
        mask_generator (Callable, optional): ``rgb [B, 3, H, W]`` in ``[0, 1]`` to integer
            labels ``[B, H', W']`` (or ``[B, 1, H', W']``), each image's lowest label its
            unsegmented area (:func:`~captum_clip_surgery.sam_mask_generator` wraps
            segment-anything); default none (one unsegmented area).
        alpha (float): the spatial branch's weight (default 1.0).
        beta (float): the semantic branch's weight (default 0.5).
        tau (float): the attention's temperature (default 4).
        eps (float): the merging radius (default 0.2).
        spatial_layers (int, optional): block outputs the spatial branch averages, at
            most ``depth - 2``; 0 leaves the branch out (default :func:`spatial_layer_count`
            of the depth, within that range: 0 for a tower of 2 blocks).
        backbone_layer (int): the backbone block whose ``q + k`` are the features
            (default -1, the last).
        texts (list[str], optional): texts, when a model is given.
        templates (list[str], optional): prompt templates, when a model is given.
        tokenizer (Callable, optional): tokenizer, when a model is given.
        positional_resize (str, optional): CLIP's positional rule at another size; default
            ``"bicubic_offset"``, the release's.

    Examples::

        >>> import timm
        >>> dino = timm.create_model("vit_base_patch8_224.dino", pretrained=True)
        >>> explainer = CorrCLIPAttribution(clf, backbone=dino, mask_generator=masks)
        >>> explainer.attribute(images, target="dog").shape
        torch.Size([8, 1, 224, 224])
    """

    needs_blocks: ClassVar[bool] = True
    head_kinds: ClassVar[Tuple[str, ...]] = ("token",)
    default_positional_resize: ClassVar[str] = "bicubic_offset"
    method_name: ClassVar[str] = "CorrCLIP"

    def __init__(
        self,
        forward_func: Union[CLIPZeroShotClassifier, nn.Module],
        backbone: Any = None,
        mask_generator: Optional[MaskGenerator] = None,
        alpha: float = 1.0,
        beta: float = 0.5,
        tau: float = 4.0,
        eps: float = 0.2,
        spatial_layers: Optional[int] = None,
        backbone_layer: int = -1,
        texts: Optional[Sequence[str]] = None,
        templates: Optional[Sequence[str]] = None,
        tokenizer: Tokenizer = None,
        *,
        positional_resize: Optional[str] = None,
    ) -> None:
        if mask_generator is not None and not callable(mask_generator):
            raise TypeError(
                "mask_generator: expected a callable from RGB images [B, 3, H, W] to region "
                f"labels [B, H, W], or None, got {type(mask_generator).__name__}"
            )
        self.alpha = check_positive_number("alpha", alpha, allow_zero=True)
        self.beta = check_positive_number("beta", beta, allow_zero=True)
        self.tau = check_positive_number("tau", tau)
        self.eps = check_positive_number("eps", eps, allow_zero=True)
        super().__init__(forward_func, texts, templates, tokenizer,
                         positional_resize=positional_resize)
        require_attention_blocks(self.adapter, self.method_name, "the last block's attention")
        depth = len(self.adapter.image.blocks)
        if spatial_layers is None:  # the release's rule, within what the tower has
            spatial_layers = min(max(spatial_layer_count(depth), 0), max(depth - 2, 0))
        self.spatial_layers = check_int("spatial_layers", spatial_layers, 0, max(depth - 2, 0))
        self.mask_generator = mask_generator
        self.backbone: VisionBackbone = resolve_backbone(backbone, self.adapter)
        bdepth = self.backbone.depth
        self.backbone_layer = check_int("backbone_layer", backbone_layer, -bdepth, bdepth - 1)

    # ------------------------------------------------------------------ inputs

    def backbone_features(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        r"""``q + k`` of the backbone's block, heads concatenated, grid tokens only,
        L2-normalised: ``[B, I*J, C]`` (float32, on the model's device), and the grid."""
        with self.running():  # a CLIP tower as the backbone follows the method's rule
            prepared = backbone_input(self.backbone, self.adapter, images)
            q, k, _, grid = self.backbone.qkv(prepared, self.backbone_layer)
        p = self.backbone.num_prefix_tokens
        feats = F.normalize(merge_heads(q[:, :, p:] + k[:, :, p:]).float(), dim=-1)
        return feats.to(images.device), grid

    def region_labels(self, images: Tensor) -> Tensor:
        r"""The generator's labels of prepared images at their size, ``[B, H, W]`` int64
        (all 0 without a generator)."""
        b, _, h, w = images.shape
        if self.mask_generator is None:
            return torch.zeros(b, h, w, dtype=torch.int64, device=images.device)
        mean = torch.tensor(self.adapter.image_mean, device=images.device)[:, None, None]
        std = torch.tensor(self.adapter.image_std, device=images.device)[:, None, None]
        rgb = (images.detach().float() * std + mean).clamp(0, 1)
        labels = self.mask_generator(rgb)
        if not isinstance(labels, Tensor):
            raise TypeError(f"mask_generator: expected it to return a Tensor, got "
                            f"{type(labels).__name__}")
        if labels.ndim == 4 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 3 or labels.shape[0] != b or labels.is_floating_point() or (
            labels.dtype == torch.bool
        ):
            raise ValueError(
                f"mask_generator: expected integer labels [{b}, H, W], got a "
                f"{labels.dtype} tensor of shape {list(labels.shape)}"
            )
        return resize_labels(labels.to(images.device, torch.int64), (h, w))

    # ------------------------------------------------------------------ tokens

    def token_features(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        r"""Token features ``[B, 1 + I*J, D]`` on the backbone's grid ``(I, J)`` (row 0 the
        model's own embedding)."""
        image = self.adapter.image
        blocks: List[BlockView] = list(image.blocks)
        depth, p = len(blocks), image.num_prefix_tokens
        feats, proxy_grid = self.backbone_features(images)
        labels = resize_labels(self.region_labels(images), proxy_grid).flatten(1)  # [B, I*J]
        labels = torch.stack([merge_regions(labels[i], feats[i], self.eps)
                              for i in range(len(labels))])
        probs = torch.stack([corrclip_attention(feats[i], labels[i], self.tau)
                             for i in range(len(labels))])

        x, grid = image.embed(images)
        # the semantic branch: one token per region of CLIP's grid, from the class token
        cells = resize_labels(labels.view(-1, *proxy_grid), grid).flatten(1)  # [B, h*w]
        regions = [torch.unique(row) for row in cells]
        semantic = [x[i, :1].expand(len(r), -1) for i, r in enumerate(regions)]
        allowed = []
        for row, values in zip(cells, regions):
            rows = torch.zeros(len(values), x.shape[1], dtype=torch.bool, device=x.device)
            rows[:, 0] = True  # the class token
            rows[:, p:] = values[:, None] == row[None, :]
            allowed.append(rows)

        first, last_spatial = depth - 2 - self.spatial_layers, depth - 3
        spatial_sum: Optional[Tensor] = None
        for index, block in enumerate(blocks):
            q, k, v = block.qkv(block.norm1(x))
            semantic = [self._semantic_step(block, tokens, k[i : i + 1], v[i : i + 1], mask)
                        for i, (tokens, mask) in enumerate(zip(semantic, allowed))]
            if index == depth - 1:
                break
            x = block.residual(x, block.original_attention(q, k, v))
            if first <= index <= last_spatial:
                spatial_sum = x if spatial_sum is None else spatial_sum + x
        pooled = original_last_block_pooled(image, block, x, q, k, v, grid)

        main = self._mixed(block, v, probs, grid, proxy_grid)
        # every token of the backbone's grid takes the token of its CLIP-grid region
        owner = resize_labels(cells.view(-1, *grid), proxy_grid).flatten(1)
        sem = torch.stack([tokens[torch.searchsorted(values, row)]
                           for tokens, values, row in zip(semantic, regions, owner)])
        head = image.head
        fused = head.post_norm(main)
        if spatial_sum is not None:
            spatial_v = block.qkv(block.norm1(spatial_sum / self.spatial_layers))[2]
            side = self._mixed(block, spatial_v, probs, grid, proxy_grid)
            fused = fused + self.alpha * head.post_norm(side)
        fused = fused + self.beta * head.post_norm(sem)
        dense = head.projection(fused)
        return torch.cat([pooled[:, None], dense], dim=1), proxy_grid

    @staticmethod
    def _semantic_step(block: BlockView, tokens: Tensor, k: Tensor, v: Tensor,
                       allowed: Tensor) -> Tensor:
        r"""One whole block for an image's region tokens ``[R, C]``, their queries attending
        to the keys ``allowed`` ``[R, N]`` of the stream (``k, v`` ``[1, heads, N, d]``)."""
        q = block.qkv(block.norm1(tokens[None]))[0]
        logits = block.attention_logits(q, k).float()
        probs = logits.masked_fill(~allowed, float("-inf")).softmax(dim=-1).to(v.dtype)
        return block.residual(tokens[None], probs @ v)[0]

    @staticmethod
    def _mixed(block: BlockView, v: Tensor, probs: Tensor, grid: Tuple[int, int],
               proxy_grid: Tuple[int, int]) -> Tensor:
        r"""``out(A · resize(V))`` of the grid tokens' values ``v`` ``[B, heads, N, d]``
        (prefix tokens first): ``[B, I*J, C]``."""
        b, heads, n, d = v.shape
        values = merge_heads(v[:, :, n - grid[0] * grid[1] :])
        if proxy_grid != grid:
            values = resize_grid_tokens(values, grid, proxy_grid)
        mixed = probs.to(values.dtype) @ values
        return block.out(mixed.view(b, -1, heads, d).transpose(1, 2))

    def token_extent(
        self, grid: Tuple[int, int], input_size: Tuple[int, int]
    ) -> Tuple[float, float]:
        r"""The backbone's grid spans the input padded to CLIP's patch."""
        return backbone_extent(self.adapter, input_size)
