r"""The protocol's inference, with the windows of several images in one forward.

For each image (already resized and normalised as the protocol reads it):

1. **Windows** (mmsegmentation's slide rule, :func:`~captum_clip_surgery.apps.segmentation.window_spans`):
   ``crop × crop`` windows every ``stride`` pixels, the last one flush with the border;
   an image smaller than the window is one smaller window. ``crop = 0``: the whole image.
2. **Forward**: every window of every image of the batch with the same size goes into
   one forward of the method's :meth:`~captum_clip_surgery.methods.base.TokenMapAttribution.similarity`.
   Padding follows the preset: none (the patch convolution drops a window's tail that
   is not a multiple of the patch, and the token grid is stretched over the whole
   window: SCLIP, NACLIP), symmetric zero padding to a multiple of the patch (ClearCLIP)
   or of 56 pixels (ProxyCLIP), cut back after the upsampling.
3. The cosines of each window are upsampled bilinearly (``align_corners=False``) to the
   window, summed on a canvas and divided by the **count** of windows covering each
   pixel, then resized bilinearly to the image's **original** size (without a window:
   the token grid straight to the original size, or through the input size, as the
   preset says).
4. Optional **PAMR** on the cosines, guided by the normalised input resized to the
   original size.
5. ``× logit_scale``, softmax over **all queries**, a class's probability is the
   **max over its synonyms**, SCLIP's ``area_thd``, argmax, and pixels whose best class
   probability is below ``prob_thd`` become class 0. A pixel whose cosines are NaN
   (ProxyCLIP's ``empty_rows="nan"``, the release's attention, spreads a window's NaN
   through the resizes) has NaN probabilities and is labelled 0, as the release's
   ``argmax`` labels it; NaN is never below ``prob_thd``.

That is the order of SCLIP's, NACLIP's, ClearCLIP's and ProxyCLIP's ``predict``; every
tensor operation is the one they run, in the same order per pixel, so that the labels
are the same.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_clip_surgery.apps.label_propagation import lposs_plus, lposs_scores
from captum_clip_surgery.apps.mask_refinement import pamr
from captum_clip_surgery.apps.segmentation import window_spans
from captum_clip_surgery.benchmark.presets import ProtocolSettings
from captum_clip_surgery.methods.base import FeatureSurgery, TokenMapAttribution

__all__ = ["ProtocolSegmenter", "Window", "default_window_batch", "plan_windows", "postprocess"]


def default_window_batch(device: Any) -> int:
    r"""Windows per forward when none is given: 8 on the CPU, 64 elsewhere.

    On a CPU a ViT forward of 6 to 8 windows is the fastest per window
    (``benchmarks/bench_benchmark.py`` prints the plain forward at 1, 8 and 48 windows per
    call): larger batches leave the caches (a 224-px ViT-B/16 forward of 48 windows holds
    90 MB of attention per block) and run slower per window. A GPU gains from large ones.

    Args:
        device (torch.device or str): where the model runs.

    Returns:
        int: the number of windows per forward.
    """
    return 8 if torch.device(device).type == "cpu" else 64


@dataclass(frozen=True)
class Window:
    r"""One forward input: the window ``[y0:y1, x0:x1]`` of the resized image and the
    zero padding ``(left, right, top, bottom)`` added around it."""

    y0: int
    y1: int
    x0: int
    x1: int
    pad: Tuple[int, int, int, int] = (0, 0, 0, 0)

    @property
    def input_size(self) -> Tuple[int, int]:
        r"""The padded window's ``(height, width)``."""
        left, right, top, bottom = self.pad
        return self.y1 - self.y0 + top + bottom, self.x1 - self.x0 + left + right


def _symmetric_pad(h: int, w: int, multiple: int) -> Tuple[int, int, int, int]:
    r"""ClearCLIP's / ProxyCLIP's ``compute_padsize``: ``(left, right, top, bottom)``
    to the next multiple, the smaller half first."""
    lr = (multiple - w % multiple) % multiple
    tb = (multiple - h % multiple) % multiple
    return lr // 2, lr - lr // 2, tb // 2, tb - tb // 2


def plan_windows(
    size: Tuple[int, int], crop: int, stride: int, padding: Any, patch: int
) -> List[Window]:
    r"""The windows of an image of ``size`` under a preset, in the releases' order
    (rows, then columns).

    Args:
        size (tuple[int, int]): the resized image's ``(h, w)``.
        crop (int): window size (``0``: the whole image, never padded).
        stride (int): window stride.
        padding (None, "patch" or int): see :class:`~captum_clip_surgery.benchmark.Preset`.
        patch (int): the model's patch size.

    Returns:
        list[Window]: the windows.
    """
    h, w = size
    if crop == 0:
        return [Window(0, h, 0, w)]
    multiple = patch if padding == "patch" else padding
    out = []
    for y0, y1 in window_spans(h, crop, stride):
        for x0, x1 in window_spans(w, crop, stride):
            pad = (0, 0, 0, 0) if multiple is None else _symmetric_pad(y1 - y0, x1 - x0, multiple)
            out.append(Window(y0, y1, x0, x1, pad))
    return out


def postprocess(
    cosines: Tensor,
    query_class: Tensor,
    num_classes: int,
    logit_scale: float,
    prob_thd: float = 0.0,
    area_thd: Optional[float] = None,
) -> Tuple[Tensor, Tensor]:
    r"""Labels from the cosines of every query at the original size (step 5).

    Args:
        cosines (Tensor): ``[Q, H, W]`` float32.
        query_class (Tensor): ``[Q]`` the class of each query (sorted, ``0..C-1``).
        num_classes (int): ``C``.
        logit_scale (float): the scale before the softmax.
        prob_thd (float): the background threshold (pixels below → class 0).
        area_thd (float, optional): SCLIP's area rule.

    Returns:
        tuple[Tensor, Tensor]: ``[H, W]`` long labels and ``[C, H, W]`` class probabilities
        (after the area rule). A pixel whose probabilities are all NaN (NaN cosines) is
        labelled 0, as the releases' ``argmax`` labels it.
    """
    probs = (cosines * logit_scale).softmax(0)
    if num_classes != probs.shape[0]:
        index = query_class.to(probs.device).view(-1, *([1] * (probs.ndim - 1)))
        probs = probs.new_zeros((num_classes,) + tuple(probs.shape[1:])).scatter_reduce_(
            0, index.expand_as(probs), probs, "amax", include_self=True)  # probs are >= 0
    # ``max`` gives the release's ``argmax`` (the first of equal values) and ``max`` in one
    # pass over the probabilities
    top, labels = probs.max(0)
    if area_thd is not None:
        area = torch.bincount(labels.flatten(), minlength=num_classes)[1:].to(probs.dtype)
        keep = area > area_thd * area.sum()
        if not bool(keep.all()):
            probs[1:] *= keep.to(probs.dtype)[:, None, None]
            # a class that is no pixel's best changes no pixel's best or its value when
            # set to 0 (probabilities sum to 1, so every best is above 0): recompute only
            # when a class that is somewhere the best was dropped
            if bool(((~keep) & (area > 0)).any()):
                top, labels = probs.max(0)
    labels[top < prob_thd] = 0  # NaN is below nothing, as in the release
    missing = top.isnan()  # NaN cosines: every probability is NaN (a softmax of a NaN)
    if bool(missing.any()):  # the release (argmax on the CPU: the first NaN) says 0; so on every device
        labels[missing & probs.isnan().all(0)] = 0
    return labels, probs


class ProtocolSegmenter:
    r"""Labels of a token-map method under a protocol, many images per forward.

    Args:
        method (TokenMapAttribution): any token-map method (its classifier's templates
            encode the queries).
        classes (list[list[str]]): per class, its queries (a class-name file's lines).
        settings (ProtocolSettings): the protocol (:meth:`Preset.settings`).
        feature_surgery (str or Tensor, optional): passed to ``similarity`` (default
            the method's own).
        window_batch (int, optional): at most this many windows per forward (default
            :func:`default_window_batch` of the model's device: 8 on the CPU, 64 elsewhere).
        refine_backbone (optional): the graph backbone of ``settings.refine`` (LPOSS);
            default the method's own second backbone, else the model's image tower.

    Examples::

        >>> seg = ProtocolSegmenter(build_method("sclip", clf), [["dog"], ["cat"]],
        ...                         get_preset("sclip").settings("voc20"))
        >>> labels = seg.predict([image], [(375, 500)])  # image: [3, 336, 448]
    """

    def __init__(
        self,
        method: TokenMapAttribution,
        classes: Sequence[Sequence[str]],
        settings: ProtocolSettings,
        feature_surgery: Optional[FeatureSurgery] = None,
        window_batch: Optional[int] = None,
        refine_backbone: Any = None,
    ) -> None:
        if not isinstance(method, TokenMapAttribution):
            raise TypeError(
                "method: expected a token-map attribution (map kind 'token' in the registry), "
                f"got {type(method).__name__}"
            )
        if not isinstance(settings, ProtocolSettings):
            raise TypeError(f"settings: expected ProtocolSettings, got {type(settings).__name__}")
        if window_batch is None:
            window_batch = default_window_batch(method.adapter.device)
        if isinstance(window_batch, bool) or not isinstance(window_batch, int) or window_batch < 1:
            raise ValueError(f"window_batch: expected a positive int, got {window_batch!r}")
        self.method = method
        self.settings = settings
        self.queries = [q for line in classes for q in line]
        if not self.queries:
            raise ValueError("classes: expected at least one class")
        self.query_class = torch.tensor([c for c, line in enumerate(classes) for _ in line])
        self.num_classes = len(classes)
        self.feature_surgery = feature_surgery
        self.window_batch = window_batch
        if refine_backbone is not None and settings.refine is None:
            raise ValueError(
                "refine_backbone: only the LPOSS refinement reads a graph backbone; set "
                "refine='lposs' or 'lposs+' in the settings"
            )
        self.refine_backbone = refine_backbone
        patch = method.adapter.image.patch_size
        self.patch = int(patch[0]) if isinstance(patch, (tuple, list)) else int(patch)

    @property
    def reads_whole_image(self) -> bool:
        r"""Whether the method scores a window with the whole image in view (it overrides
        :meth:`~captum_clip_surgery.methods.base.TokenMapAttribution.sliding_windows`, as
        CASS does); its windows then go one image per forward, inside that context, as
        :func:`~captum_clip_surgery.sliding_window_scores` runs them."""
        return type(self.method).sliding_windows is not TokenMapAttribution.sliding_windows

    @property
    def device(self) -> torch.device:
        r"""The model's device."""
        return self.method.adapter.device

    def windows(self, size: Tuple[int, int]) -> List[Window]:
        r"""The windows of a resized image (see :func:`plan_windows`)."""
        s = self.settings
        return plan_windows(size, s.crop, s.stride, s.padding, self.patch)

    def _forward(self, batch: Tensor) -> Tensor:
        r"""Cosines ``[n, Q, h // p, w // p]`` of a batch of (padded) windows: the tail
        that is not a multiple of the patch is dropped, as the patch convolution does."""
        p = self.patch
        h, w = batch.shape[-2:]
        if h < p or w < p:
            raise ValueError(
                f"images: a window of {h}x{w} pixels is smaller than one patch ({p}); "
                "use a larger short_side or crop"
            )
        batch = batch[..., : h - h % p, : w - w % p]
        with torch.no_grad():
            return self.method.similarity(batch, self.queries, self.feature_surgery)

    def cosines(self, images: Sequence[Tensor], sizes: Sequence[Tuple[int, int]]) -> List[Tensor]:
        r"""Steps 1-4: the cosines of every query at each image's original size.

        Args:
            images (list[Tensor]): resized, normalised images ``[3, h, w]`` (any sizes).
            sizes (list[tuple[int, int]]): each image's original ``(H, W)``.

        Returns:
            list[Tensor]: ``[Q, H, W]`` float32 per image, on the model's device.
        """
        s = self.settings
        device = self.device
        images = [im.to(device=device, dtype=torch.float32) for im in images]
        if s.refine is not None:  # LPOSS: one graph over all windows of an image
            return [self._propagated(im, size) for im, size in zip(images, sizes)]
        plans = [self.windows((im.shape[-2], im.shape[-1])) for im in images]
        whole = s.crop == 0
        # every window of one image has the same size: group by it, images in order. A
        # method that reads the whole image while scoring its windows (CASS: its
        # ``sliding_windows`` context) gets the windows of one image per forward, inside
        # that image's context
        per_image = not whole and self.reads_whole_image
        groups: Dict[Tuple[int, int, int], List[Tuple[int, int]]] = {}
        for i, plan in enumerate(plans):
            for k, win in enumerate(plan):
                groups.setdefault(win.input_size + (i if per_image else -1,), []).append((i, k))
        q = len(self.queries)
        canvas: List[Optional[Tensor]] = [None] * len(images)
        count: List[Optional[Tensor]] = [None] * len(images)
        out: List[Optional[Tensor]] = [None] * len(images)
        for (hi, wi, owner), members in groups.items():
            for start in range(0, len(members), self.window_batch):
                chunk = members[start : start + self.window_batch]
                crops = []
                for i, k in chunk:
                    win = plans[i][k]
                    crop = images[i][:, win.y0 : win.y1, win.x0 : win.x1]
                    crops.append(F.pad(crop, win.pad) if any(win.pad) else crop)
                with (self.method.sliding_windows(images[owner][None]) if owner >= 0
                      else contextlib.nullcontext()):
                    grid = self._forward(torch.stack(crops))
                for n, (i, k) in enumerate(chunk):  # one window at a time bounds the memory
                    cell = grid[n : n + 1]
                    if whole and s.whole_image_resize == "direct":
                        out[i] = F.interpolate(cell, size=tuple(sizes[i]), mode="bilinear",
                                               align_corners=False)[0]
                        continue
                    up = F.interpolate(cell, size=(hi, wi), mode="bilinear",
                                       align_corners=False)[0]
                    if whole:  # twice: the input size, then the original size
                        out[i] = F.interpolate(up[None], size=tuple(sizes[i]), mode="bilinear",
                                               align_corners=False)[0]
                        continue
                    win = plans[i][k]
                    left, _, top, _ = win.pad
                    hc, wc = win.y1 - win.y0, win.x1 - win.x0
                    if canvas[i] is None:
                        h, w = images[i].shape[-2:]
                        canvas[i] = torch.zeros(q, h, w, device=device)
                        count[i] = torch.zeros(1, h, w, device=device)
                    canvas[i][:, win.y0 : win.y1, win.x0 : win.x1] += up[:, top : top + hc,
                                                                         left : left + wc]
                    count[i][:, win.y0 : win.y1, win.x0 : win.x1] += 1
                del grid
        results = []
        for i in range(len(images)):
            if not whole:
                mean = canvas[i].div_(count[i])  # type: ignore[union-attr]
                canvas[i] = count[i] = None
                out[i] = F.interpolate(mean[None], size=tuple(sizes[i]), mode="bilinear",
                                       align_corners=False)[0]
            cos = out[i]
            assert cos is not None
            if s.pamr_steps and (not whole or s.pamr_without_window):
                guide = F.interpolate(images[i][None], size=tuple(sizes[i]), mode="bilinear",
                                      align_corners=False)
                cos = pamr(guide, cos[None], s.pamr_steps, s.pamr_dilations)[0]
            results.append(cos)
            out[i] = None
        return results

    def _propagated(self, image: Tensor, size: Tuple[int, int]) -> Tensor:
        r"""LPOSS / LPOSS+ scores ``[Q, H, W]`` of one resized image at its original size:
        the windows' scores joined in one patch graph of the refinement backbone
        (:func:`~captum_clip_surgery.apps.label_propagation.lposs_scores`; the windows as
        that function cuts them, PAMR not applied), then, for ``"lposs+"``, the pixel graph
        on the image's colours (un-normalised with the preset's statistics), then the
        bilinear resize to the original size."""
        s = self.settings
        window = None if s.crop == 0 else (s.crop, s.stride)
        surgery = (self.method.default_feature_surgery if self.feature_surgery is None
                   else self.feature_surgery)
        with torch.no_grad():
            scores = lposs_scores(self.method, image[None], self.queries, self.refine_backbone,
                                  window, surgery)
            if s.refine == "lposs+":
                mean = torch.tensor(s.mean, device=image.device).view(1, 3, 1, 1) / 255.0
                std = torch.tensor(s.std, device=image.device).view(1, 3, 1, 1) / 255.0
                rgb = (image[None] * std + mean).clamp(0, 1)
                scores = lposs_plus(rgb, scores)
        return F.interpolate(scores, size=tuple(size), mode="bilinear", align_corners=False)[0]

    def predict(
        self, images: Sequence[Tensor], sizes: Sequence[Tuple[int, int]],
        return_probs: bool = False,
    ) -> List[Any]:
        r"""Labels ``[H, W]`` (long) per image at its original size.

        Args:
            images (list[Tensor]): resized, normalised images ``[3, h, w]``.
            sizes (list[tuple[int, int]]): each image's original ``(H, W)``.
            return_probs (bool): also return the class probabilities ``[C, H, W]``.

        Returns:
            list: per image its labels (or ``(labels, probs)``).
        """
        if len(images) != len(sizes):
            raise ValueError(f"sizes: expected one size per image ({len(images)}), got {len(sizes)}")
        s = self.settings
        results: List[Any] = []
        for cos in self.cosines(images, sizes):
            labels, probs = postprocess(cos, self.query_class, self.num_classes, s.logit_scale,
                                        s.prob_thd, s.area_thd)
            results.append((labels, probs) if return_probs else labels)
        return results
