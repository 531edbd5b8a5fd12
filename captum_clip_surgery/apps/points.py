r"""Text to point prompts for Segment Anything (``docs/method.md`` §8), and the SAM call."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from captum_clip_surgery._validation import check_unit_interval
from captum_clip_surgery.apps.multilabel import text_probabilities
from captum_clip_surgery.core.maps import minmax_normalize, upsample
from captum_clip_surgery.core.text import validate_texts
from captum_clip_surgery.methods.base import FeatureSurgery, TokenMapAttribution

__all__ = ["PointPrompts", "build_sam_predictor", "segment_with_sam", "text_to_points"]

_SAM_HINT = "pip install captum-clip-surgery[sam]"


@dataclass
class PointPrompts:
    r"""Point prompts for one text and one image.

    Attributes:
        text (str): the text, as given (e.g. ``"person+bench"``).
        points (Tensor): ``[n, 2]`` float32 ``(x, y)`` pixel coordinates in the
            image of ``image_size`` (SAM's ``point_coords`` convention).
        labels (Tensor): ``[n]`` long, 1 for a positive (foreground) point, 0 for
            a negative one; positives come first.
        present (bool): ``False`` when the existence gate judged the text (every
            part of it) absent; ``points`` is then empty.
    """

    text: str
    points: Tensor
    labels: Tensor
    present: bool = True

    def __len__(self) -> int:
        return int(self.points.shape[0])

    @property
    def positive(self) -> Tensor:
        r"""``[n_pos, 2]`` positive points."""
        return self.points[self.labels == 1]

    @property
    def negative(self) -> Tensor:
        r"""``[n_neg, 2]`` negative points."""
        return self.points[self.labels == 0]

    def numpy(self) -> Tuple[np.ndarray, np.ndarray]:
        r"""``(point_coords float32 [n, 2], point_labels int64 [n])`` for ``SamPredictor.predict``."""
        return self.points.cpu().numpy().astype(np.float32), self.labels.cpu().numpy()


def _cells(grid_map: Tensor, downsample: int) -> Tensor:
    r"""Bilinear downsample by ``downsample`` (at least one cell per side), then min-max."""
    h, w = grid_map.shape
    size = (max(1, h // downsample), max(1, w // downsample))
    small = upsample(grid_map[None, None].float(), size)
    return minmax_normalize(small)[0, 0]


def _count(cells: Tensor, threshold: float) -> int:
    r"""``n = min(#cells >= threshold, #cells // 2)``."""
    return min(int((cells >= threshold).sum()), cells.numel() // 2)


def _centres(
    index: Tensor,
    grid: Tuple[int, int],
    size: Tuple[int, int],
    round_to_pixels: bool,
    extent: Tuple[float, float] = (1.0, 1.0),
) -> Tensor:
    r"""Cell centres ``(x, y)`` of flat cell indices, scaled to an ``H×W`` image.

    ``extent`` is the fraction of the grid's span the image covers (less than one
    when the input was padded to a multiple of the patch); a centre that falls in
    the padding is moved onto the image's last pixel centre.
    """
    gh, gw = grid
    height, width = size
    fy, fx = extent
    x = (index % gw).double().add(0.5).mul(width / (gw * fx))
    y = (index // gw).double().add(0.5).mul(height / (gh * fy))
    if fx < 1:
        x = x.clamp(max=width - 0.5)
    if fy < 1:
        y = y.clamp(max=height - 0.5)
    if round_to_pixels:  # the release: clamp to the last pixel and truncate to ints
        x = x.clamp(max=width - 1).floor()
        y = y.clamp(max=height - 1).floor()
    return torch.stack([x, y], dim=-1).float()


def _image_sizes(image_size: Any, batch: int, default: Tuple[int, int]) -> List[Tuple[int, int]]:
    def pair(item: Any) -> Optional[Tuple[int, int]]:
        if isinstance(item, (tuple, list, torch.Size)) and len(item) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in item
        ):
            return (int(item[0]), int(item[1]))
        return None

    if image_size is None:
        return [default] * batch
    one = pair(image_size)
    if one is not None:
        return [one] * batch
    if isinstance(image_size, (list, tuple)) and len(image_size) == batch:
        sizes = [pair(item) for item in image_size]
        if all(s is not None for s in sizes):
            return sizes  # type: ignore[return-value]
    raise ValueError(
        f"image_size: expected one (height, width) pair of positive ints or one pair per image "
        f"({batch}), got {image_size!r}"
    )


def _parts(texts: List[str], separator: str) -> List[List[str]]:
    out = []
    for text in texts:
        parts = [p.strip() for p in text.split(separator)]
        if not all(parts):
            raise ValueError(
                f"texts: {text!r} has an empty part around {separator!r}; expected e.g. "
                f"'person{separator}bench'"
            )
        out.append(list(dict.fromkeys(parts)))
    return out


def text_to_points(
    explainer: TokenMapAttribution,
    images: Tensor,
    texts: Sequence[str],
    class_set: Optional[Sequence[str]] = None,
    feature_surgery: Optional[FeatureSurgery] = None,
    downsample: int = 2,
    threshold: float = 0.8,
    gate: Union[bool, float] = False,
    image_size: Optional[Union[Tuple[int, int], Sequence[Tuple[int, int]]]] = None,
    separator: str = "+",
    round_to_pixels: bool = False,
) -> List[List[PointPrompts]]:
    r"""Turn texts into positive and negative point prompts (``docs/method.md`` §8).

    For one text and one image, the text's token-grid scores ``[h, w]`` (the
    explainer's :meth:`~TokenMapAttribution.similarity`, before normalisation)
    are

    1. downsampled bilinearly to ``(h // downsample, w // downsample)`` cells
       (``align_corners=False``, at least one cell per side; by 2 this is the
       mean of each 2×2 block on even grids),
    2. min-max normalised over the cells and sorted,
    3. ``n = min(#cells >= threshold, #cells // 2)``;
    4. the ``n`` highest cells are positive points (label 1, highest first), the
       ``n`` lowest negative points (label 0, lowest first);
    5. each point is its cell's centre, ``x = (col + 0.5) · W / w'``,
       ``y = (row + 0.5) · H / h'`` for an ``H×W`` image of ``image_size``
       (for an input padded to a multiple of the patch, the grid's span is the
       padded input: centres are placed on that span and those in the padding
       moved onto the last pixel centre).

    This is the release's ``similarity_map_to_points`` except that the centres
    are kept as floats (``round_to_pixels=True`` clamps them to the last pixel
    and truncates them to whole pixels like the release), ties are broken by a
    stable sort, and any grid shape is allowed. A map without contrast (constant)
    or with fewer than two cells gives no points.

    Several texts joined by ``separator`` (``"person+bench"``), as in the
    release's demo: positives from each part's own map (each with its own
    ``n``), negatives from the mean of the parts' min-max normalised token maps
    (with the ``n`` of that mean map). Duplicated cells are kept.

    Existence gate: min-max maps always have a peak, even for an absent object.
    With ``gate``, the unmodified model's probabilities over the class set,
    ``softmax(logit_scale · cos(image embedding, e_t))``, are checked first
    (:func:`text_presence`): parts below the gate are dropped; a text whose
    parts are all dropped gets **no points at all** (empty ``points`` and
    ``labels``, ``present=False``), so it can be skipped instead of prompting
    SAM with spurious foreground.

    The maps are computed against the class set: ``class_set`` (default the
    explainer's classifier texts) followed by every part not in it. Class-set
    feature surgery (the CLIP Surgery default with >= 2 texts) and the gate
    depend on that set, as in the release (maps from the full label set);
    ``feature_surgery="empty"`` makes each map independent of the set.

    Args:
        explainer (TokenMapAttribution): e.g. :class:`CLIPSurgeryAttribution`.
        images (Tensor): preprocessed images ``[B, 3, H, W]``.
        texts (list[str]): texts to locate, one :class:`PointPrompts` each.
        class_set (list[str], optional): the label set; see above.
        feature_surgery (str or Tensor, optional): see
            :meth:`~TokenMapAttribution.similarity`; default the explainer's.
        downsample (int): downsampling factor of the token grid (2 in the release).
        threshold (float): normalised score in ``[0, 1]`` a cell needs to count
            (0.8 in the release).
        gate (bool or float): ``False`` (default, the release): no gate;
            ``True``: probability ``1 / len(set)`` (lenient with large sets); a
            float in ``[0, 1]``: that probability.
        image_size (tuple or list of tuples, optional): ``(H, W)`` of the
            image(s) SAM will see (the original image, before CLIP's resize);
            one pair for all or one per image. Default the input's ``H×W``.
        separator (str): joins the parts of a combined text.
        round_to_pixels (bool): clamp and truncate coordinates like the release.

    Returns:
        list[list[PointPrompts]]: ``[image][text]``.

    Examples::

        >>> explainer = CLIPSurgeryAttribution(model, texts=all_class_names)
        >>> prompts = text_to_points(explainer, images, ["bench", "person+bench"],
        ...                          gate=0.05, image_size=(480, 640))
        >>> p = prompts[0][0]                 # image 0, "bench"
        >>> p.labels                          # n positives first, then n negatives
        tensor([1, 1, 1, 0, 0, 0])
        >>> p.points[0]                       # (x, y) in pixels of the 480x640 image
        tensor([320.0000, 171.4286])
    """
    if not isinstance(explainer, TokenMapAttribution):
        raise TypeError(
            "explainer: expected a token-map attribution (CLIPSurgeryAttribution, "
            f"CLIPSimilarityMap, MaskCLIPAttribution), got {type(explainer).__name__}"
        )
    texts_ = validate_texts(texts)
    if not isinstance(separator, str) or not separator:
        raise ValueError(f"separator: expected a non-empty string, got {separator!r}")
    parts = _parts(texts_, separator)
    if isinstance(downsample, bool) or not isinstance(downsample, int):
        raise TypeError(f"downsample: expected an int >= 1, got {type(downsample).__name__}")
    if downsample < 1:
        raise ValueError(f"downsample: expected an int >= 1, got {downsample}")
    thr = check_unit_interval("threshold", threshold)
    if gate is False or gate is None:
        gate_thr: Optional[float] = None
    elif gate is True:
        gate_thr = -1.0  # resolved to 1 / len(set) below
    else:
        gate_thr = check_unit_interval("gate", gate)
    base = list(explainer.classifier.texts) if class_set is None else validate_texts(
        class_set, "class_set"
    )
    all_texts = list(dict.fromkeys(base + [p for ps in parts for p in ps]))
    if gate_thr is not None and len(all_texts) < 2:
        raise ValueError(
            "gate: the existence gate is a softmax over the class set, which here holds one "
            "text (always probability 1); give class_set= with the other labels"
        )

    with torch.no_grad():  # points are discrete: no graph is needed
        scores = explainer.similarity(images, all_texts, feature_surgery).cpu()
    b = scores.shape[0]
    sizes = _image_sizes(image_size, b, (images.shape[-2], images.shape[-1]))
    extent = explainer.token_extent(tuple(scores.shape[-2:]),
                                    (images.shape[-2], images.shape[-1]))
    present = torch.ones(b, len(all_texts), dtype=torch.bool)
    if gate_thr is not None:
        with torch.no_grad():
            probs = text_probabilities(explainer.classifier, images, all_texts).cpu()
        present = probs >= (1.0 / len(all_texts) if gate_thr < 0 else gate_thr)
    index = {t: i for i, t in enumerate(all_texts)}

    out: List[List[PointPrompts]] = []
    for i in range(b):
        row = []
        for text, text_parts in zip(texts_, parts):
            kept = [index[p] for p in text_parts if bool(present[i, index[p]])]
            row.append(_prompts(text, scores[i], kept, downsample, thr, sizes[i], round_to_pixels,
                                extent))
        out.append(row)
    return out


def _prompts(
    text: str,
    scores: Tensor,
    kept: List[int],
    downsample: int,
    threshold: float,
    size: Tuple[int, int],
    round_to_pixels: bool,
    extent: Tuple[float, float] = (1.0, 1.0),
) -> PointPrompts:
    if not kept:
        return PointPrompts(text, torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), False)
    points, labels = [], []
    for t in kept:  # positives: each part's own highest cells
        cells = _cells(scores[t], downsample)
        n = _count(cells, threshold)
        rank = torch.argsort(cells.flatten(), stable=True)
        top = rank[rank.numel() - n :].flip(0)
        points.append(_centres(top, tuple(cells.shape), size, round_to_pixels, extent))
        labels.append(torch.ones(n, dtype=torch.long))
    if len(kept) == 1:
        negative_map = scores[kept[0]]
    else:  # negatives: the mean of the parts' normalised maps
        negative_map = minmax_normalize(scores[kept].unsqueeze(0))[0].mean(dim=0)
    cells = _cells(negative_map, downsample)
    n = _count(cells, threshold)
    low = torch.argsort(cells.flatten(), stable=True)[:n]
    points.append(_centres(low, tuple(cells.shape), size, round_to_pixels, extent))
    labels.append(torch.zeros(n, dtype=torch.long))
    return PointPrompts(text, torch.cat(points), torch.cat(labels), True)


def _require_segment_anything() -> Any:
    try:
        import segment_anything
    except ImportError as exc:
        raise ImportError(
            f"segment_anything is not installed; install it with `{_SAM_HINT}` "
            "(Meta's segment-anything package)"
        ) from exc
    return segment_anything


def _sam_model(checkpoint: Any, model_type: str) -> Tuple[Any, Any]:
    r"""``(segment_anything, SAM)`` with the checkpoint's weights, read without running code
    (safetensors or ``torch.load(weights_only=True)``) before the model is built."""
    from captum_clip_surgery.adapters.backbone_loading import _read_state_dict

    sa = _require_segment_anything()
    registry = sa.sam_model_registry
    if model_type not in registry:
        raise ValueError(
            f"model_type: expected one of {sorted(registry)}, got {model_type!r}"
        )
    state = _read_state_dict(os.fspath(checkpoint), "checkpoint")
    sam = registry[model_type]()  # built empty: segment-anything's own load unpickles
    sam.load_state_dict(state)
    return sa, sam


def build_sam_predictor(
    checkpoint: str, model_type: str = "vit_b", device: Union[str, torch.device, None] = None
) -> Any:
    r"""A ``segment_anything.SamPredictor`` for a released SAM checkpoint.

    Checkpoints (Meta, Apache-2.0): ``sam_vit_b_01ec64.pth`` (``"vit_b"``, 375 MB),
    ``sam_vit_l_0b3195.pth`` (``"vit_l"``), ``sam_vit_h_4b8939.pth`` (``"vit_h"``,
    the one the CLIP Surgery demo uses), from
    ``https://dl.fbaipublicfiles.com/segment_anything/``. They are read as
    safetensors or with ``torch.load(weights_only=True)``, never running code from the
    file.

    Args:
        checkpoint (str): path of the ``.pth`` file.
        model_type (str): ``"vit_b"``, ``"vit_l"`` or ``"vit_h"``.
        device (str or torch.device, optional): where to run SAM (default CPU).

    Returns:
        segment_anything.SamPredictor: the predictor (model in eval mode).

    Raises:
        ImportError: when ``segment_anything`` is not installed
            (``pip install captum-clip-surgery[sam]``).

    Examples::

        >>> predictor = build_sam_predictor("sam_vit_b_01ec64.pth", "vit_b", device="cuda")
    """
    sa, sam = _sam_model(checkpoint, model_type)
    if device is not None:
        sam.to(device=device)
    return sa.SamPredictor(sam.eval())


def _as_hwc_uint8(image: Any) -> np.ndarray:
    if isinstance(image, Tensor):
        image = image.detach().cpu()
        if image.ndim == 3 and image.shape[0] == 3 and image.shape[-1] != 3:
            image = image.permute(1, 2, 0)
        image = image.numpy()
    elif not isinstance(image, np.ndarray):
        if hasattr(image, "convert"):  # PIL
            image = np.asarray(image.convert("RGB"))
        else:
            raise TypeError(
                "image: expected an RGB image (H×W×3 uint8 array, uint8 tensor or PIL image), "
                f"got {type(image).__name__}"
            )
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(
            "image: expected an H×W×3 uint8 RGB image (SAM's set_image format), got "
            f"shape {list(image.shape)} dtype {image.dtype}"
        )
    return np.ascontiguousarray(image)


def segment_with_sam(
    predictor: Any,
    image: Any,
    points: Union[PointPrompts, Tensor, np.ndarray],
    labels: Optional[Union[Tensor, np.ndarray]] = None,
    multimask_output: bool = True,
) -> Tuple[Tensor, float]:
    r"""Prompt Segment Anything with points; keep the mask SAM scores best.

    Calls ``predictor.set_image(image)`` (skipped when ``image`` is ``None``, to
    reuse the image already set, e.g. for several texts), then
    ``predictor.predict(point_coords, point_labels, multimask_output)`` and
    returns the mask with the highest predicted IoU score, as in the CLIP
    Surgery demo.

    Args:
        predictor (segment_anything.SamPredictor): e.g. from
            :func:`build_sam_predictor` or
            ``SamPredictor(sam_model_registry["vit_b"](checkpoint="sam_vit_b_01ec64.pth"))``.
            Any object with the same ``set_image`` / ``predict`` methods works.
        image (np.ndarray, Tensor, PIL.Image or None): the RGB image, ``H×W×3``
            uint8 (a ``[3, H, W]`` uint8 tensor is accepted too); ``None`` uses
            the predictor's current image.
        points (PointPrompts, Tensor or np.ndarray): a :class:`PointPrompts`
            (then ``labels`` must be omitted) or ``[n, 2]`` ``(x, y)`` pixels
            inside the image.
        labels (Tensor or np.ndarray, optional): ``[n]`` labels, 1 foreground /
            0 background.
        multimask_output (bool): ask SAM for its 3 candidate masks (default, as
            in the demo) or a single one.

    Returns:
        tuple[Tensor, float]: the ``[H, W]`` bool mask and its predicted score.
        With no points (e.g. a text the gate judged absent) SAM is not called:
        an all-``False`` mask and score 0.0.

    Examples::

        >>> prompts = text_to_points(explainer, images, ["dog"], image_size=pil.size[::-1])
        >>> mask, score = segment_with_sam(predictor, pil, prompts[0][0])
    """
    if not (callable(getattr(predictor, "set_image", None)) and callable(
        getattr(predictor, "predict", None)
    )):
        raise TypeError(
            "predictor: expected a segment_anything.SamPredictor (with set_image and predict; "
            f"`{_SAM_HINT}`), got {type(predictor).__name__}"
        )
    if isinstance(points, PointPrompts):
        if labels is not None:
            raise ValueError("labels: omit labels when points is a PointPrompts (it has its own)")
        coords, point_labels = points.numpy()
    else:
        if labels is None:
            raise ValueError("labels: required with a points array ([n] of 1 / 0)")
        coords = (points.detach().cpu().numpy() if isinstance(points, Tensor)
                  else np.asarray(points)).astype(np.float32)
        point_labels = (labels.detach().cpu().numpy() if isinstance(labels, Tensor)
                        else np.asarray(labels)).astype(np.int64)
    if coords.ndim != 2 or coords.shape[-1] != 2:
        raise ValueError(f"points: expected shape [n, 2] (x, y), got {list(coords.shape)}")
    if point_labels.shape != (coords.shape[0],):
        raise ValueError(
            f"labels: expected shape [{coords.shape[0]}] (one per point), got "
            f"{list(point_labels.shape)}"
        )
    if not np.isin(point_labels, (0, 1)).all():
        raise ValueError(f"labels: expected 0 (background) or 1 (foreground), got {point_labels}")
    if image is None:
        if not getattr(predictor, "is_image_set", True):
            raise ValueError("image: required, the predictor has no image set yet")
        height, width = (int(v) for v in predictor.original_size)
    else:
        array = _as_hwc_uint8(image)
        height, width = array.shape[:2]
        predictor.set_image(array)
    if coords.shape[0] == 0:
        return torch.zeros(height, width, dtype=torch.bool), 0.0
    inside = (coords[:, 0] >= 0) & (coords[:, 0] < width) & (coords[:, 1] >= 0) & (
        coords[:, 1] < height
    )
    if not inside.all():
        raise ValueError(
            f"points: {int((~inside).sum())} point(s) fall outside the {height}x{width} image; "
            "pass image_size=(H, W) of this image to text_to_points"
        )
    masks, scores, _ = predictor.predict(
        point_coords=coords, point_labels=point_labels, multimask_output=multimask_output
    )
    best = int(np.argmax(scores))
    return torch.as_tensor(np.asarray(masks[best])).bool(), float(scores[best])
