r"""Model-randomisation sanity checks (Adebayo et al., "Sanity Checks for Saliency Maps",
NeurIPS 2018) for every method of the registry, with no extra dependency.

A map that explains the model must change when the model's weights are destroyed. The
checks re-initialise the image tower's attention blocks on a deep copy of the model
(never the user's model) and compare each method's maps with its maps on the trained
model:

- **cascading**: the last block, then the last two, ... down to every block;
- **independent**: one block at a time, the others trained.

Similarity is measured per map by the Spearman rank correlation and the structural
similarity (SSIM) of the maps as :func:`~captum_clip_surgery.compare` gives them
(``[0, 1]``, at the input's pixels); lower after randomisation is better. Data
randomisation (training on permuted labels) is out of scope.

A block is re-initialised by drawing each of its parameters (the adapter lists them:
:meth:`~captum_clip_surgery.adapters.base.BlockView.named_parameters`) anew from a normal
distribution with that tensor's own mean and standard deviation: the learned structure
is gone, the scale of the activations stays, so no map degenerates for numerical reasons.
The draw of a block depends only on the seed and the block's index, so a block gets the
same values in both modes.
"""

from __future__ import annotations

import copy
import csv
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor
from tqdm import tqdm

from captum_clip_surgery._validation import check_bool, check_int, prepare_images, resolve_target
from captum_clip_surgery.adapters.base import BlockView
from captum_clip_surgery.apps.comparison import check_method_kwargs, compare
from captum_clip_surgery.core.classifier import CLIPZeroShotClassifier
from captum_clip_surgery.evaluation.pairs import check_method_names
from captum_clip_surgery.methods.registry import method_title

__all__ = [
    "SANITY_MODES",
    "SanityResult",
    "randomized_copy",
    "sanity_checks",
    "spearman",
    "ssim",
]

#: The two randomisation orders.
SANITY_MODES = ("cascading", "independent")


def _as_rows(name: str, x: Tensor) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim < 2:
        got = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected a batch [B, ...] of maps, got {got}")
    return x.detach().reshape(x.shape[0], -1).double()


def _average_ranks(x: Tensor) -> Tensor:
    r"""Ranks ``0 .. N-1`` of each row of ``[B, N]``; tied values share their mean rank."""
    b, n = x.shape
    order = x.argsort(dim=1, stable=True)
    ordered = x.gather(1, order)
    # group id of each sorted position: a new group wherever the value changes
    starts = torch.ones_like(ordered, dtype=torch.long)
    starts[:, 1:] = (ordered[:, 1:] != ordered[:, :-1]).long()
    group = starts.cumsum(dim=1) - 1
    positions = torch.arange(n, dtype=torch.float64, device=x.device).expand(b, n)
    total = torch.zeros(b, n, dtype=torch.float64, device=x.device).scatter_add_(1, group, positions)
    count = torch.zeros(b, n, dtype=torch.float64, device=x.device).scatter_add_(
        1, group, torch.ones_like(positions))
    mean_rank = (total / count.clamp(min=1)).gather(1, group)
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    r"""Spearman rank correlation of each pair of maps (ties get their mean rank).

    Args:
        a (Tensor): ``[B, ...]`` maps.
        b (Tensor): ``[B, ...]`` maps of the same shape.

    Returns:
        Tensor: ``[B]`` float64 in ``[-1, 1]``; NaN where a map is constant (its rank
        correlation is undefined).

    Examples::

        >>> spearman(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[3.0, 2.0, 1.0]]))
        tensor([-1.], dtype=torch.float64)
    """
    ra, rb = _as_rows("a", a), _as_rows("b", b)
    if ra.shape != rb.shape:
        raise ValueError(f"a, b: expected maps of one shape, got {list(a.shape)} and {list(b.shape)}")
    ra, rb = _average_ranks(ra), _average_ranks(rb)
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    denominator = (ra.square().sum(dim=1) * rb.square().sum(dim=1)).sqrt()
    value = (ra * rb).sum(dim=1) / denominator
    return torch.where(denominator > 0, value, torch.full_like(value, float("nan"))).clamp(-1, 1)


def ssim(a: Tensor, b: Tensor, data_range: float = 1.0) -> Tensor:
    r"""Structural similarity of each pair of maps (Wang et al. 2004: local statistics in
    an 11 x 11 Gaussian window of standard deviation 1.5, the maps mirrored at the
    borders, ``k1 = 0.01``, ``k2 = 0.03``, averaged over the pixels; a smaller window for
    maps under 11 pixels), by ``torchmetrics``.

    Args:
        a (Tensor): ``[B, 1, H, W]`` maps (or ``[B, H, W]``).
        b (Tensor): maps of the same shape.
        data_range (float): the range of the maps' values (1 for :func:`compare`'s maps).

    Returns:
        Tensor: ``[B]`` float64, 1 for equal maps.

    Examples::

        >>> ssim(torch.full((1, 1, 16, 16), 0.2), torch.full((1, 1, 16, 16), 0.6))
        tensor([0.6001], dtype=torch.float64)
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    def four(name: str, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[1] != 1):
            got = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name}: expected maps [B, 1, H, W] or [B, H, W], got {got}")
        return (x[:, None] if x.ndim == 3 else x).detach().double()

    fa, fb = four("a", a), four("b", b)
    if fa.shape != fb.shape:
        raise ValueError(f"a, b: expected maps of one shape, got {list(a.shape)} and {list(b.shape)}")
    side = min(fa.shape[-2:])
    kernel = min(11, side if side % 2 else side - 1)
    if kernel < 3:
        raise ValueError(f"a: expected maps of at least 3 x 3 pixels, got {list(a.shape)}")
    sigma = 1.5 * kernel / 11
    value = structural_similarity_index_measure(
        fa, fb, kernel_size=kernel, sigma=sigma, reduction="none", data_range=float(data_range))
    return value.reshape(-1).double()


def _reinitialize(block: BlockView, seed: int) -> None:
    r"""Draw the block's parameters anew, each from ``N(mean, std)`` of its own values
    (in place: only ever called on a copy of the user's model)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(block.named_parameters(), key=lambda item: item[0]):
            values = p.detach().float()
            mean = float(values.mean())
            std = float(values.std(unbiased=False)) if values.numel() > 1 else 0.0
            noise = torch.randn(p.shape, generator=generator)
            p.copy_((mean + std * noise).to(device=p.device, dtype=p.dtype))


def _block_seed(seed: int, index: int) -> int:
    return (int(seed) * 1_000_003 + int(index)) % (2**63 - 1)


def _copy_classifier(classifier: CLIPZeroShotClassifier) -> CLIPZeroShotClassifier:
    r"""A classifier with the same texts, templates and tokenizer on a deep copy of the
    model (through a copy of its adapter, so an adapter given in place of a model stays)."""
    cache = classifier.text_cache
    memo = {id(cache.tokenizer): cache.tokenizer}  # the tokenizer is shared, not copied
    adapter = copy.deepcopy(classifier.adapter, memo)
    return CLIPZeroShotClassifier(adapter, list(classifier.texts), templates=classifier.templates,
                                  tokenizer=cache.tokenizer, truncate_text=cache.truncate)


def _check_blocks_to_randomize(blocks: Any, depth: int) -> List[int]:
    if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Sequence):
        raise TypeError(f"blocks: expected a list of block indices, got {type(blocks).__name__}")
    out = []
    for b in blocks:
        check_int("blocks", b, minimum=-depth, maximum=depth - 1)
        out.append(int(b) % depth)
    return sorted(set(out))


def randomized_copy(
    classifier: CLIPZeroShotClassifier, blocks: Sequence[int], seed: int = 0
) -> CLIPZeroShotClassifier:
    r"""A classifier on a deep copy of the model whose image-tower ``blocks`` are
    re-initialised (the user's model is not changed).

    Each parameter of a chosen block is drawn anew from a normal distribution with that
    tensor's own mean and standard deviation; the draw depends only on ``seed`` and the
    block's index.

    Args:
        classifier (CLIPZeroShotClassifier): the classifier whose model is copied.
        blocks (list[int]): block indices (negative count from the end); ``[]`` gives a
            plain copy.
        seed (int): the randomisation seed.

    Returns:
        CLIPZeroShotClassifier: the same texts, templates and tokenizer on the copy.

    Examples::

        >>> last = randomized_copy(clf, [-1])
        >>> compare(last, images, "dog", methods=["surgery"])  # maps of the randomised copy
    """
    if not isinstance(classifier, CLIPZeroShotClassifier):
        raise TypeError(
            f"classifier: expected a CLIPZeroShotClassifier, got {type(classifier).__name__}"
        )
    check_int("seed", seed)
    depth = len(classifier.adapter.image.blocks)
    if depth == 0:
        raise ValueError("classifier: the model's image tower has no attention blocks to randomise")
    chosen = _check_blocks_to_randomize(blocks, depth)
    copied = _copy_classifier(classifier)
    for index in chosen:
        _reinitialize(copied.adapter.image.blocks[index], _block_seed(seed, index))
    return copied


@dataclass
class SanityResult:
    r"""The similarity of every method's maps to its trained maps, step by step.

    Attributes:
        records (list[dict]): one per method, mode, step and map: ``method``, ``mode``
            (``"cascading"`` / ``"independent"``), ``step`` (cascading: blocks randomised,
            0 to depth; independent: the block's index), ``blocks`` (the randomised
            block indices, e.g. ``"5-3"``), ``row`` (the map's row in the batch),
            ``spearman``, ``ssim``.
        methods (list[str]): method names in order.
        depth (int): blocks of the image tower.
        num_maps (int): maps per method and step.
        seed (int): the randomisation seed.
    """

    records: List[Dict[str, Any]]
    methods: List[str]
    depth: int
    num_maps: int
    seed: int = 0
    modes: Tuple[str, ...] = field(default=SANITY_MODES)

    def curve(self, method: str, mode: str = "cascading", metric: str = "spearman") -> List[float]:
        r"""The mean ``metric`` (``"spearman"`` or ``"ssim"``) per step of ``mode``
        (NaN-mean over the maps; NaN where none is defined).

        Args:
            method (str): a method of the result.
            mode (str): ``"cascading"`` (steps 0 .. depth) or ``"independent"`` (blocks
                0 .. depth - 1).
            metric (str): ``"spearman"`` or ``"ssim"``.

        Returns:
            list[float]: one value per step.
        """
        if method not in self.methods:
            raise ValueError(f"method: expected one of {', '.join(self.methods)}, got {method!r}")
        if mode not in self.modes:
            raise ValueError(f"mode: expected one of {', '.join(self.modes)}, got {mode!r}")
        if metric not in ("spearman", "ssim"):
            raise ValueError(f"metric: expected 'spearman' or 'ssim', got {metric!r}")
        steps = range(self.depth + 1) if mode == "cascading" else range(self.depth)
        out = []
        for step in steps:
            values = torch.tensor([r[metric] for r in self.records if r["method"] == method
                                   and r["mode"] == mode and r["step"] == step],
                                  dtype=torch.float64)
            out.append(float(values.nanmean()) if len(values) else float("nan"))
        return out

    def summary(self) -> Dict[str, Dict[str, float]]:
        r"""Per method: the mean Spearman and SSIM after randomising the last block and
        after randomising every block (cascading), and the mean over the independent
        steps: ``{method: {"spearman_last", "spearman_all", "ssim_last", "ssim_all",
        "spearman_independent", "ssim_independent"}}`` (NaN for a mode not run)."""
        out: Dict[str, Dict[str, float]] = {}
        for method in self.methods:
            row: Dict[str, float] = {}
            for metric in ("spearman", "ssim"):
                if "cascading" in self.modes:
                    curve = self.curve(method, "cascading", metric)
                    row[f"{metric}_last"], row[f"{metric}_all"] = curve[1], curve[-1]
                else:
                    row[f"{metric}_last"] = row[f"{metric}_all"] = float("nan")
                if "independent" in self.modes:
                    values = torch.tensor(self.curve(method, "independent", metric))
                    row[f"{metric}_independent"] = float(values.nanmean())
                else:
                    row[f"{metric}_independent"] = float("nan")
            out[method] = row
        return out

    def to_markdown(self, digits: int = 3) -> str:
        r"""The summary as a markdown table (one row per method)."""
        columns = [("spearman_last", "Spearman, last block"), ("spearman_all", "Spearman, all blocks"),
                   ("ssim_last", "SSIM, last block"), ("ssim_all", "SSIM, all blocks"),
                   ("spearman_independent", "Spearman, one block (mean)"),
                   ("ssim_independent", "SSIM, one block (mean)")]
        lines = ["| method | " + " | ".join(f"{t} ↓" for _, t in columns) + " |",
                 "|---|" + "---:|" * len(columns)]
        for method, row in self.summary().items():
            cells = ["–" if math.isnan(row[k]) else f"{row[k]:.{digits}f}" for k, _ in columns]
            lines.append(f"| {method_title(method)} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def write(self, out_dir: str) -> Dict[str, str]:
        r"""Write ``sanity.md`` (the summary table), ``sanity.csv`` (every method, mode and
        step: the mean Spearman and SSIM), ``sanity_records.csv`` (per map) and the figure
        ``sanity.png``; returns their paths."""
        os.makedirs(out_dir, exist_ok=True)
        paths = {"sanity_markdown": os.path.join(out_dir, "sanity.md"),
                 "sanity_csv": os.path.join(out_dir, "sanity.csv"),
                 "sanity_records": os.path.join(out_dir, "sanity_records.csv")}
        _write_text(paths["sanity_markdown"], self.to_markdown())
        rows = []
        for method in self.methods:
            for mode in self.modes:
                spearmans = self.curve(method, mode, "spearman")
                ssims = self.curve(method, mode, "ssim")
                for step, (sp, ss) in enumerate(zip(spearmans, ssims)):
                    rows.append([method, mode, step, _blocks_label(mode, step, self.depth),
                                 repr(sp), repr(ss)])
        _write_csv(paths["sanity_csv"], ["method", "mode", "step", "blocks", "spearman", "ssim"], rows)
        keys = ["method", "mode", "step", "blocks", "row", "spearman", "ssim"]
        _write_csv(paths["sanity_records"], keys, [[r[k] for k in keys] for r in self.records])
        paths["sanity_figure"] = self.plot(os.path.join(out_dir, "sanity.png"))
        return paths

    def plot(self, path: Optional[str] = None) -> Any:
        r"""Correlation vs randomised depth, one line per method: Spearman and SSIM (columns)
        for each mode (rows). Saved as PNG when ``path`` is given.

        Returns:
            matplotlib.figure.Figure or str: the figure, or ``path`` once saved.
        """
        from matplotlib.figure import Figure

        fig = Figure(figsize=(11, 3.6 * len(self.modes)))
        axes = fig.subplots(len(self.modes), 2, squeeze=False)
        dashes = ("-", "--", ":", "-.")
        for r, mode in enumerate(self.modes):
            steps = list(range(self.depth + 1)) if mode == "cascading" else list(range(self.depth))
            for c, (metric, title) in enumerate((("spearman", "Spearman rank correlation"),
                                                 ("ssim", "SSIM"))):
                ax = axes[r, c]
                lowest = -0.2 if metric == "spearman" else -0.05
                for i, method in enumerate(self.methods):
                    curve = self.curve(method, mode, metric)
                    finite = [v for v in curve if math.isfinite(v)]
                    lowest = min([lowest] + [v - 0.05 for v in finite])
                    ax.plot(steps, curve, marker="o", markersize=3,
                            label=method_title(method), color=f"C{i % 10}",
                            linestyle=dashes[(i // 10) % len(dashes)])
                ax.set_xticks(steps, [_blocks_label(mode, s, self.depth) for s in steps],
                              fontsize=7, rotation=30 if mode == "cascading" else 0)
                ax.axhline(0, color="black", linewidth=0.5)
                ax.set_ylim(lowest, 1.05)  # every value in view (a map can turn negative)
                ax.set_ylabel(title)
                ax.set_xlabel("blocks randomised (from the last down)" if mode == "cascading"
                              else "the one block randomised")
                ax.set_title(f"{mode} randomisation")
        axes[0, 1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        fig.tight_layout()
        if path is None:
            return fig
        _save_png(fig, path)
        return path


def _blocks_label(mode: str, step: int, depth: int) -> str:
    if mode == "independent":
        return str(step)
    if step == 0:
        return "none"
    last = depth - 1
    return str(last) if step == 1 else f"{last}-{depth - step}"


def _write_text(path: str, text: str) -> None:
    r"""Write through a temporary file, so a partial file is never left under ``path``."""
    part = path + ".part"
    with open(part, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(part, path)


def _save_png(fig: Any, path: str) -> None:
    r"""Save a figure as PNG through a temporary file (never a partial PNG under ``path``)."""
    part = path + ".part"
    fig.savefig(part, format="png", dpi=100, bbox_inches="tight")
    os.replace(part, path)


def _write_csv(path: str, header: List[str], rows: List[List[Any]]) -> None:
    part = path + ".part"
    with open(part, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(part, path)


def _rng_devices(device: torch.device) -> List[int]:
    r"""The CUDA devices whose generator ``torch.random.fork_rng`` must save for work on
    ``device`` (none on the CPU)."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def _seeded_maps(
    classifier: CLIPZeroShotClassifier, method: str, images: Tensor, targets: Tensor,
    kwargs: Mapping[str, Any], seed: int,
) -> Tensor:
    r"""One method's maps, the random number generators seeded (SmoothGrad draws the
    same noise at every step) and restored afterwards."""
    with torch.random.fork_rng(devices=_rng_devices(images.device)):
        torch.manual_seed(seed)
        maps = compare(classifier, images, targets, methods=[method],
                       method_kwargs={method: dict(kwargs)})[method]
    return maps.float().cpu()


def sanity_checks(
    classifier: CLIPZeroShotClassifier,
    images: Tensor,
    target: Any,
    methods: Optional[Sequence[str]] = None,
    modes: Sequence[str] = SANITY_MODES,
    method_kwargs: Optional[Mapping[str, Mapping[str, Any]]] = None,
    seed: int = 0,
    progress: bool = False,
) -> SanityResult:
    r"""Model-randomisation sanity checks of every method on a batch of images.

    The image tower's attention blocks of a deep copy of the model are re-initialised
    (see :func:`randomized_copy`): cascading from the last block down to the first, and
    one block at a time. At every step each method's maps (:func:`compare`'s footing)
    are compared with its maps on the trained model by :func:`spearman` and :func:`ssim`.
    The user's model is never changed. Random methods (SmoothGrad) draw the same noise at
    every step (the generators are seeded with ``seed`` for each call and restored).

    Args:
        classifier (CLIPZeroShotClassifier): the classifier explained.
        images (Tensor): ``[B, 3, H, W]`` preprocessed images.
        target (int, str, list, Tensor): the texts explained, as for :func:`compare`.
        methods (list[str], optional): registered method names (default: every method
            defined for the model).
        modes (list[str]): ``"cascading"`` and / or ``"independent"``.
        method_kwargs (dict, optional): per-method ``attribute`` keyword arguments.
        seed (int): seed of the randomisation and of the methods' generators.
        progress (bool): show a progress bar.

    Returns:
        SanityResult: the records, the summary table, the CSV and the figure.

    Examples::

        >>> result = sanity_checks(clf, images, "dog", methods=["surgery", "gradcam"])
        >>> result.summary()["surgery"]["spearman_all"]   # after randomising every block
        0.05...
        >>> result.write("sanity")                        # sanity.md, .csv, .png
    """
    if not isinstance(classifier, CLIPZeroShotClassifier):
        raise TypeError(
            f"classifier: expected a CLIPZeroShotClassifier, got {type(classifier).__name__}"
        )
    names = check_method_names(methods, classifier)
    if isinstance(modes, str) or not modes or any(m not in SANITY_MODES for m in modes):
        raise ValueError(
            f"modes: expected some of {', '.join(map(repr, SANITY_MODES))}, got {modes!r}")
    modes = tuple(m for m in SANITY_MODES if m in modes)
    extra = check_method_kwargs(method_kwargs)
    check_int("seed", seed)
    check_bool("progress", progress)
    depth = len(classifier.adapter.image.blocks)
    if depth == 0:
        raise ValueError("classifier: the model's image tower has no attention blocks to randomise")
    images = prepare_images(classifier.adapter, images, "images", pad=False)
    targets = resolve_target(target, images.shape[0], classifier.texts)
    kwargs = {name: extra.get(name, {}) for name in names}

    original = {name: _seeded_maps(classifier, name, images, targets, kwargs[name], seed)
                for name in names}
    copied = _copy_classifier(classifier)
    blocks = copied.adapter.image.blocks
    for block in blocks:  # a clear error before any work for a view that cannot list them
        list(block.named_parameters())
    trained = [{n: p.detach().clone() for n, p in block.named_parameters()} for block in blocks]

    def restore(index: int) -> None:
        with torch.no_grad():
            for n, p in blocks[index].named_parameters():
                p.copy_(trained[index][n])

    plan: List[Tuple[str, int, List[int]]] = []
    if "cascading" in modes:
        plan += [("cascading", step, list(range(depth - step, depth))) for step in range(depth + 1)]
    if "independent" in modes:
        plan += [("independent", i, [i]) for i in range(depth)]
    records: List[Dict[str, Any]] = []
    current: List[int] = []
    for mode, step, chosen in tqdm(plan, desc="sanity", disable=not progress):
        for index in current:
            if index not in chosen:
                restore(index)
        for index in chosen:
            if index not in current:
                _reinitialize(blocks[index], _block_seed(seed, index))
        current = chosen
        label = _blocks_label(mode, step, depth)
        for name in names:
            maps = _seeded_maps(copied, name, images, targets, kwargs[name], seed)
            rho = spearman(maps, original[name])
            sim = ssim(maps, original[name])
            for row in range(maps.shape[0]):
                records.append({"method": name, "mode": mode, "step": step, "blocks": label,
                                "row": row, "spearman": float(rho[row]), "ssim": float(sim[row])})
    return SanityResult(records=records, methods=names, depth=depth, num_maps=int(images.shape[0]),
                        seed=seed, modes=modes)
