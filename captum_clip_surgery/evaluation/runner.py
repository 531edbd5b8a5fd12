r"""The evaluation runner: every method scored by the same metrics on the same data."""

from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from captum_clip_surgery._validation import check_bool, check_int, check_positive_number
from captum_clip_surgery.adapters.loading import square_preprocess
from captum_clip_surgery.apps.comparison import (
    MethodSpec,
    check_method_kwargs,
    compare,
    footing,
)
from captum_clip_surgery.core.classifier import CLIPZeroShotClassifier
from captum_clip_surgery.evaluation.datasets import collate_items
from captum_clip_surgery.evaluation.faithfulness import deletion_insertion
from captum_clip_surgery.evaluation.localization import (
    ThresholdIoU,
    energy_pointing_game,
    mean_score_contrast,
    pointing_game,
)
from captum_clip_surgery.methods.base import TokenMapAttribution
from captum_clip_surgery.methods.registry import (
    build_method,
    method_defaults,
    method_names,
    method_title,
)

__all__ = ["EvaluationResult", "evaluate", "square_preprocess"]

#: Metrics of the summary table, in order, with their column titles.
#: What deleted pixels become under each baseline (the note under the result tables).
BASELINE_WORDS = {
    "blur": "removed pixels become a Gaussian blur of the image",
    "mean": "removed pixels become the image's mean colour",
    "zero": "removed pixels become zeros, the normalised mean colour of the model's data",
    "tensor": "removed pixels become a given image",
}

COLUMNS = (
    ("msc", "mSC ↑"),
    ("miou", "mIoU ↑"),
    ("threshold", "best thr."),
    ("pointing", "pointing ↑"),
    ("energy", "energy PG ↑"),
    ("deletion_auc", "deletion AUC ↓"),
    ("insertion_auc", "insertion AUC ↑"),
    ("seconds_per_image", "s / image"),
)


@dataclass
class EvaluationResult:
    r"""Per-(image, class, method) records and their aggregation.

    Attributes:
        records (list[dict]): one per method and (image, present class) pair:
            ``method, index, class, kind`` (the dataset's ``class_kinds`` entry for
            the class, e.g. ``"object"`` / ``"background"``; ``""`` when the dataset
            has none), ``msc, pointing, energy, iou`` (list over ``thresholds``),
            ``deletion_auc``, ``insertion_auc`` (NaN when not computed) and their
            curves, ``seconds`` (the method's time for that pair's share of its batch).
        thresholds (Tensor): the IoU threshold grid (the same for every method).
        methods (list[str]): method names in order.
        num_images (int): images evaluated.
        class_names (list[str]): the dataset's classes (orders :meth:`breakdown`).
        baseline (str, optional): the deletion / insertion baseline (``"blur"``,
            ``"mean"``, ``"zero"`` or ``"tensor"``); ``None`` without faithfulness.
            :meth:`to_markdown` and :meth:`breakdown_markdown` name it under the table.
    """

    records: List[Dict[str, Any]]
    thresholds: Tensor
    methods: List[str]
    num_images: int
    class_names: List[str] = field(default_factory=list)
    baseline: Optional[str] = None

    @property
    def curves(self) -> Dict[str, Dict[str, Tensor]]:
        r"""Mean deletion / insertion curves per method (empty without faithfulness)."""
        out = {}
        for method in self.methods:
            rows = [r for r in self._by_method(method) if r.get("deletion_curve")]
            if rows:
                deletion = torch.tensor([r["deletion_curve"] for r in rows]).mean(0)
                insertion = torch.tensor([r["insertion_curve"] for r in rows]).mean(0)
                out[method] = {"deletion": deletion, "insertion": insertion,
                               "fractions": torch.linspace(0, 1, len(deletion))}
        return out

    def _by_method(self, method: str) -> List[Dict[str, Any]]:
        return [r for r in self.records if r["method"] == method]

    def iou_curve(self, method: str) -> Tensor:
        r"""Mean IoU per threshold for one method."""
        acc = ThresholdIoU(self.thresholds)
        rows = self._by_method(method)
        if rows:
            acc.add_per_example(torch.tensor([r["iou"] for r in rows], dtype=torch.float64))
        return acc.compute()["curve"]

    def summary(self) -> Dict[str, Dict[str, float]]:
        r"""``{method: {metric: value}}`` (nan-means over the records)."""
        out: Dict[str, Dict[str, float]] = {}
        for method in self.methods:
            rows = self._by_method(method)
            acc = ThresholdIoU(self.thresholds)
            if rows:
                acc.add_per_example(torch.tensor([r["iou"] for r in rows], dtype=torch.float64))
            best = acc.compute()

            def mean(key: str, rows: List[Dict[str, Any]] = rows) -> float:
                values = torch.tensor([float(r[key]) for r in rows], dtype=torch.float64)
                return float(values.nanmean()) if len(values) else float("nan")

            images = len({r["index"] for r in rows}) or 1
            out[method] = {
                "msc": mean("msc"),
                "negative_share": _negative_share(rows),
                "miou": float(best["miou"]),
                "threshold": float(best["threshold"]),
                "pointing": mean("pointing"),
                "energy": mean("energy"),
                "deletion_auc": mean("deletion_auc"),
                "insertion_auc": mean("insertion_auc"),
                "seconds_per_image": sum(r["seconds"] for r in rows) / images,
                "pairs": float(len(rows)),
            }
        return out

    def breakdown(self, by: str = "kind") -> Dict[str, Dict[str, Dict[str, float]]]:
        r"""The metrics per group of pairs: ``{method: {group: {metric: value}}}``.

        Args:
            by (str): ``"kind"`` (the dataset's class kinds, e.g. object / background
                for the scenes world) or ``"class"``.

        Returns:
            dict: per method and group (in order of first appearance): ``pairs``,
            ``msc``, ``negative_share`` (the share of pairs whose map is lower inside
            the mask than outside, ``msc < 0``: the paper's "opposite visualization"),
            ``iou`` (the mean IoU at the method's mIoU threshold, chosen over all
            pairs), ``pointing``, ``energy``, ``deletion_auc``, ``insertion_auc``.
        """
        if by not in ("kind", "class"):
            raise ValueError(f"by: expected 'kind' or 'class', got {by!r}")
        summary = self.summary()
        out: Dict[str, Dict[str, Dict[str, float]]] = {}
        for method in self.methods:
            rows = self._by_method(method)
            best = int((self.thresholds - summary[method]["threshold"]).abs().argmin())
            groups: Dict[str, List[Dict[str, Any]]] = {}
            for r in rows:
                groups.setdefault(str(r.get(by, "")), []).append(r)
            if by == "class" and self.class_names:
                order = {c: i for i, c in enumerate(self.class_names)}
                groups = dict(sorted(groups.items(), key=lambda g: order.get(g[0], len(order))))
            out[method] = {}
            for group, members in groups.items():
                def mean(key: str, rows: List[Dict[str, Any]] = members) -> float:
                    values = torch.tensor([float(r[key]) for r in rows], dtype=torch.float64)
                    return float(values.nanmean()) if len(values) else float("nan")

                ious = torch.tensor([r["iou"][best] for r in members], dtype=torch.float64)
                out[method][group] = {
                    "pairs": float(len(members)),
                    "msc": mean("msc"),
                    "negative_share": _negative_share(members),
                    "iou": float(ious.nanmean()),
                    "pointing": mean("pointing"),
                    "energy": mean("energy"),
                    "deletion_auc": mean("deletion_auc"),
                    "insertion_auc": mean("insertion_auc"),
                }
        return out

    def breakdown_markdown(self, by: str = "kind", digits: int = 3) -> str:
        r""":meth:`breakdown` as a markdown table (one row per method and group)."""
        table = self.breakdown(by)
        head = (f"| method | {by} | pairs | mSC ↑ | mSC < 0 | IoU at thr. ↑ | pointing ↑ | "
                "energy PG ↑ | deletion AUC ↓ | insertion AUC ↑ |")
        lines = [head, "|---|---|" + "---:|" * 8]
        keys = ("msc", "negative_share", "iou", "pointing", "energy", "deletion_auc",
                "insertion_auc")
        for method, groups in table.items():
            for group, row in groups.items():
                cells = [f"{int(row['pairs'])}"] + [
                    "–" if math.isnan(row[k]) else f"{row[k]:.{digits}f}" for k in keys]
                lines.append(f"| {method_title(method)} | {group or '–'} | "
                             + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n" + self._baseline_note()

    def to_markdown(self, digits: int = 3) -> str:
        r"""The summary as a markdown table (one row per method)."""
        summary = self.summary()
        head = "| method | " + " | ".join(title for _, title in COLUMNS) + " |"
        rule = "|---|" + "---:|" * len(COLUMNS)
        lines = [head, rule]
        for method, row in summary.items():
            cells = []
            for key, _ in COLUMNS:
                v = row[key]
                cells.append("–" if math.isnan(v) else (f"{v:.4f}" if key == "seconds_per_image"
                                                         else f"{v:.{digits}f}"))
            lines.append(f"| {method_title(method)} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n" + self._baseline_note()

    def _baseline_note(self) -> str:
        r"""The line under a table that says what deleted pixels became."""
        if self.baseline is None:
            return ""
        what = BASELINE_WORDS.get(self.baseline, self.baseline)
        return f"\nDeletion / insertion baseline: {self.baseline} ({what}).\n"

    def write(self, out_dir: str) -> Dict[str, str]:
        r"""Write ``results.md``, ``results.csv`` (summary), ``breakdown.md`` /
        ``breakdown.csv`` (:meth:`breakdown` by kind and by class), ``records.csv`` (per
        pair) and the figures (``metrics.png``, ``iou_threshold.png``,
        ``deletion_insertion.png``)."""
        os.makedirs(out_dir, exist_ok=True)
        paths = {
            "markdown": os.path.join(out_dir, "results.md"),
            "csv": os.path.join(out_dir, "results.csv"),
            "breakdown": os.path.join(out_dir, "breakdown.md"),
            "breakdown_csv": os.path.join(out_dir, "breakdown.csv"),
            "records": os.path.join(out_dir, "records.csv"),
        }
        with open(paths["markdown"], "w", encoding="utf-8") as fh:
            fh.write(self.to_markdown())
        with open(paths["breakdown"], "w", encoding="utf-8") as fh:
            fh.write("## By kind\n\n" + self.breakdown_markdown("kind") + "\n## By class\n\n"
                     + self.breakdown_markdown("class"))
        with open(paths["breakdown_csv"], "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            metric_keys = ["pairs", "msc", "negative_share", "iou", "pointing", "energy",
                           "deletion_auc", "insertion_auc"]
            writer.writerow(["by", "method", "group"] + metric_keys)
            for by in ("kind", "class"):
                for method, groups in self.breakdown(by).items():
                    for group, row in groups.items():
                        writer.writerow([by, method, group]
                                        + [repr(float(row[k])) for k in metric_keys])
        summary = self.summary()
        keys = [k for k, _ in COLUMNS] + ["negative_share", "pairs"]
        with open(paths["csv"], "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["method"] + keys + ["baseline"])
            for method, row in summary.items():
                writer.writerow([method] + [repr(float(row[k])) for k in keys]
                                + [self.baseline or ""])
        with open(paths["records"], "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            cols = ["method", "index", "class", "kind", "msc", "pointing", "energy",
                    "deletion_auc", "insertion_auc", "seconds"]
            writer.writerow(cols + [f"iou@{float(t):.2f}" for t in self.thresholds])
            for r in self.records:
                writer.writerow([r[c] for c in cols] + list(r["iou"]))
        paths.update(self.plot(out_dir))
        return paths

    def plot(self, out_dir: str) -> Dict[str, str]:
        r"""Save the figures as PNG files in ``out_dir``; returns their paths."""
        from matplotlib.figure import Figure

        os.makedirs(out_dir, exist_ok=True)
        summary = self.summary()
        names = [method_title(m) for m in summary]
        paths = {}
        metrics = [("msc", "mSC"), ("miou", "mIoU"), ("pointing", "pointing game"),
                   ("energy", "energy PG")]
        fig = Figure(figsize=(3.2 * len(metrics), 3.4))
        for ax, (key, title) in zip(fig.subplots(1, len(metrics)), metrics):
            values = [summary[m][key] for m in summary]
            ax.bar(range(len(values)), values, color="tab:blue")
            ax.set_xticks(range(len(values)), names, rotation=45, ha="right", fontsize=8)
            ax.set_title(title)
            ax.axhline(0, color="black", linewidth=0.5)
        fig.tight_layout()
        paths["metrics_figure"] = os.path.join(out_dir, "metrics.png")
        fig.savefig(paths["metrics_figure"], dpi=100)

        fig = Figure(figsize=(5, 3.6))
        ax = fig.subplots()
        styles = _line_styles(len(names))
        for method, name, style in zip(summary, names, styles):
            ax.plot(self.thresholds.numpy(), self.iou_curve(method).numpy(), label=name, **style)
        ax.set_xlabel("threshold")
        ax.set_ylabel("mean IoU")
        ax.set_title("IoU vs threshold")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        fig.tight_layout()
        paths["iou_figure"] = os.path.join(out_dir, "iou_threshold.png")
        fig.savefig(paths["iou_figure"], dpi=100, bbox_inches="tight")

        if self.curves:
            fig = Figure(figsize=(9, 3.6))
            axes = fig.subplots(1, 2)
            for method, name, style in zip(summary, names, styles):
                if method in self.curves:
                    c = self.curves[method]
                    axes[0].plot(c["fractions"].numpy(), c["deletion"].numpy(), label=name,
                                 **style)
                    axes[1].plot(c["fractions"].numpy(), c["insertion"].numpy(), label=name,
                                 **style)
            for ax, title in zip(axes, ("deletion", "insertion")):
                ax.set_xlabel("fraction of pixels")
                ax.set_ylabel("target probability")
                ax.set_title(title)
            axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
            fig.tight_layout()
            paths["faithfulness_figure"] = os.path.join(out_dir, "deletion_insertion.png")
            fig.savefig(paths["faithfulness_figure"], dpi=100, bbox_inches="tight")
        return paths


def _line_styles(n: int) -> List[Dict[str, str]]:
    r"""``n`` distinct line styles: the ten tab10 colours, then the same colours dashed,
    then dotted (matplotlib's default cycle repeats its colours after ten lines)."""
    dashes = ("-", "--", ":", "-.")
    return [{"color": f"C{i % 10}", "linestyle": dashes[(i // 10) % len(dashes)]}
            for i in range(n)]


def _negative_share(rows: List[Dict[str, Any]]) -> float:
    r"""The share of pairs with a defined mSC below zero (NaN without any)."""
    values = [float(r["msc"]) for r in rows if not math.isnan(float(r["msc"]))]
    return sum(v < 0 for v in values) / len(values) if values else float("nan")


def _default_preprocess(classifier: CLIPZeroShotClassifier) -> Callable[[Any], Tensor]:
    adapter = classifier.adapter
    return square_preprocess(int(adapter.input_size()[0]), adapter.image_mean, adapter.image_std)


def _token_map_methods(
    specs: Mapping[str, MethodSpec],
    classifier: CLIPZeroShotClassifier,
    method_kwargs: Mapping[str, Mapping[str, Any]],
) -> Dict[str, Any]:
    r"""The methods that score every text from one forward (token-map attributions
    asked for no ``attribute`` option other than ``feature_surgery``), with their mode."""
    out: Dict[str, Any] = {}
    for name, spec in specs.items():
        if isinstance(spec, str):
            if spec not in method_names():
                continue
            method: Any = build_method(spec, classifier)
            kwargs = method_defaults(spec, classifier, torch.zeros(1))
        else:
            method, kwargs = spec, {}
        kwargs.update(method_kwargs.get(name, {}))
        if isinstance(method, TokenMapAttribution) and set(kwargs) <= {"feature_surgery"} \
                and method.classifier is classifier:
            out[name] = (method, kwargs.get("feature_surgery"))
    return out


def evaluate(
    methods: Union[Sequence[str], Mapping[str, MethodSpec]],
    dataset: Dataset,
    classifier: CLIPZeroShotClassifier,
    preprocess: Optional[Callable[[Any], Tensor]] = None,
    batch_size: int = 8,
    limit: Optional[int] = None,
    tolerance: float = 15,
    thresholds: Optional[Tensor] = None,
    faithfulness: bool = True,
    deletion_steps: int = 20,
    baseline: Optional[Union[str, Tensor]] = None,
    method_kwargs: Optional[Mapping[str, Mapping[str, Any]]] = None,
    progress: bool = True,
    per_pair: bool = False,
) -> EvaluationResult:
    r"""Score explanation methods on a dataset with the paper's metrics.

    For every image and every class present in it, each method explains the
    class (its text among the dataset's class names, which must be the
    classifier's texts); the map — brought to one footing by :func:`compare`
    (``[0, 1]``, input size) — is resized bilinearly to the image's original size
    and scored against the class mask: mean score contrast, IoU at every
    threshold of the grid (the mIoU threshold is chosen per method over the
    whole dataset), pointing game, energy pointing game, and (optionally)
    deletion / insertion AUCs computed at the input size.

    Under ``torchrun`` (an initialised default process group) the dataset is split
    with a ``DistributedSampler`` and the per-pair records of every rank are
    gathered, so the result equals the single-process one.

    Args:
        methods (list[str] or dict): method names of :func:`compare`, or a dict of
            names to method specs.
        dataset (Dataset): items as in :mod:`captum_clip_surgery.evaluation.datasets`.
        classifier (CLIPZeroShotClassifier): built on ``dataset.class_names``.
        preprocess (Callable, optional): PIL → ``[3, h, w]``; default a square
            resize to the model's input size with the model's normalisation
            (the adapter's ``image_mean`` / ``image_std``).
        batch_size (int): images per batch.
        limit (int, optional): evaluate the first ``limit`` images only.
        tolerance (float): pointing-game tolerance in pixels of the original image.
        thresholds (Tensor, optional): IoU threshold grid (default 0..1 step 0.05).
        faithfulness (bool): compute deletion / insertion AUCs.
        deletion_steps (int): steps of the deletion / insertion curves.
        baseline (str or Tensor, optional): what deleted pixels become in the deletion /
            insertion curves (``"blur"``, ``"mean"``, ``"zero"`` or a tensor); default the
            dataset's ``default_baseline`` (``"mean"`` for the scenes world, whose model
            reads colour so that a blur deletes nothing; ``"blur"`` for natural images
            and datasets that declare none). The result's :attr:`~EvaluationResult.baseline`
            and the note under its tables say which was used.
        method_kwargs (dict, optional): per-method ``attribute`` keyword arguments.
        progress (bool): show a tqdm progress bar (rank 0 only).
        per_pair (bool): explain every (image, class) pair in its own batch row with
            every method. Default ``False``: token-map methods (CLIP Surgery, raw,
            MaskCLIP, ...) run one forward per image and score all its classes from
            it (:meth:`~TokenMapAttribution.similarity`), giving the same maps;
            gradient methods always need one row (one backward) per pair, batched.

    Returns:
        EvaluationResult: records, summary table, writers and figures.

    Examples::

        >>> from captum_clip_surgery.scenes import load_scenes_clip
        >>> from captum_clip_surgery.evaluation.datasets import ScenesSegmentation
        >>> model, preprocess, tokenizer = load_scenes_clip()
        >>> data = ScenesSegmentation(size=50)
        >>> clf = CLIPZeroShotClassifier(model, data.class_names, tokenizer=tokenizer)
        >>> result = evaluate(["surgery", "raw"], data, clf, preprocess)
        >>> print(result.to_markdown())
    """
    if not isinstance(classifier, CLIPZeroShotClassifier):
        raise TypeError(
            f"classifier: expected a CLIPZeroShotClassifier, got {type(classifier).__name__}"
        )
    check_int("batch_size", batch_size, minimum=1)
    if limit is not None:
        check_int("limit", limit, minimum=1)
    check_positive_number("tolerance", tolerance, allow_zero=True)
    check_bool("faithfulness", faithfulness)
    check_int("deletion_steps", deletion_steps, minimum=1)
    check_bool("progress", progress)
    check_bool("per_pair", per_pair)
    method_kwargs = check_method_kwargs(method_kwargs)
    if preprocess is not None and not callable(preprocess):
        raise TypeError(
            f"preprocess: expected a callable PIL image -> [3, h, w] tensor, got "
            f"{type(preprocess).__name__}"
        )
    if baseline is None:
        baseline = getattr(dataset, "default_baseline", None) or "blur"
    if isinstance(baseline, str) and (baseline not in BASELINE_WORDS or baseline == "tensor"):
        raise ValueError(
            f"baseline: expected 'blur', 'mean', 'zero' or a tensor, got {baseline!r}"
        )
    class_names = list(getattr(dataset, "class_names", []))
    kinds = dict(getattr(dataset, "class_kinds", None) or {})
    if class_names != list(classifier.texts):
        raise ValueError(
            "classifier: its texts must be the dataset's class_names "
            f"({len(class_names)} names), got {len(classifier.texts)} texts"
        )
    preprocess = preprocess or _default_preprocess(classifier)
    specs = dict(methods) if isinstance(methods, Mapping) else {m: m for m in methods}
    if not specs:
        raise ValueError("methods: expected at least one method")
    thresholds = torch.linspace(0, 1, 21) if thresholds is None else torch.as_tensor(thresholds)
    iou = ThresholdIoU(thresholds)
    _ = classifier.text_features  # fill the text cache before anything is timed
    classifier.empty_text_features()

    subset: Dataset = dataset
    if limit is not None:
        subset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))  # type: ignore[arg-type]
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    sampler = DistributedSampler(subset, shuffle=False) if distributed else None
    loader = DataLoader(subset, batch_size=batch_size, sampler=sampler, shuffle=False,
                        collate_fn=collate_items)
    records: List[Dict[str, Any]] = []
    device = classifier.adapter.device
    once = {} if per_pair else _token_map_methods(specs, classifier, method_kwargs)
    for batch in tqdm(loader, desc="evaluate", disable=not progress or rank != 0):
        pairs = [(p, int(c)) for p, item in enumerate(batch)
                 for c in torch.nonzero(item["present"]).flatten()]
        if not pairs:
            continue
        # each image is preprocessed once; row r of a pair tensor is pair r's image
        used = sorted({p for p, _ in pairs})
        row = {p: r for r, p in enumerate(used)}
        images = torch.stack([preprocess(batch[p]["image"]) for p in used]).to(device)
        image_rows = torch.tensor([row[p] for p, _ in pairs], device=device)
        targets = [c for _, c in pairs]
        pair_images = images[image_rows]
        for name, spec in specs.items():
            start = time.perf_counter()
            if name in once:  # one forward per image scores all its classes at once
                method, mode = once[name]
                scores = method.similarity(images, feature_surgery=mode)
                picked = scores[image_rows, torch.tensor(targets, device=scores.device)]
                raw = method.maps_from_scores(picked[:, None], pair_images)
                maps = footing(raw, classifier, images.shape[-2:])
            else:  # one row per (image, class) pair, the targets batched
                maps = compare(classifier, pair_images, targets, methods={name: spec},
                               method_kwargs={name: dict(method_kwargs.get(name, {}))})[name]
            seconds = (time.perf_counter() - start) / len(pairs)  # the batch's time, shared
            faith = None
            if faithfulness:
                faith = deletion_insertion(classifier, pair_images, maps.to(images.dtype), targets,
                                           steps=deletion_steps, baseline=baseline)
            for r, (p, c) in enumerate(pairs):
                item = batch[p]
                mask = item["masks"][c][None, None]
                m = F.interpolate(maps[r : r + 1].float().cpu(), size=mask.shape[-2:],
                                  mode="bilinear", align_corners=False).clamp(0, 1)
                records.append({
                    "method": name,
                    "index": int(item["index"]),
                    "class": class_names[c],
                    "kind": str(kinds.get(class_names[c], "")),
                    "msc": float(mean_score_contrast(m, mask, "none")[0]),
                    "pointing": float(pointing_game(m, mask, tolerance, "none")[0]),
                    "energy": float(energy_pointing_game(m, mask, "none")[0]),
                    "iou": [float(v) for v in iou.per_example(m, mask)[0]],
                    "deletion_auc": float(faith["deletion_auc"][r]) if faith else float("nan"),
                    "insertion_auc": float(faith["insertion_auc"][r]) if faith else float("nan"),
                    "deletion_curve": faith["deletion_curve"][r].tolist() if faith else [],
                    "insertion_curve": faith["insertion_curve"][r].tolist() if faith else [],
                    "seconds": seconds,
                })
    if distributed:
        gathered: List[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, records)
        unique: Dict[Any, Dict[str, Any]] = {}
        for part in gathered:  # the sampler pads with repeated items: keep one of each
            for r in part:
                unique.setdefault((r["method"], r["index"], r["class"]), r)
        records = list(unique.values())
    # One order whatever the batching or the number of ranks: method, image, class.
    records.sort(key=lambda r: (list(specs).index(r["method"]), r["index"],
                                class_names.index(r["class"])))
    used = (baseline if isinstance(baseline, str) else "tensor") if faithfulness else None
    return EvaluationResult(records=records, thresholds=thresholds, methods=list(specs),
                            num_images=len(subset), class_names=class_names, baseline=used)
