r"""``python -m captum_clip_surgery.scenes.plot_training RUN_DIR [--out PNG]``: draw the
training loss of a scenes-CLIP run (the history that ``train --out RUN_DIR`` keeps in
``state.json``) and print its first and last values."""

from __future__ import annotations

import argparse
import json
import os
from typing import List, Optional, Tuple

import numpy as np

__all__ = ["load_losses", "main", "plot_losses"]


def load_losses(run_dir: str) -> List[Tuple[int, float]]:
    r"""The ``(step, loss)`` history of a training run.

    Args:
        run_dir (str): the ``--out`` folder of ``python -m captum_clip_surgery.scenes.train``.

    Returns:
        list: one ``(step, loss)`` per training step, in order.

    Raises:
        FileNotFoundError: when ``run_dir`` holds no ``state.json``.
        ValueError: when the state holds no loss history.
    """
    path = os.path.join(run_dir, "state.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"run_dir: no state.json in {run_dir}")
    with open(path, encoding="utf-8") as fh:
        losses = json.load(fh).get("losses") or []
    if not losses:
        raise ValueError(f"run_dir: {path} holds no loss history")
    return [(int(s), float(v)) for s, v in losses]


def plot_losses(losses: List[Tuple[int, float]], window: int = 25) -> object:
    r"""A figure of the loss per step and its running mean over ``window`` steps.

    Args:
        losses (list): ``(step, loss)`` pairs, e.g. from :func:`load_losses`.
        window (int): running-mean width in steps.

    Returns:
        matplotlib.figure.Figure: the figure.

    Examples::

        >>> fig = plot_losses([(1, 5.0), (2, 4.0), (3, 3.5)], window=2)
        >>> fig.axes[0].get_xlabel()
        'step'
    """
    import matplotlib.pyplot as plt

    steps = np.array([s for s, _ in losses])
    values = np.array([v for _, v in losses])
    width = max(1, min(int(window), len(values)))
    smooth = np.convolve(values, np.ones(width) / width, mode="valid")
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    ax.plot(steps, values, color="0.75", linewidth=0.8, label="loss per step")
    ax.plot(steps[width - 1:], smooth, color="tab:blue", linewidth=1.8,
            label=f"running mean ({width} steps)")
    ax.set_xlabel("step")
    ax.set_ylabel("contrastive loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def main(argv: Optional[List[str]] = None) -> None:
    r"""Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--out", default="docs/scenes_training_loss.png")
    parser.add_argument("--window", type=int, default=25)
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    try:
        losses = load_losses(args.run_dir)
    except (FileNotFoundError, ValueError) as exc:
        parser.error(str(exc))  # one line and exit status 2, no traceback
    fig = plot_losses(losses, window=args.window)
    fig.savefig(args.out, dpi=110)
    w = max(1, min(args.window, len(losses)))
    first = np.mean([v for _, v in losses[:w]])
    last = np.mean([v for _, v in losses[-w:]])
    print(f"{len(losses)} steps; mean loss of the first {w} steps {first:.3f}, "
          f"of the last {w} steps {last:.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
