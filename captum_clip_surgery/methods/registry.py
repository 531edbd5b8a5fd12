r"""The method registry: one record per explanation method.

Every place that offers a choice of methods reads this registry and nothing else:
:func:`~captum_clip_surgery.compare`, :func:`~captum_clip_surgery.plot_comparison`,
:func:`~captum_clip_surgery.evaluation.evaluate`, the folder explain path, the command
line (``--method`` / ``--methods``) and the benchmarks. A record says

- ``name``: the short name used everywhere (``"surgery"``, ``"gradcam"``, ...);
- ``title``: the display name of figures and tables;
- the class (or, for Captum's own methods, a factory) that builds the attribution,
  imported only when a method is built;
- the pooling-head kinds it is defined for and whether it needs attention blocks;
- its map kind: ``"token"`` (token maps, usable for segmentation), ``"relevance"``
  (gradient relevance), ``"gradient"`` or ``"perturbation"`` (pixel attributions);
- the default keyword arguments of its ``attribute`` call;
- tags: ``"default"`` (what :func:`~captum_clip_surgery.compare` runs by default),
  ``"evaluate"`` (what ``clip-surgery evaluate`` runs by default), ``"training_free"``,
  ``"variant"`` (another setting of a method listed before it).

Methods of other packages join in two ways, without editing this package: the class
decorator :func:`register_method`, or an entry point in the group
``captum_clip_surgery.methods`` (``name = "package.module:AttributionClass"``), whose
names are listed at once and whose classes are imported when first used.

This module imports neither Captum nor any method module, so listing the names
(``clip-surgery explain --help``) stays fast.
"""

from __future__ import annotations

import importlib
import threading
import warnings
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    FrozenSet,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

if TYPE_CHECKING:  # annotations only: importing the registry imports no model code
    from captum.attr import Attribution
    from torch import Tensor

    from captum_clip_surgery.adapters.base import CLIPAdapter
    from captum_clip_surgery.core.classifier import CLIPZeroShotClassifier

__all__ = [
    "DEFAULT_METHODS",
    "DENSE_METHODS",  # noqa: F822 (computed on first use, see __getattr__)
    "METHOD_ENTRY_POINTS",
    "METHOD_NAMES",
    "MAP_KINDS",
    "MethodRecord",
    "TRAINING_FREE_METHODS",
    "build_method",
    "get_method",
    "method_defaults",
    "method_names",
    "method_title",
    "register_method",
    "supported_methods",
    "unregister_method",
]

#: The entry-point group of methods in other distributions.
METHOD_ENTRY_POINTS = "captum_clip_surgery.methods"

#: The map kinds of a record (see the module docstring).
MAP_KINDS = ("token", "relevance", "gradient", "perturbation")

_ALL_HEADS = ("token", "attention", "average")

Defaults = Union[Mapping[str, Any], Callable[["CLIPZeroShotClassifier", "Tensor"], Mapping[str, Any]]]


@dataclass
class MethodRecord:
    r"""Everything the package knows about one method.

    Attributes:
        name (str): the registry name.
        target (object): the attribution class or a factory ``f(classifier) ->
            Attribution``; a ``"module:attribute"`` string or an entry point until first
            use.
        title (str, optional): display name (default: the class's ``method_title``
            attribute, else ``name``).
        defaults (dict or Callable): keyword arguments of the ``attribute`` call, or
            ``f(classifier, images) -> dict`` where they depend on the model or batch.
        tags (frozenset[str]): ``"default"``, ``"evaluate"``, ``"training_free"``, ...
        map_kind, head_kinds, needs_blocks: for factories; read from the class
            (:class:`~captum_clip_surgery.methods.base.ClassifierAttribution`'s
            attributes) when ``None``.
        source (str): ``"builtin"``, ``"register_method"`` or ``"entry point"``.
    """

    name: str
    target: Any
    title: Optional[str] = None
    defaults: Defaults = field(default_factory=dict)
    tags: FrozenSet[str] = frozenset()
    map_kind: Optional[str] = None
    head_kinds: Optional[Tuple[str, ...]] = None
    needs_blocks: Optional[bool] = None
    source: str = "builtin"

    def load(self) -> Any:
        r"""The class or factory behind the record (imported on first use)."""
        target = self.target
        if isinstance(target, EntryPoint):
            where = f"entry point {target.name!r} ({target.value}) of group {METHOD_ENTRY_POINTS}"
            try:
                target = target.load()
            except Exception as exc:  # a broken plug-in must say which one it is
                raise ImportError(f"methods: {where} cannot be loaded ({exc})") from exc
            _check_target(target, where)
        elif isinstance(target, str):
            module, _, attribute = target.partition(":")
            target = getattr(importlib.import_module(module), attribute)
        self.target = target
        return target

    def _class_attribute(self, name: str, default: Any) -> Any:
        target = self.load()
        return getattr(target, name, default) if isinstance(target, type) else default

    @property
    def display_title(self) -> str:
        r"""The title shown in figures and tables."""
        if self.title is not None:
            return self.title
        if isinstance(self.target, (str, EntryPoint)):
            return self.name  # not loaded: the name (loading only for a title is not worth it)
        return str(self._class_attribute("method_title", None) or self.name)

    @property
    def kind(self) -> str:
        r"""The map kind (``"token"``, ``"relevance"``, ``"gradient"``, ``"perturbation"``)."""
        if self.map_kind is not None:
            return self.map_kind
        return str(self._class_attribute("map_kind", "") or "relevance")

    def unsupported_reason(self, adapter: CLIPAdapter) -> Optional[str]:
        r"""Why the method is not defined for the model behind ``adapter`` (``None`` when
        it is)."""
        target = self.load()
        if self.head_kinds is None and self.needs_blocks is None:
            check = getattr(target, "unsupported_reason", None)
            if callable(check):
                return check(adapter)
        image = adapter.image
        kinds = self.head_kinds if self.head_kinds is not None else _ALL_HEADS
        if image.kind not in kinds:
            return f"not defined for a {image.kind!r} pooling head"
        if self.needs_blocks and not image.blocks:
            return "needs attention blocks in the image tower"
        return None

    def build(self, classifier: CLIPZeroShotClassifier, **options: Any) -> Attribution:
        r"""The attribution on ``classifier`` (``options`` go to the class's constructor)."""
        target = self.load()
        if options and not isinstance(target, type):
            raise TypeError(
                f"method_options: method {self.name!r} is built by a factory and takes no "
                f"options, got {', '.join(sorted(options))}"
            )
        return target(classifier, **options)

    def attribute_defaults(self, classifier: CLIPZeroShotClassifier, images: Tensor) -> Dict[str, Any]:
        r"""The default keyword arguments of the ``attribute`` call for these images."""
        defaults = self.defaults
        return dict(defaults(classifier, images) if callable(defaults) else defaults)


_lock = threading.RLock()
_records: Dict[str, MethodRecord] = {}
_entry_points_loaded = False


def _check_target(target: Any, where: str) -> None:
    if not callable(target):
        raise TypeError(f"{where}: expected an attribution class or a factory, got "
                        f"{type(target).__name__}")


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(
            f"name: expected a method name of letters, digits, '_' and '-', got {name!r}"
        )
    return name


def _same_target(record: MethodRecord, target: Any) -> bool:
    r"""Whether ``record`` already stands for ``target`` (the same class, or the entry point
    naming it: a plug-in module that registers itself when its entry point loads it)."""
    if record.target is target:
        return True
    if isinstance(record.target, EntryPoint):
        qualname = getattr(target, "__qualname__", None)
        return record.target.value.replace(" ", "") == f"{target.__module__}:{qualname}"
    return False


def _add(record: MethodRecord, replace: bool = False) -> None:
    with _lock:
        old = _records.get(record.name)
        if old is not None and not replace and not _same_target(old, record.target):
            raise ValueError(
                f"name: method {record.name!r} is already registered "
                f"({old.source}); pass replace=True to replace it"
            )
        _records[record.name] = record


def register_method(
    name: str,
    target: Optional[Any] = None,
    *,
    title: Optional[str] = None,
    tags: Iterable[str] = (),
    replace: bool = False,
    **defaults: Any,
) -> Any:
    r"""Register an attribution class under ``name``; usable as a class decorator.

    The method then appears in :func:`~captum_clip_surgery.compare`,
    :func:`~captum_clip_surgery.evaluation.evaluate`, the folder explain path and
    ``clip-surgery explain --method NAME`` like the package's own methods. The class
    takes the classifier as its first argument (subclass one of the bases of
    :mod:`captum_clip_surgery.methods.base`); its ``map_kind``, ``head_kinds`` and
    ``needs_blocks`` (or ``unsupported_reason``) say where it is defined.

    Args:
        name (str): the registry name.
        target (type, optional): the class; omit it to use the function as a decorator.
        title (str, optional): display name of figures and tables (default: the
            class's ``method_title`` attribute, else ``name``).
        tags (iterable of str): e.g. ``("default",)`` to run it in ``compare`` by default.
        replace (bool): replace a method already registered under ``name``.
        **defaults: default keyword arguments of the method's ``attribute`` call.

    Returns:
        the class (so the decorator leaves it unchanged), or the decorator.

    Examples::

        >>> @register_method("mine", title="My method")
        ... class MyAttribution(TokenMapAttribution):
        ...     def token_features(self, images):
        ...         ...
        >>> compare(clf, images, "dog", methods=["surgery", "mine"])
    """
    _check_name(name)
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title: expected a string or None, got {type(title).__name__}")
    tag_set = frozenset(tags)

    def decorate(cls: Any) -> Any:
        _check_target(cls, f"register_method({name!r})")
        _add(MethodRecord(name, cls, title, dict(defaults), tag_set, source="register_method"),
             replace)
        return cls

    return decorate if target is None else decorate(target)


def unregister_method(name: str) -> None:
    r"""Remove a method registered with :func:`register_method` (built-in methods stay).

    Args:
        name (str): the registry name.
    """
    with _lock:
        record = _records.get(name)
        if record is None:
            raise ValueError(f"name: no method {name!r} is registered")
        if record.source == "builtin":
            raise ValueError(f"name: {name!r} is a built-in method and cannot be removed")
        del _records[name]


def _load_entry_points() -> None:
    global _entry_points_loaded
    with _lock:
        if _entry_points_loaded:
            return
        _entry_points_loaded = True
        for ep in sorted(entry_points(group=METHOD_ENTRY_POINTS), key=lambda e: e.name):
            if ep.name in _records:
                warnings.warn(
                    f"entry point {ep.name!r} ({ep.value}) of group {METHOD_ENTRY_POINTS} is "
                    f"ignored: a method of that name is already registered "
                    f"({_records[ep.name].source})", stacklevel=3,
                )
                continue
            _records[ep.name] = MethodRecord(ep.name, ep, source="entry point")


def _forget_entry_points() -> None:
    r"""Drop the methods found through entry points, so that the next lookup scans the
    installed distributions again (for tests that install one)."""
    global _entry_points_loaded
    with _lock:
        for name in [n for n, r in _records.items() if r.source == "entry point"]:
            del _records[name]
        _entry_points_loaded = False


def _all() -> List[MethodRecord]:
    _load_entry_points()
    with _lock:
        return list(_records.values())


def method_names(tag: Optional[str] = None, kind: Optional[str] = None) -> Tuple[str, ...]:
    r"""Every registered method name, built-in ones first, in registration order.

    Args:
        tag (str, optional): only methods with this tag (e.g. ``"default"``).
        kind (str, optional): only methods of this map kind (e.g. ``"token"``; this
            imports the methods' classes).

    Returns:
        tuple[str, ...]: names.

    Examples::

        >>> method_names("default")
        ('surgery', 'raw', 'maskclip', 'gradcam', 'chefer', 'saliency', 'ig')
    """
    return tuple(
        r.name for r in _all()
        if (tag is None or tag in r.tags) and (kind is None or r.kind == kind)
    )


def get_method(name: str) -> MethodRecord:
    r"""The record of a registered method.

    Args:
        name (str): the registry name.

    Returns:
        MethodRecord: its record.

    Raises:
        ValueError: naming ``methods`` and listing the known names, for an unknown name.
    """
    records = {r.name: r for r in _all()}
    if not isinstance(name, str) or name not in records:
        raise ValueError(
            f"methods: unknown method {name!r}; expected one of {', '.join(records)}"
        )
    return records[name]


def method_title(name: str) -> str:
    r"""The display title of a method name (the name itself when it is not registered).

    Args:
        name (str): a registry name, or any display name.

    Returns:
        str: the title.
    """
    records = {r.name: r for r in _all()}
    return records[name].display_title if name in records else name


def build_method(name: str, classifier: CLIPZeroShotClassifier, **options: Any) -> Attribution:
    r"""The attribution object behind a registered method name.

    Args:
        name (str): method name (see :func:`method_names`).
        classifier (CLIPZeroShotClassifier): the classifier explained.
        **options: keyword arguments of the method's constructor.

    Returns:
        Attribution: a Captum attribution on ``classifier``.

    Examples::

        >>> build_method("gem", clf).attribute(images, target="dog").shape
        torch.Size([8, 1, 224, 224])
    """
    return get_method(name).build(classifier, **options)


def method_defaults(name: str, classifier: CLIPZeroShotClassifier, images: Tensor) -> Dict[str, Any]:
    r"""The default keyword arguments of a method's ``attribute`` call (e.g. Integrated
    Gradients' steps), as :func:`~captum_clip_surgery.compare` passes them.

    Args:
        name (str): method name.
        classifier (CLIPZeroShotClassifier): the classifier explained.
        images (Tensor): the batch the call explains.

    Returns:
        dict: keyword arguments.
    """
    return get_method(name).attribute_defaults(classifier, images)


def supported_methods(classifier: Any, tag: Optional[str] = None) -> Tuple[str, ...]:
    r"""The registered method names defined for the classifier's model.

    Args:
        classifier (CLIPZeroShotClassifier or CLIPAdapter): the classifier explained (or
            its adapter).
        tag (str, optional): only methods with this tag.

    Returns:
        tuple[str, ...]: method names, in registry order.

    Examples::

        >>> "chefer" in supported_methods(CLIPZeroShotClassifier(resnet_clip, ["dog"]))
        False
    """
    adapter = getattr(classifier, "adapter", classifier)
    return tuple(
        r.name for r in _all()
        if (tag is None or tag in r.tags) and r.unsupported_reason(adapter) is None
    )


def _builtin(
    name: str,
    target: str,
    title: str,
    tags: Sequence[str] = (),
    defaults: Defaults = (),
    **facts: Any,
) -> None:
    _add(MethodRecord(name, target, title, dict(defaults) if not callable(defaults) else defaults,
                      frozenset(tags), **facts))


_M = "captum_clip_surgery.methods."
_CAPTUM = _M + "captum_methods:"
_PIXELS = dict(head_kinds=_ALL_HEADS, needs_blocks=False)

# the built-in catalogue, in the order of METHOD_NAMES
_builtin("surgery", _M + "clip_surgery:CLIPSurgeryAttribution", "CLIP Surgery",
         ("default", "evaluate"))
_builtin("raw", _M + "raw:RawCLIPAttribution", "raw CLIP", ("default", "evaluate"))
_builtin("maskclip", _M + "maskclip:MaskCLIPAttribution", "MaskCLIP", ("default", "evaluate"))
_builtin("gradcam", _CAPTUM + "gradcam", "GradCAM", ("default", "evaluate"),
         {"relu_attributions": True}, map_kind="gradient", **_PIXELS)
_builtin("chefer", _M + "chefer:CheferAttribution", "Chefer relevance", ("default", "evaluate"))
_builtin("saliency", _CAPTUM + "saliency", "Saliency", ("default",), map_kind="gradient",
         **_PIXELS)
_builtin("ig", _CAPTUM + "integrated_gradients", "Integrated Gradients", ("default", "evaluate"),
         lambda clf, images: _captum_defaults("integrated_gradients_defaults", clf, images),
         map_kind="gradient", **_PIXELS)
_builtin("surgery_empty", _M + "clip_surgery:CLIPSurgeryAttribution",
         "CLIP Surgery (empty-string)", ("variant",), {"feature_surgery": "empty"})
_builtin("surgery_none", _M + "clip_surgery:CLIPSurgeryAttribution",
         "CLIP Surgery (architecture only)", ("variant",), {"feature_surgery": "none"})
_builtin("inputxgradient", _CAPTUM + "input_x_gradient", "Input x Gradient",
         map_kind="gradient", **_PIXELS)
_builtin("smoothgrad", _CAPTUM + "smoothgrad", "SmoothGrad", (),
         {"nt_samples": 10, "nt_type": "smoothgrad", "stdevs": 0.1}, map_kind="gradient",
         **_PIXELS)
_builtin("occlusion", _CAPTUM + "occlusion", "Occlusion", (),
         lambda clf, images: _captum_defaults("occlusion_defaults", clf, images),
         map_kind="perturbation", **_PIXELS)
_builtin("gem", _M + "gem:GEMAttribution", "GEM", ("training_free",))
_builtin("sclip", _M + "sclip:SCLIPAttribution", "SCLIP", ("training_free",))
_builtin("clearclip", _M + "clearclip:ClearCLIPAttribution", "ClearCLIP", ("training_free",))
_builtin("naclip", _M + "naclip:NACLIPAttribution", "NACLIP", ("training_free",))
_builtin("legrad", _M + "legrad:LeGradAttribution", "LeGrad", ("training_free",))
_builtin("gradeclip", _M + "gradeclip:GradECLIPAttribution", "Grad-ECLIP", ("training_free",))
_builtin("scclip", _M + "scclip:SCCLIPAttribution", "SC-CLIP", ("training_free",))
_builtin("resclip", _M + "resclip:ResCLIPAttribution", "ResCLIP", ("training_free",))
_builtin("proxyclip", _M + "proxyclip:ProxyCLIPAttribution", "ProxyCLIP", ("training_free",))
_builtin("cass", _M + "cass:CASSAttribution", "CASS", ("training_free",))
_builtin("corrclip", _M + "corrclip:CorrCLIPAttribution", "CorrCLIP", ("training_free",))


def _captum_defaults(function: str, classifier: Any, images: Any) -> Dict[str, Any]:
    module = importlib.import_module(_M + "captum_methods")
    return dict(getattr(module, function)(classifier, images))


#: The built-in method names, in order (:func:`method_names` also lists methods
#: registered later).
METHOD_NAMES: Tuple[str, ...] = tuple(_records)

#: Methods :func:`~captum_clip_surgery.compare` runs when none are named.
DEFAULT_METHODS: Tuple[str, ...] = tuple(r.name for r in _records.values() if "default" in r.tags)

#: The training-free family beside CLIP Surgery: GEM, SCLIP, ClearCLIP, NACLIP, LeGrad,
#: Grad-ECLIP, SC-CLIP, ResCLIP, ProxyCLIP, CASS and CorrCLIP.
TRAINING_FREE_METHODS: Tuple[str, ...] = tuple(
    r.name for r in _records.values() if "training_free" in r.tags
)



def __getattr__(name: str) -> Any:
    # DENSE_METHODS reads each built-in class's map kind, which imports the methods (and
    # Captum): computed on first use, not when the registry is imported
    if name == "DENSE_METHODS":
        return tuple(
            r.name for r in _records.values()
            if r.source == "builtin" and "variant" not in r.tags and r.kind == "token"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
