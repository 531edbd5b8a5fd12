r"""All methods on one footing: one call, ``[B, 1, H, W]`` maps, one figure."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional, Sequence, Union

import numpy as np
from captum.attr import Attribution
from torch import Tensor

from captum_clip_surgery._validation import (
    check_int,
    check_unit_interval,
    prepare_images,
    resolve_target,
    unpack_inputs,
)
from captum_clip_surgery.core.classifier import CLIPZeroShotClassifier
from captum_clip_surgery.core.maps import minmax_normalize, to_pixels, upsample
from captum_clip_surgery.methods.registry import (
    build_method,
    method_defaults,
    method_title,
    supported_methods,
)

if TYPE_CHECKING:  # matplotlib is imported by the plotting functions only
    from matplotlib.figure import Figure

__all__ = [
    "channel_reduce",
    "compare",
    "footing",
    "plot_comparison",
    "plot_text_grid",
]


def channel_reduce(attributions: Tensor, reduction: str = "abs_sum") -> Tensor:
    r"""Reduce pixel attributions ``[B, 3, H, W]`` to one map ``[B, 1, H, W]``.

    Args:
        attributions (Tensor): ``[B, K, H, W]`` (``K = 1`` is returned unchanged).
        reduction (str): ``"abs_sum"`` (default: sum of absolute values over
            channels, the usual saliency display), ``"sum"`` (signed sum),
            ``"l2"`` (Euclidean norm over channels) or ``"max_abs"``.

    Returns:
        Tensor: ``[B, 1, H, W]``.

    Examples::

        >>> channel_reduce(torch.tensor([[[[1.0]], [[-2.0]], [[0.5]]]])).flatten()
        tensor([3.5000])
    """
    if attributions.ndim != 4:
        raise ValueError(
            f"attributions: expected [B, K, H, W], got shape {list(attributions.shape)}"
        )
    check_reduction(reduction)
    if attributions.shape[1] == 1:
        return attributions
    if reduction == "abs_sum":
        return attributions.abs().sum(dim=1, keepdim=True)
    if reduction == "sum":
        return attributions.sum(dim=1, keepdim=True)
    if reduction == "l2":
        return attributions.norm(dim=1, keepdim=True)
    return attributions.abs().amax(dim=1, keepdim=True)


REDUCTIONS = ("abs_sum", "sum", "l2", "max_abs")


def check_reduction(reduction: Any) -> str:
    r"""Check a channel ``reduction`` name."""
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(
            f"reduction: expected one of {', '.join(map(repr, REDUCTIONS))}, got {reduction!r}"
        )
    return reduction


def check_method_kwargs(method_kwargs: Any) -> Dict[str, Dict[str, Any]]:
    r"""``method_kwargs`` as a dict of dicts (``None`` is empty)."""
    if method_kwargs is None:
        return {}
    if not isinstance(method_kwargs, Mapping) or not all(
        isinstance(v, Mapping) for v in method_kwargs.values()
    ):
        raise TypeError(
            "method_kwargs: expected a dict from method names to dicts of keyword arguments, "
            f"got {method_kwargs!r}"
        )
    return {str(k): dict(v) for k, v in method_kwargs.items()}


MethodSpec = Union[str, Attribution, Callable[..., Tensor]]


def compare(
    classifier: CLIPZeroShotClassifier,
    images: Tensor,
    target: Any,
    methods: Optional[Union[Sequence[str], Mapping[str, MethodSpec]]] = None,
    method_kwargs: Optional[Mapping[str, Mapping[str, Any]]] = None,
    reduction: str = "abs_sum",
) -> Dict[str, Tensor]:
    r"""Run several explanation methods on the same images and targets.

    Every output is brought to one footing: pixel attributions are reduced over
    channels with :func:`channel_reduce`, layer / token maps are bilinearly
    upsampled to the input size (a grid of the input padded to a multiple of the
    patch leaves the padding out, so the maps line up with the pixels), and each
    map is min-max normalised to ``[0, 1]`` (float32).

    Args:
        classifier (CLIPZeroShotClassifier): the classifier explained.
        images (Tensor): ``[B, 3, H, W]`` preprocessed images.
        target (int, str, list, Tensor): same forms as
            :meth:`CLIPSurgeryAttribution.attribute`; texts are resolved to indices
            for Captum's own methods.
        methods (list[str] or dict, optional): registered method names (see
            :func:`~captum_clip_surgery.methods.registry.method_names`; default those
            tagged ``"default"`` that are defined for the model), or a mapping from
            display names to names, Captum ``Attribution`` objects, or callables
            ``f(images, target) -> Tensor``.
        method_kwargs (dict, optional): extra keyword arguments per method name for
            its ``attribute`` call (e.g. ``{"ig": {"n_steps": 20}}``).
        reduction (str): channel reduction of pixel attributions.

    Returns:
        dict[str, Tensor]: ``{name: [B, 1, H, W]}`` in the order given.

    Examples::

        >>> maps = compare(clf, images, target="dog", methods=["surgery", "gradcam", "ig"])
        >>> {k: tuple(v.shape) for k, v in maps.items()}
        {'surgery': (8, 1, 224, 224), 'gradcam': (8, 1, 224, 224), 'ig': (8, 1, 224, 224)}
    """
    if not isinstance(classifier, CLIPZeroShotClassifier):
        raise TypeError(
            f"classifier: expected a CLIPZeroShotClassifier, got {type(classifier).__name__}"
        )
    images, _ = unpack_inputs(images)
    # moved to the model's device and dtype; each method pads for its own forward. A tensor
    # object of this call's own (the maps are detached anyway): Captum's gradient methods
    # switch requires_grad of their input on and off again, which must not reach the
    # caller's tensor, shared perhaps by calls in other threads.
    prepared = prepare_images(classifier.adapter, images, "images", pad=False).detach()
    index = resolve_target(target, prepared.shape[0], classifier.texts).to(prepared.device)
    if methods is None:
        methods = list(supported_methods(classifier, tag="default"))
    if isinstance(methods, str):
        raise TypeError("methods: expected a list of method names or a dict, got a single string")
    specs: Dict[str, MethodSpec] = (
        dict(methods) if isinstance(methods, Mapping) else {m: m for m in methods}
    )
    if not specs:
        raise ValueError("methods: expected at least one method, got none")
    extra = check_method_kwargs(method_kwargs)
    check_reduction(reduction)
    out: Dict[str, Tensor] = {}
    size = (prepared.shape[-2], prepared.shape[-1])
    for name, spec in specs.items():
        method = build_method(spec, classifier) if isinstance(spec, str) else spec
        kwargs = method_defaults(spec, classifier, prepared) if isinstance(spec, str) else {}
        kwargs.update(extra.get(name, {}))
        if isinstance(method, Attribution):
            raw = method.attribute(prepared, target=index, **kwargs)
        elif callable(method):
            raw = method(prepared, index, **kwargs)
        else:
            raise TypeError(
                f"methods: {name!r} must be a method name, a Captum Attribution or a callable, "
                f"got {type(method).__name__}"
            )
        if isinstance(raw, tuple):
            raw = raw[0]
        out[name] = footing(raw, classifier, size, reduction)
    return out


def footing(
    raw: Tensor, classifier: CLIPZeroShotClassifier, size: Any, reduction: str = "abs_sum"
) -> Tensor:
    r"""One method's output brought to :func:`compare`'s footing: reduced over channels,
    upsampled to ``size`` (a grid of the padded input leaves the padding out) and min-max
    normalised per map, float32 ``[B, 1, H, W]``."""
    raw = channel_reduce(raw.detach().float(), reduction)
    return minmax_normalize(to_pixels(raw, classifier.adapter.image.patch_size, size))


def _display_image(image: Any) -> np.ndarray:
    if isinstance(image, Tensor):
        arr = image.detach().float().cpu()
        if arr.ndim == 4:
            arr = arr[0]
        if arr.ndim != 3 or arr.shape[0] not in (1, 3):
            raise ValueError(f"image: expected [3, H, W], got shape {list(image.shape)}")
        arr = arr.permute(1, 2, 0).numpy()
    else:
        arr = np.asarray(image, dtype=np.float32)
        if arr.ndim != 3:
            raise ValueError(f"image: expected an H x W x 3 array or PIL image, got shape {arr.shape}")
    lo, hi = float(arr.min()), float(arr.max())
    if arr.dtype != np.uint8 and (lo < 0 or hi > 1):
        arr = (arr - lo) / (hi - lo if hi > lo else 1.0)
    elif hi > 1:
        arr = arr / 255.0
    return arr.astype(np.float32)


def _draw(ax: Any, base: np.ndarray, m: Tensor, title: str, alpha: float, cmap: str, fig: Figure) -> None:
    from captum.attr import visualization as viz

    attr = m.permute(1, 2, 0).numpy()
    if attr.shape[:2] != base.shape[:2]:
        attr = upsample(m[None], base.shape[:2])[0].permute(1, 2, 0).numpy()
    if not bool(np.any(attr > 0)):
        # e.g. a ReLU'd GradCAM whose evidence is all negative: nothing to blend, and
        # Captum's visualization cannot scale an all-zero map.
        ax.imshow(base)
        ax.set_title(f"{title}\n(all-zero map)")
        ax.axis("off")
        return
    viz.visualize_image_attr(
        attr, base, method="blended_heat_map", sign="positive", cmap=cmap,
        alpha_overlay=alpha, plt_fig_axis=(fig, ax), use_pyplot=False, title=title,
    )


def _pick(name: str, m: Tensor, index: int) -> Tensor:
    m = m.detach().float().cpu()
    if m.ndim == 4:
        m = m[index]
    if m.ndim != 3 or m.shape[0] != 1:
        raise ValueError(f"maps[{name!r}]: expected [B, 1, H, W] or [1, H, W], got {list(m.shape)}")
    return m


def plot_comparison(
    image: Any,
    maps: Mapping[str, Tensor],
    texts: Optional[Union[str, Sequence[str]]] = None,
    index: int = 0,
    alpha: float = 0.5,
    cmap: str = "jet",
) -> Figure:
    r"""One row: the image, then one blended heat map per method, titled.

    Built on ``captum.attr.visualization.visualize_image_attr``
    (``method="blended_heat_map"``).

    Args:
        image (Tensor, np.ndarray or PIL.Image): ``[3, H, W]`` tensor (any
            normalisation; rescaled for display), ``H×W×3`` array or PIL image.
        maps (dict[str, Tensor]): e.g. the output of :func:`compare`; each
            ``[B, 1, H, W]`` (example ``index`` is shown) or ``[1, H, W]``.
        texts (str or list[str], optional): the explained text (or one per
            example); shown in the figure title.
        index (int): which example of batched maps to show.
        alpha (float): heat-map opacity.
        cmap (str): matplotlib colour map.

    Returns:
        matplotlib.figure.Figure: the figure (not shown; save it or display it).

    Examples::

        >>> fig = plot_comparison(images[0], compare(clf, images, "dog"), texts="dog")
        >>> fig.savefig("comparison.png")
    """
    base = _display_image(image)
    if not maps:
        raise ValueError("maps: expected at least one map")
    check_unit_interval("alpha", alpha)
    check_int("index", index, minimum=0)
    for name, m in maps.items():
        if isinstance(m, Tensor) and m.ndim == 4 and index >= m.shape[0]:
            raise ValueError(
                f"index: expected an example index below {m.shape[0]} (the batch of "
                f"maps[{name!r}]), got {index}"
            )
    from matplotlib.figure import Figure

    n = len(maps) + 1
    fig = Figure(figsize=(2.6 * n, 3.0))
    axes = fig.subplots(1, n, squeeze=False)[0]
    axes[0].imshow(base)
    axes[0].set_title("image")
    axes[0].axis("off")
    for ax, (name, m) in zip(axes[1:], maps.items()):
        _draw(ax, base, _pick(name, m, index), method_title(name), alpha, cmap, fig)
    if texts is not None:
        text = texts if isinstance(texts, str) else list(texts)[index]
        fig.suptitle(f"target: {text}")
        fig.tight_layout(rect=(0, 0, 1, 0.92))  # keep the panel titles clear of it
    else:
        fig.tight_layout()
    return fig


def plot_text_grid(
    image: Any,
    maps: Mapping[str, Tensor],
    texts: Sequence[str],
    alpha: float = 0.5,
    cmap: str = "jet",
) -> Figure:
    r"""One row per text: the image, then each method's map for that text, titled.

    Args:
        image (Tensor, np.ndarray or PIL.Image): the explained image.
        maps (dict[str, Tensor]): ``{method: [T, 1, H, W]}``, row ``t`` for ``texts[t]``.
        texts (list[str]): the explained texts.
        alpha (float): heat-map opacity.
        cmap (str): matplotlib colour map.

    Returns:
        matplotlib.figure.Figure: the figure.

    Examples::

        >>> fig = plot_text_grid(pil_image, {"CLIP Surgery": maps}, ["dog", "grass"])
    """
    base = _display_image(image)
    if not maps or not texts:
        raise ValueError("maps, texts: expected at least one method and one text")
    check_unit_interval("alpha", alpha)
    for name, m in maps.items():
        if not isinstance(m, Tensor) or m.ndim != 4 or m.shape[0] != len(texts):
            got = list(m.shape) if isinstance(m, Tensor) else type(m).__name__
            raise ValueError(
                f"maps: expected maps[{name!r}] of shape [{len(texts)}, 1, H, W] (one row per "
                f"text), got {got}"
            )
    from matplotlib.figure import Figure

    rows, cols = len(texts), len(maps) + 1
    fig = Figure(figsize=(2.6 * cols, 2.7 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, text in enumerate(texts):
        axes[r, 0].imshow(base)
        axes[r, 0].set_title(f"image — {text}")
        axes[r, 0].axis("off")
        for c, (name, m) in enumerate(maps.items(), start=1):
            _draw(axes[r, c], base, _pick(name, m, r), f"{method_title(name)}: {text}", alpha, cmap, fig)
    fig.tight_layout()
    return fig
