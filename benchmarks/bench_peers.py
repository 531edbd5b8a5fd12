r"""GEM and LeGrad beside the authors' own packages, on the same weights and inputs.

The peers pin open_clip 2.23, so they run in an environment of their own: give its
interpreter with ``--peer-python`` (an environment with ``gem-torch==1.0.1``,
``legrad-torch==1.1`` and ``open_clip_torch==2.23.0``; ``--make-peer-env DIR`` creates
one with pip). This script, in the package's environment, builds an open_clip ViT-B-16
with random weights (seeded; nothing is downloaded), saves the weights, 8 images at 224 px
and the 5 texts' unit features (encoded once, given to both), then alternates ``--runs`` timing runs of a worker in each
environment, each timing per image:

- the plain image forward (``encode_image``) of the batch of 8;
- GEM: gem-torch's visual forward with its image-text matching, against
  ``GEMAttribution.similarity`` + ``maps_from_scores`` (the 5 maps of every image);
- LeGrad: legrad-torch's ``compute_legrad`` per image for the 5 texts (it repeats the image
  once per text), against ``LeGradAttribution.attribute_per_text`` (one forward per image,
  one batched backward through the last two blocks for all texts).

It prints the median seconds per image, each method's cost ÷ its environment's plain
forward, our time ÷ the peer's, and the largest difference of the maps (GEM: the
patch-text cosines; LeGrad: the min-max maps as legrad-torch scales them)::

    python benchmarks/bench_peers.py --peer-python /path/to/peer-env/bin/python

Both workers use the same number of threads (``--threads``, default 2).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List

BATCH, TEXTS, SIZE = 8, 5, 224
NAMES = ["dog", "cat", "grass", "a red car", "sky"]


def _timed(fn: Callable[[], Any], repeats: int) -> float:
    best: List[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best.append(time.perf_counter() - start)
    return min(best)


def _peer_worker(folder: str, threads: int, repeats: int, save_maps: bool) -> Dict[str, float]:
    r"""Runs in the peers' environment (open_clip 2.23, gem-torch, legrad-torch)."""
    import copy

    import open_clip
    import torch
    import torch.nn.functional as F
    from gem.gem_wrapper import GEMWrapper
    from legrad import LeWrapper
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(threads)
    data = load_file(os.path.join(folder, "inputs.safetensors"))
    model = open_clip.create_model("ViT-B-16").eval()
    model.load_state_dict(load_file(os.path.join(folder, "weights.safetensors")))
    images, text = data["images"], data["text"]
    plain = copy.deepcopy(model)
    gem = GEMWrapper(copy.deepcopy(model), open_clip.get_tokenizer("ViT-B-16"), depth=7).eval()
    legrad = LeWrapper(copy.deepcopy(model))

    def gem_maps() -> Any:
        feat_gem, _ = gem.model.visual(images)
        sims = F.normalize(feat_gem, dim=-1)[:, 1:] @ text.t()  # cached text features
        grid = sims.transpose(1, 2).reshape(BATCH, TEXTS, SIZE // 16, SIZE // 16)
        maps = F.interpolate(grid, size=(SIZE, SIZE), mode="bilinear")
        return gem.min_max(maps), grid

    def legrad_maps() -> Any:
        return torch.cat([legrad.compute_legrad(text, images[i : i + 1]) for i in range(BATCH)])

    with torch.no_grad():
        forward = _timed(lambda: plain.encode_image(images), repeats)
        gem_time = _timed(gem_maps, repeats)
        _, grid = gem_maps()
    legrad_time = _timed(legrad_maps, repeats)
    if save_maps:
        save_file({"gem_grid": grid.contiguous(), "legrad": legrad_maps().detach().contiguous()},
                  os.path.join(folder, "peer_maps.safetensors"))
    return {"forward": forward / BATCH, "gem": gem_time / BATCH, "legrad": legrad_time / BATCH}


def _our_worker(folder: str, threads: int, repeats: int, save_maps: bool) -> Dict[str, float]:
    import open_clip
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file, save_file

    from captum_clip_surgery import CLIPZeroShotClassifier, GEMAttribution, LeGradAttribution

    torch.set_num_threads(threads)
    data = load_file(os.path.join(folder, "inputs.safetensors"))
    model = open_clip.create_model("ViT-B-16").eval()
    model.load_state_dict(load_file(os.path.join(folder, "weights.safetensors")))
    images = data["images"]
    clf = CLIPZeroShotClassifier(model, NAMES, templates=["{}"])
    with torch.no_grad():  # the peer was given exactly these features
        torch.testing.assert_close(clf.text_features, data["text"], rtol=0, atol=0)
    gem, legrad = GEMAttribution(clf), LeGradAttribution(clf)

    def gem_maps() -> Any:
        grid = gem.similarity(images)
        return gem.maps_from_scores(grid, images), grid

    with torch.no_grad():
        forward = _timed(lambda: model.encode_image(images), repeats)
        gem_time = _timed(gem_maps, repeats)
        _, grid = gem_maps()
    legrad_time = _timed(lambda: legrad.attribute_per_text(images), repeats)
    if save_maps:
        relevance = legrad.relevance_per_text(images)  # [B, T, h, w]
        up = F.interpolate(relevance, scale_factor=16, mode="bilinear")
        lo = up.flatten(2).min(-1).values[..., None, None]
        hi = up.flatten(2).max(-1).values[..., None, None]
        save_file({"gem_grid": grid.contiguous(), "legrad": ((up - lo) / (hi - lo)).contiguous()},
                  os.path.join(folder, "our_maps.safetensors"))
    return {"forward": forward / BATCH, "gem": gem_time / BATCH, "legrad": legrad_time / BATCH}


def _make_inputs(folder: str) -> None:
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16").eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              os.path.join(folder, "weights.safetensors"))
    from captum_clip_surgery import CLIPZeroShotClassifier

    g = torch.Generator().manual_seed(1)
    images = torch.randn(BATCH, 3, SIZE, SIZE, generator=g)
    with torch.no_grad():  # the prompts as given (LeGrad's convention), encoded once
        text = CLIPZeroShotClassifier(model, NAMES, templates=["{}"]).text_features
    save_file({"images": images, "text": text.contiguous()}, os.path.join(folder, "inputs.safetensors"))


def _run(python: str, role: str, folder: str, threads: int, repeats: int, save: bool) -> Dict[str, float]:
    cmd = [python, os.path.abspath(__file__), "--worker", role, "--folder", folder,
           "--threads", str(threads), "--repeats", str(repeats)] + (["--save-maps"] if save else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{role} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-python", help="interpreter of the peers' environment")
    parser.add_argument("--make-peer-env", metavar="DIR", help="create the peers' environment")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="best of N inside a run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", choices=("ours", "peer"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--save-maps", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker = _our_worker if args.worker == "ours" else _peer_worker
        print(json.dumps(worker(args.folder, args.threads, args.repeats, args.save_maps)))
        return
    if args.make_peer_env:
        subprocess.run([sys.executable, "-m", "venv", args.make_peer_env], check=True)
        pip = os.path.join(args.make_peer_env, "bin", "pip")
        subprocess.run([pip, "install", "gem-torch==1.0.1", "legrad-torch==1.1",
                        "open_clip_torch==2.23.0", "safetensors"], check=True)
        args.peer_python = os.path.join(args.make_peer_env, "bin", "python")
    if not args.peer_python:
        raise SystemExit("--peer-python: give the peers' interpreter (or --make-peer-env DIR)")
    with tempfile.TemporaryDirectory() as folder:
        _make_inputs(folder)
        runs: Dict[str, List[Dict[str, float]]] = {"ours": [], "peer": []}
        for r in range(args.runs):
            for role, python in (("peer", args.peer_python), ("ours", sys.executable)):
                runs[role].append(_run(python, role, folder, args.threads, args.repeats, r == 0))
        median = {role: {k: statistics.median(run[k] for run in rs) for k in rs[0]}
                  for role, rs in runs.items()}
        from safetensors.torch import load_file

        ours = load_file(os.path.join(folder, "our_maps.safetensors"))
        peer = load_file(os.path.join(folder, "peer_maps.safetensors"))
        diff = {k: float((ours[k] - peer[k].reshape(ours[k].shape)).abs().max()) for k in ours}
    print(f"ViT-B-16 (random weights), {BATCH} images at {SIZE} px, {TEXTS} texts, "
          f"{args.threads} threads, medians of {args.runs} alternating runs")
    print("| | gem-torch / legrad-torch | captum-clip-surgery | ours ÷ peer |")
    print("|---|---|---|---|")
    for key, label in (("forward", "plain forward (s / image)"), ("gem", "GEM (s / image)"),
                       ("legrad", "LeGrad, 5 maps (s / image)")):
        p, o = median["peer"][key], median["ours"][key]
        print(f"| {label} | {p:.3f} | {o:.3f} | {o / p:.2f} |")
    for key in ("gem", "legrad"):
        p = median["peer"][key] / median["peer"]["forward"]
        o = median["ours"][key] / median["ours"]["forward"]
        print(f"| {key} ÷ its own plain forward | {p:.2f} | {o:.2f} | |")
    print(f"max |Δ| of the maps: GEM cosines {diff['gem_grid']:.2e}, "
          f"LeGrad min-max maps {diff['legrad']:.2e}")


if __name__ == "__main__":
    main()
