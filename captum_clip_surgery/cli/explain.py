r"""``clip-surgery explain``: a figure of raw CLIP and CLIP Surgery maps per text for one
image (the package's default scene without arguments), or many images into a folder."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Dict, List, Optional

from captum_clip_surgery.cli.common import (
    UserError,
    backbone_options,
    check_device,
    classifier,
    first_line,
    input_size,
    load_named_or_shipped,
    printable,
    square_transform,
    world_size,
)

__all__ = ["run", "run_images"]

#: The methods of the one-image figure, in its column order.
FIGURE_METHODS = ("raw", "surgery")


def _max_pixels(args: argparse.Namespace) -> Optional[int]:
    r"""``--max-pixels``: the pixel limit (``None``: no limit)."""
    from captum_clip_surgery.explain.images import MAX_PIXELS

    value = getattr(args, "max_pixels", None)
    if value is None:
        return MAX_PIXELS
    if value < 0:
        raise UserError(f"--max-pixels: expected a number of pixels (0: no limit), got {value}")
    return value or None


def _load_image(path: str, max_pixels: Optional[int] = None) -> object:
    r"""``--image``: the file as RGB through the one image reader (every mode by its real
    range, at most ``max_pixels`` pixels), or a one-line error."""
    from PIL import UnidentifiedImageError

    from captum_clip_surgery.explain.images import read_rgb

    if not os.path.exists(path):
        raise UserError(f"--image: file not found: {path}")
    try:
        return read_rgb(path, max_pixels)[0]
    except ValueError as exc:
        message = str(exc)
        message = message[len("image: "):] if message.startswith("image: ") else message
        raise UserError(f"--image: {message}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"--image: cannot read {path} as an image ({exc})") from None


def _figure_methods(clf: object) -> List[str]:
    r"""The figure's methods defined for the model; those left out are said in one line."""
    from captum_clip_surgery.methods.registry import get_method, method_title, supported_methods

    defined = supported_methods(clf)
    shown = [m for m in FIGURE_METHODS if m in defined]
    left = [m for m in FIGURE_METHODS if m not in defined]
    adapter = clf.adapter  # type: ignore[attr-defined]
    if not shown:
        raise UserError(
            "--model: neither the raw CLIP map nor CLIP Surgery is defined for this model's "
            f"image tower ({get_method(FIGURE_METHODS[0]).unsupported_reason(adapter)}); "
            f"methods defined for it: {', '.join(defined)} (use --images with --method)"
        )
    if left:
        reasons = "; ".join(f"{method_title(m)}: {get_method(m).unsupported_reason(adapter)}"
                            for m in left)
        print(printable(
            f"clip-surgery explain: note: showing {', '.join(method_title(m) for m in shown)} "
            f"only, left out {reasons}; methods defined for this model: {', '.join(defined)}"
        ), file=sys.stderr)
    return shown


def run(args: argparse.Namespace) -> Optional[str]:
    r"""``clip-surgery explain``: one image (or the default scene) into a figure, or many
    images into a folder (``--images``). Returns the figure written (``None`` for
    ``--images``, which prints its own summary)."""
    import torch

    for option in ("save_maps", "no_figures", "batch_size", "workers", "precision", "method",
                   "overwrite", "allow_failures", "backbone", "backbone_checkpoint"):
        if getattr(args, option, None) not in (None, False):
            flag = "--" + option.replace("_", "-")
            raise UserError(f"{flag}: only with --images (many images into a folder)")

    from captum_clip_surgery.apps.comparison import plot_text_grid
    from captum_clip_surgery.explain.images import display_size
    from captum_clip_surgery.methods.clip_surgery import CLIPSurgeryAttribution
    from captum_clip_surgery.methods.registry import build_method, method_title

    if args.pretrained and not args.model:
        raise UserError("--pretrained: give --model too (an open_clip model name)")
    check_device(args.device)
    if args.size is not None and args.size < 8:
        raise UserError(f"--size: expected a size of at least 8 pixels, got {args.size}")
    max_pixels = _max_pixels(args)
    out = os.path.abspath(args.out or "explain.png")
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        raise UserError(f"--out: folder does not exist: {parent}")
    if args.image and os.path.exists(out) and os.path.samefile(out, args.image):
        raise UserError(f"--out: {out} is the input image; choose another file name")

    model, preprocess, tokenizer = load_named_or_shipped(args, args.device)

    class_set: Optional[List[str]] = None
    if args.image:
        image = _load_image(args.image, max_pixels)
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
    clf = classifier(model, all_texts, tokenizer)
    transform = square_transform(model, input_size(clf, args.size))
    images = transform(image).unsqueeze(0)
    shown = _figure_methods(clf)
    explainers = {}
    for name in shown:
        if name == "surgery":
            try:
                explainers[name] = CLIPSurgeryAttribution(clf, surgery_blocks=args.surgery_blocks)
            except (TypeError, ValueError) as exc:
                raise UserError(f"--surgery-blocks: {first_line(exc)}") from None
        else:
            explainers[name] = build_method(name, clf)
    with torch.no_grad():
        targets = [all_texts.index(t) for t in texts]
        batch = images.expand(len(texts), -1, -1, -1)
        maps = {method_title(name): explainer.attribute(batch, target=targets)
                for name, explainer in explainers.items()}
    h, w = display_size((image.height, image.width))  # type: ignore[attr-defined]
    if (h, w) != (image.height, image.width):  # type: ignore[attr-defined]
        from PIL import Image

        image = image.resize((w, h), Image.BICUBIC)  # type: ignore[attr-defined]
    fig = plot_text_grid(image, maps, texts)
    fig.savefig(out, dpi=110)
    return out


def run_images(args: argparse.Namespace) -> int:
    r"""``clip-surgery explain --images ...``: check the options, load the model, write
    the folder and print the summary. Returns the exit status: 0, or 3 when an image
    failed (0 with ``--allow-failures``)."""
    import torch
    import torch.distributed as dist
    from tqdm import tqdm

    from captum_clip_surgery.core.classifier import CLIPZeroShotClassifier
    from captum_clip_surgery.explain.folder import (
        IMAGE_EXTENSIONS,
        OutputsExist,
        check_out_dir,
        explain_to_folder,
        find_images,
    )
    from captum_clip_surgery.methods.registry import get_method, method_names, supported_methods

    precisions = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

    if args.image:
        raise UserError("--images: give either --image (one file) or --images (many), not both")
    texts = args.text
    if not texts:
        raise UserError("--text: give at least one text to explain with --images")
    if any(not t.strip() for t in texts):
        raise UserError("--text: texts must not be empty")
    if len(set(texts)) != len(texts):
        raise UserError("--text: each text once (the maps are stored in --text order)")
    if args.pretrained and not args.model:
        raise UserError("--pretrained: give --model too (the open_clip model name)")
    precision = args.precision or "fp32"
    if precision not in precisions:
        raise UserError(f"--precision: expected one of {', '.join(precisions)}, got {precision!r}")
    method = args.method or "surgery"
    if method not in method_names():
        raise UserError(f"--method: unknown method {method!r}; expected one of "
                        f"{', '.join(method_names())}")
    batch_size = 16 if args.batch_size is None else args.batch_size
    if batch_size < 1:
        raise UserError(f"--batch-size: expected a positive number of images, got {batch_size}")
    workers = 2 if args.workers is None else args.workers
    if workers < 0:
        raise UserError(f"--workers: expected 0 or more worker processes, got {workers}")
    if args.size is not None and args.size < 8:
        raise UserError(f"--size: expected a size of at least 8 pixels, got {args.size}")
    max_pixels = _max_pixels(args)
    if args.no_figures and not args.save_maps:
        raise UserError("--no-figures: nothing left to write; add --save-maps")
    paths = find_images(args.images)
    if not paths:
        what = "folder holds no image files" if os.path.isdir(args.images) else "no files match"
        raise UserError(f"--images: {what} {args.images!r} (image extensions: "
                         f"{' '.join(IMAGE_EXTENSIONS)})")
    stems: Dict[str, str] = {}
    for p in paths:
        stem = os.path.splitext(os.path.basename(p))[0]
        if stem in stems:
            raise UserError(f"--images: {stems[stem]} and {p} would both write {stem}.*; "
                             "explain them into different --out folders")
        stems[stem] = p
    out = os.path.abspath(args.out or "explanations")
    try:
        check_out_dir(paths, out)  # before anything is created or loaded
    except ValueError as exc:
        raise UserError(f"--out: {str(exc).split(': ', 1)[1]}") from None
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise UserError(f"--out: cannot write into folder {out} "
                         f"({exc.strerror or type(exc).__name__})") from None
    check_device(args.device)

    device_name = args.device
    if world_size() > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device_name.startswith("cuda") else "gloo")
        if device_name.startswith("cuda"):
            device_name = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            torch.cuda.set_device(device_name)
    try:
        model, preprocess, tokenizer = load_named_or_shipped(args, device_name)
        model = model.to(precisions[precision])  # the command's own model: cast in place
        transform = square_transform(model, args.size)
        try:
            classifier = CLIPZeroShotClassifier(model, texts, tokenizer=tokenizer)
        except (TypeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise UserError(f"--model: {first}") from None
        defined = supported_methods(classifier)
        if method not in defined:
            reason = get_method(method).unsupported_reason(classifier.adapter)
            raise UserError(f"--method: {method!r} is not defined for this model's image tower "
                             f"({reason}); methods defined for it: {', '.join(defined)}")
        options = backbone_options(args, [method], device_name)[0].get(method)
        if method.startswith("surgery") and args.surgery_blocks is not None:
            options = {"surgery_blocks": args.surgery_blocks}
        rank = dist.get_rank() if dist.is_initialized() else 0
        run_info = {"model": args.model or "shipped scenes model", "pretrained": args.pretrained,
                    "size": args.size, "precision": precision}

        def report(path: str, message: str) -> None:
            tqdm.write(printable(f"clip-surgery explain: skipped {path}: {message}"),
                       file=sys.stderr)

        try:
            summary = explain_to_folder(
                paths, classifier, out, texts, method, save_maps=args.save_maps,
                figures=not args.no_figures, preprocess=transform, batch_size=batch_size,
                num_workers=workers, on_error=report, progress=True, method_options=options,
                max_pixels=max_pixels, overwrite=args.overwrite, run_info=run_info,
            )
        except OutputsExist as exc:
            raise UserError(f"--out: {exc.describe()}; write into another --out folder, or add "
                             "--overwrite to replace them") from None
        except ValueError as exc:
            if str(exc).startswith("surgery_blocks:"):
                raise UserError(f"--surgery-blocks: {exc}") from None
            raise
        if rank == 0:
            print(printable(f"{out}: {summary}"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if summary.failed and not args.allow_failures:
        return 3
    return 0
