r"""Seconds per image of LPOSS+ (the pixel graph and its 10 conjugate-gradient steps) and of
LPOSS (the patch graph over all windows), on the CPU with 2 threads by default.

LPOSS+ runs at ``--size`` pixels (448 × 448: the release's short side) with ``--classes``
class maps (21: Pascal VOC); LPOSS on the nodes of the release's windows over a
``--size`` × ``4/3 --size`` image (224 / 112 windows of 14 × 14 DINO ViT-B/16 patches, k = 400).
Random inputs: the cost does not depend on the values. Target (issue 20): LPOSS+ ≤ 0.5 s per
image at 448 px on 2 CPU cores.

Run: ``python benchmarks/bench_lposs.py [--threads 2] [--size 448] [--classes 21] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from captum_clip_surgery.apps.label_propagation import lposs, lposs_plus
from captum_clip_surgery.apps.windows import window_spans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    size, k = args.size, args.classes
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    rgb = torch.rand(1, 3, size, size, generator=g).to(args.device)
    scores = torch.randn(1, k, size // 16, size // 16, generator=g).to(args.device)
    plus = []
    for _ in range(args.repeats):
        sync()
        t0 = time.perf_counter()
        lposs_plus(rgb, scores)
        sync()
        plus.append(time.perf_counter() - t0)
    width = size * 4 // 3
    windows = len(window_spans(size, 224, 112)) * len(window_spans(width, 224, 112))
    n = windows * 14 * 14
    y = torch.randn(n, k, generator=g).to(args.device)
    f = torch.randn(n, 768, generator=g).to(args.device)
    pos = (torch.rand(n, 2, generator=g) * size).to(args.device)
    patch = []
    for _ in range(args.repeats):
        sync()
        t0 = time.perf_counter()
        lposs(y, f, pos)
        sync()
        patch.append(time.perf_counter() - t0)
    print(f"device {args.device}, {args.threads} threads, {k} classes, medians of {args.repeats}")
    print(f"LPOSS+ {size}x{size} px ({size * size} pixels, 168 neighbours): "
          f"{statistics.median(plus):.2f} s per image (target <= 0.5 s)")
    print(f"LPOSS {size}x{width} px ({windows} windows, {n} nodes, k=400): "
          f"{statistics.median(patch):.2f} s per image")


if __name__ == "__main__":
    main()
