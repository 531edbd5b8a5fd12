r"""Images per second: the plain image forward beside CLIP Surgery maps for 20 texts.

For each device, precision and batch size, side by side in one run on the same
random-init open_clip ViT-B-16 (224 px):

* ``forward``: ``model.encode_image(images)``, the model's own image embedding;
* ``maps``: CLIP Surgery maps of every image for 20 texts (text features cached,
  class-set feature surgery), normalised to ``[0, 1]`` on the token grid — what
  :func:`captum_clip_surgery.explain_images` computes per batch before resizing
  each image's maps to its own size;

and their ratio (maps ÷ forward images/s), with the peak memory of each (CUDA:
``max_memory_allocated``; CPU: growth of the process's resident high-water mark,
with glibc's mmap threshold fixed so that freed tensors leave the resident set).
``--compile`` adds the same two under ``torch.compile``. ``--end-to-end N`` adds a
run of :func:`explain_images` over N JPEG files (decoding, resizing, worker
processes and the per-image resize included).

Run (a short CPU setting)::

    python benchmarks/bench_throughput.py --devices cpu --batches 1 16 \
        --precisions fp32 bf16 --repeats 3 --json throughput.json

Default: batches 1 16 64, fp32 and bf16 (and fp16 on CUDA), CPU and CUDA when present.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

import torch

TEXTS = [
    "dog", "cat", "grass", "sky", "car", "tree", "person", "bench", "building", "road",
    "water", "horse", "bird", "boat", "chair", "table", "bottle", "plant", "sofa", "train",
]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _rss(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


class Peak:
    r"""Peak extra memory of a block: CUDA allocator peak, or the resident set's
    high-water mark (reset through ``/proc/self/clear_refs``) on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.bytes = 0

    def __enter__(self) -> Peak:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            try:
                with open("/proc/self/clear_refs", "w") as fh:
                    fh.write("5")
            except OSError:
                pass
            self.base = _rss("VmRSS")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self.bytes = max(0, _rss("VmHWM") - self.base)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rates(funcs: Dict[str, Callable[[], Any]], batch: int, device: torch.device, repeats: int,
           warmup: int) -> Dict[str, Dict[str, Any]]:
    r"""Per function: median images/s over ``repeats`` timed calls, the functions taking
    turns (so that a load change on a shared machine hits them alike), after ``warmup``
    calls each; then the peak memory of one more call each."""
    out: Dict[str, Dict[str, Any]] = {}
    times: Dict[str, List[float]] = {name: [] for name in funcs}
    live = dict(funcs)
    with torch.no_grad():
        for name, fn in list(live.items()):
            try:
                for _ in range(warmup):
                    fn()
            except Exception as exc:  # e.g. torch.compile without a working compiler
                out[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
                del live[name]
        _sync(device)
        for _ in range(repeats):
            for name, fn in live.items():
                start = time.perf_counter()
                fn()
                _sync(device)
                times[name].append(time.perf_counter() - start)
        for name, fn in live.items():
            with Peak(device) as peak:
                fn()
            seconds = statistics.median(times[name])
            out[name] = {"images_per_s": batch / seconds, "seconds_per_batch": seconds,
                         "peak_mib": peak.bytes / 2**20}
    return {name: out[name] for name in funcs}


def _model(device: torch.device, dtype: torch.dtype) -> Any:
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16")
    return model.to(device=device, dtype=dtype).eval()


def bench_one(device: torch.device, precision: str, batches: List[int], repeats: int,
              warmup: int, compile_: bool) -> List[Dict[str, Any]]:
    from captum_clip_surgery import CLIPSurgeryAttribution, CLIPZeroShotClassifier
    from captum_clip_surgery.explain.folder import _batch_maps

    dtype = DTYPES[precision]
    model = _model(device, dtype)
    clf = CLIPZeroShotClassifier(model, TEXTS)
    surgery = CLIPSurgeryAttribution(clf)
    with torch.no_grad():
        clf.encode_texts(TEXTS)  # cached: the maps below pay for images only

    def maps_fn(x: torch.Tensor) -> torch.Tensor:
        return _batch_maps(clf, "surgery", surgery, x, TEXTS)

    funcs: Dict[str, Callable[[torch.Tensor], Any]] = {
        "forward": model.encode_image, "maps": maps_fn,
    }
    if compile_:
        funcs["forward_compiled"] = torch.compile(model.encode_image)
        funcs["maps_compiled"] = torch.compile(maps_fn)
    rows = []
    for batch in batches:
        g = torch.Generator().manual_seed(batch)
        images = torch.randn(batch, 3, 224, 224, generator=g).to(device=device, dtype=dtype)
        row: Dict[str, Any] = {"device": str(device), "precision": precision, "batch": batch}
        row.update(_rates({name: (lambda f=fn, x=images: f(x)) for name, fn in funcs.items()},
                          batch, device, repeats, warmup))
        if "images_per_s" in row["maps"] and "images_per_s" in row["forward"]:
            row["maps_over_forward"] = row["maps"]["images_per_s"] / row["forward"]["images_per_s"]
        rows.append(row)
        print(_format(row), flush=True)
    return rows


def bench_end_to_end(device: torch.device, precision: str, images: int, batch: int,
                     workers: int) -> Dict[str, Any]:
    r"""``explain_images`` over JPEG files of mixed sizes (decoding and resizing included)."""
    import numpy as np
    from PIL import Image

    from captum_clip_surgery import CLIPZeroShotClassifier, explain_images

    model = _model(device, DTYPES[precision])
    clf = CLIPZeroShotClassifier(model, TEXTS)
    with torch.no_grad():
        clf.encode_texts(TEXTS)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        for i in range(images):
            h, w = int(rng.integers(240, 600)), int(rng.integers(240, 600))
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
                os.path.join(folder, f"{i:05d}.jpg"), quality=90)
        start = time.perf_counter()
        n = sum(1 for _ in explain_images(folder, clf, batch_size=batch, num_workers=workers))
        _sync(device)
        seconds = time.perf_counter() - start
    return {"device": str(device), "precision": precision, "batch": batch, "workers": workers,
            "images": n, "seconds": seconds, "images_per_s": n / seconds}


def _format(row: Dict[str, Any]) -> str:
    def cell(name: str) -> str:
        r = row.get(name)
        if r is None:
            return ""
        if "error" in r:
            return f"{name}: {r['error']}"
        return f"{name} {r['images_per_s']:8.2f} img/s (peak {r['peak_mib']:7.1f} MiB)"

    ratio = row.get("maps_over_forward")
    cells = [cell(n) for n in ("forward", "maps", "forward_compiled", "maps_compiled") if n in row]
    return (f"{row['device']:>6} {row['precision']:>4} batch {row['batch']:>3}: "
            + " | ".join(cells)
            + (f" | maps/forward {ratio:.3f}" if ratio is not None else ""))


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", nargs="+", default=None,
                        help="default: cpu, and cuda when available")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16, 64])
    parser.add_argument("--precisions", nargs="+", default=None, choices=sorted(DTYPES),
                        help="default: fp32 bf16 (and fp16 on CUDA)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    parser.add_argument("--end-to-end", type=int, default=0, metavar="N",
                        help="also run explain_images over N JPEG files")
    parser.add_argument("--workers", type=int, default=2, help="workers for --end-to-end")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results here")
    args = parser.parse_args(argv)
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    results: Dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                               "model": "open_clip ViT-B-16, random init, 224 px",
                               "texts": len(TEXTS), "rows": [], "end_to_end": []}
    if torch.cuda.is_available():
        results["gpu"] = torch.cuda.get_device_name()
    print(f"torch {torch.__version__}, {results['threads']} CPU threads; ViT-B-16 random init, "
          f"224 px; maps = CLIP Surgery for {len(TEXTS)} cached texts")
    for name in devices:
        device = torch.device(name)
        precisions = args.precisions or (["fp32", "bf16"] + (["fp16"] if device.type == "cuda"
                                                             else []))
        for precision in precisions:
            results["rows"].extend(bench_one(device, precision, args.batches, args.repeats,
                                             args.warmup, args.compile))
            if args.end_to_end:
                row = bench_end_to_end(device, precision, args.end_to_end, max(args.batches),
                                       args.workers)
                results["end_to_end"].append(row)
                print(f"{row['device']:>6} {row['precision']:>4} explain_images over "
                      f"{row['images']} JPEGs, batch {row['batch']}, {row['workers']} workers: "
                      f"{row['images_per_s']:.2f} img/s", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        # a fixed mmap threshold: glibc then hands every large freed tensor back to the
        # system, so the resident high-water mark measures each step's own peak
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(1 << 16)
        os.execv(sys.executable, [sys.executable] + sys.argv)
    main()
