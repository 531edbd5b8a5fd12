r"""Half precision: how far fp16 / bf16 maps are from the float32 maps of the same model.

The shipped scenes CLIP (a small trained ViT) is run once in float32 and once cast to
each half dtype, on the same held-out scenes and the same targets (every class present
in each scene). For every method the ``[0, 1]`` maps (``compare``'s footing: min-max per
map at the input size) of the half model are compared with the float32 maps:
the maximum and the mean absolute difference over all pixels, and the mean over maps of
each map's own largest difference. The attention softmaxes, feature surgery and min-max
run in float32 in both cases; what differs is the rest of the tower (weights,
activations and matmuls in half precision).

Run: ``python benchmarks/half_precision.py [--scenes 16] [--device cpu|cuda]``
(CPU half-precision kernels are slow but exist; a GPU gives the same picture).
"""

from __future__ import annotations

import argparse
import copy
from typing import Dict, List

import torch

METHODS = ["surgery", "raw", "maskclip", "chefer", "gradcam"]


def _maps(model, scenes, texts, device, dtype) -> Dict[str, torch.Tensor]:
    from captum_clip_surgery import SCENE_TEMPLATES, CLIPZeroShotClassifier, compare
    from captum_clip_surgery.scenes.model import scenes_preprocess, scenes_tokenizer

    half = copy.deepcopy(model).to(device=device, dtype=dtype)
    clf = CLIPZeroShotClassifier(half, texts, templates=SCENE_TEMPLATES,
                                 tokenizer=scenes_tokenizer())
    preprocess = scenes_preprocess(int(model.visual.image_size[0]))
    images, targets = [], []
    for s in scenes:
        for name in list(s["objects"]) + [s["background"]]:
            images.append(preprocess(s["image"]))
            targets.append(texts.index(name))
    x = torch.stack(images).to(device)
    out = compare(clf, x, targets, methods=METHODS)
    return {k: v.float().cpu() for k, v in out.items()}


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from captum_clip_surgery.scenes import ScenesWorld, load_scenes_clip
    from captum_clip_surgery.scenes.world import HELD_OUT_START

    torch.manual_seed(0)
    model, _, _ = load_scenes_clip()
    world = ScenesWorld(seed=0)
    scenes = [world.sample(HELD_OUT_START + i) for i in range(args.scenes)]
    texts = list(world.class_names)
    full = _maps(model, scenes, texts, args.device, torch.float32)
    pairs = next(iter(full.values())).shape[0]
    side = int(model.visual.image_size[0])
    print(f"scenes CLIP, {args.scenes} held-out scenes, {pairs} (scene, class) maps of {side}x{side}, "
          f"device {args.device}; |half - float32| on [0, 1] maps")
    print("| dtype | method | max abs | mean abs | mean per-map max |")
    print("|---|---|---:|---:|---:|")
    for dtype in (torch.float16, torch.bfloat16):
        half = _maps(model, scenes, texts, args.device, dtype)
        for name in METHODS:
            diff = (half[name] - full[name]).abs()
            per_map = diff.flatten(1).amax(dim=1)
            print(f"| {str(dtype).replace('torch.', '')} | {name} | {float(diff.max()):.4f} | "
                  f"{float(diff.mean()):.5f} | {float(per_map.mean()):.4f} |")


if __name__ == "__main__":
    main()
