r"""Open-vocabulary segmentation mIoU of every dense method on held-out scenes, without
refinement and with PAMR, LPOSS and LPOSS+, on the shipped scenes CLIP (no download).

Every dense method (a token-map explainer: ``DENSE_METHODS``) labels each pixel with
:func:`captum_clip_surgery.segment` over the world's classes (objects and background
"stuff", with the release's 85 templates as in ``clip-surgery evaluate``; no background
threshold, every pixel is labelled); the labels are compared with the exact masks by a confusion matrix
over all pixels of all scenes (:class:`SegmentationMIoU`): mIoU over the classes and pixel
accuracy. PAMR (:func:`captum_clip_surgery.pamr`, 10 iterations) runs at the input size
with two sets of dilations: the published (8, 16), meant for ~400-px images, and
``--small-dilations`` (default: the published ones scaled from 400 px to the input
size, rounded, at least 1: (2, 4) at 96 px). LPOSS and LPOSS+ (``segment(...,
refine="lposs" | "lposs+")``, the release's settings) propagate the scores over the patch
graph of a second backbone: with no DINO trained on the scenes, the graph backbone is the
scenes CLIP's own image tower (ProxyCLIP and CASS use the same tower as their backbone).
LeGrad is not dense (one backward pass per class) and is not listed.

Run: ``python benchmarks/segment_scenes.py [--limit 200] [--size PX]
[--sliding-window CROP,STRIDE] [--methods surgery,raw,...] [--refinements
pamr,lposs,lposs+]``.
"""

from __future__ import annotations

import argparse
import time
from typing import Dict, List, Optional, Tuple

import torch

from captum_clip_surgery import CLIPZeroShotClassifier, build_method, segment
from captum_clip_surgery.evaluation import ScenesSegmentation, SegmentationMIoU
from captum_clip_surgery.methods.registry import DENSE_METHODS, method_title
from captum_clip_surgery.scenes import load_scenes_clip
from captum_clip_surgery.scenes.model import scenes_preprocess


def _pairs(text: Optional[str], name: str) -> Optional[Tuple[int, ...]]:
    if not text:
        return None
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise SystemExit(f"{name}: expected comma-separated ints, got {text!r}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=200, help="held-out scenes (default 200)")
    parser.add_argument("--methods", default=",".join(DENSE_METHODS))
    parser.add_argument("--size", type=int, default=None,
                        help="square input size (default: the model's, 96)")
    parser.add_argument("--sliding-window", default=None, metavar="CROP,STRIDE",
                        help="sliding-window inference at --size (default: whole image)")
    parser.add_argument("--small-dilations", default=None, metavar="D1,D2")
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--refinements", default="pamr,lposs,lposs+",
                        help="comma-separated: pamr, lposs, lposs+ (default all three)")
    args = parser.parse_args()

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in DENSE_METHODS]
    if unknown:
        raise SystemExit(f"--methods: not dense: {unknown}; expected some of {DENSE_METHODS}")
    refinements = [r.strip() for r in args.refinements.split(",") if r.strip()]
    bad = [r for r in refinements if r not in ("pamr", "lposs", "lposs+")]
    if bad:
        raise SystemExit(f"--refinements: unknown {bad}; expected some of pamr, lposs, lposs+")
    window = _pairs(args.sliding_window, "--sliding-window")
    model, _, tokenizer = load_scenes_clip()
    if args.size is None:
        args.size = int(model.visual.image_size[0])
    small = _pairs(args.small_dilations, "--small-dilations") or tuple(
        max(1, round(d * args.size / 400)) for d in (8, 16))
    data = ScenesSegmentation(size=args.limit)
    clf = CLIPZeroShotClassifier(model, data.class_names, tokenizer=tokenizer)
    _ = clf.text_features  # fill the text cache before anything is timed
    preprocess = scenes_preprocess(args.size)
    k = len(data.class_names)
    settings: Dict[str, Dict[str, object]] = {"none": dict(pamr=False)}
    if "pamr" in refinements:
        settings["pamr_published"] = dict(pamr=10, pamr_dilations=(8, 16))
        settings["pamr_small"] = dict(pamr=10, pamr_dilations=small)
    for r in ("lposs", "lposs+"):
        if r in refinements:
            settings[r] = dict(refine=r)
    acc: Dict[str, Dict[str, SegmentationMIoU]] = {
        m: {s: SegmentationMIoU(k, ignore_index=255) for s in settings} for m in methods
    }
    seconds: Dict[str, Dict[str, float]] = {m: {s: 0.0 for s in settings} for m in methods}
    explainers = {m: build_method(m, clf) for m in methods}
    start_all = time.perf_counter()
    for first in range(0, len(data), args.batch_size):
        items = [data[i] for i in range(first, min(first + args.batch_size, len(data)))]
        images = torch.stack([preprocess(item["image"]) for item in items])
        truth: List[torch.Tensor] = []
        for item in items:
            labels = item["masks"].float().argmax(dim=0)
            labels[~item["masks"].any(dim=0)] = 255
            truth.append(labels)
        target = torch.stack(truth)
        size = tuple(target.shape[-2:])
        for m in methods:
            for s, kwargs in settings.items():
                t0 = time.perf_counter()
                with torch.no_grad():
                    pred = segment(explainers[m], images, output_size=size,
                                   sliding_window=window, **kwargs)
                seconds[m][s] += time.perf_counter() - t0
                acc[m][s].update(pred, target)
    total = time.perf_counter() - start_all

    print(f"scenes segmentation: {len(data)} held-out scenes, {k} classes, input {args.size} px"
          + (f", sliding window {window[0]}/{window[1]}" if window else ", whole image")
          + f"; PAMR 10 iterations; {total:.0f} s in all")
    print()
    heads = {"none": "mIoU ↑", "pamr_published": "+ PAMR (8, 16)", "pamr_small": f"+ PAMR {small}",
             "lposs": "+ LPOSS", "lposs+": "+ LPOSS+"}
    acc_cols = ["none"] + [s for s in ("pamr_small", "lposs+") if s in settings]
    acc_heads = ["pixel acc. ↑"] + [heads[s] for s in acc_cols[1:]]
    time_cols = ["none"] + [s for s in ("lposs", "lposs+") if s in settings]
    time_heads = ["s / image"] + [f"s / image {heads[s]}" for s in time_cols[1:]]
    columns = [heads[s] for s in settings] + acc_heads + time_heads
    print("| method | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for m in methods:
        r = {s: acc[m][s].compute() for s in settings}
        for v in r.values():
            confusion = v["confusion"].double()
            v["pixel_accuracy"] = float(confusion.diagonal().sum() / confusion.sum())
        cells = ([f"{r[s]['miou']:.3f}" for s in settings]
                 + [f"{r[s]['pixel_accuracy']:.3f}" for s in acc_cols]
                 + [f"{seconds[m][s] / len(data):.4f}" for s in time_cols])
        print(f"| {method_title(m)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
