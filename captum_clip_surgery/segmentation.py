r"""Open-vocabulary semantic segmentation from token maps (``docs/method.md`` §9)."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from captum_clip_surgery._map_attribution import FeatureSurgery, TokenMapAttribution
from captum_clip_surgery._maps import to_pixels
from captum_clip_surgery.multilabel import check_unit_interval

__all__ = ["segment"]


def _output_size(output_size: object) -> Optional[Tuple[int, int]]:
    if output_size is None:
        return None
    if isinstance(output_size, int) and not isinstance(output_size, bool):
        size: Tuple[object, ...] = (output_size, output_size)
    elif isinstance(output_size, (tuple, list, torch.Size)):
        size = tuple(output_size)
    else:
        raise TypeError(
            f"output_size: expected an int or a (height, width) pair, got "
            f"{type(output_size).__name__}"
        )
    if len(size) != 2 or not all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size
    ):
        raise ValueError(
            f"output_size: expected two positive ints (height, width), got {output_size!r}"
        )
    return (int(size[0]), int(size[1]))  # type: ignore[call-overload]


def segment(
    explainer: TokenMapAttribution,
    images: Tensor,
    class_names: Optional[Sequence[str]] = None,
    feature_surgery: FeatureSurgery = "none",
    background_threshold: Optional[float] = None,
    background_index: Optional[int] = None,
    output_size: Optional[Union[int, Tuple[int, int]]] = None,
) -> Tensor:
    r"""Label maps: the per-pixel argmax over the class maps.

    For every image the token-grid scores of all classes
    (:meth:`~TokenMapAttribution.similarity`, before any normalisation) are
    upsampled bilinearly (``align_corners=False``) to the input size (or
    ``output_size``) and each pixel gets the class with the highest score.
    Following ``docs/method.md`` §9, no feature surgery is applied by default: the
    empty-string surgery subtracts a per-token bias common to all classes and
    leaves the argmax unchanged, so ``"none"`` and ``"empty"`` give the same
    labels. ``"classes"`` (class-set surgery) reweights the classes and can
    change them; it can be asked for. No min-max normalisation is applied
    (it would give every class, present or not, a full-range map).

    Background / unknown pixels: with ``background_threshold``, per-pixel class
    probabilities ``softmax(logit_scale · S)`` over the classes are computed
    from the upsampled scores ``S`` (``logit_scale`` is the model's own, as in
    zero-shot classification), and pixels whose highest probability is below the
    threshold get ``background_index`` instead of a class. This is the
    ``prob_thd`` rule of training-free CLIP segmenters (SCLIP, ClearCLIP, ...).
    Since the highest of ``K`` probabilities is at least ``1/K``, thresholds up
    to ``1/K`` mark nothing. Alternatively (or in addition) list background
    "stuff" names (``"sky"``, ``"wall"``, ``"grass"``) among the classes and
    merge their labels afterwards.

    Works with every token-map explainer (:class:`CLIPSurgeryAttribution`,
    :class:`CLIPSimilarityMap`, :class:`MaskCLIPAttribution`); the label quality
    is the explainer's (raw CLIP maps segment poorly, ``docs/method.md`` §1).

    Args:
        explainer (TokenMapAttribution): the explainer whose maps are used.
        images (Tensor): preprocessed images ``[B, 3, H, W]``, any resolution.
        class_names (list[str], optional): the classes; default the explainer's
            classifier texts. Encoded with the classifier's templates (cached).
        feature_surgery (str or Tensor): feature surgery of the scores:
            ``"none"`` (default), ``"empty"``, ``"classes"``, ``"auto"`` or a
            tensor of redundant features (see
            :meth:`~TokenMapAttribution.similarity`).
        background_threshold (float, optional): probability in ``[0, 1]``; see
            above. Default ``None``: every pixel gets a class.
        background_index (int, optional): the label of background pixels;
            default ``len(class_names)`` (so ``class_names + ["background"]``
            indexes every label). Must not be a class index (``0..K-1``); use
            e.g. 255 or -1 for an "ignore" label.
        output_size (int or tuple[int, int], optional): ``(H, W)`` of the label
            maps, e.g. the original image size; default the input's ``H×W``.

    Returns:
        Tensor: ``[B, H, W]`` long labels on the images' device.

    Examples::

        >>> names = ["person", "bench", "tree", "sky", "ground"]
        >>> explainer = CLIPSurgeryAttribution(model, texts=names)
        >>> labels = segment(explainer, images, background_threshold=0.3)
        >>> labels.shape, int(labels.max()) <= len(names)
        (torch.Size([8, 224, 224]), True)
    """
    if not isinstance(explainer, TokenMapAttribution):
        raise TypeError(
            "explainer: expected a token-map attribution (CLIPSurgeryAttribution, "
            f"CLIPSimilarityMap, MaskCLIPAttribution), got {type(explainer).__name__}"
        )
    names = explainer._texts(class_names)
    size = _output_size(output_size)
    threshold = (
        None
        if background_threshold is None
        else check_unit_interval("background_threshold", background_threshold)
    )
    if background_index is None:
        bg = len(names)
    elif isinstance(background_index, bool) or not isinstance(background_index, int):
        raise TypeError(f"background_index: expected an int, got {type(background_index).__name__}")
    elif 0 <= background_index < len(names):
        raise ValueError(
            f"background_index: {background_index} is a class index (0..{len(names) - 1}); "
            f"expected another label, e.g. {len(names)}, 255 or -1"
        )
    else:
        bg = background_index
    with torch.no_grad():  # labels are discrete: no graph is needed
        scores = explainer.similarity(images, names, feature_surgery)
    in_size = (images.shape[-2], images.shape[-1])
    target = size if size is not None else in_size
    cell = explainer.adapter.image.patch_size
    scale = math.nan
    if threshold is not None:
        scale = float(explainer.adapter.logit_scale().detach().float())
    labels = []
    for b in range(scores.shape[0]):  # one image at a time bounds the [K, H, W] memory
        up = to_pixels(scores[b : b + 1], cell, in_size, target)[0]
        best = up.argmax(dim=0)
        if threshold is not None:
            confidence = torch.softmax(scale * up, dim=0).amax(dim=0)
            best = torch.where(confidence < threshold, torch.full_like(best, bg), best)
        labels.append(best)
    return torch.stack(labels).to(images.device)
