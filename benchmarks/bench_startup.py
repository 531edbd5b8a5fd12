r"""How fast the command line starts, beside ``python -c "import torch"``.

Each command runs ``--repeats`` times, the commands alternating so that a busy machine
slows them alike; the script prints each command's median wall time and its ratio to
the median of ``import torch`` (the target: at most 1.5)::

    python benchmarks/bench_startup.py --repeats 7

``clip-surgery`` is the console script when it is on the PATH, else
``python -m captum_clip_surgery``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from typing import Dict, List


def _time(argv: List[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    script = shutil.which("clip-surgery")
    cli = [script] if script else [sys.executable, "-m", "captum_clip_surgery"]
    commands: Dict[str, List[str]] = {
        'python -c "import torch"': [sys.executable, "-c", "import torch"],
        "clip-surgery --help": cli + ["--help"],
        "clip-surgery explain --help": cli + ["explain", "--help"],
        "clip-surgery evaluate --help": cli + ["evaluate", "--help"],
        'python -c "import captum_clip_surgery"': [sys.executable, "-c", "import captum_clip_surgery"],
    }
    for argv in commands.values():  # warm the file cache once
        _time(argv)
    times: Dict[str, List[float]] = {name: [] for name in commands}
    for _ in range(args.repeats):
        for name, argv in commands.items():
            times[name].append(_time(argv))
    base = statistics.median(times['python -c "import torch"'])
    print("| command | median wall (s) | ÷ import torch |")
    print("|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| `{name}` | {median:.3f} | {median / base:.2f} |")


if __name__ == "__main__":
    main()
