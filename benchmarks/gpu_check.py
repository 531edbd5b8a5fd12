r"""GPU checks in one run: correctness on CUDA and the core ratios measured there.

1. open_clip ViT-B-16 and RN50 (random init, seeded): CLIP Surgery maps on the GPU
   in float32 equal the CPU maps; float16 / bfloat16 models on the GPU stay close
   to float32; other resolutions work; the model's state is unchanged.
2. ``bench_core`` ratios on the GPU (attribute ÷ encode_image, text truncation).
3. ``bench_methods`` table on the GPU (peak = CUDA memory allocated).

Run: ``python benchmarks/gpu_check.py`` (needs a CUDA device).
"""

from __future__ import annotations

import copy
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

TEXTS = ["dog", "cat", "grass", "sky", "car", "person"]


def _maps(model, images, device, dtype):
    from captum_clip_surgery import CLIPSurgeryAttribution

    explainer = CLIPSurgeryAttribution(model, texts=TEXTS)
    with torch.no_grad():
        out = explainer.attribute(images.to(device, dtype), target=[0, 1, 2, 3])
        sim = explainer.similarity(images.to(device, dtype))
    return out.float().cpu(), sim.float().cpu()


def correctness() -> dict:
    import open_clip

    report = {}
    for name, size in (("ViT-B-16", 224), ("RN50", 224)):
        torch.manual_seed(0)
        cpu_model = open_clip.create_model(name).eval()
        images = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1))
        ref_maps, ref_sim = _maps(cpu_model, images, "cpu", torch.float32)
        gpu_model = copy.deepcopy(cpu_model).cuda()
        before = {k: v.clone() for k, v in gpu_model.state_dict().items()}
        maps, sim = _maps(gpu_model, images, "cuda", torch.float32)
        entry = {
            "fp32_max_abs_map_diff": float((maps - ref_maps).abs().max()),
            "fp32_max_abs_score_diff": float((sim - ref_sim).abs().max()),
        }
        for dtype in (torch.float16, torch.bfloat16):
            half = copy.deepcopy(cpu_model).to("cuda", dtype)
            hmaps, hsim = _maps(half, images, "cuda", dtype)
            key = str(dtype).split(".")[-1]
            entry[f"{key}_mean_abs_map_diff"] = float((hmaps - ref_maps).abs().mean())
            entry[f"{key}_score_corr"] = float(torch.corrcoef(torch.stack([hsim.flatten(), ref_sim.flatten()]))[0, 1])
            entry[f"{key}_finite"] = bool(torch.isfinite(hmaps).all())
        other = torch.randn(2, 3, 320, 448, device="cuda")
        big, _ = _maps(gpu_model, torch.cat([other, other]).cpu(), "cuda", torch.float32)
        entry["other_resolution_shape"] = list(big.shape)
        after = gpu_model.state_dict()
        entry["model_unchanged"] = all(torch.equal(before[k], after[k]) for k in before)
        report[name] = entry
    return report


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device")
    print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__, flush=True)
    report = {"correctness": correctness()}
    print(json.dumps(report, indent=2), flush=True)

    import bench_core

    report["bench_core"] = {
        "attribute": bench_core.bench_attribute("cuda", repeats=20),
        "text": bench_core.bench_text("cuda"),
    }
    print(json.dumps(report["bench_core"], indent=2), flush=True)

    import bench_methods

    results = {}
    for m in bench_methods.METHODS:
        results[m] = bench_methods.run_method(m, "cuda", 10, 50)
    base = results["forward"]
    print(f"{'method':<10} {'time ms':>8} {'time ratio':>10} {'peak MiB':>9} {'mem ratio':>9}")
    for name, r in results.items():
        print(f"{name:<10} {1000 * r['seconds']:8.1f} {r['seconds'] / base['seconds']:10.2f} "
              f"{r['peak_bytes'] / 2**20:9.0f} {r['peak_bytes'] / max(base['peak_bytes'], 1):9.2f}")
    report["bench_methods"] = results
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "gpu_check.json"), "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
