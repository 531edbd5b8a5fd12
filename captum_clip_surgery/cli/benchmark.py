r"""``clip-surgery benchmark``: the open-vocabulary segmentation table under a published
protocol; ``clip-surgery coco-object``: COCO-Object labels from COCO-Stuff164k."""

from __future__ import annotations

import argparse
import ast
import os
from typing import Any, Dict, List, Optional, Tuple

import captum_clip_surgery.cli.common as common
from captum_clip_surgery.cli.common import (
    UserError,
    add_backbone_options,
    backbone_options,
    check_device,
    check_positive,
    first_line,
    world_size,
)

__all__ = ["add_parsers", "parse_method_option", "parse_setting", "run", "run_coco_object"]

_DATASETS = ("voc20", "voc21", "context59", "context60", "coco_object", "coco_stuff",
             "cityscapes", "ade20k", "scenes", "all", "custom")

#: an error's argument name → the option that sets it
_OPTIONS = {
    "root": "--root", "classes": "--classes", "methods": "--methods", "overrides": "--set",
    "img_suffix": "--img-suffix", "seg_map_suffix": "--seg-map-suffix", "dataset": "--dataset",
    "preset": "--preset", "images": "--dataset", "limit": "--limit", "batch_size": "--batch-size",
    "window_batch": "--window-batch", "num_workers": "--workers", "scenes_size": "--limit",
}


def add_parsers(sub: Any) -> None:
    r"""Add ``benchmark`` and ``coco-object`` to the command's sub-parsers."""
    from captum_clip_surgery.benchmark.presets import PRESET_FIELDS, preset_names

    b = sub.add_parser(
        "benchmark",
        help="open-vocabulary segmentation mIoU under a published protocol (SCLIP, ClearCLIP, "
             "NACLIP, ProxyCLIP)",
        description="Segments a dataset with token-map methods as the protocol's release does "
                    "(resize, windows, templates, synonyms, thresholds, PAMR) and writes "
                    "markdown and CSV tables; resumable, works under torchrun.",
    )
    b.add_argument("--dataset", choices=_DATASETS, default="scenes",
                   help="a dataset of the table, 'all' (the eight, --root the data folder "
                        "holding them), 'scenes' (the package's scenes world, no files) or "
                        "'custom' (your layout: --classes, --img-dir, --ann-dir, ...)")
    b.add_argument("--root", default=None,
                   help="the dataset's folder, or mmsegmentation's data folder holding it "
                        "(VOCdevkit/VOC2012, VOCdevkit/VOC2010, coco_stuff164k, cityscapes, "
                        "ade/ADEChallengeData2016)")
    b.add_argument("--preset", choices=preset_names(), default="sclip",
                   help="the protocol (default sclip)")
    b.add_argument("--methods", default=None,
                   help="comma-separated token-map methods (default: the preset's own method)")
    b.add_argument("--model", default=None,
                   help="open_clip model name, hf-hub: id or local folder (the protocol's: "
                        "ViT-B-16 with --pretrained openai); default for --dataset scenes: the "
                        "shipped scenes model")
    b.add_argument("--pretrained", default=None, metavar="TAG|PATH")
    add_backbone_options(b)
    b.add_argument("--limit", type=int, default=None, help="the first N images only")
    b.add_argument("--save-predictions", default=None, metavar="DIR",
                   help="write DIR/<method>/<image id>.png (class indices, 255 where ignored)")
    b.add_argument("--classes", default=None, metavar="FILE",
                   help="a class-name file replacing the preset's (one class per line, "
                        "synonyms separated as the preset's source does, the background line "
                        "first where the dataset has one)")
    b.add_argument("--img-suffix", default=None, help="the image files' suffix (e.g. .png)")
    b.add_argument("--seg-map-suffix", default=None, help="the label files' suffix")
    b.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a protocol setting (repeatable): " + ", ".join(PRESET_FIELDS))
    b.add_argument("--method-option", action="append", default=[],
                   metavar="METHOD.ARGUMENT=VALUE",
                   help="a constructor argument of a method run (repeatable), over the "
                        "preset's own: the proxyclip preset runs proxyclip.empty_rows=nan, as "
                        "its release does (NaN windows labelled 0); "
                        "--method-option proxyclip.empty_rows=largest keeps the package's "
                        "default. VALUE is read as a Python literal (1.5, None, True, "
                        "'text'), else kept as text")
    b.add_argument("--out", default="benchmark",
                   help="output folder: tables, and state/ (per-image results; an interrupted "
                        "run continues from them); default benchmark")
    b.add_argument("--batch-size", type=int, default=8,
                   help="images whose windows share forwards (default 8)")
    b.add_argument("--window-batch", type=int, default=None,
                   help="at most this many windows per forward (default 8 on the CPU, 64 on a "
                        "GPU)")
    b.add_argument("--workers", type=int, default=2, help="image-reading processes (default 2)")
    b.add_argument("--device", default="cpu")
    b.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32")
    b.add_argument("--scenes", type=int, default=200, metavar="N",
                   help="number of scenes of --dataset scenes (default 200)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    custom = b.add_argument_group("with --dataset custom")
    custom.add_argument("--img-dir", default="images", help="image folder under --root")
    custom.add_argument("--ann-dir", default="annotations", help="label folder under --root")
    custom.add_argument("--split", default=None,
                        help="a file of image names under --root (default: every image)")
    custom.add_argument("--reduce-zero-label", action="store_true",
                        help="label 0 is ignored and k becomes k - 1")
    custom.add_argument("--background", action="store_true",
                        help="class 0 is a background (named so in the tables)")

    c = sub.add_parser(
        "coco-object",
        help="write COCO-Object labels (*_instanceTrainIds.png) from COCO-Stuff164k's raw labels",
        description="As the protocol's datasets/cvt_coco_object.py: the 80 thing classes become "
                    "1..80, stuff and unlabelled pixels 0 (background). Resumable.",
    )
    c.add_argument("--root", required=True, help="the COCO-Stuff164k folder (annotations/val2017)")
    c.add_argument("--out", default=None, help="where to write (default --root)")
    c.add_argument("--splits", default="val2017",
                   help="comma-separated annotation folders (default val2017)")


def parse_setting(text: str) -> Tuple[str, Any]:
    r"""``FIELD=VALUE`` → ``(field, value)``: ``none``, ``true`` / ``false``, numbers, and
    comma-separated numbers (a tuple) are converted; anything else stays a string, spaces
    included."""
    if "=" not in text:
        raise UserError(f"--set: expected FIELD=VALUE, got {text!r}")
    key, _, value = text.partition("=")
    key, raw = key.strip(), value.strip()

    def number(s: str) -> Any:
        try:
            return int(s)
        except ValueError:
            return float(s)

    lowered = raw.lower()
    if lowered in ("none", "null"):
        return key, None
    if lowered in ("true", "false"):
        return key, lowered == "true"
    try:
        if "," in raw:
            return key, tuple(number(p.strip()) for p in raw.split(","))  # "" is no number
        return key, number(raw)
    except ValueError:
        return key, value  # a string keeps its spaces (a synonym separator may end with one)


def parse_method_option(text: str) -> Tuple[str, str, Any]:
    r"""``METHOD.ARGUMENT=VALUE`` → ``(method, argument, value)``: the value is a Python
    literal where it reads as one (``ast.literal_eval``: numbers, ``None``, ``True``,
    quoted strings, tuples, ...), else the text (stripped)."""
    key, sep, value = text.partition("=")
    method, dot, argument = key.strip().partition(".")
    method, argument = method.strip(), argument.strip()
    if not sep or not dot or not method or not argument.isidentifier():
        raise UserError(
            "--method-option: expected METHOD.ARGUMENT=VALUE (e.g. "
            f"proxyclip.empty_rows=largest), got {text!r}"
        )
    raw = value.strip()
    try:
        parsed: Any = ast.literal_eval(raw)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        parsed = raw
    return method, argument, parsed


def _user_error(exc: BaseException, options_flag: str = "--method-option") -> UserError:
    message = first_line(exc)
    head, sep, rest = message.partition(":")
    if sep and head.strip() == "method_options":  # what the user passed, by its option
        return UserError(f"{options_flag}:{rest}")
    if sep and head.strip() in _OPTIONS:
        return UserError(f"{_OPTIONS[head.strip()]}:{rest}")
    if sep and " " not in head.strip():  # a setting's own name (from --set)
        from captum_clip_surgery.benchmark.presets import PRESET_FIELDS

        if head.strip() in PRESET_FIELDS:
            return UserError(f"--set {head.strip()}:{rest}")
    return UserError(message)


def run(args: argparse.Namespace) -> Optional[str]:
    r"""``clip-surgery benchmark``: writes the tables (rank 0), prints them, returns the
    output folder (``None`` on other ranks)."""
    import torch
    import torch.distributed as dist

    from captum_clip_surgery.benchmark import DatasetLayout, segmentation_benchmark

    if args.pretrained and not args.model:
        raise UserError("--pretrained: give --model too (an open_clip model name)")
    for option, value in (("--limit", args.limit), ("--batch-size", args.batch_size),
                          ("--window-batch", args.window_batch), ("--scenes", args.scenes)):
        check_positive(option, value)
    check_positive("--workers", args.workers, 0)
    check_device(args.device)
    overrides: Dict[str, Any] = dict(parse_setting(s) for s in args.set)
    mine: Dict[str, Dict[str, Any]] = {}
    for text in args.method_option:
        method, argument, value = parse_method_option(text)
        mine.setdefault(method, {})[argument] = value
    if args.dataset not in ("scenes",) and not args.root:
        raise UserError(f"--root: required for --dataset {args.dataset}")
    if args.dataset not in ("scenes",) and not args.model:
        raise UserError(
            f"--model: required for --dataset {args.dataset} (the protocol's model: --model "
            "ViT-B-16 --pretrained openai)"
        )
    if args.dataset == "custom" and not args.classes:
        raise UserError("--classes: required for --dataset custom (a class-name file)")
    dataset: Any = args.dataset
    if args.dataset == "custom":
        dataset = DatasetLayout("custom", "custom", args.img_dir, args.ann_dir,
                                args.img_suffix or ".jpg", args.seg_map_suffix or ".png",
                                args.split, args.reduce_zero_label, None, args.background)
    device = args.device
    if world_size() > 1 and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend)
        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            torch.cuda.set_device(device)
    if args.model:
        model, _, tokenizer = common.load_model(args.model, args.pretrained, device)
    else:
        from captum_clip_surgery.scenes import load_scenes_clip

        model, _, tokenizer = load_scenes_clip(device=device)
    precision = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if args.precision != "fp32":
        model = model.to(precision[args.precision])  # the command's own model: cast in place
    out = os.path.abspath(args.out)
    from captum_clip_surgery.benchmark.presets import get_preset
    from captum_clip_surgery.methods.registry import METHOD_NAMES

    chosen = ([m.strip() for m in args.methods.split(",") if m.strip()] if args.methods
              else [get_preset(args.preset).method])
    options, refine_backbone = backbone_options(
        args, [m for m in chosen if m in METHOD_NAMES], device,
        refine=overrides.get("refine") in ("lposs", "lposs+"))
    for method, given in mine.items():  # --method-option over --backbone's
        options[method] = {**options.get(method, {}), **given}
    try:
        result = segmentation_benchmark(
            model, dataset, args.root, preset=args.preset, methods=args.methods,
            save_predictions=args.save_predictions, tokenizer=tokenizer, classes=args.classes,
            img_suffix=args.img_suffix if args.dataset != "custom" else None,
            overrides=overrides or None, limit=args.limit, batch_size=args.batch_size,
            window_batch=args.window_batch, num_workers=args.workers,
            state_dir=os.path.join(out, "state"), progress=not args.no_progress,
            scenes_size=args.scenes, method_options=options or None,
            refine_backbone=refine_backbone,
        )
    except (ValueError, TypeError, OSError, ImportError, KeyError) as exc:
        raise _user_error(exc, "--method-option" if mine else "--backbone") from None
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    if rank0:
        written: List[str] = result.write(out)
        print(result.to_markdown(), end="")
        print(f"\nwrote {', '.join(os.path.relpath(p) for p in written)} "
              f"in {result.seconds:.1f} s")
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return out if rank0 else None


def run_coco_object(args: argparse.Namespace) -> str:
    r"""``clip-surgery coco-object``: writes the labels; returns a summary line."""
    from captum_clip_surgery.benchmark import convert_coco_object

    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    if not splits:
        raise UserError("--splits: expected at least one annotation folder, e.g. val2017")
    if args.out is not None and os.path.abspath(args.out) == os.path.abspath(args.root):
        args.out = None
    try:
        written, skipped = convert_coco_object(args.root, args.out, splits, progress=True)
    except (ValueError, OSError) as exc:
        raise _user_error(exc) from None
    where = args.out or args.root
    return f"wrote {written} COCO-Object labels under {where}/annotations ({skipped} already there)"
