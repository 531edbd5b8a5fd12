r"""Core speed and memory ratios, measured side by side in one run.

1. ``CLIPSurgeryAttribution.attribute`` with cached text ÷ plain ``model.encode_image``
   (open_clip ViT-B-16, random init, batch 8, 224 px) — target <= 1.15.
2. First-call text encoding of 20 classes x 85 templates, full context ÷ truncated
   (speed-up) — target >= 3.
3. Peak extra memory of class-set feature surgery at B=8, N=1025, T=171, C=512:
   the package's closed form ÷ the release's element-wise B×N×T×C form — target <= 1/100.
   Each form runs in its own subprocess (Linux); peak = growth of the resident set's
   high-water mark after resetting it once the inputs exist.

Run: ``python benchmarks/bench_core.py [--device cpu|cuda] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

CLASSES = [
    "dog", "cat", "grass", "sky", "car", "tree", "person", "bench", "building", "road",
    "water", "horse", "bird", "boat", "chair", "table", "bottle", "plant", "sofa", "train",
]


def _time(fn, sync) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def bench_attribute(device: str, repeats: int) -> dict:
    import open_clip

    from captum_clip_surgery import CLIPSurgeryAttribution, CLIPZeroShotClassifier

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16").to(device).eval()
    images = torch.randn(8, 3, 224, 224, device=device)
    clf = CLIPZeroShotClassifier(model, CLASSES)
    explainer = CLIPSurgeryAttribution(clf)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.no_grad():
        _ = clf.text_features  # fill the cache
        explainer.attribute(images, target=0)  # warm-up
        model.encode_image(images)
        plain, ours = [], []
        for i in range(repeats):
            target = i % len(CLASSES)
            plain.append(_time(lambda: model.encode_image(images), sync))
            ours.append(_time(lambda t=target: explainer.attribute(images, target=t), sync))
    p, o = statistics.median(plain), statistics.median(ours)
    return {"encode_image_s": p, "attribute_s": o, "ratio": o / p}


def bench_text(device: str) -> dict:
    import open_clip

    from captum_clip_surgery import CLIPZeroShotClassifier

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16").to(device).eval()
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    out = {}
    for name, truncate in (("truncated", True), ("full", False)):
        clf = CLIPZeroShotClassifier(model, CLASSES, truncate_text=truncate)
        out[name + "_s"] = _time(lambda c=clf: c.text_features, sync)
    out["speedup"] = out["full_s"] / out["truncated_s"]
    return out


_MEMORY_CHILD = r"""
import sys, torch
from captum_clip_surgery import feature_surgery_scores
torch.manual_seed(0)
B, N, T, C = 8, 1025, 171, 512
f = torch.nn.functional.normalize(torch.randn(B, N, C), dim=-1)
e = torch.nn.functional.normalize(torch.randn(T, C), dim=-1)
def status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
with open("/proc/self/clear_refs", "w") as fh:  # reset the peak (VmHWM) to the current RSS
    fh.write("5")
base = status("VmRSS")
if sys.argv[1] == "closed":
    s = feature_surgery_scores(f, e, "classes")
else:
    # the release's element-wise form, batched per image weights
    p = (2 * f[:, 0] @ e.t()).softmax(-1)
    w = p / p.mean(-1, keepdim=True)
    feats = f.reshape(B, N, 1, C) * e.reshape(1, 1, T, C)
    feats *= w.reshape(B, 1, T, 1)
    feats = feats - feats.mean(2, keepdim=True)
    s = feats.sum(-1)
print(status("VmHWM") - base, float(s.abs().sum()))
"""


def bench_memory() -> dict:
    out = {}
    for form in ("closed", "elementwise"):
        res = subprocess.run(
            [sys.executable, "-c", _MEMORY_CHILD, form], capture_output=True, text=True, check=True
        )
        peak, checksum = res.stdout.split()
        out[form + "_bytes"] = int(peak)
        out[form + "_checksum"] = float(checksum)
    out["ratio"] = out["closed_bytes"] / out["elementwise_bytes"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    results = {
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "attribute": bench_attribute(args.device, args.repeats),
        "text": bench_text(args.device),
    }
    if not args.skip_memory:
        results["memory"] = bench_memory()
    if args.json:
        print(json.dumps(results, indent=2))
        return
    a, t = results["attribute"], results["text"]
    print(f"device {args.device}, {results['torch_threads']} threads, ViT-B-16 random init, batch 8, 224 px")
    print(f"attribute (cached text) / encode_image: {a['ratio']:.3f}  "
          f"({a['attribute_s']:.3f} s / {a['encode_image_s']:.3f} s)   target <= 1.15")
    print(f"text encoding 20x85 prompts, full / truncated: {t['speedup']:.2f}x  "
          f"({t['full_s']:.2f} s / {t['truncated_s']:.2f} s)   target >= 3")
    if "memory" in results:
        m = results["memory"]
        print(f"feature surgery peak memory, closed / BxNxTxC: {m['ratio']:.5f}  "
              f"({m['closed_bytes'] / 2**20:.1f} MiB / {m['elementwise_bytes'] / 2**20:.1f} MiB)"
              f"   target <= 0.01; checksums {m['closed_checksum']:.3f} vs {m['elementwise_checksum']:.3f}")


if __name__ == "__main__":
    main()
