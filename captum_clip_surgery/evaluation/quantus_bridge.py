r"""Quantus (Hedström et al., JMLR 2023) on every method of the registry.

Quantus evaluates explanations of a ``torch.nn.Module`` that maps inputs to logits, with
an ``explain_func(model, inputs, targets, **kwargs) -> np.ndarray``. This module gives
both for the package:

- :class:`QuantusCLIPModel` presents a :class:`CLIPZeroShotClassifier` to Quantus:
  images ``[B, 3, H, W]`` (channels first) → the model's own zero-shot logits over the
  classifier's texts ``[B, T]`` (no softmax layer: Quantus adds one where a metric asks
  for probabilities). The layers Quantus randomises (Model Parameter Randomisation) are
  the image tower's attention blocks, re-initialised as the package's own sanity checks
  do (:mod:`~captum_clip_surgery.evaluation.sanity`), and only ever on Quantus' deep
  copy: the user's model is never changed.
- :func:`quantus_explain_func` explains with any registered method, on whatever model
  Quantus passes (the trained one or a randomised copy), and returns the maps as
  :func:`~captum_clip_surgery.compare` does, as NumPy ``float32 [B, 1, H, W]``.
- :func:`quantus_evaluate` runs the eight metrics of tutorial 06 and
  ``clip-surgery evaluate --quantus`` with the settings of :data:`QUANTUS_SETTINGS`.

Quantus is an optional dependency (``pip install "captum-clip-surgery[quantus]"``,
``quantus>=0.6``); only :func:`quantus_evaluate` imports it.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from captum_clip_surgery._validation import check_bool, check_int, resolve_target
from captum_clip_surgery.apps.comparison import check_method_kwargs, check_reduction, compare
from captum_clip_surgery.core.classifier import CLIPZeroShotClassifier
from captum_clip_surgery.evaluation.pairs import check_method_names
from captum_clip_surgery.evaluation.sanity import (
    _block_seed,
    _reinitialize,
    _rng_devices,
    _save_png,
    _write_csv,
    _write_text,
)
from captum_clip_surgery.methods.registry import get_method, method_title

__all__ = [
    "QUANTUS_IMAGES",
    "QUANTUS_METRICS",
    "QUANTUS_SETTINGS",
    "QuantusCLIPModel",
    "QuantusResult",
    "quantus_evaluate",
    "quantus_explain_func",
]

#: The metrics of :func:`quantus_evaluate`: ``(key, title, better)`` with ``better``
#: ``"higher"`` or ``"lower"``.
QUANTUS_METRICS: Tuple[Tuple[str, str, str], ...] = (
    ("pointing_game", "Pointing Game", "higher"),
    ("relevance_mass", "Relevance Mass Accuracy", "higher"),
    ("relevance_rank", "Relevance Rank Accuracy", "higher"),
    ("road", "ROAD (MoRF accuracy)", "lower"),
    ("faithfulness_correlation", "Faithfulness Correlation", "higher"),
    ("sparseness", "Sparseness", "higher"),
    ("mprt", "Model Parameter Randomisation", "lower"),
    ("random_logit", "Random Logit", "lower"),
)

#: The keyword arguments of each Quantus metric's constructor in :func:`quantus_evaluate`
#: (Quantus' defaults where not listed). ROAD removes 10 %, 30 %, 50 %, 70 % and 90 % of the pixels,
#: most relevant first, and reports the share of maps whose class is still the top-1
#: prediction (averaged over the steps: lower means the map found the evidence);
#: Faithfulness Correlation perturbs 20 random subsets of 5 % of the input's values;
#: Model Parameter Randomisation gives the Spearman correlation between the map on the
#: trained model and on the model whose image-tower blocks are all re-initialised
#: (cascading from the last block; only the fully randomised model is explained).
QUANTUS_SETTINGS: Dict[str, Dict[str, Any]] = {
    "pointing_game": {},
    "relevance_mass": {},
    "relevance_rank": {},
    "road": {"percentages": [10, 30, 50, 70, 90]},
    "faithfulness_correlation": {"nr_runs": 20, "subset_fraction": 0.05},
    "sparseness": {},
    "mprt": {"layer_order": "top_down", "skip_layers": True, "return_last_correlation": True},
    "random_logit": {},
}

#: Images that tutorial 06 and ``clip-surgery evaluate --quantus`` / ``--sanity`` read by
#: default (every class present in each is one map: 11 maps on the held-out scenes).
QUANTUS_IMAGES = 4


class _BlockReset(nn.Module):
    r"""One image-tower block as a layer Quantus can randomise (``reset_parameters``)."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def reset_parameters(self) -> None:
        owner = self.__dict__.get("owner")
        if owner is None or not owner.__dict__.get("_owns_model", False):
            raise RuntimeError(
                "reset_parameters: this would re-initialise a block of the user's model; "
                "Quantus randomises a deep copy of QuantusCLIPModel (copy.deepcopy), which "
                "may be randomised"
            )
        # Quantus seeds torch's generator before each layer: draw this block's seed from it
        seed = int(torch.randint(0, 2**31 - 1, (1,)))
        block = owner.classifier.adapter.image.blocks[self.index]
        _reinitialize(block, _block_seed(seed, self.index))

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - never called
        return x

    def extra_repr(self) -> str:
        return f"image-tower block {self.index}"


class QuantusCLIPModel(nn.Module):
    r"""A :class:`CLIPZeroShotClassifier` presented to Quantus: a ``torch.nn.Module``
    (Quantus' test for a PyTorch model) mapping images to logits over the texts.

    - ``model(images)``: ``[B, 3, H, W]`` channels-first images (NumPy arrays are
      turned into tensors by Quantus) → the classifier's logits ``[B, T]``, the
      unmodified model's ``logit_scale * cos``. The module has no ``nn.Softmax``, so
      Quantus' ``softmax=True`` appends one and ``softmax=False`` uses the logits.
    - The module is in eval mode (Quantus refuses a model in training mode).
    - Its only submodules are ``blocks``, one per image-tower attention block, whose
      ``reset_parameters`` re-initialises that block: Quantus' Model Parameter
      Randomisation randomises the blocks from the last one down (``"top_down"``) or
      one at a time (``"independent"``; :meth:`state_dict` and :meth:`load_state_dict`
      are the CLIP model's, so Quantus can restore it between layers). The text tower
      is not randomised: the texts stay the labels being explained. Quantus randomises
      a deep copy; ``reset_parameters`` refuses to run on the user's own model.

    The user's model is held, not copied: building the wrapper changes nothing.

    Args:
        classifier (CLIPZeroShotClassifier): the classifier to present.

    Examples::

        >>> import quantus
        >>> wrapped = QuantusCLIPModel(clf)
        >>> quantus.PointingGame()(model=wrapped, x_batch=x, y_batch=y, s_batch=s,
        ...                        explain_func=quantus_explain_func,
        ...                        explain_func_kwargs={"method": "surgery"})
    """

    def __init__(self, classifier: CLIPZeroShotClassifier) -> None:
        super().__init__()
        if not isinstance(classifier, CLIPZeroShotClassifier):
            raise TypeError(
                f"classifier: expected a CLIPZeroShotClassifier, got {type(classifier).__name__}"
            )
        # a plain attribute: the CLIP model's layers must not be Quantus' layers
        self.__dict__["classifier"] = classifier
        self.__dict__["_owns_model"] = False
        self.blocks = nn.ModuleList(_BlockReset(i) for i in range(len(classifier.adapter.image.blocks)))
        for block in self.blocks:
            block.__dict__["owner"] = self
        self.eval()

    classifier: CLIPZeroShotClassifier

    def forward(self, images: Tensor) -> Tensor:
        r"""Zero-shot logits ``[B, T]`` of the classifier (float32)."""
        return self.classifier(images)

    def __deepcopy__(self, memo: Dict[int, Any]) -> QuantusCLIPModel:
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            new.__dict__[key] = copy.deepcopy(value, memo)
        new.__dict__["_owns_model"] = True  # the copy holds its own model: it may be randomised
        return new

    def state_dict(self, *args: Any, **kwargs: Any) -> Dict[str, Any]:  # type: ignore[override]
        r"""The CLIP model's ``state_dict``."""
        return self.classifier.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,
                        assign: bool = False) -> Any:
        r"""Load into the CLIP model (Quantus restores its randomised copy this way)."""
        return self.classifier.model.load_state_dict(state_dict, strict=strict, assign=assign)

    def extra_repr(self) -> str:
        return f"texts={len(self.classifier.texts)}, model={type(self.classifier.model).__name__}"


def _classifier_of(model: Any) -> CLIPZeroShotClassifier:
    if isinstance(model, QuantusCLIPModel):
        return model.classifier
    if isinstance(model, CLIPZeroShotClassifier):
        return model
    raise TypeError(
        "model: expected a QuantusCLIPModel (or a CLIPZeroShotClassifier), got "
        f"{type(model).__name__}"
    )


def quantus_explain_func(
    model: Union[QuantusCLIPModel, CLIPZeroShotClassifier],
    inputs: Union[np.ndarray, Tensor],
    targets: Union[np.ndarray, Tensor, int, Sequence[int]],
    method: str = "surgery",
    method_kwargs: Optional[Mapping[str, Any]] = None,
    reduction: str = "abs_sum",
    seed: Optional[int] = None,
    device: Optional[Union[str, torch.device]] = None,
) -> np.ndarray:
    r"""Quantus' ``explain_func`` for any method of the registry.

    Explains ``inputs`` for ``targets`` with ``method`` on the model Quantus passes (the
    trained model, or a randomised copy during Model Parameter Randomisation) and returns
    :func:`~captum_clip_surgery.compare`'s maps: reduced over channels, at the input's
    pixels, min-max normalised to ``[0, 1]``.

    Args:
        model (QuantusCLIPModel or CLIPZeroShotClassifier): what Quantus calls ``model``.
        inputs (np.ndarray or Tensor): ``[B, 3, H, W]`` channels-first preprocessed images.
        targets (np.ndarray, Tensor, int or list[int]): class (text) indices, one per image.
        method (str): a registered method name (see
            :func:`~captum_clip_surgery.methods.registry.method_names`).
        method_kwargs (dict, optional): keyword arguments of the method's ``attribute``
            call, over the registry's defaults.
        reduction (str): channel reduction of pixel attributions (see
            :func:`~captum_clip_surgery.channel_reduce`).
        seed (int, optional): seed torch's generators for the call and restore them after
            (methods that draw noise, such as SmoothGrad, then give the same map twice).
        device (str or torch.device, optional): accepted because Quantus passes its
            ``device``; the maps are computed on the model's own device.

    Returns:
        np.ndarray: ``float32 [B, 1, H, W]`` in ``[0, 1]``.

    Examples::

        >>> a = quantus_explain_func(QuantusCLIPModel(clf), x_batch, y_batch, method="gem")
        >>> a.shape, a.dtype
        ((8, 1, 96, 96), dtype('float32'))
    """
    classifier = _classifier_of(model)
    if not isinstance(method, str):
        raise TypeError(f"method: expected a registered method name, got {type(method).__name__}")
    get_method(method)  # unknown names: a ValueError listing the known ones
    kwargs = dict(check_method_kwargs({method: method_kwargs or {}})[method])
    check_reduction(reduction)
    if seed is not None:
        check_int("seed", seed)
    if device is not None and not isinstance(device, (str, torch.device)):
        raise TypeError(f"device: expected a device name or torch.device, got {type(device).__name__}")
    if isinstance(inputs, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(inputs))
    elif isinstance(inputs, Tensor):
        images = inputs.detach()
    else:
        raise TypeError(f"inputs: expected a NumPy array or a tensor [B, 3, H, W], got "
                        f"{type(inputs).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"inputs: expected channels-first images [B, 3, H, W], got shape "
                         f"{list(images.shape)}")
    if isinstance(targets, np.ndarray):
        targets = torch.from_numpy(np.asarray(targets, dtype=np.int64).reshape(-1))
    index = resolve_target(targets, images.shape[0], classifier.texts)

    def run() -> Tensor:
        return compare(classifier, images, index, methods=[method], method_kwargs={method: kwargs},
                       reduction=reduction)[method]

    if seed is None:
        maps = run()
    else:
        with torch.random.fork_rng(devices=_rng_devices(classifier.adapter.device)):
            torch.manual_seed(seed)
            maps = run()
    return maps.detach().float().cpu().numpy()


@dataclass
class QuantusResult:
    r"""Quantus scores of every method.

    Attributes:
        scores (dict): ``{method: {metric: np.ndarray}}``: one score per map (ROAD: the
            share of maps still classified correctly, per percentage removed); NaN where a
            metric is undefined for a map (e.g. a correlation with a constant map).
        methods (list[str]): method names in order.
        metrics (list[str]): metric keys in order (see :data:`QUANTUS_METRICS`).
        num_maps (int): maps per method.
        settings (dict): the metrics' constructor arguments.
    """

    scores: Dict[str, Dict[str, np.ndarray]]
    methods: List[str]
    metrics: List[str]
    num_maps: int
    settings: Dict[str, Dict[str, Any]]

    def summary(self) -> Dict[str, Dict[str, float]]:
        r"""``{method: {metric: mean}}`` (NaN-mean over the maps; ROAD over the
        percentages)."""
        out: Dict[str, Dict[str, float]] = {}
        for method in self.methods:
            out[method] = {}
            for metric in self.metrics:
                values = np.asarray(self.scores[method][metric], dtype=np.float64)
                finite = values[~np.isnan(values)]
                out[method][metric] = float(finite.mean()) if finite.size else float("nan")
        return out

    def to_markdown(self, digits: int = 3) -> str:
        r"""The summary as a markdown table (one row per method, ↑ / ↓ say which is better)."""
        titles = {k: (t, "↑" if better == "higher" else "↓") for k, t, better in QUANTUS_METRICS}
        head = "| method | " + " | ".join(f"{titles[m][0]} {titles[m][1]}" for m in self.metrics) + " |"
        lines = [head, "|---|" + "---:|" * len(self.metrics)]
        for method, row in self.summary().items():
            cells = ["–" if math.isnan(row[m]) else f"{row[m]:.{digits}f}" for m in self.metrics]
            lines.append(f"| {method_title(method)} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def write(self, out_dir: str) -> Dict[str, str]:
        r"""Write ``quantus.md`` (the table), ``quantus.csv`` (the means),
        ``quantus_records.csv`` (per map; ROAD per percentage) and ``quantus.png``;
        returns their paths."""
        os.makedirs(out_dir, exist_ok=True)
        paths = {"quantus_markdown": os.path.join(out_dir, "quantus.md"),
                 "quantus_csv": os.path.join(out_dir, "quantus.csv"),
                 "quantus_records": os.path.join(out_dir, "quantus_records.csv")}
        _write_text(paths["quantus_markdown"], self.to_markdown())
        summary = self.summary()
        _write_csv(paths["quantus_csv"], ["method"] + self.metrics,
                   [[m] + [repr(summary[m][k]) for k in self.metrics] for m in self.methods])
        rows = []
        for method in self.methods:
            for metric in self.metrics:
                for i, value in enumerate(np.asarray(self.scores[method][metric]).reshape(-1)):
                    where = (f"{self.settings['road']['percentages'][i]}%" if metric == "road"
                             else str(i))
                    rows.append([method, metric, where, repr(float(value))])
        _write_csv(paths["quantus_records"], ["method", "metric", "map_or_percentage", "score"], rows)
        paths["quantus_figure"] = self.plot(os.path.join(out_dir, "quantus.png"))
        return paths

    def plot(self, path: Optional[str] = None) -> Any:
        r"""One bar chart per metric (a bar per method). Saved as PNG when ``path`` is
        given.

        Returns:
            matplotlib.figure.Figure or str: the figure, or ``path`` once saved.
        """
        from matplotlib.figure import Figure

        summary = self.summary()
        titles = {k: (t, better) for k, t, better in QUANTUS_METRICS}
        cols = 4
        rows = math.ceil(len(self.metrics) / cols)
        fig = Figure(figsize=(4.2 * cols, 3.6 * rows))
        axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
        names = [method_title(m) for m in self.methods]
        for ax, metric in zip(axes, self.metrics):
            values = [summary[m][metric] for m in self.methods]
            ax.bar(range(len(values)), values, color=[f"C{i % 10}" for i in range(len(values))])
            ax.set_xticks(range(len(values)), names, rotation=60, ha="right", fontsize=7)
            title, better = titles[metric]
            ax.set_title(f"{title} ({better} is better)", fontsize=9)
            ax.axhline(0, color="black", linewidth=0.5)
        for ax in axes[len(self.metrics):]:
            ax.axis("off")
        fig.tight_layout()
        if path is None:
            return fig
        _save_png(fig, path)
        return path


def _pixel_imputation(arr: np.ndarray, indices: Any, noise: float = 0.01, **kwargs: Any) -> np.ndarray:
    r"""ROAD's noisy linear imputation of whole pixels.

    Quantus 0.6's ROAD orders the attribution's values over channels x pixels and hands
    those flat indices to ``noisy_linear_imputation``, which indexes pixels: on 3-channel
    images that is an ``IndexError``. :func:`quantus_evaluate` gives ROAD the map repeated
    over the three channels (a pixel's three values are then neighbours in the order, so
    the top p % of the values are the top p % of the pixels) and this function imputes
    every pixel one of whose values was chosen, in all its channels.
    """
    from quantus.functions.perturb_func import noisy_linear_imputation

    pixels = int(arr.shape[-2] * arr.shape[-1])
    chosen = np.unique(np.asarray(indices).reshape(-1) % pixels)
    return noisy_linear_imputation(arr, chosen, noise=noise, **kwargs)


def _metric(quantus: Any, key: str, settings: Dict[str, Any], num_classes: int,
            num_values: int) -> Any:
    r"""The Quantus metric object of ``key`` with ``settings``."""
    common = {"disable_warnings": True, "display_progressbar": False}
    settings = dict(settings)
    if key == "pointing_game":
        return quantus.PointingGame(**settings, **common)
    if key == "relevance_mass":
        return quantus.RelevanceMassAccuracy(**settings, **common)
    if key == "relevance_rank":
        return quantus.RelevanceRankAccuracy(**settings, **common)
    if key == "road":
        return quantus.ROAD(perturb_func=_pixel_imputation, **settings, **common)
    if key == "faithfulness_correlation":
        fraction = settings.pop("subset_fraction", None)
        if fraction is not None:
            settings["subset_size"] = max(1, int(round(fraction * num_values)))
        return quantus.FaithfulnessCorrelation(return_aggregate=False, **settings, **common)
    if key == "sparseness":
        return quantus.Sparseness(**settings, **common)
    if key == "mprt":
        return quantus.MPRT(**settings, **common)
    if key == "random_logit":
        return quantus.RandomLogit(num_classes=num_classes, **settings, **common)
    raise ValueError(f"metrics: unknown metric {key!r}")  # pragma: no cover - checked before


def quantus_evaluate(
    classifier: CLIPZeroShotClassifier,
    images: Tensor,
    targets: Any,
    masks: Tensor,
    methods: Optional[Sequence[str]] = None,
    metrics: Optional[Sequence[str]] = None,
    method_kwargs: Optional[Mapping[str, Mapping[str, Any]]] = None,
    seed: int = 0,
    progress: bool = False,
    callback: Optional[Callable[[str, str], None]] = None,
) -> QuantusResult:
    r"""Quantus' Pointing Game, Relevance Mass and Rank Accuracy, ROAD, Faithfulness
    Correlation, Sparseness, Model Parameter Randomisation and Random Logit for every
    method, with the settings of :data:`QUANTUS_SETTINGS`.

    Each method explains every (image, target) pair once through
    :func:`quantus_explain_func`; those maps are the ``a_batch`` of every metric, and
    Model Parameter Randomisation and Random Logit explain again through it (on the
    randomised copy, for another class). numpy's and torch's generators are seeded with
    ``seed`` before each metric and restored afterwards, so the numbers repeat run to run.

    Args:
        classifier (CLIPZeroShotClassifier): the classifier explained.
        images (Tensor): ``[N, 3, H, W]`` preprocessed images.
        targets (Tensor, list[int]): ``[N]`` class indices.
        masks (Tensor): ``[N, 1, H, W]`` (or ``[N, H, W]``) bool masks of the targets
            (the localisation metrics).
        methods (list[str], optional): registered method names (default: every method
            defined for the model).
        metrics (list[str], optional): keys of :data:`QUANTUS_METRICS` (default all).
        method_kwargs (dict, optional): per-method ``attribute`` keyword arguments.
        seed (int): the seed of the metrics' random choices and of the methods' noise.
        progress (bool): show a progress bar.
        callback (Callable, optional): called as ``callback(method, metric)`` before
            each metric.

    Returns:
        QuantusResult: the scores, the table, the CSV and the figure.

    Raises:
        ImportError: when Quantus is not installed (``pip install
            "captum-clip-surgery[quantus]"``).

    Examples::

        >>> pairs = dataset_pairs(ScenesSegmentation(size=4), clf, limit=4)
        >>> result = quantus_evaluate(clf, pairs.images, pairs.targets, pairs.masks)
        >>> print(result.to_markdown())
    """
    try:
        import quantus
    except ImportError as exc:
        raise ImportError(
            "quantus_evaluate needs Quantus: pip install \"captum-clip-surgery[quantus]\""
        ) from exc
    from tqdm import tqdm

    if not isinstance(classifier, CLIPZeroShotClassifier):
        raise TypeError(
            f"classifier: expected a CLIPZeroShotClassifier, got {type(classifier).__name__}"
        )
    names = check_method_names(methods, classifier)
    keys = [k for k, _, _ in QUANTUS_METRICS]
    if metrics is None:
        chosen = keys
    else:
        if isinstance(metrics, str) or not metrics or any(m not in keys for m in metrics):
            raise ValueError(f"metrics: expected some of {', '.join(keys)}, got {metrics!r}")
        chosen = [k for k in keys if k in metrics]
    extra = check_method_kwargs(method_kwargs)
    check_int("seed", seed)
    check_bool("progress", progress)
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        got = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images: expected [N, 3, H, W] preprocessed images, got {got}")
    n = images.shape[0]
    index = resolve_target(targets, n, classifier.texts)
    if not isinstance(masks, Tensor) or masks.shape[0] != n or masks.shape[-2:] != images.shape[-2:] \
            or masks.ndim not in (3, 4):
        got = list(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise ValueError(
            f"masks: expected [N, 1, H, W] masks of the images' size {list(images.shape[-2:])} "
            f"and N = {n}, got {got}")
    if "mprt" in chosen and not classifier.adapter.image.blocks:
        raise ValueError("metrics: 'mprt' randomises attention blocks; the model's image tower "
                         "has none (leave it out of metrics)")

    wrapped = QuantusCLIPModel(classifier)
    x = images.detach().float().cpu().numpy()
    y = index.cpu().numpy().astype(np.int64)
    s = (masks if masks.ndim == 4 else masks[:, None]).detach().cpu().numpy().astype(np.float32)
    device = str(classifier.adapter.device)
    num_classes = len(classifier.texts)
    settings = {k: dict(QUANTUS_SETTINGS[k]) for k in chosen}
    scores: Dict[str, Dict[str, np.ndarray]] = {}
    steps = [(m, k) for m in names for k in chosen]
    bar = tqdm(total=len(steps), desc="quantus", disable=not progress)
    for method in names:
        explain_kwargs = {"method": method, "method_kwargs": extra.get(method, {}), "seed": seed}
        a = quantus_explain_func(wrapped, x, y, **explain_kwargs)
        scores[method] = {}
        for key in chosen:
            if callback is not None:
                callback(method, key)
            metric = _metric(quantus, key, settings[key], num_classes, int(np.prod(x.shape[1:])))
            state = np.random.get_state()
            try:
                np.random.seed(seed)
                with torch.random.fork_rng(devices=_rng_devices(classifier.adapter.device)), \
                        warnings.catch_warnings():
                    torch.manual_seed(seed)
                    # a constant map (e.g. an all-zero GradCAM map) makes some scores 0 / 0
                    # or a correlation with a constant: NaN, left out of the means
                    warnings.simplefilter("ignore", RuntimeWarning)
                    # ROAD: the map on every channel (see _pixel_imputation)
                    given = np.repeat(a, x.shape[1], axis=1) if key == "road" else a.copy()
                    value = metric(model=wrapped, x_batch=x, y_batch=y, a_batch=given, s_batch=s,
                                   channel_first=True, explain_func=quantus_explain_func,
                                   explain_func_kwargs=dict(explain_kwargs), device=device,
                                   batch_size=n)
            finally:
                np.random.set_state(state)
            if key == "road":  # {percentage: share still correct}
                value = [value[p] for p in settings["road"]["percentages"]]
            scores[method][key] = np.asarray(value, dtype=np.float64).reshape(-1)
            bar.update(1)
    bar.close()
    return QuantusResult(scores=scores, methods=names, metrics=chosen, num_maps=n,
                         settings=settings)
