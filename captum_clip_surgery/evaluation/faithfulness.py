r"""Faithfulness of explanation maps: deletion / insertion curves, and thin wrappers
around Captum's ``infidelity`` and ``sensitivity_max``."""

from __future__ import annotations

import numbers
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from captum.metrics import infidelity, sensitivity_max
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur

from captum_clip_surgery._validation import (
    check_dense_tensor,
    check_image_tensor,
    check_int,
    check_positive_number,
)

__all__ = ["deletion_insertion", "infidelity_score", "sensitivity_score"]

TargetType = Union[int, Sequence[int], Tensor]

#: Gaussian blur of the ``"blur"`` baseline: kernel size and sigma in pixels.
BLUR_KERNEL_SIZE = 11
BLUR_SIGMA = 5.0


def _baseline(images: Tensor, baseline: Union[str, Tensor]) -> Tensor:
    b, c, h, w = images.shape
    if isinstance(baseline, Tensor):
        check_dense_tensor("baseline", baseline)
        if baseline.shape not in ((c, h, w), (1, c, h, w), (b, c, h, w)):
            raise ValueError(
                f"baseline: expected a tensor [{c}, {h}, {w}] or [{b}, {c}, {h}, {w}] (the "
                f"images' shape), got {list(baseline.shape)}"
            )
        return baseline.to(images).expand_as(images)
    if baseline == "blur":
        if min(h, w) <= BLUR_KERNEL_SIZE // 2:
            raise ValueError(
                f"baseline: 'blur' (kernel {BLUR_KERNEL_SIZE}, reflect padding) needs images of "
                f"at least {BLUR_KERNEL_SIZE // 2 + 1} x {BLUR_KERNEL_SIZE // 2 + 1} pixels, got "
                f"{h} x {w}; use 'mean', 'zero' or a tensor"
            )
        return gaussian_blur(
            images, kernel_size=[BLUR_KERNEL_SIZE] * 2, sigma=[BLUR_SIGMA] * 2
        )
    if baseline == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    if baseline == "zero":
        return torch.zeros_like(images)
    raise ValueError(
        f"baseline: expected 'blur', 'mean', 'zero' or a tensor, got {baseline!r}"
    )


def _targets(target: TargetType, batch: int, device: torch.device) -> Tensor:
    if isinstance(target, bool):
        raise TypeError("target: expected an int, a list of ints or an integer tensor, got bool")
    if isinstance(target, numbers.Integral):
        return torch.full((batch,), int(target), dtype=torch.long, device=device)
    if isinstance(target, (list, tuple)):
        if not all(isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in target):
            raise TypeError(f"target: expected a list of ints, got {target!r}")
        t = torch.tensor([int(x) for x in target], dtype=torch.long)
    elif isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target: expected an integer tensor, got {target.dtype}")
        t = target.detach().long()
    else:
        raise TypeError(
            f"target: expected an int, a list of ints or an integer tensor, got "
            f"{type(target).__name__}"
        )
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(
            f"target: expected one class index per image ({batch}), got shape {list(t.shape)}"
        )
    return t.to(device)


@torch.no_grad()
def deletion_insertion(
    forward_func: Callable[[Tensor], Tensor],
    images: Tensor,
    maps: Tensor,
    target: TargetType,
    steps: int = 20,
    baseline: Union[str, Tensor] = "blur",
    batch_size: Optional[int] = None,
) -> Dict[str, Tensor]:
    r"""Deletion and insertion curves (Petsiuk et al., RISE, BMVC 2018) driven by a map.

    Pixels are ranked by the map, descending, ties kept in row-major order (a
    stable sort). At step ``s = 0, ..., steps`` the top
    ``n_s = round(s / steps · H·W)`` pixels (rounded half to even, computed
    exactly) are

    - *removed* for deletion: those pixels of the image are replaced by the
      baseline image's;
    - *revealed* for insertion: the baseline image with those pixels copied
      from the image.

    The score of a perturbed image is the softmax probability of the target
    class over the forward function's outputs (e.g. a
    :class:`~captum_clip_surgery.CLIPZeroShotClassifier`'s logits over its
    texts). A faithful map makes the deletion curve fall fast (low AUC) and the
    insertion curve rise fast (high AUC). Deletion starts at the image's score
    and ends at the baseline's; insertion the other way round.

    All ``2 · B · (steps + 1)`` perturbed images are built lazily and evaluated
    in chunks of ``batch_size`` under ``torch.no_grad()``, so memory stays
    ``O(batch_size)`` images.

    Args:
        forward_func (Callable): images ``[N, C, H, W]`` to logits ``[N, T]``.
        images (Tensor): ``[B, C, H, W]`` float, as the forward function takes them.
        maps (Tensor): ``[B, 1, H, W]`` (or ``[B, H, W]``) at the images' size;
            only the order of the values matters (NaN is rejected).
        target (int, list of int or Tensor): the class per image: an int for
            all, or ``B`` indices (list, or a 0-d / ``[B]`` integer tensor).
        steps (int, optional): number of steps; the curves have ``steps + 1``
            points.
            Default: 20
        baseline (str or Tensor, optional): what removed pixels become:
            ``"blur"`` — the image blurred with
            ``torchvision.transforms.functional.gaussian_blur``, kernel 11,
            sigma 5 (reflect padding; images of at least 6 x 6 pixels);
            ``"mean"`` — the per-image, per-channel mean; ``"zero"`` — zeros
            (in the images' space, i.e. after any normalisation); or a tensor
            ``[C, H, W]`` / ``[B, C, H, W]``.
            Default: ``"blur"``
        batch_size (int, optional): perturbed images per forward call;
            ``None`` gives ``B``.
            Default: None

    Returns:
        dict: ``deletion_curve`` and ``insertion_curve`` (``[B, steps + 1]``
        target probabilities), ``deletion_auc`` and ``insertion_auc`` (``[B]``,
        trapezoidal area over the fractions) and ``fractions``
        (``[steps + 1]``, ``s / steps`` in ``[0, 1]``); float32 on the CPU.

    Examples::

        >>> clf = CLIPZeroShotClassifier(model, texts=["dog", "cat"])
        >>> maps = CLIPSurgeryAttribution(clf).attribute(images, target=0)
        >>> out = deletion_insertion(clf, images, maps, target=0, steps=10)
        >>> out["deletion_auc"].shape, out["deletion_curve"].shape
        (torch.Size([8]), torch.Size([8, 11]))
    """
    if not callable(forward_func):
        raise TypeError(f"forward_func: expected a callable, got {type(forward_func).__name__}")
    check_image_tensor("images", images)
    b, c, h, w = images.shape
    if not isinstance(maps, Tensor):
        raise TypeError(f"maps: expected a Tensor [B, 1, H, W], got {type(maps).__name__}")
    check_dense_tensor("maps", maps)
    if maps.ndim == 3:
        maps = maps.unsqueeze(1)
    if maps.shape != (b, 1, h, w):
        raise ValueError(
            f"maps: expected shape {[b, 1, h, w]} (one map per image, at the images' size), "
            f"got {list(maps.shape)}"
        )
    if maps.dtype == torch.bool or maps.is_complex():
        raise TypeError(f"maps: expected a real-valued tensor, got {maps.dtype}")
    if maps.is_floating_point() and bool(torch.isnan(maps).any()):
        raise ValueError("maps: expected no NaN values (the map orders the pixels)")
    check_int("steps", steps, minimum=1)
    if batch_size is not None:
        check_int("batch_size", batch_size, minimum=1)
    tgt = _targets(target, b, images.device)
    if bool((tgt < 0).any()):
        raise ValueError(f"target: expected class indices >= 0, got {tgt.tolist()}")
    base = _baseline(images, baseline)

    n_pix = h * w
    order = torch.argsort(
        maps.reshape(b, n_pix).to(images.device), dim=1, descending=True, stable=True
    )
    rank = torch.empty_like(order)  # rank[b, p] = position of pixel p in the ordering
    rank.scatter_(1, order, torch.arange(n_pix, device=images.device).expand(b, -1))
    fractions = torch.linspace(0, 1, steps + 1)
    counts = torch.round(
        torch.arange(steps + 1, dtype=torch.float64) * n_pix / steps
    ).long().to(images.device)

    per_mode = b * (steps + 1)
    total = 2 * per_mode  # deletion images first, then insertion
    chunk = batch_size if batch_size is not None else b
    probs = []
    for lo in range(0, total, chunk):
        idx = torch.arange(lo, min(lo + chunk, total), device=images.device)
        deleting = (idx < per_mode).reshape(-1, 1, 1, 1)
        example = (idx % per_mode) // (steps + 1)
        step = idx % (steps + 1)
        top = (rank[example] < counts[step, None]).reshape(-1, 1, h, w)
        img, bas = images[example], base[example]
        # deletion: top pixels from the baseline, insertion: top pixels from the image
        batch = torch.where(top, torch.where(deleting, bas, img), torch.where(deleting, img, bas))
        logits = forward_func(batch)
        if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != len(idx):
            shape = list(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(
                f"forward_func: expected logits [N, T] for N = {len(idx)} images, got {shape}"
            )
        if lo == 0 and bool((tgt >= logits.shape[1]).any()):
            raise ValueError(
                f"target: expected class indices < {logits.shape[1]} (the forward function's "
                f"outputs), got {tgt.tolist()}"
            )
        p = logits.float().softmax(dim=-1)
        probs.append(p.gather(1, tgt[example].to(p.device)[:, None])[:, 0].cpu())
    curves = torch.cat(probs).reshape(2, b, steps + 1)
    auc = torch.trapezoid(curves, fractions, dim=-1)
    return {
        "deletion_curve": curves[0],
        "insertion_curve": curves[1],
        "deletion_auc": auc[0],
        "insertion_auc": auc[1],
        "fractions": fractions,
    }


def _single(out: Any, name: str) -> Tensor:
    if isinstance(out, tuple) and len(out) == 1:
        out = out[0]
    if not isinstance(out, Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(out).__name__}")
    return out


def _check_metric_args(
    attribution_fn: Any, images: Tensor, n_perturb_samples: Any, scale_name: str, scale: Any
) -> None:
    r"""The arguments the Captum metric wrappers share."""
    if not callable(attribution_fn):
        raise TypeError(
            f"attribution_fn: expected a callable, got {type(attribution_fn).__name__}"
        )
    check_image_tensor("images", images)
    check_int("n_perturb_samples", n_perturb_samples, minimum=1)
    check_positive_number(scale_name, scale)


def infidelity_score(
    attribution_fn: Callable[..., Tensor],
    forward_func: Callable[[Tensor], Tensor],
    images: Tensor,
    target: TargetType,
    n_perturb_samples: int = 10,
    noise_std: float = 0.003,
    max_examples_per_batch: Optional[int] = None,
    normalize: bool = False,
) -> Tensor:
    r"""Captum's :func:`captum.metrics.infidelity` with small Gaussian perturbations.

    The perturbation is the one of Captum's infidelity documentation:
    ``noise ~ N(0, noise_std²)`` per input element, perturbed input
    ``images - noise``. Infidelity is the expected squared difference between
    ``attributions · noise`` and the change of the forward function's output
    for the target (Yeh et al., NeurIPS 2019); lower is better. Call
    ``torch.manual_seed`` first for reproducible values.

    ``attribution_fn(images, target=target)`` may return maps ``[B, 1, H, W]``:
    they are expanded over the input's channels (``expand_as``), as infidelity
    needs attributions of the input's shape; ``[B, C, H, W]`` attributions are
    used as they are.

    Args:
        attribution_fn (Callable): e.g. ``explainer.attribute``.
        forward_func (Callable): e.g. the classifier; images to ``[N, T]``.
        images (Tensor): ``[B, C, H, W]`` float.
        target (int, list of int or Tensor): the explained class, passed to
            both functions.
        n_perturb_samples (int, optional): perturbations per image.
            Default: 10
        noise_std (float, optional): standard deviation of the noise.
            Default: 0.003
        max_examples_per_batch (int, optional): Captum's chunking of the
            perturbed forward passes; ``None``: all at once.
            Default: None
        normalize (bool, optional): Captum's ``normalize``: rescale the
            attributions by the least-squares factor first, so that maps of
            different scales (min-max maps, gradients) are compared on their
            shape only; without it the score largely tracks the map's energy.
            Default: False

    Returns:
        Tensor: ``[B]`` infidelity per image.

    Examples::

        >>> explainer = CLIPSurgeryAttribution(clf)
        >>> infidelity_score(explainer.attribute, clf, images, target=0).shape
        torch.Size([8])
    """
    _check_metric_args(attribution_fn, images, n_perturb_samples, "noise_std", noise_std)
    attributions = _single(attribution_fn(images, target=target), "attribution_fn")
    b, c, h, w = images.shape
    if attributions.shape == (b, 1, h, w):
        attributions = attributions.expand_as(images)
    elif attributions.shape != images.shape:
        raise ValueError(
            f"attribution_fn: expected attributions [{b}, 1, {h}, {w}] or {list(images.shape)}, "
            f"got {list(attributions.shape)}"
        )

    def perturb(inputs: Tensor) -> Tuple[Tensor, Tensor]:
        noise = noise_std * torch.randn_like(inputs)
        return noise, inputs - noise

    return infidelity(
        forward_func,
        perturb,
        images,
        attributions.detach().to(images.dtype),
        target=target,
        n_perturb_samples=n_perturb_samples,
        max_examples_per_batch=max_examples_per_batch,
        normalize=normalize,
    )


def sensitivity_score(
    attribution_fn: Callable[..., Tensor],
    images: Tensor,
    target: TargetType,
    n_perturb_samples: int = 10,
    perturb_radius: float = 0.02,
    max_examples_per_batch: Optional[int] = None,
) -> Tensor:
    r"""Captum's :func:`captum.metrics.sensitivity_max`: the largest relative change
    of the explanation under input perturbations.

    The perturbations are Captum's default: uniform noise in the L-inf ball of
    radius ``perturb_radius``; the change is the Frobenius norm of the
    difference of the explanations divided by the norm of the unperturbed one
    (Yeh et al., NeurIPS 2019); lower is more stable. Captum calls the
    explanation under ``torch.no_grad()`` (gradient-based Captum methods enable
    gradients themselves). Call ``torch.manual_seed`` first for reproducible
    values.

    Args:
        attribution_fn (Callable): ``attribution_fn(images, target=...)``,
            e.g. ``explainer.attribute``; it gets a tensor and may return a
            tensor or a 1-tuple.
        images (Tensor): ``[B, C, H, W]`` float.
        target (int, list of int or Tensor): the explained class (Captum
            repeats per-image targets for the perturbed copies).
        n_perturb_samples (int, optional): perturbations per image.
            Default: 10
        perturb_radius (float, optional): L-inf radius of the perturbation.
            Default: 0.02
        max_examples_per_batch (int, optional): Captum's chunking of the
            perturbed explanations; ``None``: all at once.
            Default: None

    Returns:
        Tensor: ``[B]`` maximum sensitivity per image.

    Examples::

        >>> explainer = CLIPSurgeryAttribution(clf)
        >>> sensitivity_score(explainer.attribute, images, target=0).shape
        torch.Size([8])
    """
    _check_metric_args(attribution_fn, images, n_perturb_samples, "perturb_radius", perturb_radius)

    def explain(inputs: Union[Tensor, Tuple[Tensor, ...]], **kwargs: Any) -> Tuple[Tensor]:
        # Captum passes the inputs as a 1-tuple and expects a tuple back
        x = inputs[0] if isinstance(inputs, tuple) else inputs
        return (_single(attribution_fn(x, **kwargs), "attribution_fn"),)

    return sensitivity_max(
        explain,
        images,
        target=target,
        n_perturb_samples=n_perturb_samples,
        perturb_radius=perturb_radius,
        max_examples_per_batch=max_examples_per_batch,
    )
