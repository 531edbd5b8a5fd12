r"""Region masks for CorrCLIP from segment-anything's automatic mask generator."""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from torch import Tensor

from captum_clip_surgery.apps.points import _sam_model

__all__ = ["sam_mask_generator"]


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


def _sam_from_checkpoint(checkpoint: Union[str, os.PathLike], model_type: str,
                         points_per_side: int, pred_iou_thresh: float,
                         stability_score_thresh: float, device: Union[str, torch.device]) -> Any:
    sa, sam = _sam_model(checkpoint, model_type)
    return sa.SamAutomaticMaskGenerator(sam.to(device).eval(), points_per_side=points_per_side,
                                        pred_iou_thresh=pred_iou_thresh,
                                        stability_score_thresh=stability_score_thresh)
