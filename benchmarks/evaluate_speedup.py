r"""``evaluate()``: one forward per image for all its classes ÷ one batch row per pair.

The token-map methods (CLIP Surgery, raw CLIP, MaskCLIP) score every class of an image
from one forward; before, every (image, class) pair was its own batch row, so an
image with K present classes went through the tower K times. Both paths run here side
by side on the same held-out scenes with the shipped scenes CLIP (localization metrics
only: deletion / insertion cost the same in both paths, one perturbation series per
pair), alternating their order over ``--repeats`` rounds; the time is the method's
explanation time per image (``seconds_per_image``), the median over rounds. The records
of the two paths are checked to agree.

Run: ``python benchmarks/evaluate_speedup.py [--scenes 50] [--repeats 3] [--batch-size 16]``.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Dict, List

import torch

METHODS = ["surgery", "surgery_empty", "raw", "maskclip"]


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from captum_clip_surgery import CLIPZeroShotClassifier
    from captum_clip_surgery.evaluation import ScenesSegmentation, evaluate
    from captum_clip_surgery.scenes import load_scenes_clip

    model, preprocess, tokenizer = load_scenes_clip()
    data = ScenesSegmentation(size=args.scenes)
    clf = CLIPZeroShotClassifier(model, data.class_names, tokenizer=tokenizer)
    times: Dict[bool, Dict[str, List[float]]] = {True: {}, False: {}}
    results = {}
    for i in range(args.repeats):
        for per_pair in ((True, False) if i % 2 == 0 else (False, True)):
            result = evaluate(METHODS, data, clf, preprocess, batch_size=args.batch_size,
                              faithfulness=False, progress=False, per_pair=per_pair)
            results[per_pair] = result
            for method, row in result.summary().items():
                times[per_pair].setdefault(method, []).append(row["seconds_per_image"])
    old, new = results[True], results[False]
    worst = max(abs(a[k] - b[k]) for a, b in zip(old.records, new.records)
                for k in ("msc", "pointing", "energy"))
    pairs = len(new.records) // len(METHODS)
    print(f"scenes CLIP, {args.scenes} held-out scenes, {pairs} (scene, class) pairs "
          f"({pairs / args.scenes:.2f} classes per image), batch {args.batch_size}, "
          f"{args.threads} thread(s), median of {args.repeats}; records agree to {worst:.1e}")
    print("| method | per pair (s / image) | once per image (s / image) | speed-up |")
    print("|---|---:|---:|---:|")
    total_old = total_new = 0.0
    for method in METHODS:
        a = statistics.median(times[True][method])
        b = statistics.median(times[False][method])
        total_old, total_new = total_old + a, total_new + b
        print(f"| {method} | {a:.4f} | {b:.4f} | {a / b:.2f}x |")
    print(f"| all four | {total_old:.4f} | {total_new:.4f} | {total_old / total_new:.2f}x |")


if __name__ == "__main__":
    main()
