r"""GPU checks of the applications and the evaluation harness, in one run.

On the shipped scenes model, CUDA (float32 and float16) against the CPU:

1. ``segment`` label maps: share of pixels with the same label;
2. ``multilabel_scores`` and ``explain_text_tokens``: largest absolute difference;
3. ``text_to_points``: the same cells (largest coordinate difference);
4. ``segment_with_sam`` with a tiny random SAM on the GPU runs and returns a mask of
   the image's size;
5. ``evaluate`` on 16 held-out scenes with every method: largest difference of the
   summary metrics (mSC, mIoU, pointing, energy, deletion / insertion AUC).

Prints one JSON report. Run: ``python benchmarks/gpu_apps_check.py`` (needs CUDA).
"""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root


def _run(device: str, dtype: torch.dtype, scenes, names):
    from captum_clip_surgery import (
        CLIPSurgeryAttribution,
        CLIPZeroShotClassifier,
        explain_text_tokens,
        multilabel_scores,
        segment,
        text_to_points,
    )
    from captum_clip_surgery.scenes import load_scenes_clip

    model, preprocess, tokenizer = load_scenes_clip(device=device, dtype=dtype)
    clf = CLIPZeroShotClassifier(model, names, tokenizer=tokenizer)
    explainer = CLIPSurgeryAttribution(clf)
    images = torch.stack([preprocess(s["image"]) for s in scenes]).to(device, dtype)
    with torch.no_grad():
        labels = segment(explainer, images).cpu()
        scores = multilabel_scores(clf, images).float().cpu()
        tokens = explain_text_tokens(clf, images, scenes[0]["caption"]).token_scores.float().cpu()
    points = text_to_points(explainer, images, [scenes[0]["objects"][0], "lemon+grass"])
    return labels, scores, tokens, points


def applications() -> dict:
    from captum_clip_surgery import segment_with_sam
    from captum_clip_surgery.scenes import ScenesWorld
    from captum_clip_surgery.scenes.world import HELD_OUT_START

    world = ScenesWorld(seed=0)
    names = list(world.object_classes) + list(world.background_classes)
    scenes = [world.sample(HELD_OUT_START + i) for i in range(16)]
    ref = _run("cpu", torch.float32, scenes, names)
    report = {}
    for tag, dtype in (("cuda_fp32", torch.float32), ("cuda_fp16", torch.float16)):
        got = _run("cuda", dtype, scenes, names)
        point_diff = 0.0
        same_counts = True
        for a_img, b_img in zip(ref[3], got[3]):
            for a, b in zip(a_img, b_img):
                if a.points.shape != b.points.shape:
                    same_counts = False
                    continue
                if len(a.points):
                    point_diff = max(point_diff, float((a.points - b.points).abs().max()))
        report[tag] = {
            "segment_same_label_share": float((ref[0] == got[0]).float().mean()),
            "multilabel_max_abs_diff": float((ref[1] - got[1]).abs().max()),
            "text_token_max_abs_diff": float((ref[2] - got[2]).abs().max()),
            "points_same_counts": same_counts,
            "points_max_coord_diff_px": point_diff,
        }
    from tests.models import tiny_sam_predictor  # the tests' tiny SAM, on the GPU

    predictor = tiny_sam_predictor(device="cuda")
    image = np.asarray(scenes[0]["image"])  # uint8 [H, W, 3], as SAM takes it
    mask, score = segment_with_sam(predictor, image, ref[3][0][0])
    report["tiny_sam_cuda"] = {"mask_shape": list(mask.shape), "score": float(score)}
    return report


def evaluation() -> dict:
    from captum_clip_surgery import CLIPZeroShotClassifier
    from captum_clip_surgery.evaluation import ScenesSegmentation, evaluate, square_preprocess
    from captum_clip_surgery.scenes import load_scenes_clip

    data = ScenesSegmentation(size=16)
    methods = ["surgery", "surgery_empty", "raw", "maskclip", "gradcam", "chefer", "ig"]
    out = {}
    for device in ("cpu", "cuda"):
        model, preprocess, tokenizer = load_scenes_clip(device=device)
        norm = preprocess.transforms[-1]
        clf = CLIPZeroShotClassifier(model, data.class_names, tokenizer=tokenizer)
        result = evaluate(methods, data, clf, square_preprocess(64, norm.mean, norm.std),
                          batch_size=8, deletion_steps=10, progress=False,
                          method_kwargs={"ig": {"n_steps": 16}})
        out[device] = result.summary()
    diff = {}
    for m in methods:
        worst = 0.0
        for k in ("msc", "miou", "pointing", "energy", "deletion_auc", "insertion_auc"):
            a, b = out["cpu"][m][k], out["cuda"][m][k]
            if not (math.isnan(a) and math.isnan(b)):
                worst = max(worst, abs(a - b))
        diff[m] = worst
    return {"evaluate_cpu_vs_cuda_max_metric_diff": diff,
            "cuda_seconds_per_image": {m: out["cuda"][m]["seconds_per_image"] for m in methods}}


if __name__ == "__main__":
    assert torch.cuda.is_available(), "needs a CUDA device"
    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    report.update(applications())
    report.update(evaluation())
    print(json.dumps(report, indent=1))
