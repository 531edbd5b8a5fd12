r"""The backbone registry: which :class:`~captum_clip_surgery.adapters.backbone.VisionBackbone`
view understands a second vision model.

:func:`get_backbone` asks, in order, like the adapter registry
(:mod:`~captum_clip_surgery.adapters.registry`):

1. the views registered with :func:`register_backbone` (latest first);
2. the views of installed distributions, declared in the entry-point group
   ``captum_clip_surgery.backbones`` (``name = "package.module:BackboneClass"``), loaded
   on the first call;
3. the built-in views of timm and Hugging Face models, each module imported only once its
   library has been imported (a user holding a timm model has imported timm);
4. the image tower of a CLIP model the package adapts
   (:class:`~captum_clip_surgery.adapters.backbone.CLIPTowerBackbone`).

Nothing here imports timm or transformers by itself.
"""

from __future__ import annotations

import importlib
import sys
import threading
from importlib.metadata import entry_points
from typing import List, Optional, Tuple, Type

from captum_clip_surgery.adapters.backbone import CLIPTowerBackbone, VisionBackbone

__all__ = [
    "BACKBONE_ENTRY_POINTS",
    "get_backbone",
    "register_backbone",
    "registered_backbones",
    "supported_backbones",
    "unregister_backbone",
]

#: The entry-point group of backbone views in other distributions.
BACKBONE_ENTRY_POINTS = "captum_clip_surgery.backbones"

#: Built-in views: ``(module, class names in the order they are asked, libraries whose
#: import makes the module worth importing)``.
_BUILTIN: Tuple[Tuple[str, Tuple[str, ...], Tuple[str, ...]], ...] = (
    ("captum_clip_surgery.adapters.backbone_timm", ("TimmViTBackbone",), ("timm",)),
    ("captum_clip_surgery.adapters.backbone_hf", ("HFDinov2Backbone", "HFViTBackbone"),
     ("transformers",)),
)

_explicit: List[Type[VisionBackbone]] = []
_from_entry_points: Optional[List[Type[VisionBackbone]]] = None
_lock = threading.RLock()


def _check_backbone_class(cls: object, where: str) -> Type[VisionBackbone]:
    if not (isinstance(cls, type) and issubclass(cls, VisionBackbone)):
        raise TypeError(
            f"{where}: expected a VisionBackbone subclass, got "
            f"{cls.__name__ if isinstance(cls, type) else type(cls).__name__}"
        )
    return cls


def register_backbone(cls: Type[VisionBackbone]) -> Type[VisionBackbone]:
    r"""Class decorator adding a backbone view to the registry used by :func:`get_backbone`.

    Registered views are asked before the built-in ones (the latest registration first).

    Args:
        cls (type): a :class:`~captum_clip_surgery.adapters.backbone.VisionBackbone` subclass.

    Returns:
        type: ``cls`` unchanged.

    Examples::

        >>> @register_backbone
        ... class MyBackbone(VisionBackbone):
        ...     family = "my ViT"
        ...     @classmethod
        ...     def supports(cls, model): return isinstance(model, MyViT)
        ...     ...
    """
    _check_backbone_class(cls, "cls")
    with _lock:
        if cls in _explicit:
            _explicit.remove(cls)
        _explicit.insert(0, cls)
    return cls


def unregister_backbone(cls: Type[VisionBackbone]) -> None:
    r"""Remove a view registered with :func:`register_backbone`.

    Args:
        cls (type): the view class.
    """
    with _lock:
        if cls not in _explicit:
            raise ValueError(f"cls: {getattr(cls, '__name__', cls)!r} is not registered")
        _explicit.remove(cls)


def _entry_point_backbones() -> List[Type[VisionBackbone]]:
    global _from_entry_points
    with _lock:
        if _from_entry_points is not None:
            return list(_from_entry_points)
    found: List[Type[VisionBackbone]] = []
    for ep in sorted(entry_points(group=BACKBONE_ENTRY_POINTS), key=lambda e: e.name):
        where = f"entry point {ep.name!r} ({ep.value}) of group {BACKBONE_ENTRY_POINTS}"
        try:
            loaded = ep.load()
        except Exception as exc:  # a broken plug-in must say which one it is
            raise ImportError(f"{where}: cannot be loaded ({exc})") from exc
        found.append(_check_backbone_class(loaded, where))
    with _lock:
        if _from_entry_points is None:
            _from_entry_points = found
        return list(_from_entry_points)


def _forget_entry_points() -> None:
    r"""Scan the installed distributions again at the next lookup (for tests)."""
    global _from_entry_points
    with _lock:
        _from_entry_points = None


def _builtin_backbones(load_all: bool) -> List[Type[VisionBackbone]]:
    out: List[Type[VisionBackbone]] = []
    for module, names, libraries in _BUILTIN:
        if not load_all and not any(lib in sys.modules for lib in libraries):
            continue
        try:
            loaded = importlib.import_module(module)
        except ImportError:
            if load_all:  # the library is not installed: its family is simply absent
                continue
            raise
        out.extend(getattr(loaded, name) for name in names)
    return out


def registered_backbones(load_all: bool = False) -> List[Type[VisionBackbone]]:
    r"""The view classes in the order :func:`get_backbone` asks them (the CLIP tower last).

    Args:
        load_all (bool): include every built-in view whose library is installed, importing
            it; by default only those whose library has been imported.

    Returns:
        list[type]: view classes.
    """
    with _lock:
        explicit = list(_explicit)
    return explicit + _entry_point_backbones() + _builtin_backbones(load_all) + [CLIPTowerBackbone]


def supported_backbones() -> List[str]:
    r"""Names of the families with a backbone view (every built-in one too)."""
    return [b.family for b in registered_backbones(load_all=True)]


def get_backbone(model: object, positional_resize: Optional[str] = None) -> VisionBackbone:
    r"""The backbone view of ``model``.

    Args:
        model (nn.Module or VisionBackbone or CLIPAdapter): a vision transformer of a
            supported family (timm ``VisionTransformer``, Hugging Face ``Dinov2Model`` /
            ``Dinov2WithRegistersModel`` / ``ViTModel``), a CLIP model (its image tower), or
            a view (returned as is).
        positional_resize (str, optional): the view's positional rule (default the
            release's, see :class:`~captum_clip_surgery.adapters.backbone.VisionBackbone`);
            not accepted with a view.

    Returns:
        VisionBackbone: the view.

    Raises:
        TypeError: when no registered view understands ``model``.

    Examples::

        >>> import timm
        >>> dino = timm.create_model("vit_base_patch8_224.dino", pretrained=True)
        >>> get_backbone(dino).patch_size
        (8, 8)
    """
    if isinstance(model, VisionBackbone):
        if positional_resize is not None:
            raise ValueError(
                "positional_resize: the backbone view already has its rule "
                f"({model.positional_resize!r}); build the view with the rule instead"
            )
        return model
    for cls in registered_backbones():
        if cls.supports(model):  # type: ignore[arg-type]
            return cls(model, positional_resize=positional_resize)  # type: ignore[arg-type]
    raise TypeError(
        f"backbone: unsupported model of type {type(model).__module__}."
        f"{type(model).__qualname__}; expected one of: {'; '.join(supported_backbones())}"
    )
