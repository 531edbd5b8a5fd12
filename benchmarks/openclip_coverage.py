r"""Which open_clip model configs the adapters accept: a markdown table and the share.

Every config in ``open_clip.list_models()`` is built on the meta device (no memory, no
weights; weight initialisation skipped) and given to :func:`get_adapter`. Each row says
``accepted`` with the image tower's head kind, or the one-line reason it was refused.
Configs whose text tower comes from the Hugging Face hub (``hf_model_name``) cannot be
built offline; they are listed apart and left out of the share.

Run: ``python benchmarks/openclip_coverage.py [--only-rejected]``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch.overrides import TorchFunctionMode


class _SkipInPlaceOnMeta(TorchFunctionMode):
    r"""Skip in-place ops (weight initialisation) on meta tensors: they cannot change a
    meta tensor's shape or dtype, only cost time."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name.endswith("_") and not name.endswith("__"):
            first = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
            if first is not None and first.is_meta:
                return first
        return func(*args, **kwargs)


@contextlib.contextmanager
def _offline_hub() -> Iterator[None]:
    r"""Make Hugging Face hub look-ups fail at once instead of retrying the network."""
    try:
        import huggingface_hub.constants as hub
    except ImportError:
        yield
        return
    old = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = old


def build_on_meta(name: str) -> torch.nn.Module:
    r"""``open_clip.create_model(name)`` on the meta device, without initialising weights."""
    import open_clip

    with torch.device("meta"), _SkipInPlaceOnMeta(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return open_clip.create_model(name, device="meta")


@dataclass
class Row:
    name: str
    built: bool
    accepted: bool
    adapter: str = ""
    kind: str = ""
    blocks: int = 0
    reason: str = ""
    #: the adapter's input size, mean and std; and those of the model's preprocess config
    input_size: Optional[Tuple[int, int]] = None
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    preprocess: Optional[Dict[str, Any]] = None


def coverage_row(name: str) -> Row:
    r"""Build one config and ask :func:`get_adapter` about it."""
    import open_clip

    from captum_clip_surgery.adapters import get_adapter

    try:
        with _offline_hub():
            model = build_on_meta(name)
    except Exception as error:  # noqa: BLE001 - any build failure means "not built offline"
        return Row(name, built=False, accepted=False, reason=f"{type(error).__name__}: {error}")
    try:
        adapter = get_adapter(model)
    except TypeError as error:
        return Row(name, built=True, accepted=False, reason=str(error))
    image = adapter.image
    kind = image.kind
    if kind == "attention":
        kind += f" ({image.head.query_kind})"
    return Row(name, built=True, accepted=True, adapter=type(adapter).__name__, kind=kind,
               blocks=len(image.blocks), input_size=tuple(adapter.input_size()),
               mean=tuple(adapter.image_mean), std=tuple(adapter.image_std),
               preprocess=dict(open_clip.get_model_preprocess_cfg(model)))


def coverage_rows(names: Optional[List[str]] = None) -> List[Row]:
    r"""One :class:`Row` per open_clip config (all of ``open_clip.list_models()`` by default)."""
    import open_clip

    logging.disable(logging.WARNING)
    try:
        return [coverage_row(n) for n in (names or open_clip.list_models())]
    finally:
        logging.disable(logging.NOTSET)


def summary(rows: List[Row]) -> Dict[str, Any]:
    built = [r for r in rows if r.built]
    accepted = [r for r in built if r.accepted]
    return {"configs": len(rows), "built": len(built), "accepted": len(accepted),
            "share": len(accepted) / max(len(built), 1)}


def markdown(rows: List[Row], only_rejected: bool = False) -> str:
    lines = ["| config | accepted | adapter | head kind | attention blocks | input | reason |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r.built or (only_rejected and r.accepted):
            continue
        reason = r.reason.replace("|", "\\|")
        size = f"{r.input_size[0]}x{r.input_size[1]}" if r.input_size else ""
        lines.append(f"| {r.name} | {'yes' if r.accepted else 'no'} | {r.adapter} | {r.kind} | "
                     f"{r.blocks if r.accepted else ''} | {size} | {reason} |")
    missing = [r for r in rows if not r.built]
    if missing:
        lines.append("")
        lines.append("Not built offline (text tower from the Hugging Face hub): "
                     + ", ".join(r.name for r in missing))
    s = summary(rows)
    lines.append("")
    lines.append(f"Accepted {s['accepted']} of {s['built']} configs that build offline "
                 f"({100 * s['share']:.1f} %); {s['configs']} configs in open_clip.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only-rejected", action="store_true", help="list refused configs only")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(markdown(coverage_rows(), only_rejected=args.only_rejected))


if __name__ == "__main__":
    main()
