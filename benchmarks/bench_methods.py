r"""Time and peak memory of every explanation method ÷ a plain forward, in one run.

open_clip ViT-B-16 (random init), batch 8 (``--batch``), 224 px, 20 texts, CPU by default. Each
method runs in its own subprocess: model built the same way (seeded), text cache
filled, then the peak resident memory is reset (``/proc/self/clear_refs``,
Linux) and the method is timed over ``--repeats`` further calls
(median). Peak memory = growth of the resident high-water mark during the first
call (reset right before it, after the model is built and the text cache filled),
so allocator caches from earlier calls cannot hide it; the timed calls follow. Ratios are against ``model.encode_image`` under ``torch.no_grad()``
measured the same way.

Targets of the training-free family (METHODS-FAMILY): GEM ≤ 1.5× the forward's time,
SCLIP / ClearCLIP / NACLIP ≤ 1.1×, LeGrad ≤ 3× with peak memory ≤ GradCAM's; issue 20:
SC-CLIP ≤ 1.3×, ResCLIP ≤ 1.3× (its default: NACLIP + RCS + SFR, whose first pass scores
all 20 texts and runs PAMR at the input's pixels). Second-backbone
methods (issue 20; ``--backbone``, a timm architecture with random weights, default the
releases' DINO ViT-B/8): ``backbone`` times its forward alone, ProxyCLIP ≤ 1 + that ratio + 0.1,
CASS ≤ 2.0 with the backbone included (CASS needs scipy), and CorrCLIP (no target; regions:
four quadrants and an unsegmented corner); for these three the script also prints their time
less the backbone's and the CLIP forward's, all three timed in the same rounds of one process
(ProxyCLIP's target is that this is ≤ 0.1 CLIP forward). The time
ratio is paired: each timed call follows a plain forward in the same process, and the
median of the per-pair ratios is reported (robust to load changes on shared machines;
IG, timed once, uses the forward's own median).

Run: ``python benchmarks/bench_methods.py [--device cpu] [--batch 8] [--repeats 3] [--ig-steps 50]
[--methods surgery,gem,...] [--backbone vit_base_patch8_224.dino]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

METHODS = ["forward", "surgery", "raw", "maskclip", "gradcam", "chefer", "saliency", "ig",
           "gem", "sclip", "clearclip", "naclip", "legrad", "gradeclip", "scclip", "resclip",
           "backbone", "proxyclip", "cass", "corrclip"]

_CHILD = r"""
import json, statistics, sys, time
import torch, open_clip
from captum.attr import IntegratedGradients, LayerGradCam, Saliency
from captum_clip_surgery import (CLIPAttentionRelevance, CLIPSimilarityMap, CLIPSurgeryAttribution,
                                 CLIPZeroShotClassifier, ClearCLIPAttribution, GEMAttribution,
                                 GradECLIPAttribution, LeGradAttribution, MaskCLIPAttribution, NACLIPAttribution,
                                 ResCLIPAttribution, SCCLIPAttribution, SCLIPAttribution)

method, device, repeats, ig_steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
batch, backbone_name = int(sys.argv[5]), sys.argv[6]
CLASSES = ["dog", "cat", "grass", "sky", "car", "tree", "person", "bench", "building", "road",
           "water", "horse", "bird", "boat", "chair", "table", "bottle", "plant", "sofa", "train"]
torch.manual_seed(0)
model = open_clip.create_model("ViT-B-16").to(device).eval()
images = torch.randn(batch, 3, 224, 224, device=device)
clf = CLIPZeroShotClassifier(model, CLASSES)
_ = clf.text_features
target = 3
if method == "forward":
    def run():
        with torch.no_grad():
            return model.encode_image(images)
elif method in ("surgery", "raw", "maskclip", "gem", "sclip", "clearclip", "naclip", "scclip",
                "resclip"):
    cls = {"surgery": CLIPSurgeryAttribution, "raw": CLIPSimilarityMap, "maskclip": MaskCLIPAttribution,
           "gem": GEMAttribution, "sclip": SCLIPAttribution, "clearclip": ClearCLIPAttribution,
           "naclip": NACLIPAttribution, "scclip": SCCLIPAttribution,
           "resclip": ResCLIPAttribution}[method]
    explainer = cls(clf)
    def run():
        with torch.no_grad():
            return explainer.attribute(images, target=target)
elif method in ("backbone", "proxyclip", "cass", "corrclip"):
    # the second backbone (random init, the release's architecture; nothing is downloaded)
    import timm
    from captum_clip_surgery import CASSAttribution, CorrCLIPAttribution, ProxyCLIPAttribution
    from captum_clip_surgery.adapters import get_backbone
    dino = timm.create_model(backbone_name, pretrained=False, num_classes=0).to(device).eval()
    view = get_backbone(dino)
    def backbone_run():  # its forward alone, on the images re-normalised for it
        with torch.no_grad():
            x = view.prepare(images, clf.adapter.image_mean, clf.adapter.image_std)
            return view.patch_tokens(x)[0]
    if method == "backbone":
        run = backbone_run
    else:
        # ProxyCLIP / CASS; the backbone alone is timed in the same rounds as well: the
        # method's cost beyond it and the CLIP forward, paired (two ratios from separate
        # processes are noisier than their difference)
        if method == "corrclip":  # regions: four quadrants and an unsegmented corner
            def regions(rgb):
                b, _, h, w = rgb.shape
                ys = torch.arange(h)[:, None] >= h // 2
                xs = torch.arange(w)[None, :] >= w // 2
                labels = (1 + ys.long() * 2 + xs.long()).expand(b, h, w).clone()
                labels[:, : h // 8, : w // 8] = 0
                return labels
            explainer = CorrCLIPAttribution(clf, backbone=dino, mask_generator=regions)
        else:
            explainer = {"proxyclip": ProxyCLIPAttribution, "cass": CASSAttribution}[method](
                clf, backbone=dino)
        def run():
            with torch.no_grad():
                return explainer.attribute(images, target=target)
elif method == "gradcam":
    cam = LayerGradCam(clf, clf.gradcam_layer(-1))
    run = lambda: cam.attribute(images, target=target, relu_attributions=True)
elif method in ("legrad", "gradeclip"):
    grad_method = {"legrad": LeGradAttribution, "gradeclip": GradECLIPAttribution}[method](clf)
    run = lambda: grad_method.attribute(images, target=target)
elif method == "chefer":
    rel = CLIPAttentionRelevance(clf)
    run = lambda: rel.attribute(images, target=target)
elif method == "saliency":
    sal = Saliency(clf)
    run = lambda: sal.attribute(images, target=target)
elif method == "ig":
    ig = IntegratedGradients(clf)
    run = lambda: ig.attribute(images, target=target, n_steps=ig_steps, internal_batch_size=16)
sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
def status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
if device.startswith("cuda"):
    torch.cuda.reset_peak_memory_stats()
    base_gpu = torch.cuda.memory_allocated()
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")
base = status("VmRSS")
sync(); t0 = time.perf_counter(); out = run(); sync(); first = time.perf_counter() - t0
peak = status("VmHWM") - base
if device.startswith("cuda"):
    peak = torch.cuda.max_memory_allocated() - base_gpu
def plain():
    with torch.no_grad():
        return model.encode_image(images)
times = [first] if method == "ig" else []
ratios, excess = [], []
for _ in range(0 if method == "ig" else repeats):
    # the plain forward timed right before each call: the ratio of the pair survives load
    # changes on a shared machine
    sync(); t0 = time.perf_counter(); plain(); sync(); base = time.perf_counter() - t0
    if method in ("proxyclip", "cass", "corrclip"):
        sync(); t0 = time.perf_counter(); backbone_run(); sync()
        alone = time.perf_counter() - t0
    sync(); t0 = time.perf_counter(); out = run(); sync(); times.append(time.perf_counter() - t0)
    ratios.append(times[-1] / base)
    if method in ("proxyclip", "cass", "corrclip"):
        excess.append((times[-1] - alone - base) / base)
print(json.dumps({"seconds": statistics.median(times), "peak_bytes": peak, "shape": list(out.shape),
                  "paired_ratio": statistics.median(ratios) if ratios else None,
                  "paired_excess": statistics.median(excess) if excess else None}))
"""


def run_method(method: str, device: str, repeats: int, ig_steps: int, batch: int,
               backbone: str = "vit_base_patch8_224.dino") -> dict:
    res = subprocess.run(
        [sys.executable, "-c", _CHILD, method, device, str(repeats), str(ig_steps), str(batch),
         backbone],
        capture_output=True, text=True,
    )
    if res.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ig-steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--methods", default=",".join(METHODS[1:]))
    parser.add_argument("--backbone", default="vit_base_patch8_224.dino",
                        help="timm architecture of ProxyCLIP's / CASS's second backbone "
                             "(random init; the releases use DINO ViT-B/8)")
    args = parser.parse_args()
    results = {"forward": run_method("forward", args.device, args.repeats, args.ig_steps, args.batch,
                                     args.backbone)}
    for m in args.methods.split(","):
        results[m] = run_method(m, args.device, args.repeats, args.ig_steps, args.batch,
                                args.backbone)
    base = results["forward"]
    memory = "GPU memory allocated" if args.device.startswith("cuda") else "resident memory"
    print(f"ViT-B-16 random init, batch {args.batch}, 224 px, 20 texts, device {args.device}; "
          f"peak = growth of {memory}")
    print("time ratio: median over repeats of (method time / plain forward timed just before it, "
          "same process)")
    print(f"{'method':<10} {'time s':>8} {'time ratio':>10} {'peak MiB':>9} {'mem ratio':>9}  output")
    for name, r in results.items():
        ratio = r["paired_ratio"] if r["paired_ratio"] is not None else r["seconds"] / base["seconds"]
        print(f"{name:<10} {r['seconds']:8.2f} {ratio:10.2f} "
              f"{r['peak_bytes'] / 2**20:9.0f} {r['peak_bytes'] / max(base['peak_bytes'], 1):9.2f}"
              f"  {r['shape']}")
    if "backbone" in results:  # the targets of the second-backbone methods (issue 20)
        b = results["backbone"]["paired_ratio"]
        print(f"second backbone {args.backbone}: forward ratio {b:.2f}; targets: ProxyCLIP <= "
              f"{1.0 + b + 0.1:.2f} (1 + backbone + 0.1), CASS <= 2.00 (backbone included)")
    for name in ("proxyclip", "cass", "corrclip"):
        if results.get(name, {}).get("paired_excess") is not None:
            print(f"{name}: time - backbone alone - CLIP forward, in CLIP forwards, the three "
                  f"timed in the same rounds of one process: {results[name]['paired_excess']:.2f}"
                  + (" (ProxyCLIP's target: <= 0.1)" if name == "proxyclip" else ""))


if __name__ == "__main__":
    main()
