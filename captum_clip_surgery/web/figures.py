r"""The web explorer's figures (matplotlib, no pyplot): maps side by side with a colour
bar and each text's score, labels with a legend, point prompts (and SAM masks)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Mapping, Optional, Sequence

import numpy as np

from captum_clip_surgery.methods.registry import method_title

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from captum_clip_surgery.apps.points import PointPrompts

__all__ = ["plot_explanation", "plot_points", "plot_segmentation"]


def _rgb(image: Any) -> np.ndarray:
    return np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)


def plot_explanation(
    image: Any,
    maps: Mapping[str, np.ndarray],
    texts: Sequence[str],
    scores: Optional[Sequence[float]] = None,
    alpha: float = 0.5,
    cmap: str = "jet",
) -> Figure:
    r"""One row per text: the image (titled with the text and its score), then each
    method's map blended over it, and one colour bar for every map.

    Args:
        image (PIL.Image.Image or np.ndarray): the image, ``H×W×3``.
        maps (dict[str, np.ndarray]): per method name, ``[T, H, W]`` in ``[0, 1]``.
        texts (list[str]): the ``T`` texts.
        scores (list[float], optional): the model's probability of each text.
        alpha (float): opacity of the maps.
        cmap (str): matplotlib colour map.

    Returns:
        matplotlib.figure.Figure: the figure.
    """
    from matplotlib.figure import Figure

    base = _rgb(image)
    if not maps or not texts:
        raise ValueError("maps, texts: expected at least one method and one text")
    for name, m in maps.items():
        if np.ndim(m) != 3 or len(m) != len(texts):
            raise ValueError(f"maps[{name!r}]: expected [{len(texts)}, H, W], got "
                             f"{list(np.shape(m))}")
    rows, cols = len(texts), len(maps) + 1
    fig = Figure(figsize=(2.4 * cols + 0.8, 2.5 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    shown = None
    for r, text in enumerate(texts):
        label = text if scores is None else f"{text}\np = {float(scores[r]):.3f}"
        axes[r, 0].imshow(base)
        axes[r, 0].set_title(label, fontsize=10)
        for c, (name, m) in enumerate(maps.items(), start=1):
            ax = axes[r, c]
            ax.imshow(base)
            shown = ax.imshow(np.asarray(m[r], dtype=np.float32), cmap=cmap, alpha=alpha,
                              vmin=0.0, vmax=1.0, extent=(-0.5, base.shape[1] - 0.5,
                                                          base.shape[0] - 0.5, -0.5))
            ax.set_title(method_title(name) if r == 0 else "", fontsize=10)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(shown, ax=axes.ravel().tolist(), shrink=min(1.0, 0.9 / rows ** 0.5),
                 label="map (min-max per map)")
    return fig


def _palette(count: int) -> np.ndarray:
    from matplotlib import colormaps

    cmap = colormaps["tab20" if count > 10 else "tab10"]
    return np.array([cmap(i % cmap.N)[:3] for i in range(count)], dtype=np.float32)


def plot_segmentation(
    image: Any, labels: np.ndarray, texts: Sequence[str], title: str = "", alpha: float = 0.6
) -> Figure:
    r"""The image and its label map side by side, with a legend of the texts (and the
    share of the pixels each got).

    Args:
        image (PIL.Image.Image or np.ndarray): the image.
        labels (np.ndarray): ``[H, W]`` indices into ``texts``.
        texts (list[str]): the classes.
        title (str): the method's name.
        alpha (float): opacity of the labels over the image.

    Returns:
        matplotlib.figure.Figure: the figure.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    base = _rgb(image).astype(np.float32) / 255.0
    colours = _palette(len(texts))
    labels = np.asarray(labels)
    painted = colours[np.clip(labels, 0, len(texts) - 1)]
    blended = (1 - alpha) * base + alpha * painted
    fig = Figure(figsize=(7.5, 3.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.imshow(base)
    left.set_title("image")
    right.imshow(blended)
    right.set_title(f"labels ({title})" if title else "labels")
    for ax in (left, right):
        ax.set_xticks([])
        ax.set_yticks([])
    share = [float((labels == k).mean()) for k in range(len(texts))]
    handles = [Patch(color=colours[k], label=f"{t} ({100 * share[k]:.0f}%)")
               for k, t in enumerate(texts)]
    fig.legend(handles=handles, loc="outside right center", fontsize=9)
    return fig


def plot_points(
    image: Any, prompts: Sequence[PointPrompts], masks: Optional[List[np.ndarray]] = None
) -> Figure:
    r"""One panel per text: the image, its positive points (green) and negative points
    (red), and SAM's mask for them when given.

    Args:
        image (PIL.Image.Image or np.ndarray): the image.
        prompts (list[PointPrompts]): one per text, in the image's pixels.
        masks (list[np.ndarray], optional): ``[H, W]`` bool per text.

    Returns:
        matplotlib.figure.Figure: the figure.
    """
    from matplotlib.figure import Figure

    base = _rgb(image)
    n = max(1, len(prompts))
    fig = Figure(figsize=(2.8 * n, 3.2), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    marker = 45.0  # points², whatever the image's size
    for k, (ax, prompt) in enumerate(zip(axes, prompts)):
        ax.imshow(base)
        if masks is not None:
            overlay = np.zeros(base.shape[:2] + (4,), dtype=np.float32)
            overlay[np.asarray(masks[k], dtype=bool)] = (0.1, 0.4, 1.0, 0.5)
            ax.imshow(overlay)
        pos, neg = prompt.positive.cpu().numpy(), prompt.negative.cpu().numpy()
        # points are (x, y) in pixel units whose centres sit at +0.5: imshow's centres sit at 0
        if len(pos):
            ax.scatter(pos[:, 0] - 0.5, pos[:, 1] - 0.5, s=marker, c="lime", marker="o",
                       edgecolors="black", linewidths=0.8, label="positive")
        if len(neg):
            ax.scatter(neg[:, 0] - 0.5, neg[:, 1] - 0.5, s=marker, c="red", marker="X",
                       edgecolors="black", linewidths=0.8, label="negative")
        what = f"{len(pos)} + / {len(neg)} −" if prompt.present else "judged absent"
        ax.set_title(f"{prompt.text}\n{what}", fontsize=10)
        ax.set_xlim(-0.5, base.shape[1] - 0.5)
        ax.set_ylim(base.shape[0] - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig
