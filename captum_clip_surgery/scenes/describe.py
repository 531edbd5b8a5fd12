r"""``python -m captum_clip_surgery.scenes.describe [--weights PATH]``: print the facts
of the shipped scenes CLIP's weights file that the documentation quotes (parameter
count, stored embedding rows, file size, learnt temperature, training metadata)."""

from __future__ import annotations

import argparse
from typing import List, Optional

from captum_clip_surgery.scenes.model import WEIGHTS_PATH, describe_weights

__all__ = ["main"]


def main(argv: Optional[List[str]] = None) -> None:
    r"""Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--weights", default=None, help="weights in the shipped format")
    args = parser.parse_args(argv)
    info = describe_weights(args.weights)
    meta = info["metadata"]
    print(f"weights: {args.weights or WEIGHTS_PATH}")
    print(f"parameters: {info['parameters']:,} ({info['embedding_parameters']:,} in the "
          f"token-embedding table, {info['stored_embedding_rows']} rows of it stored)")
    print(f"file: {info['file_bytes']:,} bytes ({info['file_bytes'] / 1e6:.1f} MB, fp16)")
    print(f"logit scale (learnt temperature): {info['logit_scale']:.1f}")
    if meta:
        print(f"training: {meta.get('steps', '?')} steps, batch {meta.get('batch_size', '?')}, "
              f"seed {meta.get('seed', '?')}, {meta.get('train_seconds', '?')} s")


if __name__ == "__main__":
    main()
