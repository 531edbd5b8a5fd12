r"""Core speed and memory ratios, measured side by side in one run.

1. ``CLIPSurgeryAttribution.attribute`` with cached text ÷ plain ``model.encode_image``
   (open_clip ViT-B-16, random init, batch 8, 224 px) — target <= 1.15.
2. First-call text encoding of 20 classes x 85 templates: full context ÷ the default
   (length buckets, shared prefixes) — target >= 12; plain truncation and length
   buckets alone are printed beside it.
3. Peak extra memory of class-set feature surgery at B=8, N=1025, T=171, C=512:
   the package's closed form ÷ the release's element-wise B×N×T×C form — target <= 1/100.
   Each form runs in its own subprocess (Linux); peak = growth of the resident set's
   high-water mark after resetting it once the inputs exist.
4. Per model family, side by side: ``CLIPSurgeryAttribution.attribute`` (cached text) ÷
   the model's own image forward (``adapter.encode_image``), same batch, random init,
   at each model's input size — open_clip ViT-B-16 (open_clip's own tower), open_clip
   ViT-B-16-SigLIP (timm ViT, MAP head), open_clip EVA02-B-16 (timm Eva, RoPE), and
   Hugging Face CLIP ViT-B/16 when ``captum_clip_surgery.adapters.huggingface`` exists
   (skipped otherwise) — target <= 1.15 each. On the CPU timed by process CPU time on
   one thread (robust to other load on a shared machine), on CUDA by wall time.

Run: ``python benchmarks/bench_core.py [--device cpu|cuda] [--repeats 5] [--text-threads 1]``;
parts only: ``--sections text`` (or ``--only-text``), ``--sections families --family-batch 2
--family-repeats 3``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

CLASSES = [
    "dog", "cat", "grass", "sky", "car", "tree", "person", "bench", "building", "road",
    "water", "horse", "bird", "boat", "chair", "table", "bottle", "plant", "sofa", "train",
]


def _time(fn, sync, clock=time.perf_counter) -> float:
    sync()
    start = clock()
    fn()
    sync()
    return clock() - start


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


def bench_text(device: str, repeats: int = 3) -> dict:
    r"""First-call text encoding of 20 classes x 85 templates (1700 prompts), four ways:
    full context (77 positions), plain truncation (length-sorted chunks of 512, each up
    to its last EOT: the previous default), length buckets only, and the default
    (length buckets and shared prefixes). Full context runs once (it is the slow one);
    the others take the best of ``repeats``. Wall time and process CPU time."""
    import open_clip

    from captum_clip_surgery import DEFAULT_TEMPLATES, CLIPZeroShotClassifier
    from captum_clip_surgery.adapters.base import TextTowerView

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16").to(device).eval()
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    clf = CLIPZeroShotClassifier(model, CLASSES)
    view = clf.adapter.text
    ids = open_clip.get_tokenizer("ViT-B-16")(
        [t.format(c) for c in CLASSES for t in DEFAULT_TEMPLATES]).to(device)

    def plain_truncation() -> None:
        order = torch.argsort(ids.argmax(dim=-1))
        for start in range(0, len(ids), 512):
            view.encode(ids[order[start : start + 512]], truncate=True)

    def default() -> None:
        clf.text_cache.clear()
        clf.encode_texts(CLASSES)

    kept: list = []
    ways = {
        "full": lambda: kept.extend(view.encode(c, truncate=False) for c in ids.split(512)),
        "plain_truncation": plain_truncation,
        "buckets": lambda: TextTowerView.encode_many(view, ids),
        "ours": default,
    }
    out: dict = {"prompts": len(ids)}
    walls: dict = {name: [] for name in ways}
    cpus: dict = {name: [] for name in ways}

    def run(name: str) -> None:
        cpu = time.process_time()
        walls[name].append(_time(ways[name], sync))
        cpus[name].append(time.process_time() - cpu)

    with torch.no_grad():
        default()  # warm-up (allocator, kernels)
        run("full")
        for _ in range(repeats):  # the fast ways take turns: a load change hits them alike
            for name in ("plain_truncation", "buckets", "ours"):
                run(name)
        for name in ways:
            out[name + "_s"], out[name + "_cpu_s"] = min(walls[name]), min(cpus[name])
        # exactness of the default against the full context
        full = torch.nn.functional.normalize(torch.cat(kept).float(), dim=-1)
        mine = torch.nn.functional.normalize(view.encode_many(ids).float(), dim=-1)
        out["max_abs_difference"] = float((full - mine).abs().max())
    for name in ("plain_truncation", "buckets", "ours"):
        out[name + "_speedup"] = out["full_s"] / out[name + "_s"]
        out[name + "_cpu_speedup"] = out["full_cpu_s"] / out[name + "_cpu_s"]
    out["speedup"] = out["ours_speedup"]
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


def _valid_ids(model: Any, context_length: int) -> Callable[[List[str]], torch.Tensor]:
    r"""CLIP BPE token ids folded into the text tower's vocabulary: the weights are random,
    so the ids need only be valid (a SigLIP tokenizer would need the Hugging Face hub)."""
    import open_clip

    vocab = int(getattr(model, "vocab_size", 49408) or 49408)
    tokenizer = open_clip.SimpleTokenizer(context_length=context_length)
    return lambda texts: tokenizer(texts) % vocab


def _open_clip_family(name: str) -> Callable[[], Tuple[Any, Callable[[List[str]], torch.Tensor]]]:
    def build() -> Tuple[Any, Callable[[List[str]], torch.Tensor]]:
        import open_clip

        model = open_clip.create_model(name).eval()
        return model, _valid_ids(model, int(model.context_length))

    return build


# ---- slot: Hugging Face CLIP ViT-B/16 ------------------------------------------------------
# Runs when the Hugging Face adapter (captum_clip_surgery.adapters.huggingface, written in
# another branch) is installed; returns None, and the row is skipped, otherwise.
def _hf_clip_vit_b16() -> Optional[Tuple[Any, Callable[[List[str]], torch.Tensor]]]:
    if importlib.util.find_spec("captum_clip_surgery.adapters.huggingface") is None:
        return None
    import open_clip
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=12, image_size=224, patch_size=16),
        projection_dim=512,
    )
    model = CLIPModel(config).eval()
    return model, open_clip.SimpleTokenizer(context_length=77)  # the same BPE as HF's CLIP


#: family row -> builder of (random-init model, tokenizer); a builder may return None (skip)
FAMILIES: Dict[str, Callable[[], Any]] = {
    "open_clip ViT-B-16 (open_clip ViT)": _open_clip_family("ViT-B-16"),
    "open_clip ViT-B-16-SigLIP (timm ViT, MAP)": _open_clip_family("ViT-B-16-SigLIP"),
    "open_clip EVA02-B-16 (timm Eva, RoPE)": _open_clip_family("EVA02-B-16"),
    "HF CLIP ViT-B/16 (transformers)": _hf_clip_vit_b16,
}


def bench_family(build: Callable[[], Any], device: str, batch: int, repeats: int) -> Optional[dict]:
    r"""``attribute`` ÷ the model's own image forward for one family, timed alternately.

    On the CPU both are timed by the process's CPU time on one thread, which other
    processes on a shared machine hardly change (wall time there varies several-fold with
    the load); on CUDA by wall time. The ratio is of the fastest run of each; the ratio of
    the medians is reported beside it."""
    from captum_clip_surgery import CLIPSurgeryAttribution, CLIPZeroShotClassifier

    torch.manual_seed(0)
    built = build()
    if built is None:
        return None
    model, tokenizer = built
    model = model.to(device)
    clf = CLIPZeroShotClassifier(model, CLASSES, templates=["a photo of a {}."], tokenizer=tokenizer)
    explainer = CLIPSurgeryAttribution(clf)
    adapter = clf.adapter
    h, w = adapter.input_size()
    images = torch.randn(batch, 3, h, w, device=device)
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    clock = time.perf_counter if cuda else time.process_time
    threads = torch.get_num_threads()
    if not cuda:
        torch.set_num_threads(1)
    try:
        with torch.no_grad():
            _ = clf.text_features  # fill the cache
            explainer.attribute(images, target=0)  # warm-up
            adapter.encode_image(images)
            plain, ours = [], []
            for i in range(repeats):
                target = i % len(CLASSES)
                plain.append(_time(lambda: adapter.encode_image(images), sync, clock))
                ours.append(_time(lambda t=target: explainer.attribute(images, target=t), sync, clock))
    finally:
        torch.set_num_threads(threads)
    p, o = min(plain), min(ours)
    image = adapter.image
    return {"adapter": type(adapter).__name__, "head": image.kind, "blocks": len(image.blocks),
            "input": f"{h}x{w}", "batch": batch, "clock": "wall" if cuda else "cpu, 1 thread",
            "encode_image_s": p, "attribute_s": o, "ratio": o / p,
            "ratio_median": statistics.median(ours) / statistics.median(plain)}


def bench_families(device: str, batch: int, repeats: int) -> Dict[str, Optional[dict]]:
    return {name: bench_family(build, device, batch, repeats) for name, build in FAMILIES.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--sections", default="attribute,text,memory,families",
                        help="comma-separated subset of attribute,text,memory,families")
    parser.add_argument("--only-text", action="store_true", help="same as --sections text")
    parser.add_argument(
        "--text-threads", type=int, default=1,
        help="CPU threads for the text measurement (default 1: on a shared, oversubscribed "
        "machine intra-op threads stall on each other at every operator, which penalises "
        "many small batches far beyond their work; 0 keeps torch's default)")
    parser.add_argument("--family-batch", type=int, default=4)
    parser.add_argument("--family-repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    sections = {"text"} if args.only_text else set(args.sections.split(","))
    results: Dict[str, Any] = {"device": args.device, "torch_threads": torch.get_num_threads()}
    if "attribute" in sections:
        results["attribute"] = bench_attribute(args.device, args.repeats)
    if "text" in sections:
        threads = torch.get_num_threads()
        if args.text_threads > 0:
            torch.set_num_threads(args.text_threads)
        results["text"] = bench_text(args.device)
        results["text"]["threads"] = torch.get_num_threads()
        torch.set_num_threads(threads)
    if "memory" in sections and not args.skip_memory:
        results["memory"] = bench_memory()
    if "families" in sections:
        results["families"] = bench_families(args.device, args.family_batch, args.family_repeats)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"device {args.device}, {results['torch_threads']} threads, random init")
    if "attribute" in results:
        a = results["attribute"]
        print(f"ViT-B-16 batch 8, 224 px: attribute (cached text) / encode_image: {a['ratio']:.3f}  "
              f"({a['attribute_s']:.3f} s / {a['encode_image_s']:.3f} s)   target <= 1.15")
    if "text" in results:
        t = results["text"]
        print(f"text encoding 20x85 prompts ({t['threads']} thread(s)), full context / ours: "
              f"{t['speedup']:.1f}x  "
              f"({t['full_s']:.2f} s / {t['ours_s']:.2f} s; CPU time {t['ours_cpu_speedup']:.1f}x)"
              "   target >= 12")
        print(f"  full / plain truncation: {t['plain_truncation_speedup']:.1f}x, full / length "
              f"buckets: {t['buckets_speedup']:.1f}x, full / buckets + shared prefixes: "
              f"{t['ours_speedup']:.1f}x; max |ours - full| on unit features "
              f"{t['max_abs_difference']:.1e}")
    if "families" in results:
        print("\n| family | adapter | head | blocks | input | batch | clock | encode_image s (min) | "
              "attribute s (min) | attribute / encode_image (target <= 1.15) | ratio of medians |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for name, r in results["families"].items():
            if r is None:
                print(f"| {name} | skipped: adapter module not installed | | | | | | | | | |")
                continue
            print(f"| {name} | {r['adapter']} | {r['head']} | {r['blocks']} | {r['input']} | "
                  f"{r['batch']} | {r['clock']} | {r['encode_image_s']:.3f} | "
                  f"{r['attribute_s']:.3f} | {r['ratio']:.3f} | {r['ratio_median']:.3f} |")
    if "memory" in results:
        m = results["memory"]
        print(f"feature surgery peak memory, closed / BxNxTxC: {m['ratio']:.5f}  "
              f"({m['closed_bytes'] / 2**20:.1f} MiB / {m['elementwise_bytes'] / 2**20:.1f} MiB)"
              f"   target <= 0.01; checksums {m['closed_checksum']:.3f} vs {m['elementwise_checksum']:.3f}")


if __name__ == "__main__":
    main()
