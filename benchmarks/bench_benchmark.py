r"""Throughput of the segmentation benchmark's inference: the windows of several images in
one forward, against one image at a time, one window at a time (the releases' loop), and
the plain forward over the same windows (the limit).

Images of VOC's typical size (375×500, resized to the preset's short side: 336×448, six
224-pixel windows with SCLIP's protocol) are segmented four ways, each timed on the same
prepared images (reading and resizing excluded, the text features encoded beforehand):

- ``batched``: :class:`~captum_clip_surgery.benchmark.ProtocolSegmenter` on ``--batch``
  images at once, windows of several images sharing each forward (``--window-batch``
  windows per forward; default the package's: 8 on the CPU, 64 on a GPU);
- ``per image``: the same, one image per call (its windows in one forward);
- ``per window``: one window per forward, one image at a time, as the releases run;
- ``plain forward``: the method's ``similarity`` alone on the ``batched`` windows, in the
  same batches: what no post-processing could beat.

Two more rows time the plain forward alone over the same windows at 1 window per call and
at all windows of all images in one call: the most that batching itself can gain on the
device (on a 2-core CPU a forward costs about the same per window at any batch size).

Rounds alternate the rows and the medians are reported, so that a change of load on a
shared machine moves them together. Targets: ``batched`` at least 2× ``per image`` on the
CPU at batch 8, and ``batched`` time per image at most 1.2× the ``plain forward``::

    python benchmarks/bench_benchmark.py                       # ViT-B/16, random weights
    python benchmarks/bench_benchmark.py --model scenes        # the shipped scenes model
    python benchmarks/bench_benchmark.py --device cuda --precision fp16
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("vit-b-16", "scenes"), default="vit-b-16")
    parser.add_argument("--method", default="sclip")
    parser.add_argument("--preset", default="sclip")
    parser.add_argument("--dataset", default="voc21", help="the preset's settings of this dataset")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--window-batch", type=int, default=None,
                        help="windows per forward (default the package's: 8 on the CPU)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from captum_clip_surgery import CLIPZeroShotClassifier, build_method
    from captum_clip_surgery.benchmark import ProtocolSegmenter, get_preset
    from captum_clip_surgery.benchmark.datasets import class_file_path, read_class_file
    from captum_clip_surgery.benchmark.inputs import normalize_image, rescale_image
    from captum_clip_surgery.benchmark.runner import protocol_templates

    settings = get_preset(args.preset).settings(args.dataset if args.model != "scenes" else "scenes")
    if args.model == "scenes":
        from captum_clip_surgery.scenes import ScenesWorld, load_scenes_clip

        model, _, tokenizer = load_scenes_clip(device=args.device)
        lines = [[c] for c in ScenesWorld().class_names]
        size = (96, 96)
    else:
        import open_clip

        torch.manual_seed(0)
        model = open_clip.create_model("ViT-B-16").eval().to(args.device)  # random weights
        tokenizer = None
        lines = read_class_file(class_file_path(settings.class_source, settings.class_file),
                                settings.synonym_separator)
        size = (375, 500)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.precision]
    model = model.to(dtype)
    queries = [q for line in lines for q in line]
    clf = CLIPZeroShotClassifier(model, queries, templates=protocol_templates(settings.templates),
                                 tokenizer=tokenizer)
    # with the preset's method options, as the benchmark builds it
    method = build_method(args.method, clf, **settings.options_for(args.method))
    with torch.no_grad():
        clf.encode_texts(queries)
    rng = np.random.default_rng(0)
    images, sizes = [], []
    for _ in range(args.batch):
        bgr = rng.integers(0, 256, size + (3,), dtype=np.uint8)
        images.append(normalize_image(rescale_image(bgr, settings.short_side, settings.long_side),
                                      settings.mean, settings.std))
        sizes.append(size)
    batched = ProtocolSegmenter(method, lines, settings, window_batch=args.window_batch)
    per_window = ProtocolSegmenter(method, lines, settings, window_batch=1)
    windows = batched.windows(tuple(images[0].shape[-2:]))
    crops = torch.stack([im[:, w.y0 : w.y1, w.x0 : w.x1] for im in images for w in windows])
    crops = crops.to(args.device)
    sync: Callable[[], None] = (
        (lambda: torch.cuda.synchronize()) if args.device.startswith("cuda") else (lambda: None))

    def plain(per_call: int) -> None:
        p = batched.patch
        h, w = crops.shape[-2:]
        for s in range(0, len(crops), per_call):
            with torch.no_grad():
                method.similarity(crops[s : s + per_call, :, : h - h % p, : w - w % p], queries)

    wb = batched.window_batch
    runs = {
        "batched": lambda: batched.predict(images, sizes),
        "per image": lambda: [batched.predict([im], [sz]) for im, sz in zip(images, sizes)],
        "per window": lambda: [per_window.predict([im], [sz]) for im, sz in zip(images, sizes)],
        "plain forward": lambda: plain(wb),
        "plain forward, 1 window per call": lambda: plain(1),
        f"plain forward, {len(crops)} windows per call": lambda: plain(len(crops)),
    }
    for fn in runs.values():  # warm up
        fn()
    times: dict = {k: [] for k in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    per_image = {k: statistics.median(v) / args.batch for k, v in times.items()}
    print(f"model {args.model} ({args.precision}, {args.device}, {args.threads} threads), method "
          f"{args.method}, preset {args.preset} / {settings.dataset}: {args.batch} images "
          f"{size[0]}x{size[1]} -> {tuple(images[0].shape[-2:])}, {len(windows)} windows of "
          f"{settings.crop} each, {len(queries)} queries, {wb} windows per forward; medians of "
          f"{args.rounds} rounds")
    print()
    print("| mode | images/s | s / image |")
    print("|---|---:|---:|")
    for name, t in per_image.items():
        print(f"| {name} | {1 / t:.2f} | {t:.3f} |")
    print()
    print(f"batched vs per image: {per_image['per image'] / per_image['batched']:.2f}x "
          "(target >= 2x on the CPU at batch 8)")
    print(f"batched vs per window (the releases' loop): "
          f"{per_image['per window'] / per_image['batched']:.2f}x")
    print(f"batched time / plain forward over its windows: "
          f"{per_image['batched'] / per_image['plain forward']:.2f}x (target <= 1.2x)")
    one = per_image["plain forward, 1 window per call"]
    best = min(v for k, v in per_image.items() if k.startswith("plain forward"))
    print(f"the most batching can gain here (plain forward, 1 window per call / the fastest "
          f"plain forward): {one / best:.2f}x")


if __name__ == "__main__":
    main()
