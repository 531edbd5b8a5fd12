r"""Command line: ``clip-surgery explain`` (and ``clip-surgery evaluate``).

``clip-surgery explain`` with no arguments renders a default scene of the
package's scenes world, explains it with the shipped small CLIP for the objects
and the background it contains, and writes ``explain.png`` (the image, the raw
CLIP map and the CLIP Surgery map per text). With arguments it explains your
image with your model.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable, List, Optional, Sequence, Tuple

__all__ = ["main"]


class UserError(Exception):
    r"""A mistake in the command's arguments: printed as one line, exit status 2."""


#: Methods ``clip-surgery evaluate`` runs when ``--methods`` is not given (those defined for
#: the model's image tower).
EVALUATE_METHODS = ("surgery", "raw", "maskclip", "gradcam", "chefer", "ig")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_device(name: str) -> None:
    import torch

    try:
        torch.empty(0, device=torch.device(name))
    except (RuntimeError, AssertionError, ValueError, TypeError) as exc:
        raise UserError(f"--device: cannot use device {name!r} ({_first_line(exc)})") from None


def _check_positive(option: str, value: Optional[float], minimum: float = 1) -> None:
    if value is not None and value < minimum:
        raise UserError(f"{option}: expected a value of at least {minimum:g}, got {value:g}")


def _classifier(model: Any, texts: List[str], tokenizer: Any) -> Any:
    r"""The classifier on the loaded model; an unsupported model is a one-line error."""
    from captum_clip_surgery import CLIPZeroShotClassifier

    try:
        return CLIPZeroShotClassifier(model, texts, tokenizer=tokenizer)
    except (TypeError, ValueError) as exc:
        raise UserError(f"--model: {_first_line(exc)}") from None


def _input_size(clf: Any, size: Optional[int]) -> int:
    r"""The square input size: ``--size`` or the model's own, at least one grid cell."""
    from captum_clip_surgery._validation import min_image_size

    native = clf.adapter.input_size()
    chosen = size or int(native[0])
    least = max(8, *min_image_size(clf.adapter))
    if chosen < least:
        raise UserError(
            f"--size: expected a size of at least {least} pixels (one grid cell of this "
            f"model), got {chosen}"
        )
    return chosen


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clip-surgery",
        description="Explain where CLIP looks for a text, with CLIP Surgery (a Captum plugin).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    ex = sub.add_parser(
        "explain",
        help="write a figure with raw CLIP and CLIP Surgery maps per text",
        description="Without arguments: a default scene explained by the shipped small model.",
    )
    ex.add_argument("--image", help="image file to explain (default: a rendered scene)")
    ex.add_argument(
        "--images", metavar="DIR_OR_GLOB",
        help="many images: a folder or a quoted glob pattern ('photos/**/*.jpg'); --out is "
        "then a folder that gets stem.png (and stem.npy with --save-maps) per image; "
        "finished images are skipped when the command is run again",
    )
    ex.add_argument(
        "--text", action="append", default=None, metavar="T",
        help="a text to explain; repeat for several (default: the scene's classes)",
    )
    ex.add_argument(
        "--model", default=None,
        help="open_clip model name (e.g. ViT-B-16), hf-hub:ORG/NAME id or local model folder "
        "(transformers save_pretrained, or open_clip_config.json); weights from local files or "
        "caches only (default: the shipped scenes model; its architecture is also known as "
        "'scenes_clip')",
    )
    ex.add_argument(
        "--pretrained", default=None, metavar="TAG|PATH",
        help="open_clip pretrained tag (e.g. openai) or a local checkpoint file",
    )
    ex.add_argument("--size", type=int, default=None, metavar="PX",
                    help="square input size (default: the model's own)")
    ex.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    ex.add_argument("--surgery-blocks", type=int, default=None, metavar="S",
                    help="last attention blocks with the surgery path (default: the release's 6, "
                         "every block of a shallower tower; towers without attention blocks "
                         "take none)")
    ex.add_argument("--out", default=None,
                    help="output PNG (default explain.png); with --images an output folder "
                    "(default explanations)")
    many = ex.add_argument_group("with --images")
    many.add_argument("--save-maps", action="store_true",
                      help="also write stem.npy: float32 [T, H, W], one map per --text in "
                      "[0, 1] at the image's own size")
    many.add_argument("--no-figures", action="store_true", help="do not write stem.png")
    many.add_argument("--batch-size", type=int, default=None, metavar="N",
                      help="images per forward (default 16)")
    many.add_argument("--workers", type=int, default=None, metavar="N",
                      help="image-loading worker processes (default 2)")
    many.add_argument("--precision", default=None, metavar="fp32|fp16|bf16",
                      help="model precision (default fp32)")
    many.add_argument("--method", default=None, metavar="NAME",
                      help="explanation method (default surgery; see `compare` for names)")

    ev = sub.add_parser(
        "evaluate",
        help="score explanation methods on a dataset: tables and figures",
        description="Scores every method with the same metrics; works under torchrun.",
    )
    ev.add_argument("--dataset", choices=("scenes", "voc", "folder"), default="scenes")
    ev.add_argument("--root", default=None, help="dataset folder (voc: holds VOCdevkit)")
    ev.add_argument("--methods", default=None,
                    help="comma-separated method names (default: those of "
                         f"{','.join(EVALUATE_METHODS)} defined for the model)")
    ev.add_argument("--limit", type=int, default=None, help="first N images only")
    ev.add_argument("--out", default="evaluation", help="output folder (default evaluation)")
    ev.add_argument("--model", default=None,
                    help="open_clip name, hf-hub: id or local folder (default: shipped)")
    ev.add_argument("--pretrained", default=None, metavar="TAG|PATH")
    ev.add_argument("--size", type=int, default=None, metavar="PX",
                    help="square input size (default: the model's own)")
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--tolerance", type=float, default=15,
                    help="pointing-game tolerance in pixels (default 15)")
    ev.add_argument("--deletion-steps", type=int, default=20)
    ev.add_argument("--no-faithfulness", action="store_true",
                    help="skip deletion / insertion curves")
    ev.add_argument("--baseline", choices=("blur", "mean", "zero"), default="blur",
                    help="what deleted pixels become in deletion / insertion (default blur; "
                         "use mean or zero where the model reads colour, as on the scenes)")
    ev.add_argument("--ig-steps", type=int, default=50, help="Integrated Gradients steps")
    return parser


def _load_image(path: str) -> Any:
    from PIL import Image, UnidentifiedImageError

    if not os.path.exists(path):
        raise UserError(f"--image: file not found: {path}")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"--image: cannot read {path} as an image ({exc})") from None


def _load_model(
    name: str, pretrained: Optional[str], device: str
) -> Tuple[Any, Callable[[Any], Any], Any]:
    from captum_clip_surgery.adapters.loading import load_clip

    try:
        return load_clip(name, pretrained, device)
    except ValueError as exc:
        raise UserError(f"--{exc}") from None


def _square_transform(model: Any, size: Optional[int]) -> Any:
    r"""Square resize (no crop, like the release) to ``size`` or the model's own input
    size, with the model's own normalisation (both from the model's adapter)."""
    from captum_clip_surgery.adapters import get_adapter
    from captum_clip_surgery.adapters.loading import square_preprocess

    adapter = get_adapter(model)
    return square_preprocess(size or adapter.input_size()[0], adapter.image_mean, adapter.image_std)


def _explain(args: argparse.Namespace) -> Optional[str]:
    import torch

    if args.images:
        from captum_clip_surgery.batch_explain import run_cli

        return run_cli(args, UserError, _load_model, _square_transform)
    for option in ("save_maps", "no_figures", "batch_size", "workers", "precision", "method"):
        if getattr(args, option) not in (None, False):
            flag = "--" + option.replace("_", "-")
            raise UserError(f"{flag}: only with --images (many images into a folder)")

    from captum_clip_surgery import CLIPSimilarityMap, CLIPSurgeryAttribution, plot_text_grid

    if args.pretrained and not args.model:
        raise UserError("--pretrained: give --model too (an open_clip model name)")
    _check_device(args.device)
    if args.size is not None and args.size < 8:
        raise UserError(f"--size: expected a size of at least 8 pixels, got {args.size}")
    out = os.path.abspath(args.out or "explain.png")
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        raise UserError(f"--out: folder does not exist: {parent}")

    if args.model:
        model, preprocess, tokenizer = _load_model(args.model, args.pretrained, args.device)
    else:
        from captum_clip_surgery.scenes import load_scenes_clip

        model, preprocess, tokenizer = load_scenes_clip(device=args.device)

    class_set: Optional[List[str]] = None
    if args.image:
        image = _load_image(args.image)
        texts = args.text
        if not texts:
            raise UserError("--text: give at least one text to explain with --image")
    else:
        from captum_clip_surgery.scenes import ScenesWorld

        world = ScenesWorld(seed=0)
        scene = world.sample(world.default_scene())  # first held-out scene with >= 2 objects
        image = scene["image"]
        texts = args.text or list(scene["objects"]) + [scene["background"]]
        class_set = list(world.object_classes) + list(world.background_classes)
    if any(not t.strip() for t in texts):
        raise UserError("--text: texts must not be empty")

    # class-set feature surgery needs a text set: the world's classes for a scene,
    # otherwise the given texts (>= 2) or the empty string (1 text)
    all_texts = list(dict.fromkeys((class_set or []) + list(texts)))
    clf = _classifier(model, all_texts, tokenizer)
    transform = _square_transform(model, _input_size(clf, args.size))
    images = transform(image).unsqueeze(0)
    try:
        surgery = CLIPSurgeryAttribution(clf, surgery_blocks=args.surgery_blocks)
    except (TypeError, ValueError) as exc:
        raise UserError(f"--surgery-blocks: {_first_line(exc)}") from None
    raw = CLIPSimilarityMap(clf)
    with torch.no_grad():
        targets = [all_texts.index(t) for t in texts]
        batch = images.expand(len(texts), -1, -1, -1)
        maps = {
            "raw CLIP": raw.attribute(batch, target=targets),
            "CLIP Surgery": surgery.attribute(batch, target=targets),
        }
    fig = plot_text_grid(image, maps, texts)
    fig.savefig(out, dpi=110)
    return out


def _methods(option: Optional[str], clf: Any) -> List[str]:
    r"""The ``--methods`` list checked against the names and the model's tower."""
    from captum_clip_surgery.comparison import METHOD_NAMES, build_method, supported_methods

    defined = supported_methods(clf)
    if option is None:
        return [m for m in EVALUATE_METHODS if m in defined]
    methods = list(dict.fromkeys(m.strip() for m in option.split(",") if m.strip()))
    unknown = [m for m in methods if m not in METHOD_NAMES]
    if not methods or unknown:
        raise UserError(
            f"--methods: unknown method(s) {', '.join(unknown) or '(none given)'}; "
            f"expected some of {', '.join(METHOD_NAMES)}"
        )
    undefined = [m for m in methods if m not in defined]
    if undefined:
        kind = clf.adapter.image.kind
        raise UserError(
            f"--methods: {', '.join(undefined)} not defined for this model's image tower "
            f"({kind!r} head, {len(clf.adapter.image.blocks)} attention blocks); methods "
            f"defined for it: {', '.join(defined)}"
        )
    for m in methods:  # a method that cannot be built on this model is a one-line error too
        try:
            build_method(m, clf)
        except (TypeError, ValueError) as exc:
            raise UserError(f"--methods: {m}: {_first_line(exc)}") from None
    return methods


class _CheckedDataset:
    r"""A dataset whose unreadable items end the command with a one-line error."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.class_names = dataset.class_names
        self.class_kinds = getattr(dataset, "class_kinds", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except (OSError, ValueError) as exc:  # missing / unreadable files of the dataset
            message = _first_line(exc)
            if message.startswith("root:"):
                raise UserError(f"--{message}") from None
            raise UserError(f"--root: cannot read item {index} ({message})") from None


def _evaluate(args: argparse.Namespace) -> Optional[str]:
    import torch
    import torch.distributed as dist

    from captum_clip_surgery.evaluation import (
        FolderSegmentation,
        ScenesSegmentation,
        VOCSegmentationMasks,
        evaluate,
    )

    if args.pretrained and not args.model:
        raise UserError("--pretrained: give --model too (an open_clip model name)")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit: expected a positive number of images, got {args.limit}")
    if args.size is not None and args.size < 8:
        raise UserError(f"--size: expected a size of at least 8 pixels, got {args.size}")
    _check_positive("--batch-size", args.batch_size)
    _check_positive("--deletion-steps", args.deletion_steps)
    _check_positive("--ig-steps", args.ig_steps)
    _check_positive("--tolerance", args.tolerance, 0)
    _check_device(args.device)
    try:
        if args.dataset == "scenes":
            dataset = ScenesSegmentation(size=args.limit or 200)
        elif args.dataset == "voc":
            if not args.root:
                raise UserError("--root: required for --dataset voc (the folder holding VOCdevkit)")
            dataset = VOCSegmentationMasks(args.root)
        else:
            if not args.root:
                raise UserError("--root: required for --dataset folder")
            dataset = FolderSegmentation(args.root)
    except (OSError, ValueError) as exc:
        message = _first_line(exc)
        raise UserError(f"--{message}" if message.startswith("root:") else f"--root: {message}") from None

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = args.device
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend)
        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            torch.cuda.set_device(device)
    if args.model:
        model, preprocess, tokenizer = _load_model(args.model, args.pretrained, device)
    else:
        from captum_clip_surgery.scenes import load_scenes_clip

        model, preprocess, tokenizer = load_scenes_clip(device=device)
    clf = _classifier(model, list(dataset.class_names), tokenizer)
    methods = _methods(args.methods, clf)
    transform = _square_transform(model, _input_size(clf, args.size))
    result = evaluate(
        methods, _CheckedDataset(dataset), clf, preprocess=transform, batch_size=args.batch_size,
        limit=args.limit, tolerance=args.tolerance, faithfulness=not args.no_faithfulness,
        deletion_steps=args.deletion_steps, baseline=args.baseline,
        method_kwargs={"ig": {"n_steps": args.ig_steps}},
    )
    out: Optional[str] = os.path.abspath(args.out)
    if not dist.is_initialized() or dist.get_rank() == 0:
        result.write(out)
        print(result.to_markdown(), end="")
        if len({r["kind"] for r in result.records}) > 1:
            print()
            print(result.breakdown_markdown("kind"), end="")
    else:
        out = None  # only rank 0 writes and reports
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    r"""Entry point of the ``clip-surgery`` console script.

    Args:
        argv (list[str], optional): arguments (default ``sys.argv[1:]``).

    Returns:
        int: exit status (0 success, 2 user error).
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    start = time.perf_counter()
    try:
        if args.command == "explain":
            out = _explain(args)
            if out is not None:  # None: --images (it prints its own summary)
                print(f"wrote {out} in {time.perf_counter() - start:.1f} s")
            return 0
        if args.command == "evaluate":
            written = _evaluate(args)
            if written is not None:
                print(f"wrote {written}/results.md, results.csv, breakdown.md and figures in "
                      f"{time.perf_counter() - start:.1f} s")
            return 0
    except UserError as exc:
        print(f"clip-surgery {args.command}: error: {exc}", file=sys.stderr)
        return 2
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
