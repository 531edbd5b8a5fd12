r"""Command line: ``clip-surgery explain``, ``clip-surgery evaluate``, ``clip-surgery serve``,
``clip-surgery benchmark`` and ``clip-surgery coco-object``.

``clip-surgery explain`` with no arguments renders a default scene of the
package's scenes world, explains it with the shipped small CLIP for the objects
and the background it contains, and writes ``explain.png`` (the image, the raw
CLIP map and the CLIP Surgery map per text). With arguments it explains your
image with your model, or a folder of images (``--images``).

This module builds the parser and dispatches; each command lives in its own module
(:mod:`~captum_clip_surgery.cli.explain`, :mod:`~captum_clip_surgery.cli.evaluate`,
:mod:`~captum_clip_surgery.cli.serve`) and
imports the package's heavy parts only when it runs, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Optional, Sequence

from captum_clip_surgery.cli.common import UserError, add_backbone_options, printable

__all__ = ["EXIT_FAILED_IMAGES", "EXIT_INTERRUPTED", "EXIT_USAGE", "UserError", "build_parser",
           "main"]

#: Exit status of a mistake in the command's arguments (one line on stderr).
EXIT_USAGE = 2
#: Exit status of ``explain --images`` when an image failed (0 with ``--allow-failures``).
EXIT_FAILED_IMAGES = 3
#: Exit status after Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130

EXIT_CODES = """exit status:
  0    success (explain --images: every image written or already written; also with
       failed images under --allow-failures)
  1    an unexpected error (a bug: the traceback is printed; please report it)
  2    a mistake in the arguments (one line on stderr, nothing written)
  3    explain --images: at least one image failed (each printed as "skipped PATH:
       reason"); the others are written
  130  interrupted (Ctrl-C); every output written is complete, run the same command
       again to resume"""

EVALUATE_EXIT_CODES = """exit status:
  0    success
  1    an unexpected error (a bug: the traceback is printed; please report it)
  2    a mistake in the arguments (one line on stderr)
  130  interrupted (Ctrl-C)"""


def _add_loading_options(parser: argparse.ArgumentParser) -> None:
    r"""``--tokenizer`` and ``--allow-partial-weights``: how ``--model`` is loaded."""
    parser.add_argument(
        "--tokenizer", default=None, metavar="PATH_OR_NAME",
        help="tokenizer for --model: a folder with tokenizer files, a Hugging Face hub id in "
        "the local cache or an open_clip model name, read from local files only (for a model "
        "folder saved without its tokenizer files; default: the model's own)",
    )
    parser.add_argument(
        "--allow-partial-weights", action="store_true",
        help="load a transformers checkpoint that lacks some of the model's tensors (they stay "
        "random) with a warning, instead of refusing it",
    )


def build_parser() -> argparse.ArgumentParser:
    r"""The ``clip-surgery`` argument parser (method names from the registry)."""
    from captum_clip_surgery.methods.registry import method_names

    names = method_names()
    parser = argparse.ArgumentParser(
        prog="clip-surgery",
        description="Explain where CLIP looks for a text, with CLIP Surgery (a Captum plugin).",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    ex = sub.add_parser(
        "explain",
        help="write a figure with raw CLIP and CLIP Surgery maps per text",
        description="Without arguments: a default scene explained by the shipped small model.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
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
    _add_loading_options(ex)
    ex.add_argument("--size", type=int, default=None, metavar="PX",
                    help="square input size (default: the model's own)")
    ex.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    ex.add_argument("--surgery-blocks", type=int, default=None, metavar="S",
                    help="last attention blocks with the surgery path (default: the release's 6, "
                         "every block of a shallower tower; towers without attention blocks "
                         "take none)")
    ex.add_argument("--out", default=None,
                    help="output PNG (default explain.png); with --images an output folder "
                    "(default explanations), never a folder of the input images")
    ex.add_argument("--max-pixels", type=int, default=None, metavar="N",
                    help="pixel limit (width x height) of the working size: a larger image "
                    "is explained, and its maps and figure written, scaled down to fit "
                    "(default 16777216 = 4096x4096; 0: no limit); figures draw images at "
                    "most 1024 pixels on a side")
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
                      help="explanation method (default surgery): " + ", ".join(names))
    add_backbone_options(many)
    many.add_argument("--overwrite", action="store_true",
                      help="replace outputs in --out made with other settings (texts, "
                      "method, model, ...) or not written by this command; without it such "
                      "a run is refused and nothing is written")
    many.add_argument("--allow-failures", action="store_true",
                      help="exit 0 even when some images failed (default: exit status 3)")

    ev = sub.add_parser(
        "evaluate",
        help="score explanation methods on a dataset: tables and figures",
        description="Scores every method with the same metrics; works under torchrun.",
        epilog=EVALUATE_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ev.add_argument("--dataset", choices=("scenes", "voc", "folder"), default="scenes")
    ev.add_argument("--root", default=None, help="dataset folder (voc: holds VOCdevkit)")
    ev.add_argument("--methods", default=None,
                    help="comma-separated method names (default: those of "
                         f"{','.join(method_names('evaluate'))} defined for the model); "
                         "any of: " + ", ".join(names))
    ev.add_argument("--limit", type=int, default=None, help="first N images only")
    ev.add_argument("--out", default="evaluation", help="output folder (default evaluation)")
    ev.add_argument("--model", default=None,
                    help="open_clip name, hf-hub: id or local folder (default: shipped)")
    ev.add_argument("--pretrained", default=None, metavar="TAG|PATH")
    _add_loading_options(ev)
    ev.add_argument("--size", type=int, default=None, metavar="PX",
                    help="square input size (default: the model's own)")
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--tolerance", type=float, default=15,
                    help="pointing-game tolerance in pixels (default 15)")
    ev.add_argument("--deletion-steps", type=int, default=20)
    ev.add_argument("--no-faithfulness", action="store_true",
                    help="skip deletion / insertion curves")
    ev.add_argument("--baseline", choices=("blur", "mean", "zero"), default=None,
                    help="what deleted pixels become in deletion / insertion (default: the "
                         "dataset's own: mean on the scenes, whose model reads colour so a "
                         "blur deletes nothing; blur on voc and folder); the results table "
                         "names it")
    ev.add_argument("--ig-steps", type=int, default=50, help="Integrated Gradients steps")
    checks = ev.add_argument_group(
        "checks to trust the maps",
        "either flag runs these checks instead of the metrics above, on every map of the "
        "first --limit images (default 4), for every method defined for the model unless "
        "--methods names some; tutorial 06 runs the same with the same defaults")
    checks.add_argument("--quantus", action="store_true",
                        help="Quantus' Pointing Game, Relevance Mass and Rank Accuracy, ROAD, "
                        "Faithfulness Correlation, Sparseness, Model Parameter Randomisation "
                        "and Random Logit (needs the [quantus] extra): quantus.md, quantus.csv, "
                        "quantus_records.csv, quantus.png")
    checks.add_argument("--sanity", action="store_true",
                        help="model-randomisation sanity checks: the image tower's blocks "
                        "re-initialised on a copy of the model, cascading from the last and one "
                        "at a time; Spearman and SSIM of each map to the trained one: "
                        "sanity.md, sanity.csv, sanity_records.csv, sanity.png")
    checks.add_argument("--seed", type=int, default=0,
                        help="seed of the checks' random draws (default 0)")

    sv = sub.add_parser(
        "serve",
        help="a web page to explore maps, segmentation and point prompts (needs the [app] extra)",
        description="Serves a Gradio page on this machine (loopback only unless --host): "
        "upload an image or pick a held-out scene, type texts, choose methods. "
        "Needs pip install 'captum-clip-surgery[app]'.",
    )
    sv.add_argument("--model", default=None,
                    help="open_clip model name, hf-hub:ORG/NAME id or local model folder, as for "
                    "explain (default: the shipped scenes model)")
    sv.add_argument("--pretrained", default=None, metavar="TAG|PATH",
                    help="open_clip pretrained tag or a local checkpoint file")
    sv.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    sv.add_argument("--precision", default=None, metavar="fp32|fp16|bf16",
                    help="model precision (default fp32)")
    sv.add_argument("--host", default="127.0.0.1",
                    help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 for "
                    "every interface)")
    sv.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    sv.add_argument("--share", action="store_true",
                    help="also create a public Gradio share link (off by default; needs the "
                    "internet)")
    sv.add_argument("--scenes", type=int, default=12, metavar="N",
                    help="held-out scenes in the page's gallery (default 12)")
    sv.add_argument("--sam-checkpoint", default=None, metavar="PATH",
                    help="a Segment Anything checkpoint (.pth): the points tab then shows SAM's "
                    "masks (needs the [sam] extra; the file is read with torch.load: use only "
                    "files you trust)")
    sv.add_argument("--sam-model-type", default="vit_b", choices=("vit_b", "vit_l", "vit_h"),
                    help="the checkpoint's SAM architecture (default vit_b)")

    from captum_clip_surgery.cli.benchmark import add_parsers

    add_parsers(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    r"""Entry point of the ``clip-surgery`` console script.

    Args:
        argv (list[str], optional): arguments (default ``sys.argv[1:]``).

    Returns:
        int: exit status: 0 success, 2 a mistake in the arguments, 3 ``explain
        --images`` with failed images (0 with ``--allow-failures``), 130 interrupted
        (1, with a traceback: an unexpected error).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    start = time.perf_counter()
    try:
        if args.command == "explain":
            from captum_clip_surgery.cli import explain

            if args.images:
                return explain.run_images(args)
            out = explain.run(args)
            print(f"wrote {printable(out)} in {time.perf_counter() - start:.1f} s")
            return 0
        if args.command == "serve":
            from captum_clip_surgery.cli import serve

            serve.run(args)
            return 0
        if args.command == "evaluate":
            from captum_clip_surgery.cli import evaluate

            written = evaluate.run(args)
            if written is not None:
                files = ", ".join(
                    [name for flag, name in ((args.quantus, "quantus.md, quantus.csv"),
                                             (args.sanity, "sanity.md, sanity.csv")) if flag]
                    or ["results.md, results.csv, breakdown.md"])
                print(f"wrote {printable(written)}/{files} and figures in "
                      f"{time.perf_counter() - start:.1f} s")
            return 0
        if args.command == "benchmark":
            from captum_clip_surgery.cli import benchmark

            benchmark.run(args)
            return 0
        if args.command == "coco-object":
            from captum_clip_surgery.cli import benchmark

            print(benchmark.run_coco_object(args))
            return 0
    except UserError as exc:
        print(f"clip-surgery {args.command}: error: {printable(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        summary = getattr(exc, "summary", None)
        if summary is not None:
            message = (f"interrupted after writing {summary.done} image"
                       f"{'s' if summary.done != 1 else ''} this run (every output written "
                       "is complete); run the same command again to resume")
        else:
            message = "interrupted"
        print(f"\nclip-surgery {args.command}: {message}", file=sys.stderr)
        return EXIT_INTERRUPTED
    parser.print_help()
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
