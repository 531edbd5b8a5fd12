r"""``clip-surgery evaluate``: every method scored by the same metrics on one dataset."""

from __future__ import annotations

import argparse
import os
from typing import Any, List, Optional

from captum_clip_surgery.cli.common import (
    UserError,
    check_device,
    check_positive,
    classifier,
    first_line,
    input_size,
    load_named_or_shipped,
    square_transform,
    world_size,
)

__all__ = ["methods_option", "run"]


def methods_option(option: Optional[str], clf: Any) -> List[str]:
    r"""The ``--methods`` list checked against the names and the model's tower."""
    from captum_clip_surgery.methods.registry import build_method, method_names, supported_methods

    defined = supported_methods(clf)
    if option is None:
        return [m for m in method_names("evaluate") if m in defined]
    methods = list(dict.fromkeys(m.strip() for m in option.split(",") if m.strip()))
    known = method_names()
    unknown = [m for m in methods if m not in known]
    if not methods or unknown:
        raise UserError(
            f"--methods: unknown method(s) {', '.join(unknown) or '(none given)'}; "
            f"expected some of {', '.join(known)}"
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
            raise UserError(f"--methods: {m}: {first_line(exc)}") from None
    return methods


class _CheckedDataset:
    r"""A dataset whose unreadable items end the command with a one-line error."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.class_names = dataset.class_names
        self.class_kinds = getattr(dataset, "class_kinds", None)
        self.default_baseline = getattr(dataset, "default_baseline", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except (OSError, ValueError) as exc:  # missing / unreadable files of the dataset
            message = first_line(exc)
            if message.startswith("root:"):
                raise UserError(f"--{message}") from None
            raise UserError(f"--root: cannot read item {index} ({message})") from None


def run(args: argparse.Namespace) -> Optional[str]:
    r"""``clip-surgery evaluate``: score methods on a dataset; writes the tables and
    figures (rank 0) and returns the output folder (``None`` on other ranks)."""
    import torch
    import torch.distributed as dist

    from captum_clip_surgery.evaluation import (
        FolderSegmentation,
        ScenesSegmentation,
        VOCSegmentationMasks,
        evaluate,
    )

    checks = bool(args.quantus or args.sanity)
    if args.pretrained and not args.model:
        raise UserError("--pretrained: give --model too (an open_clip model name)")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit: expected a positive number of images, got {args.limit}")
    if args.size is not None and args.size < 8:
        raise UserError(f"--size: expected a size of at least 8 pixels, got {args.size}")
    check_positive("--batch-size", args.batch_size)
    check_positive("--deletion-steps", args.deletion_steps)
    check_positive("--ig-steps", args.ig_steps)
    check_positive("--tolerance", args.tolerance, 0)
    check_device(args.device)
    if checks and world_size() > 1:
        raise UserError("--quantus / --sanity: run the checks in one process, not under torchrun")
    if args.quantus:
        try:
            import quantus  # noqa: F401
        except ImportError:
            raise UserError('--quantus: needs Quantus: pip install "captum-clip-surgery[quantus]"'
                            ) from None
    if checks and args.limit is None:
        from captum_clip_surgery.evaluation.quantus_bridge import QUANTUS_IMAGES

        args.limit = QUANTUS_IMAGES
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
        message = first_line(exc)
        raise UserError(f"--{message}" if message.startswith("root:") else f"--root: {message}") from None

    device = args.device
    if world_size() > 1 and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend)
        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            torch.cuda.set_device(device)
    model, preprocess, tokenizer = load_named_or_shipped(args, device)
    clf = classifier(model, list(dataset.class_names), tokenizer)
    if checks:
        return _run_checks(args, dataset, model, clf)
    methods = methods_option(args.methods, clf)
    transform = square_transform(model, input_size(clf, args.size))
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


def _run_checks(args: argparse.Namespace, dataset: Any, model: Any, clf: Any) -> str:
    r"""``--quantus`` / ``--sanity``: the checks of
    :mod:`~captum_clip_surgery.evaluation.quantus_bridge` and
    :mod:`~captum_clip_surgery.evaluation.sanity` on every map of the first ``--limit``
    images, written to ``--out``; returns the output folder."""
    from captum_clip_surgery.evaluation.pairs import dataset_pairs

    if args.methods is None:  # every method defined for the model
        from captum_clip_surgery.methods.registry import supported_methods

        methods = list(supported_methods(clf))
    else:
        methods = methods_option(args.methods, clf)
    if args.sanity and not clf.adapter.image.blocks:
        raise UserError("--sanity: the model's image tower has no attention blocks to randomise")
    transform = square_transform(model, input_size(clf, args.size))
    try:
        pairs = dataset_pairs(_CheckedDataset(dataset), clf, args.limit, transform)
    except ValueError as exc:
        raise UserError(f"--limit: {first_line(exc)}") from None
    method_kwargs = {"ig": {"n_steps": args.ig_steps}}
    out = os.path.abspath(args.out)
    print(f"{len(pairs)} maps per method ({pairs.num_images} images, every class present), "
          f"{len(methods)} methods")
    if args.quantus:
        from captum_clip_surgery.evaluation.quantus_bridge import quantus_evaluate

        result = quantus_evaluate(clf, pairs.images, pairs.targets, pairs.masks, methods=methods,
                                  method_kwargs=method_kwargs, seed=args.seed, progress=True)
        result.write(out)
        print(result.to_markdown(), end="")
    if args.sanity:
        from captum_clip_surgery.evaluation.sanity import sanity_checks

        sanity = sanity_checks(clf, pairs.images, pairs.targets, methods=methods,
                               method_kwargs=method_kwargs, seed=args.seed, progress=True)
        sanity.write(out)
        if args.quantus:
            print()
        print(sanity.to_markdown(), end="")
    return out
