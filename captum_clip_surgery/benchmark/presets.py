r"""The four published protocols of training-free open-vocabulary segmentation, as data.

A preset is one repository's evaluation setting: how images are resized, the sliding
window, how a crop is padded, the prompt templates, the class-name files and their
synonym separator, the logit scale and the background rules per dataset, and PAMR.
Every value below cites the line of the configuration it comes from; the repositories
were read at SCLIP ``b56bd30`` (``S:``), NACLIP ``0cac3a6`` (``N:``), ClearCLIP
``ad68a40`` (``C:``) and ProxyCLIP ``e7b767f`` (``P:``). A bare ``S:20`` is the line of
the repository's segmentor file (``clip_segmentor.py``, ``naclip.py``,
``clearclip_segmentor.py``, ``proxyclip_segmentor.py``); ``S:cfg_voc21.py:6`` a line of
``configs/cfg_voc21.py``.

The ``scenes`` entry of every preset is ours (the package's scenes world has no
published protocol): the release's ViT-B/16 settings scaled to the shipped scenes model
(96-pixel images, patch 8): short side ``96 * s / 224`` for the release's short side
``s`` on 224-pixel windows, windows and strides likewise, no background class.

Any field is overridden per call: :meth:`ProtocolSettings.replace` in Python,
``overrides={...}`` of :func:`~captum_clip_surgery.benchmark.segmentation_benchmark`, or
``--set FIELD=VALUE`` on the command line. A preset's ``method_options`` (constructor
arguments of its method where the release runs it otherwise than the package's default)
are merged under the caller's own: :meth:`ProtocolSettings.with_method_options`,
``method_options={...}`` of ``segmentation_benchmark``, or
``--method-option METHOD.ARGUMENT=VALUE``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple, Union

__all__ = [
    "DATASET_FIELDS",
    "PRESETS",
    "PRESET_FIELDS",
    "DatasetSettings",
    "Preset",
    "ProtocolSettings",
    "get_preset",
    "preset_names",
]


@dataclass(frozen=True)
class DatasetSettings:
    r"""A preset's settings for one dataset.

    Attributes:
        short_side (int): ``Resize(scale=(long_side, short_side), keep_ratio=True)``: the
            image is scaled by ``min(long_side / long, short_side / short)``.
        crop (int): sliding-window size in pixels of the resized image; ``0``: the whole
            image in one forward (the releases' ``slide_crop=0``).
        stride (int): distance between windows.
        logit_scale (float): the cosines' scale before the softmax over the queries.
        prob_thd (float): pixels whose highest class probability is below it become
            class 0 (the background line where the dataset has one).
        area_thd (float, optional): SCLIP's area rule: classes ``1..C-1`` whose argmax
            area is at most ``area_thd`` times the summed area of those classes are
            dropped before the argmax. ``None``: off.
        class_file (str): the class-name file (package data of the preset's source).
    """

    short_side: int
    crop: int
    stride: int
    logit_scale: float
    prob_thd: float
    area_thd: Optional[float]
    class_file: str


@dataclass(frozen=True)
class Preset:
    r"""One repository's protocol: fields shared by its datasets and a
    :class:`DatasetSettings` per dataset.

    Attributes:
        name (str): ``"sclip"``, ``"clearclip"``, ``"naclip"`` or ``"proxyclip"``.
        method (str): the method the repository evaluates (a registry name; it may be
            missing from the registry, e.g. ``"proxyclip"`` before it is installed).
        source (str): the repository and commit read.
        class_source (str): the folder of class-name files (package data) it uses.
        synonym_separator (str): how a line of a class-name file splits into queries.
        padding (str or int or None): how a window whose sides are not a multiple of
            the patch is fed to the model: ``None`` as is (the patch convolution drops
            the tail, the token grid is stretched over the whole window), ``"patch"``
            (zero-padded symmetrically to a multiple of the patch, cut back after the
            upsampling), or an int (zero-padded to a multiple of that many pixels).
        whole_image_resize (str): without a sliding window, ``"direct"`` (token grid
            resized straight to the original size) or ``"twice"`` (to the input size,
            then to the original size).
        pamr_steps (int): PAMR iterations (``0``: off).
        pamr_dilations (tuple[int, ...]): PAMR's neighbour distances.
        pamr_without_window (bool): whether PAMR also runs without a sliding window.
        long_side (int): the resize's long-side bound.
        mean, std (tuple[float, float, float]): RGB normalisation in 0-255 units.
        templates (str): the prompt templates (``"openai_imagenet"``: CLIP's 80).
        refine (str, optional): a refinement replacing the windows' average (and PAMR):
            ``"lposs"`` or ``"lposs+"`` (LPOSS / LPOSS+, Stojnić et al., CVPR 2025: the
            scores of all windows of an image propagated over one patch graph of a second
            backbone, then for LPOSS+ over a pixel graph; see
            :func:`~captum_clip_surgery.apps.label_propagation.lposs_scores`); default
            ``None``. None of the four releases refines so; ``--set refine=lposs+`` adds it.
        method_options (dict[str, dict[str, Any]]): ``{method: constructor keyword
            arguments}`` the release's own run implies where they differ from the method's
            defaults (ProxyCLIP: ``{"proxyclip": {"empty_rows": "nan"}}``); the caller's
            options win per argument (:meth:`ProtocolSettings.with_method_options`).
        datasets (dict[str, DatasetSettings]): per dataset.
    """

    name: str
    method: str
    source: str
    class_source: str
    synonym_separator: str
    padding: Union[None, str, int]
    whole_image_resize: str
    pamr_steps: int
    pamr_dilations: Tuple[int, ...]
    pamr_without_window: bool
    datasets: Dict[str, DatasetSettings]
    long_side: int = 2048
    mean: Tuple[float, float, float] = (122.771, 116.746, 104.094)
    std: Tuple[float, float, float] = (68.501, 66.632, 70.323)
    templates: str = "openai_imagenet"
    refine: Optional[str] = None
    method_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def settings(self, dataset: str) -> ProtocolSettings:
        r"""The flat settings of one dataset under this preset.

        Args:
            dataset (str): a dataset name (see :attr:`datasets`).

        Returns:
            ProtocolSettings: every field of the protocol for that dataset.
        """
        if dataset not in self.datasets:
            raise ValueError(
                f"dataset: preset {self.name!r} has no settings for {dataset!r}; expected one "
                f"of {', '.join(self.datasets)}"
            )
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name not in ("name", "datasets")}
        shared["method_options"] = {m: dict(o) for m, o in self.method_options.items()}
        per = dataclasses.asdict(self.datasets[dataset])
        return ProtocolSettings(preset=self.name, dataset=dataset, **shared, **per)


@dataclass(frozen=True)
class ProtocolSettings:
    r"""Every setting of one (preset, dataset) pair (see :class:`Preset` and
    :class:`DatasetSettings` for the fields; ``overridden`` names the fields the caller
    changed)."""

    preset: str
    dataset: str
    method: str
    source: str
    class_source: str
    synonym_separator: str
    padding: Union[None, str, int]
    whole_image_resize: str
    pamr_steps: int
    pamr_dilations: Tuple[int, ...]
    pamr_without_window: bool
    long_side: int
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    templates: str
    short_side: int
    crop: int
    stride: int
    logit_scale: float
    prob_thd: float
    area_thd: Optional[float]
    class_file: str
    refine: Optional[str] = None
    method_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    overridden: Tuple[str, ...] = field(default=())

    def replace(self, **changes: Any) -> ProtocolSettings:
        r"""A copy with some fields changed (checked; recorded in :attr:`overridden`).

        Args:
            **changes: field values, e.g. ``prob_thd=0.2, pamr_steps=10``.

        Returns:
            ProtocolSettings: the new settings.
        """
        unknown = sorted(set(changes) - set(PRESET_FIELDS))
        if unknown:
            raise ValueError(
                f"overrides: unknown setting(s) {', '.join(unknown)}; expected some of "
                f"{', '.join(PRESET_FIELDS)}"
            )
        checked = {k: _check_field(k, v) for k, v in changes.items()}
        done = tuple(dict.fromkeys(self.overridden + tuple(checked)))
        return dataclasses.replace(self, overridden=done, **checked)

    def with_method_options(
        self, options: Optional[Mapping[str, Mapping[str, Any]]]
    ) -> ProtocolSettings:
        r"""A copy whose ``method_options`` are the preset's with ``options`` merged over
        them, per method and argument (the caller's win); recorded in :attr:`overridden`
        when ``options`` has any.

        Args:
            options (dict, optional): ``{method: {argument: value}}``, e.g.
                ``{"proxyclip": {"empty_rows": "largest"}}``.

        Returns:
            ProtocolSettings: the new settings.

        Examples::

            >>> s = get_preset("proxyclip").settings("voc21")
            >>> s.options_for("proxyclip")
            {'empty_rows': 'nan'}
            >>> s.with_method_options({"proxyclip": {"beta": 1.0}}).options_for("proxyclip")
            {'empty_rows': 'nan', 'beta': 1.0}
        """
        checked = _check_method_options(options)
        if not any(checked.values()):
            return self
        merged = {m: dict(o) for m, o in self.method_options.items()}
        for m, o in checked.items():
            merged.setdefault(m, {}).update(o)
        done = tuple(dict.fromkeys(self.overridden + ("method_options",)))
        return dataclasses.replace(self, method_options=merged, overridden=done)

    def options_for(self, method: str) -> Dict[str, Any]:
        r"""The constructor keyword arguments of ``method`` under these settings (a copy;
        ``{}`` for a method the settings name none for)."""
        return dict(self.method_options.get(method, {}))

    def describe(self) -> Dict[str, str]:
        r"""The settings as ``{field: text}`` for the tables (overridden ones marked
        ``*``): every field of :data:`PRESET_FIELDS`, then ``method_options``
        (``method: argument=value, ...`` per method, ``; `` between methods, a module
        shown by its class; ``none`` without any)."""
        out = {}
        for name in PRESET_FIELDS:
            value = getattr(self, name)
            if isinstance(value, tuple):
                value = "(" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v)
                                        for v in value) + ")"
            text = f"{value:g}" if isinstance(value, float) else (
                repr(value) if name == "synonym_separator" else str(value))
            out[name] = text + (" *" if name in self.overridden else "")
        text = "; ".join(
            f"{m}: " + ", ".join(f"{k}={_option_text(v)}" for k, v in o.items())
            for m, o in self.method_options.items() if o) or "none"
        out["method_options"] = text + (" *" if "method_options" in self.overridden else "")
        return out


def _option_text(value: Any) -> str:
    r"""A constructor argument as the settings table shows it (a module by its class)."""
    import torch.nn as nn

    if isinstance(value, nn.Module):
        return f"<{type(value).__name__}>"
    return repr(value)


def _check_method_options(options: Any) -> Dict[str, Dict[str, Any]]:
    r"""``{method: {argument: value}}`` checked (method and argument names are strings)."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(
            f"method_options: expected a dict {{method: {{argument: value}}}}, got "
            f"{type(options).__name__}"
        )
    out = {}
    for m, o in options.items():
        if not isinstance(m, str) or not isinstance(o, Mapping):
            raise TypeError(
                f"method_options: expected a dict {{method: {{argument: value}}}}, got "
                f"{m!r}: {type(o).__name__}"
            )
        bad = [k for k in o if not isinstance(k, str) or not k.isidentifier()]
        if bad:
            raise TypeError(f"method_options: {m!r}: argument names must be identifiers, "
                            f"got {bad[0]!r}")
        out[m] = dict(o)
    return out


#: Settings that ``overrides`` / ``--set`` may change.
PRESET_FIELDS: Tuple[str, ...] = (
    "method", "short_side", "long_side", "crop", "stride", "padding", "whole_image_resize",
    "logit_scale", "prob_thd", "area_thd", "pamr_steps", "pamr_dilations",
    "pamr_without_window", "synonym_separator", "templates", "mean", "std", "class_source",
    "class_file", "refine",
)

#: The refinements a preset may name (``refine``).
PRESET_REFINEMENTS: Tuple[str, ...] = ("lposs", "lposs+")

#: The per-dataset settings (:class:`DatasetSettings`).
DATASET_FIELDS: Tuple[str, ...] = tuple(f.name for f in dataclasses.fields(DatasetSettings))

_TEMPLATE_SETS = ("openai_imagenet",)


def _number(name: str, value: Any, positive: bool = False, unit: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name}: expected a positive number, got {value!r}")
    if unit and not 0 <= value <= 1:
        raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}")
    return float(value)


def _integer(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return int(value)


def _triple(name: str, value: Any, positive: bool) -> Tuple[float, float, float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)) or len(value) != 3:
        raise ValueError(f"{name}: expected three numbers (R, G, B), got {value!r}")
    return tuple(_number(name, v, positive=positive) for v in value)  # type: ignore[return-value]


def _check_field(name: str, value: Any) -> Any:
    r"""``value`` checked (and normalised) for the setting ``name``."""
    if name in ("short_side", "long_side", "stride"):
        return _integer(name, value, 1)
    if name in ("crop", "pamr_steps"):
        return _integer(name, value, 0)
    if name == "logit_scale":
        return _number(name, value, positive=True)
    if name == "prob_thd":
        return _number(name, value, unit=True)
    if name == "area_thd":
        return None if value is None else _number(name, value, unit=True)
    if name == "padding":
        if value is None or value == "patch":
            return value
        return _integer(name, value, 1)
    if name == "whole_image_resize":
        if value not in ("direct", "twice"):
            raise ValueError(f"{name}: expected 'direct' or 'twice', got {value!r}")
        return value
    if name == "pamr_dilations":
        if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)) or not value:
            raise ValueError(f"{name}: expected a non-empty sequence of positive ints, got {value!r}")
        return tuple(_integer(name, v, 1) for v in value)
    if name == "pamr_without_window":
        if not isinstance(value, bool):
            raise ValueError(f"{name}: expected True or False, got {value!r}")
        return value
    if name in ("mean", "std"):
        return _triple(name, value, positive=name == "std")
    if name == "refine":
        if value is not None and value not in PRESET_REFINEMENTS:
            raise ValueError(f"{name}: expected none, lposs or lposs+, got {value!r}")
        return value
    if name == "templates":
        if value not in _TEMPLATE_SETS:
            raise ValueError(f"{name}: expected one of {', '.join(_TEMPLATE_SETS)}, got {value!r}")
        return value
    if name == "class_source":
        if value not in ("sclip", "clearclip", "proxyclip"):
            raise ValueError(f"{name}: expected sclip, clearclip or proxyclip, got {value!r}")
        return value
    if not isinstance(value, str) or not value:  # method, synonym_separator, class_file
        raise ValueError(f"{name}: expected a non-empty string, got {value!r}")
    return value


def _scenes(short_side: int, crop: int, stride: int, logit_scale: float) -> DatasetSettings:
    # ours: the scenes world has no published protocol (see the module docstring)
    return DatasetSettings(short_side, crop, stride, logit_scale, 0.0, None, "scenes")


# ---------------------------------------------------------------------------------------
# SCLIP (wangf3014/SCLIP b56bd30). Segmentor defaults, clip_segmentor.py:19-21:
#   pamr_steps=0, pamr_stride=(8, 16), prob_thd=0.0, logit_scale=40, slide_stride=112,
#   slide_crop=224, area_thd=None.
_SCLIP = Preset(
    name="sclip",
    method="sclip",  # S:63 encode_image(..., csa=True): SCLIP's correlative self-attention
    source="wangf3014/SCLIP@b56bd30",
    class_source="sclip",  # S:configs/cls_*.txt
    synonym_separator=", ",  # S:208 name_sets[idx].split(', ')
    padding=None,  # S:108-109 crop fed as is; S:69 grid = size // patch, S:74 resized to the crop
    whole_image_resize="direct",  # S:143-144 forward_feature(inputs, ori_shape)
    pamr_steps=0,  # S:19 pamr_steps=0 (no config changes it)
    pamr_dilations=(8, 16),  # S:19 pamr_stride=(8, 16)
    pamr_without_window=False,  # S:121-123 PAMR only inside forward_slide
    long_side=2048,  # S:cfg_*.py Resize(scale=(2048, s)) (line 14-17 of each config)
    mean=(122.771, 116.746, 104.094),  # S:24
    std=(68.501, 66.632, 70.323),  # S:25
    templates="openai_imagenet",  # S:38 openai_imagenet_template (prompts/imagenet_template.py)
    datasets={
        # short side: Resize line of configs/cfg_<d>.py; logit scale / thresholds: S:20
        # unless the config's model dict sets them; window S:21 (224 / 112)
        "voc20": DatasetSettings(336, 224, 112, 40, 0.0, None, "voc20.txt"),  # cfg_voc20.py:14
        "voc21": DatasetSettings(336, 224, 112, 65, 0.1, 0.1, "voc21.txt"),
        # ^ cfg_voc21.py:17 (336), :6 logit_scale=65, :7 prob_thd=0.1, :8 area_thd=0.1
        "context59": DatasetSettings(336, 224, 112, 40, 0.0, None, "context59.txt"),  # cfg_context59.py:14
        "context60": DatasetSettings(336, 224, 112, 50, 0.1, None, "context60.txt"),
        # ^ cfg_context60.py:16 (336), :6 logit_scale=50, :7 prob_thd=0.1
        "coco_object": DatasetSettings(336, 224, 112, 50, 0.1, None, "coco_object.txt"),
        # ^ cfg_coco_object.py:16 (336), :6 logit_scale=50, :7 prob_thd=0.1
        "coco_stuff": DatasetSettings(448, 224, 112, 40, 0.0, None, "coco_stuff.txt"),  # cfg_coco_stuff164k.py:14
        "cityscapes": DatasetSettings(560, 224, 112, 40, 0.0, None, "city_scapes.txt"),  # cfg_city_scapes.py:14
        "ade20k": DatasetSettings(336, 224, 112, 40, 0.0, None, "ade20k.txt"),  # cfg_ade20k.py:14
        "scenes": _scenes(144, 96, 48, 40),
        # a dataset of your own: the segmentor's defaults (S:20-21) at the short side of
        # most of its configs
        "custom": DatasetSettings(336, 224, 112, 40, 0.0, None, ""),
    },
)

# ---------------------------------------------------------------------------------------
# NACLIP (sinahmr/NACLIP 0cac3a6). Segmentor defaults, naclip.py:20-22:
#   arch='reduced', attn_strategy='naclip', gaussian_std=5., pamr_steps=10,
#   pamr_stride=(8, 16), prob_thd=0.0, logit_scale=40, slide_stride=112, slide_crop=224.
_NACLIP = Preset(
    name="naclip",
    method="naclip",  # N:21 arch='reduced', attn_strategy='naclip', gaussian_std=5.
    source="sinahmr/NACLIP@0cac3a6",
    class_source="sclip",  # N:configs/cls_*.txt are byte-identical to SCLIP's
    synonym_separator=", ",  # N:185 name_sets[idx].split(', ')
    padding=None,  # N:99-100 crop fed as is; N:65 grid = size // patch, N:68 resized to the crop
    whole_image_resize="twice",  # N:124 forward_feature (to the input size), N:127 to ori_shape
    pamr_steps=10,  # N:21 pamr_steps=10 (eval.py:56-57 --pamr on = 10, the README's results)
    pamr_dilations=(8, 16),  # N:21 pamr_stride=(8, 16)
    pamr_without_window=True,  # N:129-135 PAMR after either path
    long_side=2048,  # N:cfg_*.py Resize(scale=(2048, s))
    mean=(122.771, 116.746, 104.094),  # N:24
    std=(68.501, 66.632, 70.323),  # N:24
    templates="openai_imagenet",  # N:35 openai_imagenet_template
    datasets={
        "voc20": DatasetSettings(336, 0, 112, 40, 0.0, None, "voc20.txt"),
        # ^ cfg_voc20.py:15 (336), :6 slide_crop=0 (whole image)
        "voc21": DatasetSettings(336, 0, 112, 40, 0.1, None, "voc21.txt"),
        # ^ cfg_voc21.py:16 (336), :6 prob_thd=0.1, :7 slide_crop=0
        "context59": DatasetSettings(336, 224, 112, 40, 0.0, None, "context59.txt"),  # cfg_context59.py:14
        "context60": DatasetSettings(336, 224, 112, 40, 0.1, None, "context60.txt"),
        # ^ cfg_context60.py:15 (336), :6 prob_thd=0.1
        "coco_object": DatasetSettings(336, 224, 112, 40, 0.1, None, "coco_object.txt"),
        # ^ cfg_coco_object.py:15 (336), :6 prob_thd=0.1
        "coco_stuff": DatasetSettings(336, 224, 112, 40, 0.0, None, "coco_stuff.txt"),  # cfg_coco_stuff164k.py:14
        "cityscapes": DatasetSettings(560, 224, 112, 40, 0.0, None, "city_scapes.txt"),  # cfg_city_scapes.py:14
        "ade20k": DatasetSettings(336, 224, 112, 40, 0.0, None, "ade20k.txt"),  # cfg_ade20k.py:14
        "scenes": _scenes(144, 96, 48, 40),
        "custom": DatasetSettings(336, 224, 112, 40, 0.0, None, ""),  # N:22 defaults, short side 336
    },
)

# ---------------------------------------------------------------------------------------
# ClearCLIP (mc-lan/ClearCLIP ad68a40). Segmentor defaults, clearclip_segmentor.py:22-23:
#   ignore_residual=True, prob_thd=0.0, logit_scale=50, slide_stride=224, slide_crop=448.
_CLEARCLIP = Preset(
    name="clearclip",
    # C:configs/base_config.py:6 ships model_type='vanilla' (plain attention); the paper's
    # method is model_type='ClearCLIP' with ignore_residual=True (:7): our "clearclip"
    method="clearclip",
    source="mc-lan/ClearCLIP@ad68a40",
    class_source="clearclip",  # C:configs/cls_*.txt
    synonym_separator=",",  # C:288 name_sets[idx].split(',') (a synonym keeps its leading space)
    padding="patch",  # C:168-180 zero-padded symmetrically to a multiple of the patch, cut back
    whole_image_resize="direct",  # C:211-212 forward_feature(inputs, ori_shape)
    pamr_steps=0,  # C: no PAMR
    pamr_dilations=(8, 16),  # (unused)
    pamr_without_window=False,
    long_side=2048,  # C:cfg_*.py Resize(scale=(2048, 448))
    mean=(122.771, 116.746, 104.094),  # C:25
    std=(68.501, 66.632, 70.323),  # C:26
    templates="openai_imagenet",  # C:98 openai_imagenet_template
    datasets={
        "voc20": DatasetSettings(448, 448, 224, 50, 0.0, None, "voc20.txt"),  # cfg_voc20.py:14
        "voc21": DatasetSettings(448, 448, 224, 50, 0.5, None, "voc21.txt"),
        # ^ cfg_voc21.py:15 (448), :6 prob_thd=0.5
        "context59": DatasetSettings(448, 448, 224, 50, 0.0, None, "context59.txt"),  # cfg_context59.py:14
        "context60": DatasetSettings(448, 448, 224, 50, 0.15, None, "context60.txt"),
        # ^ cfg_context60.py:15 (448), :6 prob_thd=0.15
        "coco_object": DatasetSettings(448, 448, 224, 50, 0.4, None, "coco_object.txt"),
        # ^ cfg_coco_object.py:15 (448), :6 prob_thd=0.4
        "coco_stuff": DatasetSettings(448, 448, 224, 50, 0.0, None, "coco_stuff.txt"),  # cfg_coco_stuff164k.py:14
        "cityscapes": DatasetSettings(448, 224, 224, 50, 0.0, None, "city_scapes.txt"),
        # ^ cfg_city_scapes.py:15 (448), :6 slide_crop=224 (stride stays C:23's 224)
        "ade20k": DatasetSettings(448, 448, 224, 50, 0.0, None, "ade20k.txt"),  # cfg_ade20k.py:14
        "scenes": _scenes(192, 192, 96, 50),
        "custom": DatasetSettings(448, 448, 224, 50, 0.0, None, ""),  # C:23 defaults, short side 448
    },
)

# ---------------------------------------------------------------------------------------
# ProxyCLIP (mc-lan/ProxyCLIP e7b767f). Segmentor defaults, proxyclip_segmentor.py:30-31:
#   prob_thd=0.0, logit_scale=40, beta=1.2, gamma=3.0, slide_stride=112, slide_crop=336.
_PROXYCLIP = Preset(
    name="proxyclip",
    # P:configs/base_config.py:3-7: CLIP ViT-B/16 (openai) with DINO ViT-B/8 proxy attention
    method="proxyclip",
    source="mc-lan/ProxyCLIP@e7b767f",
    class_source="proxyclip",  # P:configs/cls_*.txt
    synonym_separator="; ",  # P:336 name_sets[idx].split('; ')
    padding=56,  # P:220 compute_padsize(H, W, 56): zero-padded symmetrically to x56, cut back
    whole_image_resize="direct",  # P:262-263 forward_feature(inputs, ori_shape)
    pamr_steps=0,  # P: no PAMR
    pamr_dilations=(8, 16),  # (unused)
    pamr_without_window=False,
    long_side=2048,  # P:cfg_*.py Resize(scale=(2048, s))
    mean=(122.771, 116.746, 104.094),  # P:34
    std=(68.501, 66.632, 70.323),  # P:35
    templates="openai_imagenet",  # P:90 openai_imagenet_template
    # P:open_clip/transformer.py:573-574 cuts every proxy-attention argument below 0 to -inf,
    # so a window whose mean patch similarity exceeds 1/beta is NaN (:578's softmax) and
    # labelled 0 (P:280 argmax); the package's default keeps each row's maxima
    method_options={"proxyclip": {"empty_rows": "nan"}},
    datasets={
        "voc20": DatasetSettings(336, 336, 112, 40, 0.0, None, "voc20.txt"),  # cfg_voc20.py:14
        "voc21": DatasetSettings(336, 336, 112, 40, 0.2, None, "voc21.txt"),
        # ^ cfg_voc21.py:15 (336), :6 prob_thd=0.2
        "context59": DatasetSettings(336, 336, 112, 40, 0.0, None, "context59.txt"),  # cfg_context59.py:14
        "context60": DatasetSettings(336, 336, 112, 40, 0.15, None, "context60.txt"),
        # ^ cfg_context60.py:15 (336), :6 prob_thd=0.15
        "coco_object": DatasetSettings(336, 336, 112, 40, 0.25, None, "coco_object.txt"),
        # ^ cfg_coco_object.py:15 (336), :6 prob_thd=0.25
        "coco_stuff": DatasetSettings(336, 336, 112, 40, 0.0, None, "coco_stuff.txt"),  # cfg_coco_stuff164k.py:14
        "cityscapes": DatasetSettings(448, 224, 112, 40, 0.0, None, "city_scapes.txt"),
        # ^ cfg_city_scapes.py:16 (448), :6 slide_stride=112, :7 slide_crop=224
        "ade20k": DatasetSettings(448, 336, 112, 40, 0.0, None, "ade20k.txt"),  # cfg_ade20k.py:14
        "scenes": _scenes(144, 144, 48, 40),
        "custom": DatasetSettings(336, 336, 112, 40, 0.0, None, ""),  # P:31 defaults, short side 336
    },
)

#: The presets by name.
PRESETS: Mapping[str, Preset] = {p.name: p for p in (_SCLIP, _CLEARCLIP, _NACLIP, _PROXYCLIP)}


def preset_names() -> Tuple[str, ...]:
    r"""The preset names, ``("sclip", "clearclip", "naclip", "proxyclip")``."""
    return tuple(PRESETS)


def get_preset(name: Union[str, Preset]) -> Preset:
    r"""A preset by name (a :class:`Preset` is returned as is).

    Args:
        name (str or Preset): ``"sclip"``, ``"clearclip"``, ``"naclip"`` or ``"proxyclip"``.

    Returns:
        Preset: the preset.

    Examples::

        >>> get_preset("naclip").settings("voc21").prob_thd
        0.1
    """
    if isinstance(name, Preset):
        return name
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"preset: expected one of {', '.join(PRESETS)}, got {name!r}")
    return PRESETS[name]
