r"""Peak memory of the README's "Beside Captum's methods" code block, as written.

The block runs GradCAM, Integrated Gradients (50 steps), Chefer relevance, MaskCLIP and
``compare`` over seven methods (Integrated Gradients again among them). Integrated
Gradients backpropagates through ``n_steps`` copies of every image; run in one forward,
50 steps of 2 images are a batch of 100 ViT-B/16 images with their activations kept for
the backward pass. The README block and the registry's default therefore batch the steps
(``internal_batch_size``); this script measures what the block costs.

Each setting runs in its own process, so that its peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, the high-water mark of the whole process)
is its own:

- ``setup``: an open_clip ViT-B-16 built in code (random weights, no download), two
  random 224-px images, the classifier of the README's four texts with their
  prompt-ensembled text features — what the block starts from;
- ``readme``: the same, then the README block itself, read from ``README.md`` and run
  as written;
- ``ig-unbatched`` (only with ``--unbatched``: about 14 GB): the block's Integrated
  Gradients call as it was before the steps were batched,
  ``IntegratedGradients(clf).attribute(images, target=0, n_steps=50)``.

Run: ``python benchmarks/readme_ig_memory.py [--batch 2] [--size 224] [--threads 2]
[--unbatched]``. Prints one line per setting (peak in GB = 1e9 bytes, and seconds) and
the README block's peak against the 4 GB target.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
README = os.path.join(os.path.dirname(HERE), "README.md")
TARGET_GB = 4.0


def readme_block(heading: str = "### Beside Captum's methods") -> str:
    r"""The first ```python block after ``heading`` in the README."""
    with open(README, encoding="utf-8") as fh:
        text = fh.read()
    start = text.index(heading)
    match = re.search(r"```python\n(.*?)```", text[start:], flags=re.S)
    if match is None:
        raise SystemExit(f"no python block after {heading!r} in {README}")
    return match.group(1)


_CHILD = r"""
import json, os, resource, sys, time
import torch, open_clip
from captum_clip_surgery import CLIPZeroShotClassifier

mode, batch, size, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
torch.manual_seed(0)
model = open_clip.create_model("ViT-B-16").eval()  # the architecture, random weights
images = torch.randn(batch, 3, size, size)
clf = CLIPZeroShotClassifier(model, texts=["dog", "cat", "grass", "sky"])  # as in the README
_ = clf.text_features
start = time.perf_counter()
if mode == "readme":
    os.chdir(sys.argv[6])  # the block saves comparison.png
    exec(compile(sys.argv[5], "README.md (Beside Captum's methods)", "exec"),
         {"clf": clf, "images": images, "model": model})
elif mode == "ig-unbatched":
    from captum.attr import IntegratedGradients
    IntegratedGradients(clf).attribute(images, target=0, n_steps=50)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
print(json.dumps({"mode": mode, "peak_bytes": peak, "seconds": seconds}))
"""


def run(mode: str, args: argparse.Namespace, block: str, workdir: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(args.batch), str(args.size), str(args.threads),
         block, workdir],
        capture_output=True, text=True, env=env, check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--unbatched", action="store_true",
                        help="also measure the unbatched Integrated Gradients call (~14 GB)")
    args = parser.parse_args()
    block = readme_block()
    modes = ["setup", "readme"] + (["ig-unbatched"] if args.unbatched else [])
    print(f"open_clip ViT-B-16 (random init), batch {args.batch}, {args.size} px, "
          f"{args.threads} threads; peak = ru_maxrss of a fresh process per setting")
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        for mode in modes:
            r = run(mode, args, block, workdir)
            results[mode] = r
            print(f"{mode:>13}: peak {r['peak_bytes'] / 1e9:6.2f} GB   "
                  f"({r['seconds']:7.1f} s after setup)")
    peak = results["readme"]["peak_bytes"] / 1e9
    growth = peak - results["setup"]["peak_bytes"] / 1e9
    verdict = "met" if peak < TARGET_GB else f"MISSED by {peak - TARGET_GB:.2f} GB"
    print(f"README block: peak {peak:.2f} GB ({growth:+.2f} GB over the setup), target < "
          f"{TARGET_GB:.0f} GB: {verdict}")


if __name__ == "__main__":
    main()
