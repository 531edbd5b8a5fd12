r"""Peak memory of ``clip-surgery explain --images`` on one very large image.

Writes a SIDE x SIDE PNG (default 12000 x 12000: flat colours and shapes, a small file)
and runs the command on it in fresh processes, one case each, with and without figures,
beside a 512 x 512 image (the fixed cost: torch, the model, matplotlib). Each child
reports its own peak resident memory (``resource.getrusage(RUSAGE_SELF).ru_maxrss``);
``--workers 0`` keeps the image decoding in that process, so the number is the whole
command's. A watchdog stops a child whose resident memory passes ``--cap-gb`` (the
machine is shared) and reports the case as above the cap.

Run it on the package of your choice (``PYTHONPATH`` decides), e.g. before and after a
change::

    python benchmarks/bench_large_image.py                      # this checkout
    PYTHONPATH=/path/to/other/checkout python benchmarks/bench_large_image.py

Only options every version of the command has are passed, so both print comparable
numbers (the pixel limit is the command's default).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

CHILD = r"""
import json, resource, sys
from captum_clip_surgery.cli import main
try:
    code = main(sys.argv[1:])
except BaseException as exc:  # noqa: BLE001  (a crash is a result too)
    code = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
import captum_clip_surgery, os
print("RESULT " + json.dumps({"code": code, "peak_mib": peak / 1024,
                              "package": os.path.dirname(captum_clip_surgery.__file__)}),
      flush=True)
"""


def make_image(path: str, side: int) -> None:
    r"""A ``side`` x ``side`` RGB PNG of flat shapes (compresses to a small file)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (side, side), (120, 170, 90))
    draw = ImageDraw.Draw(image)
    s = side / 100
    draw.ellipse((20 * s, 20 * s, 45 * s, 45 * s), fill=(220, 40, 30))
    draw.rectangle((55 * s, 50 * s, 90 * s, 80 * s), fill=(240, 220, 40))
    draw.polygon([(10 * s, 90 * s), (30 * s, 60 * s), (50 * s, 90 * s)], fill=(60, 60, 200))
    image.save(path, optimize=True)


def _rss_mib(pid: int) -> Optional[float]:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_case(argv: List[str], cap_mib: float, cwd: str) -> Dict[str, object]:
    r"""Run the command in a fresh process (in ``cwd``, so that ``PYTHONPATH`` alone picks
    the package); its peak memory, exit, wall time."""
    env = dict(os.environ, OMP_NUM_THREADS="2", HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD] + argv, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    stopped = False
    while proc.poll() is None:
        rss = _rss_mib(proc.pid)
        if rss is not None and rss > cap_mib:
            proc.kill()
            stopped = True
            break
        time.sleep(0.02)
    stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - start
    result = {"code": proc.returncode, "peak_mib": None, "seconds": seconds}
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            result.update(json.loads(line[len("RESULT "):]))
    if stopped:
        result["code"] = f"stopped above the {cap_mib / 1024:.0f} GiB cap"
        result["peak_mib"] = f"> {cap_mib:.0f}"
    elif result["peak_mib"] is None:
        last = [x for x in stderr.strip().splitlines() if x.strip()][-1:] or ["(no output)"]
        result["code"] = f"exit {proc.returncode}: {last[0][:120]}"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=12000, help="image side in pixels")
    parser.add_argument("--cap-gb", type=float, default=8.0,
                        help="stop a case whose resident memory passes this (GiB)")
    args = parser.parse_args()

    import captum_clip_surgery

    with tempfile.TemporaryDirectory(prefix="bench_large_") as root:
        folders = {}
        for name, side in (("small", 512), ("large", args.side)):
            folder = os.path.join(root, name)
            os.makedirs(folder)
            make_image(os.path.join(folder, f"{name}.png"), side)
            folders[name] = folder
        size_kib = os.path.getsize(os.path.join(folders["large"], "large.png")) / 1024
        print(f"package (PYTHONPATH): {os.path.dirname(captum_clip_surgery.__file__)}")
        print(f"image: {args.side} x {args.side} PNG ({size_kib:.0f} KiB), 1 text, shipped "
              "scenes model, --workers 0, CPU")
        print(f"{'case':<38} {'peak RSS (MiB)':>15} {'time (s)':>9}  exit / result")
        cases = [
            ("512 x 512, figure + maps", "small", []),
            (f"{args.side} x {args.side}, --no-figures (maps)", "large", ["--no-figures"]),
            (f"{args.side} x {args.side}, figure + maps", "large", []),
        ]
        for i, (label, which, extra) in enumerate(cases):
            out = os.path.join(root, f"out{i}")
            argv = ["explain", "--images", folders[which], "--text", "tomato", "--out", out,
                    "--save-maps", "--workers", "0"] + extra
            result = run_case(argv, args.cap_gb * 1024, root)
            peak = result["peak_mib"]
            peak_text = f"{peak:.0f}" if isinstance(peak, float) else str(peak)
            written = ""
            npy = os.path.join(out, f"{which}.npy")
            if os.path.exists(npy):
                import numpy as np

                written = f"; maps {tuple(np.load(npy, mmap_mode='r').shape)}"
            if result.get("package", os.path.dirname(captum_clip_surgery.__file__)) != \
                    os.path.dirname(captum_clip_surgery.__file__):
                raise RuntimeError(f"the child ran another package: {result['package']}")
            print(f"{label:<38} {peak_text:>15} {result['seconds']:>9.1f}  "
                  f"{result['code']}{written}", flush=True)


if __name__ == "__main__":
    main()
