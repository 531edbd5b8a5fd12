r"""Zero-shot accuracy of the shipped scenes CLIP on held-out scenes.

``python -m captum_clip_surgery.scenes.evaluate_zero_shot [--n 500]`` prints
object-presence top-1 on single-object scenes (texts: the object classes) and
background top-1 (texts: the background classes), both with the package's
default 85-template prompt ensemble.
"""

from __future__ import annotations

import argparse
from typing import Dict, Optional

import torch

from captum_clip_surgery.classifier import CLIPZeroShotClassifier
from captum_clip_surgery.scenes.model import load_scenes_clip
from captum_clip_surgery.scenes.world import HELD_OUT_START, ScenesWorld

__all__ = ["zero_shot_accuracy"]


@torch.no_grad()
def zero_shot_accuracy(
    n: int = 500,
    seed: int = 0,
    start: int = HELD_OUT_START,
    weights: Optional[str] = None,
    batch_size: int = 100,
) -> Dict[str, float]:
    r"""Held-out zero-shot top-1 accuracies of the shipped model.

    Args:
        n (int): scenes per task.
        seed (int): world seed (the shipped model was trained with seed 0).
        start (int): first held-out scene index.
        weights (str, optional): another weights file.
        batch_size (int): images per forward.

    Returns:
        dict: ``{"object_top1": ..., "background_top1": ...}`` in ``[0, 1]``.
    """
    model, preprocess, tokenizer = load_scenes_clip(weights=weights)
    world = ScenesWorld(seed=seed)
    objects = CLIPZeroShotClassifier(model, world.object_classes, tokenizer=tokenizer)
    backgrounds = CLIPZeroShotClassifier(model, world.background_classes, tokenizer=tokenizer)
    hits = {"object_top1": 0, "background_top1": 0}
    for lo in range(0, n, batch_size):
        scenes = [world.sample(start + i, n_objects=1) for i in range(lo, min(n, lo + batch_size))]
        images = torch.stack([preprocess(s["image"]) for s in scenes])
        obj = torch.tensor([world.object_classes.index(s["objects"][0]) for s in scenes])
        bg = torch.tensor([world.background_classes.index(s["background"]) for s in scenes])
        hits["object_top1"] += int((objects(images).argmax(-1) == obj).sum())
        hits["background_top1"] += int((backgrounds(images).argmax(-1) == bg).sum())
    return {k: v / n for k, v in hits.items()}


def main() -> None:
    r"""Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--weights", default=None)
    args = parser.parse_args()
    acc = zero_shot_accuracy(n=args.n, weights=args.weights)
    print(f"object presence top-1 (single-object scenes): {acc['object_top1']:.3f}")
    print(f"background top-1: {acc['background_top1']:.3f}")


if __name__ == "__main__":
    main()
