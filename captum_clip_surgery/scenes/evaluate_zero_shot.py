r"""Zero-shot accuracy of the shipped scenes CLIP on held-out scenes.

``python -m captum_clip_surgery.scenes.evaluate_zero_shot [--n 500] [--n-multi 400]``
prints object-presence top-1 on single-object scenes (texts: the object classes),
background top-1 (texts: the background classes), multi-object top-1 on scenes
with 1–3 objects (a hit when the ``k`` highest-scoring object classes are exactly the
scene's ``k`` objects) and, for every object present in a scene with 2–3 objects,
whether it is among the ``k`` highest (overall and per class), all with the package's default 85-template prompt ensemble
(every template embedded, L2-normalised, averaged, L2-normalised again). Held-out
scenes start at :data:`~captum_clip_surgery.scenes.world.HELD_OUT_START` (indices the
training never draws), with ``n_objects=1`` for the single-object tasks and the
world's own random count for the multi-object task.
``--checkpoint DIR/checkpoint.safetensors`` evaluates a training checkpoint instead.
"""

from __future__ import annotations

import argparse
from typing import Dict, List, Optional

import torch
from safetensors.torch import load_file
from torch import nn

from captum_clip_surgery.core.classifier import CLIPZeroShotClassifier
from captum_clip_surgery.scenes.model import (
    build_scenes_clip,
    load_scenes_clip,
    scenes_preprocess,
    scenes_tokenizer,
)
from captum_clip_surgery.scenes.world import HELD_OUT_START, ScenesWorld

__all__ = ["load_checkpoint", "zero_shot_accuracy"]


def load_checkpoint(path: str) -> nn.Module:
    r"""A model of the shipped architecture holding a training checkpoint.

    Args:
        path (str): ``checkpoint.safetensors`` written by
            ``python -m captum_clip_surgery.scenes.train --out DIR``.

    Returns:
        nn.Module: the open_clip ``CLIP`` in eval mode (float32, CPU).
    """
    model = build_scenes_clip()
    model.load_state_dict(load_file(path), strict=False)
    return model.eval()


@torch.no_grad()
def zero_shot_accuracy(
    n: int = 500,
    seed: int = 0,
    start: int = HELD_OUT_START,
    weights: Optional[str] = None,
    batch_size: int = 100,
    model: Optional[nn.Module] = None,
    n_multi: int = 0,
) -> Dict[str, float]:
    r"""Held-out zero-shot top-1 accuracies of the shipped model.

    Args:
        n (int): scenes per task.
        seed (int): world seed (the shipped model was trained with seed 0).
        start (int): first held-out scene index.
        weights (str, optional): another weights file in the shipped format.
        batch_size (int): images per forward.
        model (nn.Module, optional): evaluate this open_clip ``CLIP`` (e.g. from
            :func:`load_checkpoint`) instead of loading weights.
        n_multi (int): multi-object scenes (1–3 objects) for ``"multi_object_top1"``;
            0 skips the task.

    Returns:
        dict: ``{"object_top1": ..., "background_top1": ...}`` in ``[0, 1]``, and
        when ``n_multi > 0``: ``"multi_object_top1"`` (the ``k`` highest object
        classes are exactly the ``k`` present), ``"multi_object_recall"`` (over every
        object present in a scene with two or more objects: the object is among the
        ``k`` highest classes) and ``"multi_object_recall/<class>"`` per class.

    Examples::

        >>> acc = zero_shot_accuracy(n=100)
        >>> acc["object_top1"] >= 0.9
        True
    """
    if model is None:
        model, preprocess, tokenizer = load_scenes_clip(weights=weights)
    else:
        preprocess = scenes_preprocess(int(model.visual.image_size[0]))
        tokenizer = scenes_tokenizer(int(model.context_length))
    world = ScenesWorld(seed=seed, size=int(model.visual.image_size[0]))
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
    out = {k: v / n for k, v in hits.items()}
    if n_multi > 0:
        multi = 0
        found = {c: [0, 0] for c in world.object_classes}  # class -> [hits, present]
        for lo in range(0, n_multi, batch_size):
            scenes = [world.sample(start + i) for i in range(lo, min(n_multi, lo + batch_size))]
            logits = objects(torch.stack([preprocess(s["image"]) for s in scenes]))
            for row, s in zip(logits, scenes):
                top = {world.object_classes[i] for i in row.topk(len(s["objects"])).indices.tolist()}
                multi += top == set(s["objects"])
                if len(s["objects"]) >= 2:
                    for name in s["objects"]:
                        found[name][0] += name in top
                        found[name][1] += 1
        out["multi_object_top1"] = multi / n_multi
        pairs = sum(p for _, p in found.values())
        out["multi_object_recall"] = sum(h for h, _ in found.values()) / max(pairs, 1)
        for name, (h, p) in found.items():
            out[f"multi_object_recall/{name}"] = h / p if p else float("nan")
    return out


def main(argv: Optional[List[str]] = None) -> None:
    r"""Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--n-multi", type=int, default=400,
                        help="multi-object scenes (0 skips the task; default 400)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", default=None, help="weights in the shipped format")
    parser.add_argument("--checkpoint", default=None, help="a training checkpoint.safetensors")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_checkpoint(args.checkpoint) if args.checkpoint else None
    acc = zero_shot_accuracy(n=args.n, seed=args.seed, weights=args.weights, model=model,
                             n_multi=args.n_multi)
    print(f"object presence top-1 (single-object scenes, n={args.n}): {acc['object_top1']:.4f}")
    print(f"background top-1 (n={args.n}): {acc['background_top1']:.4f}")
    if "multi_object_top1" in acc:
        print(f"multi-object top-1 (1-3 objects, top-k classes = the present set, "
              f"n={args.n_multi}): {acc['multi_object_top1']:.4f}")
        print(f"each present object in scenes with 2-3 objects is among the top-k: "
              f"{acc['multi_object_recall']:.4f}")
        per_class = {k.split("/", 1)[1]: v for k, v in acc.items() if k.startswith("multi_object_recall/")}
        print("  per class: " + ", ".join(f"{k} {v:.3f}" for k, v in per_class.items()))


if __name__ == "__main__":
    main()
