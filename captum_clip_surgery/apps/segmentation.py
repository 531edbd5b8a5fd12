r"""Open-vocabulary semantic segmentation from token maps (``docs/method.md`` §9)."""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_clip_surgery._validation import check_choice, check_unit_interval, prepare_images
from captum_clip_surgery.apps.label_propagation import lposs_plus, lposs_scores
from captum_clip_surgery.apps.mask_refinement import pamr as _pamr
from captum_clip_surgery.apps.windows import _pair_of_positive_ints, window_spans
from captum_clip_surgery.core.maps import upsample
from captum_clip_surgery.methods.base import FeatureSurgery, TokenMapAttribution

__all__ = ["REFINEMENTS", "segment", "sliding_window_scores"]


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


def _check_explainer(explainer: object) -> None:
    if not isinstance(explainer, TokenMapAttribution):
        raise TypeError(
            "explainer: expected a token-map attribution (CLIPSurgeryAttribution, "
            "CLIPSimilarityMap, MaskCLIPAttribution, GEMAttribution, SCLIPAttribution, "
            f"ClearCLIPAttribution, NACLIPAttribution), got {type(explainer).__name__}"
        )


def _slide(
    fn: Callable[[Tensor], Tensor], images: Tensor, crop: int, stride: int
) -> Tuple[Tensor, Tensor]:
    r"""Sum of ``fn(crop)`` over every window placed on a canvas, and the overlap count.

    ``fn`` maps ``[B, 3, hc, wc]`` crops to ``[B, K, hc, wc]`` scores at the crop's size.
    """
    b, _, h, w = images.shape
    canvas: Optional[Tensor] = None
    count = torch.zeros(1, 1, h, w, device=images.device)
    for y0, y1 in window_spans(h, crop, stride):
        for x0, x1 in window_spans(w, crop, stride):
            scores = fn(images[:, :, y0:y1, x0:x1]).float()
            if canvas is None:
                canvas = torch.zeros(b, scores.shape[1], h, w, device=scores.device)
            canvas[:, :, y0:y1, x0:x1] += scores
            count[:, :, y0:y1, x0:x1] += 1
    assert canvas is not None
    return canvas, count


def sliding_window_scores(
    explainer: TokenMapAttribution,
    images: Tensor,
    crop: int,
    stride: int,
    class_names: Optional[Sequence[str]] = None,
    feature_surgery: FeatureSurgery = "none",
) -> Tensor:
    r"""Class scores at the input size from overlapping crops (the shared protocol).

    Each ``crop × crop`` window (stride ``stride``, see :func:`window_spans`) is
    zero-padded at the bottom / right to a multiple of the patch size, scored
    with :meth:`~TokenMapAttribution.similarity`, upsampled bilinearly to the
    padded crop and cut back to the window; the windows are summed on a canvas
    and divided by the number of windows covering each pixel.

    Args:
        explainer (TokenMapAttribution): any token-map explainer.
        images (Tensor): preprocessed images ``[B, 3, H, W]`` (already resized, e.g.
            short side 336).
        crop (int): window size in pixels.
        stride (int): distance between windows in pixels.
        class_names (list[str], optional): the classes; default the explainer's texts.
        feature_surgery (str or Tensor): as in :func:`segment`.

    Returns:
        Tensor: float32 ``[B, K, H, W]`` raw cosine scores.

    Examples::

        >>> scores = sliding_window_scores(explainer, images, crop=224, stride=112)
    """
    _check_explainer(explainer)
    crop, stride = _pair_of_positive_ints("sliding_window", (crop, stride))
    names = explainer._texts(class_names)
    images = prepare_images(explainer.adapter, images, "images", pad=False)
    ph, pw = explainer.adapter.image.patch_size

    def score(window: Tensor) -> Tensor:
        hc, wc = window.shape[-2:]
        padded = F.pad(window, (0, (-wc) % pw, 0, (-hc) % ph))
        s = explainer.similarity(padded, names, feature_surgery)
        return upsample(s, (padded.shape[-2], padded.shape[-1]))[:, :, :hc, :wc]

    with explainer.sliding_windows(images):
        canvas, count = _slide(score, images, crop, stride)
    return canvas / count


#: The refinements :func:`segment` offers (``refine=``).
REFINEMENTS = ("pamr", "lposs", "lposs+")


def _unnormalised(explainer: TokenMapAttribution, images: Tensor) -> Tensor:
    r"""Preprocessed images back to RGB in ``[0, 1]`` with the model's statistics (float32)."""
    mean = torch.tensor(explainer.adapter.image_mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(explainer.adapter.image_std, device=images.device).view(1, 3, 1, 1)
    return images.detach().float() * std + mean


def _pamr_iterations(value: object) -> int:
    if isinstance(value, bool):
        return 10 if value else 0
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"pamr: expected a bool or a number of iterations >= 0, got {value!r}")
    return value


def segment(
    explainer: TokenMapAttribution,
    images: Tensor,
    class_names: Optional[Sequence[str]] = None,
    feature_surgery: FeatureSurgery = "none",
    background_threshold: Optional[float] = None,
    background_index: Optional[int] = None,
    output_size: Optional[Union[int, Tuple[int, int]]] = None,
    sliding_window: Optional[Tuple[int, int]] = None,
    pamr: Union[bool, int] = False,
    pamr_dilations: Sequence[int] = (8, 16),
    logit_scale: Optional[float] = None,
    refine: Optional[str] = None,
    refine_backbone: Any = None,
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

    The shared protocol of training-free segmenters is available step by step:
    ``sliding_window=(crop, stride)`` scores overlapping crops and averages them
    on a canvas (:func:`sliding_window_scores`; resize the images first, e.g. to
    a short side of 336); the scores are then upsampled to ``output_size``;
    ``pamr`` refines them with the image's colour affinities (:func:`pamr`, the
    image resized bilinearly to the same size); ``logit_scale`` replaces the
    model's own scale in the background rule (SCLIP and NACLIP use 40,
    ClearCLIP 50).

    ``refine`` names the refinement instead: ``"pamr"`` (as ``pamr=True``, or ``pamr``'s
    iterations when given), ``"lposs"`` (the scores propagated over a second backbone's
    patch graph that joins all the windows of an image,
    :func:`~captum_clip_surgery.apps.label_propagation.lposs_scores`) or ``"lposs+"`` (LPOSS, then
    propagation over the pixel graph of the image's colours at the input's size,
    :func:`~captum_clip_surgery.apps.label_propagation.lposs_plus`, before the resize to
    ``output_size``). LPOSS's graph backbone is ``refine_backbone`` (a DINO in the release,
    ``dino_vitb16``; any model :func:`~captum_clip_surgery.adapters.get_backbone`
    understands), by default the explainer's own second backbone (ProxyCLIP, CASS) or the
    model's image tower. The release's protocol: short side 448, ``sliding_window=(224,
    112)``, no threshold.

    Works with every token-map explainer (:class:`CLIPSurgeryAttribution`,
    :class:`CLIPSimilarityMap`, :class:`MaskCLIPAttribution`,
    :class:`GEMAttribution`, :class:`SCLIPAttribution`,
    :class:`ClearCLIPAttribution`, :class:`NACLIPAttribution`); the label
    quality is the explainer's (raw CLIP maps segment poorly, ``docs/method.md`` §1).

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
        sliding_window (tuple[int, int], optional): ``(crop, stride)`` in pixels
            of the input; default ``None``: the whole image at once.
        pamr (bool or int): refine the upsampled scores with PAMR: ``True`` for
            10 iterations, an int for that many; default ``False``.
        pamr_dilations (list[int]): PAMR's neighbour distances in output pixels
            (default ``(8, 16)``).
        logit_scale (float, optional): the scale of the probabilities in the
            background rule; default the model's own.
        refine (str, optional): ``"pamr"``, ``"lposs"`` or ``"lposs+"``; default ``None``
            (only ``pamr`` applies). ``"lposs"`` / ``"lposs+"`` exclude ``pamr``.
        refine_backbone (optional): LPOSS's graph backbone (see above).

    Returns:
        Tensor: ``[B, H, W]`` long labels on the images' device.

    Examples::

        >>> names = ["person", "bench", "tree", "sky", "ground"]
        >>> explainer = CLIPSurgeryAttribution(model, texts=names)
        >>> labels = segment(explainer, images, background_threshold=0.3)
        >>> labels.shape, int(labels.max()) <= len(names)
        (torch.Size([8, 224, 224]), True)
    """
    _check_explainer(explainer)
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
    window = None if sliding_window is None else _pair_of_positive_ints(
        "sliding_window", sliding_window
    )
    iterations = _pamr_iterations(pamr)
    if refine is not None:
        check_choice("refine", refine, REFINEMENTS)
        if refine == "pamr":
            iterations = iterations or 10
        elif iterations:
            raise ValueError(
                f"pamr: refine={refine!r} replaces PAMR; give pamr=False (got pamr={pamr!r})"
            )
    if refine_backbone is not None and refine not in ("lposs", "lposs+"):
        raise ValueError(
            f"refine_backbone: only LPOSS uses a graph backbone; got refine={refine!r}"
        )
    if isinstance(pamr_dilations, (str, bytes)) or not isinstance(pamr_dilations, (list, tuple)) or (
        not pamr_dilations
        or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in pamr_dilations)
    ):
        raise ValueError(
            f"pamr_dilations: expected a non-empty sequence of positive ints, got {pamr_dilations!r}"
        )
    if logit_scale is not None and (
        isinstance(logit_scale, bool) or not isinstance(logit_scale, (int, float))
        or not math.isfinite(logit_scale) or logit_scale <= 0
    ):
        raise ValueError(f"logit_scale: expected a positive number or None, got {logit_scale!r}")
    with torch.no_grad():  # labels are discrete: no graph is needed
        if refine in ("lposs", "lposs+"):
            scores = lposs_scores(explainer, images, names, refine_backbone, window,
                                  feature_surgery)
        elif window is None:
            scores = explainer.similarity(images, names, feature_surgery)
        else:
            scores = sliding_window_scores(
                explainer, images, window[0], window[1], names, feature_surgery
            )
    in_size = (images.shape[-2], images.shape[-1])
    target = size if size is not None else in_size
    scale = math.nan
    if threshold is not None:
        scale = (
            float(explainer.adapter.logit_scale().detach().float())
            if logit_scale is None else float(logit_scale)
        )
    labels = []
    for b in range(scores.shape[0]):  # one image at a time bounds the [K, H, W] memory
        if refine == "lposs+":  # the pixel graph at the input's size, then the resize
            rgb = _unnormalised(explainer, images[b : b + 1])
            up = upsample(lposs_plus(rgb.to(scores.device), scores[b : b + 1]), target)
        elif window is None and refine != "lposs":
            # token grid over the padded input: cut the padding, then resize
            grid = (int(scores.shape[-2]), int(scores.shape[-1]))
            up = upsample(scores[b : b + 1], target, explainer.token_extent(grid, in_size))
        else:  # the canvas already covers the image's pixels
            up = upsample(scores[b : b + 1], target)
        if iterations:
            image = F.interpolate(images[b : b + 1].detach().float().to(up.device), size=target,
                                  mode="bilinear", align_corners=False)
            up = _pamr(image, up, iterations, tuple(pamr_dilations))
        up = up[0]
        best = up.argmax(dim=0)
        if threshold is not None:
            confidence = torch.softmax(scale * up, dim=0).amax(dim=0)
            best = torch.where(confidence < threshold, torch.full_like(best, bg), best)
        labels.append(best)
    return torch.stack(labels).to(images.device)
