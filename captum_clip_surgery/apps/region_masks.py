r"""Region masks for CorrCLIP: from segment-anything's automatic mask generator, and the
release's majority vote of a label map inside them."""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from torch import Tensor

from captum_clip_surgery.apps.points import _sam_model
from captum_clip_surgery.methods.corrclip import resize_labels

__all__ = ["region_majority_vote", "sam_mask_generator"]


def sam_mask_generator(
    generator: Any = None,
    *,
    checkpoint: Optional[Union[str, os.PathLike]] = None,
    model_type: str = "vit_h",
    points_per_side: int = 8,
    pred_iou_thresh: float = 0.4,
    stability_score_thresh: float = 0.4,
    device: Union[str, torch.device] = "cpu",
) -> Callable[[Tensor], Tensor]:
    r"""A CorrCLIP mask generator from segment-anything's automatic mask generator.

    Each image's masks are sorted by area, smallest first, and painted with labels
    1, 2, … in that order (a larger mask over a smaller one), 0 where no mask lies: the
    release's labels of SAM2's masks (``CorrCLIPv1/corrclip_segmentor.py``,
    ``generate_mask``).

    Args:
        generator (object, optional): anything with ``generate(rgb_uint8_hwc) -> list of
            dicts`` with ``"segmentation"`` (``[H, W]`` bool) and ``"area"``:
            ``segment_anything.SamAutomaticMaskGenerator`` or SAM2's.
        checkpoint (str or PathLike, optional): instead of ``generator``, a
            segment-anything checkpoint, read as safetensors or with
            ``torch.load(weights_only=True)``
            into ``sam_model_registry[model_type]`` (needs ``pip install
            captum-clip-surgery[sam]``).
        model_type (str): the checkpoint's architecture (``"vit_h"``, ``"vit_l"``,
            ``"vit_b"``).
        points_per_side (int): the release's 8.
        pred_iou_thresh (float): the release's 0.4.
        stability_score_thresh (float): the release's 0.4.
        device (str or torch.device): where the SAM built from ``checkpoint`` runs.

    Returns:
        Callable: ``rgb [B, 3, H, W]`` in ``[0, 1]`` to int64 labels ``[B, H, W]``.

    Examples::

        >>> masks = sam_mask_generator(checkpoint="sam_vit_h_4b8939.pth")
        >>> explainer = CorrCLIPAttribution(clf, backbone=dino, mask_generator=masks)
    """
    if (generator is None) == (checkpoint is None):
        raise ValueError("generator, checkpoint: expected exactly one of them, got "
                         f"{'both' if generator is not None else 'neither'}")
    if generator is None:
        generator = _sam_from_checkpoint(checkpoint, model_type, points_per_side,
                                         pred_iou_thresh, stability_score_thresh, device)
    elif not callable(getattr(generator, "generate", None)):
        raise TypeError("generator: expected an object with a generate(image) method (such "
                        f"as SamAutomaticMaskGenerator), got {type(generator).__name__}")

    def generate(rgb: Tensor) -> Tensor:
        out = []
        for image in rgb:
            array = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255)
            array = np.round(array).astype(np.uint8)
            labels = np.zeros(array.shape[:2], dtype=np.int64)
            annotations = sorted(generator.generate(array), key=lambda a: a["area"])
            for label, annotation in enumerate(annotations, start=1):
                labels[np.asarray(annotation["segmentation"], dtype=bool)] = label
            out.append(torch.from_numpy(labels))
        return torch.stack(out).to(rgb.device)

    return generate


def region_majority_vote(labels: Tensor, regions: Tensor) -> Tensor:
    r"""CorrCLIP's map correction: inside every region but the lowest-labelled one (the
    unsegmented area), each pixel takes the region's most frequent label, by
    ``torch.mode`` as released (``CorrCLIPv1/corrclip_segmentor.py``, ``postprocess_result``).

    Args:
        labels (Tensor): ``[B, H, W]`` (or ``[H, W]``) integer label maps, e.g. of
            :func:`~captum_clip_surgery.segment`.
        regions (Tensor): integer region labels of the same images (``[B, H', W']`` or
            ``[H', W']``, resized by nearest neighbour to the labels' size), e.g. of a
            :func:`sam_mask_generator`.

    Returns:
        Tensor: the corrected labels, the shape and dtype of ``labels``.

    Examples::

        >>> labels = torch.tensor([[1, 1, 2], [3, 1, 2]])
        >>> regions = torch.tensor([[5, 5, 5], [5, 5, 0]])  # 0: the unsegmented area
        >>> region_majority_vote(labels, regions)
        tensor([[1, 1, 1],
                [1, 1, 2]])
    """
    for name, value in (("labels", labels), ("regions", regions)):
        if not isinstance(value, Tensor) or value.is_floating_point() or value.dtype == torch.bool \
                or value.ndim not in (2, 3):
            raise ValueError(f"{name}: expected an integer tensor [B, H, W] or [H, W], got "
                             f"{_describe(value)}")
    single = labels.ndim == 2
    lab = labels[None] if single else labels
    reg = regions[None] if regions.ndim == 2 else regions
    if reg.shape[0] != lab.shape[0]:
        raise ValueError(f"regions: expected {lab.shape[0]} maps (one per label map), got "
                         f"{reg.shape[0]}")
    reg = resize_labels(reg.to(lab.device), tuple(lab.shape[-2:]))
    out = lab.clone()
    for image, region in zip(out, reg):
        votes = image.clone()
        for value in torch.unique(region)[1:]:
            inside = region == value
            image[inside] = torch.mode(votes[inside])[0]
    return out[0] if single else out


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    return type(value).__name__


def _sam_from_checkpoint(checkpoint: Union[str, os.PathLike], model_type: str,
                         points_per_side: int, pred_iou_thresh: float,
                         stability_score_thresh: float, device: Union[str, torch.device]) -> Any:
    sa, sam = _sam_model(checkpoint, model_type)
    return sa.SamAutomaticMaskGenerator(sam.to(device).eval(), points_per_side=points_per_side,
                                        pred_iou_thresh=pred_iou_thresh,
                                        stability_score_thresh=stability_score_thresh)
