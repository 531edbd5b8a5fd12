r"""What the commands share: the one-line user error, device and size checks, and the
model loader (``--model`` / ``--pretrained``) with its square transform.

Each function imports what it needs when it runs, so building the parser (and
``--help``) imports neither torch's model code nor Captum, open_clip or matplotlib.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = [
    "UserError",
    "check_device",
    "check_positive",
    "classifier",
    "first_line",
    "input_size",
    "load_model",
    "load_named_or_shipped",
    "printable",
    "square_transform",
]


class UserError(Exception):
    r"""A mistake in the command's arguments: printed as one line, exit status 2."""


_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: object) -> str:
    r"""``text`` safe to print on a terminal, on one line: control characters (escape
    codes, newlines, ...) and other unprintable characters are shown escaped as Python
    writes them (``\n``, ``\xNN``, ``\uNNNN``), undecodable bytes of a file name as
    ``\xNN``.

    Args:
        text (object): a message or path (``str()`` of anything else).

    Returns:
        str: the escaped text.

    Examples::

        >>> printable("a\x1b[31mred.png")
        'a\\x1b[31mred.png'
    """
    out = []
    for ch in str(text):
        if ch.isprintable():
            out.append(ch)
            continue
        code = ord(ch)
        if ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF:  # a byte os.fsdecode could not decode
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


def first_line(exc: BaseException) -> str:
    r"""The first line of an exception's message (its type name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_device(name: str) -> None:
    r"""``--device``: a device a tensor can be made on, else a one-line error."""
    from captum_clip_surgery._validation import check_device as _check

    try:
        _check("--device", name)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def check_positive(option: str, value: Optional[float], minimum: float = 1) -> None:
    r"""An option's value is at least ``minimum`` (``None``: not given)."""
    if value is not None and value < minimum:
        raise UserError(f"{option}: expected a value of at least {minimum:g}, got {value:g}")


def classifier(model: Any, texts: List[str], tokenizer: Any) -> Any:
    r"""The classifier on the loaded model; an unsupported model is a one-line error."""
    from captum_clip_surgery.core.classifier import CLIPZeroShotClassifier

    try:
        return CLIPZeroShotClassifier(model, texts, tokenizer=tokenizer)
    except (TypeError, ValueError) as exc:
        raise UserError(f"--model: {first_line(exc)}") from None


def input_size(clf: Any, size: Optional[int]) -> int:
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


def load_model(
    name: str,
    pretrained: Optional[str],
    device: str,
    tokenizer: Optional[str] = None,
    allow_partial: bool = False,
) -> Tuple[Any, Callable[[Any], Any], Any]:
    r"""``load_clip`` with its errors as one-line user errors."""
    from captum_clip_surgery.adapters.loading import load_clip

    try:
        return load_clip(name, pretrained, device, allow_partial=allow_partial,
                         tokenizer=tokenizer)
    except ValueError as exc:
        raise UserError(f"--{' '.join(str(exc).split())}") from None


def load_named_or_shipped(args: Any, device: str) -> Tuple[Any, Callable[[Any], Any], Any]:
    r"""``--model`` (with ``--pretrained``, ``--tokenizer``, ``--allow-partial-weights``)
    when given, else the shipped scenes model."""
    tokenizer = getattr(args, "tokenizer", None)
    allow_partial = bool(getattr(args, "allow_partial_weights", False))
    if args.model:
        options: Dict[str, Any] = {}
        if tokenizer is not None:
            options["tokenizer"] = tokenizer
        if allow_partial:
            options["allow_partial"] = True
        return load_model(args.model, args.pretrained, device, **options)
    if tokenizer is not None or allow_partial:
        given = "--tokenizer" if tokenizer is not None else "--allow-partial-weights"
        raise UserError(f"{given}: give --model too (the shipped scenes model has its own)")
    from captum_clip_surgery.scenes import load_scenes_clip

    return load_scenes_clip(device=device)


def square_transform(model: Any, size: Optional[int]) -> Any:
    r"""Square resize (no crop, like the release) to ``size`` or the model's own input
    size, with the model's own normalisation (both from the model's adapter)."""
    from captum_clip_surgery.adapters.loading import square_preprocess
    from captum_clip_surgery.adapters.registry import get_adapter

    adapter = get_adapter(model)
    return square_preprocess(size or adapter.input_size()[0], adapter.image_mean, adapter.image_std)


def world_size() -> int:
    r"""``WORLD_SIZE`` of ``torchrun`` (1 without it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def add_backbone_options(parser: Any) -> None:
    r"""``--backbone`` and ``--backbone-checkpoint``: the second backbone of ProxyCLIP, CASS
    and CorrCLIP (:func:`~captum_clip_surgery.adapters.backbone_loading.load_backbone`)."""
    parser.add_argument(
        "--backbone", default=None, metavar="NAME|FOLDER",
        help="second backbone of the methods that take one (proxyclip, cass, corrclip): a timm name "
        "(e.g. vit_base_patch8_224.dino, weights from the local Hugging Face cache or "
        "--backbone-checkpoint), an hf-hub: id or a save_pretrained folder; default: the "
        "model's own image tower",
    )
    parser.add_argument(
        "--backbone-checkpoint", default=None, metavar="FILE",
        help="weights of a timm --backbone (.safetensors, or a PyTorch file read with "
        "weights_only=True)",
    )


def backbone_options(
    args: Any, methods: List[str], device: str, refine: bool = False
) -> Tuple[Dict[str, Dict[str, Any]], Any]:
    r"""``({method: {"backbone": model}}, refine backbone)`` from ``--backbone``: the model
    for each of ``methods`` whose class takes a ``backbone``, and as the LPOSS graph
    backbone when ``refine``; ``({}, None)`` without ``--backbone``. One-line user errors."""
    import inspect

    from captum_clip_surgery.methods.registry import get_method

    name = getattr(args, "backbone", None)
    checkpoint = getattr(args, "backbone_checkpoint", None)
    if name is None:
        if checkpoint is not None:
            raise UserError("--backbone-checkpoint: give --backbone too (a timm model name)")
        return {}, None
    takers = []
    for m in methods:
        target = get_method(m).load()
        init = getattr(target, "__init__", None)
        if init is not None and "backbone" in inspect.signature(init).parameters:
            takers.append(m)
    if not takers and not refine:
        raise UserError(f"--backbone: none of the methods ({', '.join(methods)}) takes a second "
                        "backbone; proxyclip, cass and corrclip do"
                        + (", and so does --set refine=lposs / lposs+" if "benchmark" ==
                           getattr(args, "command", None) else ""))
    from captum_clip_surgery.adapters.backbone_loading import load_backbone

    try:
        model = load_backbone(name, checkpoint, device)
    except (TypeError, ValueError) as exc:
        text = " ".join(str(exc).split())
        if text.startswith("backbone_checkpoint"):
            text = "backbone-checkpoint" + text[len("backbone_checkpoint"):]
        raise UserError(f"--{text}") from None
    return {m: {"backbone": model} for m in takers}, (model if refine else None)
