r"""``clip-surgery serve``: the web explorer (:mod:`captum_clip_surgery.web`) on the
shipped model or on ``--model``, bound to this machine unless ``--host`` says
otherwise."""

from __future__ import annotations

import argparse
import os
from typing import Any, Optional

from captum_clip_surgery.cli.common import (
    UserError,
    check_device,
    first_line,
    load_named_or_shipped,
    square_transform,
)

__all__ = ["build_explorer", "check_options", "run"]

PRECISIONS = ("fp32", "fp16", "bf16")


def check_options(args: argparse.Namespace) -> None:
    r"""The options that need no model: each mistake is a one-line
    :class:`~captum_clip_surgery.cli.common.UserError`."""
    if args.pretrained and not args.model:
        raise UserError("--pretrained: give --model too (an open_clip model name)")
    precision = args.precision or "fp32"
    if precision not in PRECISIONS:
        raise UserError(f"--precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port: expected a port number 0..65535, got {args.port}")
    if args.scenes < 1:
        raise UserError(f"--scenes: expected at least 1 scene, got {args.scenes}")
    if args.sam_checkpoint and not os.path.isfile(args.sam_checkpoint):
        raise UserError(f"--sam-checkpoint: file not found: {args.sam_checkpoint}")
    check_device(args.device)


def build_explorer(args: argparse.Namespace) -> Any:
    r"""Load the model (cast to ``--precision``) and SAM, and return the
    :class:`~captum_clip_surgery.web.explorer.Explorer`; every mistake is a
    :class:`~captum_clip_surgery.cli.common.UserError`."""
    import torch

    from captum_clip_surgery.web.explorer import Explorer

    check_options(args)
    model, _, tokenizer = load_named_or_shipped(args, args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
        args.precision or "fp32"]
    model = model.to(dtype)  # the command's own model (as explain --images does)
    predictor = None
    if args.sam_checkpoint:
        from captum_clip_surgery.apps.points import build_sam_predictor

        try:
            predictor = build_sam_predictor(args.sam_checkpoint, args.sam_model_type, args.device)
        except ImportError as exc:
            raise UserError(f"--sam-checkpoint: {first_line(exc)}") from None
        except Exception as exc:  # a file that is not a SAM checkpoint of that type
            raise UserError(f"--sam-checkpoint: cannot load {args.sam_checkpoint} as a "
                            f"{args.sam_model_type} SAM checkpoint ({first_line(exc)})") from None
    name = args.model or "the shipped scenes CLIP"
    if args.pretrained:
        name += f" ({os.path.basename(args.pretrained)})"
    try:
        return Explorer(model, tokenizer, square_transform(model, None), name=name,
                        sam_predictor=predictor)
    except (TypeError, ValueError) as exc:
        raise UserError(f"--model: {first_line(exc)}") from None


def run(args: argparse.Namespace, block: bool = True) -> Optional[Any]:
    r"""``clip-surgery serve``: serve the page until interrupted (``block=False``:
    return the running page, for tests)."""
    check_options(args)
    try:
        from captum_clip_surgery.web.ui import import_gradio, launch_app

        import_gradio()
    except ImportError as exc:
        raise UserError(first_line(exc)) from None
    explorer = build_explorer(args)
    try:
        demo, url = launch_app(explorer, host=args.host, port=args.port, share=args.share,
                           scenes=args.scenes, block=False, quiet=True)
    except OSError as exc:
        raise UserError(f"--port: cannot serve on {args.host}:{args.port} "
                        f"({first_line(exc)})") from None
    print(f"clip-surgery serve: {explorer.name} on {url} (Ctrl+C stops it)", flush=True)
    if not block:
        return demo
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
    return None
