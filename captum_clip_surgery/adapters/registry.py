r"""The adapter registry: which adapter understands a user's model.

:func:`get_adapter` asks, in order,

1. the adapters registered with :func:`register_adapter` (latest first), so a user can
   add a family or override a built-in one;
2. the adapters of installed distributions, declared in the entry-point group
   ``captum_clip_surgery.adapters`` (``name = "package.module:AdapterClass"``), loaded on
   the first call;
3. the built-in adapters. Each family's module is imported only when the library that
   builds its models has been imported (a user holding an open_clip model has imported
   open_clip), so nothing here imports open_clip, transformers or ``clip`` by itself.
"""

from __future__ import annotations

import importlib
import sys
import threading
from importlib.metadata import entry_points
from typing import List, Optional, Tuple, Type

from torch import nn

from captum_clip_surgery.adapters.base import CLIPAdapter

__all__ = [
    "ADAPTER_ENTRY_POINTS",
    "get_adapter",
    "register_adapter",
    "registered_adapters",
    "supported_families",
    "unregister_adapter",
]

#: The entry-point group of adapters in other distributions.
ADAPTER_ENTRY_POINTS = "captum_clip_surgery.adapters"

#: Built-in adapters: ``(module, class names in the order they are asked, libraries whose
#: import makes the module worth importing)``. More specific adapters come first.
_BUILTIN: Tuple[Tuple[str, Tuple[str, ...], Tuple[str, ...]], ...] = (
    ("captum_clip_surgery.adapters.huggingface",
     ("HFCLIPPairAdapter", "HFCLIPAdapter", "HFSiglipAdapter"), ("transformers",)),
    ("captum_clip_surgery.adapters.openai_clip", ("OpenAICLIPAdapter",), ("clip",)),
    ("captum_clip_surgery.adapters.openclip_timm", ("OpenCLIPTimmAdapter",), ("open_clip",)),
    ("captum_clip_surgery.adapters.openclip", ("OpenCLIPAdapter",), ("open_clip",)),
)

_explicit: List[Type[CLIPAdapter]] = []
_from_entry_points: Optional[List[Type[CLIPAdapter]]] = None
_lock = threading.RLock()


def _check_adapter_class(cls: object, where: str) -> Type[CLIPAdapter]:
    if not (isinstance(cls, type) and issubclass(cls, CLIPAdapter)):
        raise TypeError(
            f"{where}: expected a CLIPAdapter subclass, got "
            f"{cls.__name__ if isinstance(cls, type) else type(cls).__name__}"
        )
    return cls


def register_adapter(cls: Type[CLIPAdapter]) -> Type[CLIPAdapter]:
    r"""Class decorator adding an adapter to the registry used by :func:`get_adapter`.

    Registered adapters are asked before the built-in ones (the latest registration
    first), so an adapter can also take over a family the package already supports.
    Registering a class again moves it to the front.

    Args:
        cls (type): a :class:`~captum_clip_surgery.adapters.base.CLIPAdapter` subclass.

    Returns:
        type: ``cls`` unchanged.

    Examples::

        >>> @register_adapter
        ... class MyAdapter(CLIPAdapter):
        ...     family = "my CLIP"
        ...     @classmethod
        ...     def supports(cls, model): return isinstance(model, MyCLIP)
        ...     ...
    """
    _check_adapter_class(cls, "cls")
    with _lock:
        if cls in _explicit:
            _explicit.remove(cls)
        _explicit.insert(0, cls)
    return cls


def unregister_adapter(cls: Type[CLIPAdapter]) -> None:
    r"""Remove an adapter registered with :func:`register_adapter`.

    Args:
        cls (type): the adapter class.
    """
    with _lock:
        if cls not in _explicit:
            raise ValueError(f"cls: {getattr(cls, '__name__', cls)!r} is not registered")
        _explicit.remove(cls)


def _entry_point_adapters() -> List[Type[CLIPAdapter]]:
    global _from_entry_points
    with _lock:
        if _from_entry_points is not None:
            return list(_from_entry_points)
    # loaded without holding the lock: a plug-in module may register itself on import
    found: List[Type[CLIPAdapter]] = []
    for ep in sorted(entry_points(group=ADAPTER_ENTRY_POINTS), key=lambda e: e.name):
        where = f"entry point {ep.name!r} ({ep.value}) of group {ADAPTER_ENTRY_POINTS}"
        try:
            loaded = ep.load()
        except Exception as exc:  # a broken plug-in must say which one it is
            raise ImportError(f"{where}: cannot be loaded ({exc})") from exc
        found.append(_check_adapter_class(loaded, where))
    with _lock:
        if _from_entry_points is None:
            _from_entry_points = found
        return list(_from_entry_points)


def _forget_entry_points() -> None:
    r"""Scan the installed distributions again at the next lookup (for tests)."""
    global _from_entry_points
    with _lock:
        _from_entry_points = None


def _builtin_adapters(load_all: bool) -> List[Type[CLIPAdapter]]:
    out: List[Type[CLIPAdapter]] = []
    for module, names, libraries in _BUILTIN:
        if not load_all and not any(lib in sys.modules for lib in libraries):
            continue
        loaded = importlib.import_module(module)
        out.extend(getattr(loaded, name) for name in names)
    return out


def registered_adapters(load_all: bool = False) -> List[Type[CLIPAdapter]]:
    r"""The adapter classes in the order :func:`get_adapter` asks them.

    Args:
        load_all (bool): include every built-in adapter, importing its module; by
            default only those whose model library has been imported.

    Returns:
        list[type]: adapter classes.
    """
    with _lock:
        explicit = list(_explicit)
    return explicit + _entry_point_adapters() + _builtin_adapters(load_all)


def supported_families() -> List[str]:
    r"""Names of the model families with a registered adapter (every built-in one too)."""
    return [a.family for a in registered_adapters(load_all=True)]


def get_adapter(model: object) -> CLIPAdapter:
    r"""Build the adapter for ``model``.

    Args:
        model (nn.Module): a CLIP model of a supported family, or an adapter
            (returned as is).

    Returns:
        CLIPAdapter: the adapter.

    Raises:
        TypeError: when no registered adapter understands ``model``.

    Examples::

        >>> import open_clip
        >>> model = open_clip.create_model("ViT-B-16")
        >>> get_adapter(model).image.kind
        'token'
    """
    if isinstance(model, CLIPAdapter):
        return model
    if isinstance(model, nn.Module):
        for adapter_cls in registered_adapters():
            if adapter_cls.supports(model):
                return adapter_cls(model)
    raise TypeError(
        f"model: unsupported model of type {type(model).__module__}.{type(model).__qualname__}; "
        f"expected a CLIP model of a supported family: {', '.join(supported_families())}"
    )
