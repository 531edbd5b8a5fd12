r"""Faithfulness: deletion / insertion curves, and Captum's infidelity and sensitivity."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Union

import torch
from captum.metrics import infidelity, sensitivity_max
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur

__all__ = ["deletion_insertion", "infidelity_score", "sensitivity_score"]


def _baseline(images: Tensor, baseline: Union[str, Tensor]) -> Tensor:
    if isinstance(baseline, Tensor):
        base = baseline.to(images)
        if base.ndim == 3:
            base = base.unsqueeze(0)
        return base.expand_as(images)
    if baseline == "blur":
        return gaussian_blur(images, kernel_size=[11, 11], sigma=[5.0, 5.0])
    if baseline == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    if baseline == "zero":
        return torch.zeros_like(images)
    raise ValueError(
        f"baseline: expected 'blur', 'mean', 'zero' or a tensor, got {baseline!r}"
    )


def _targets(target: Any, batch: int, device: torch.device) -> Tensor:
    if isinstance(target, int) and not isinstance(target, bool):
        return torch.full((batch,), target, dtype=torch.long, device=device)
    t = torch.as_tensor(target, device=device)
    if t.ndim != 1 or t.shape[0] != batch or t.is_floating_point():
        raise ValueError(f"target: expected an int or {batch} integer indices, got {target!r}")
    return t.long()


@torch.no_grad()
def deletion_insertion(
    forward_func: Callable[[Tensor], Tensor],
    images: Tensor,
    maps: Tensor,
    target: Any,
    steps: int = 20,
    baseline: Union[str, Tensor] = "blur",
    batch_size: Optional[int] = None,
) -> Dict[str, Tensor]:
    r"""Deletion and insertion curves (Petsiuk et al., RISE) driven by a map.

    Pixels are ranked by the map (descending; ties keep row-major order). At
    step ``s`` the top ``round(s / steps · H·W)`` pixels are *removed* (replaced
    by the baseline image: deletion) or *revealed* (the baseline with those
    pixels of the image: insertion). The score is the softmax probability of the
    target over the forward function's outputs (e.g. a
    :class:`CLIPZeroShotClassifier`'s logits over its texts). A faithful map makes
    deletion fall fast (low AUC) and insertion rise fast (high AUC).

    Args:
        forward_func (Callable): images ``[N, 3, H, W]`` to logits ``[N, T]``.
        images (Tensor): ``[B, 3, H, W]``.
        maps (Tensor): ``[B, 1, H, W]`` (or ``[B, H, W]``) at the images' size.
        target (int, list or Tensor): class index per example.
        steps (int): curve resolution.
        baseline (str or Tensor): ``"blur"`` (Gaussian blur, kernel 11, sigma 5),
            ``"mean"`` (per-image channel means), ``"zero"``, or an image tensor.
        batch_size (int, optional): perturbed images per forward (default ``B``).

    Returns:
        dict: ``deletion_curve`` / ``insertion_curve`` ``[B, steps + 1]``,
        ``deletion_auc`` / ``insertion_auc`` ``[B]`` (trapezoidal, fractions in
        ``[0, 1]``) and ``fractions`` ``[steps + 1]``.

    Examples::

        >>> out = deletion_insertion(clf, images, maps, target=0, steps=10)
        >>> out["deletion_auc"].shape
        torch.Size([8])
    """
    if not isinstance(images, Tensor) or images.ndim != 4:
        raise ValueError(f"images: expected [B, C, H, W], got {getattr(images, 'shape', images)}")
    b, c, h, w = images.shape
    if maps.ndim == 3:
        maps = maps.unsqueeze(1)
    if maps.shape != (b, 1, h, w):
        raise ValueError(f"maps: expected shape {[b, 1, h, w]}, got {list(maps.shape)}")
    if steps < 1:
        raise ValueError(f"steps: expected >= 1, got {steps}")
    tgt = _targets(target, b, images.device)
    base = _baseline(images, baseline)
    order = torch.argsort(maps.reshape(b, -1).float(), dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=images.device).expand(b, -1))
    fractions = torch.linspace(0, 1, steps + 1)
    counts = torch.round(fractions * h * w).long()
    chunk = batch_size or b
    curves = {}
    for mode in ("deletion", "insertion"):
        perturbed = []
        for n in counts.tolist():
            top = (rank < n).reshape(b, 1, h, w)
            if mode == "deletion":
                perturbed.append(torch.where(top, base, images))
            else:
                perturbed.append(torch.where(top, images, base))
        flat = torch.stack(perturbed, dim=1).reshape(b * (steps + 1), c, h, w)
        targets = tgt.repeat_interleave(steps + 1)
        probs = []
        for lo in range(0, flat.shape[0], chunk):
            logits = forward_func(flat[lo : lo + chunk]).float()
            p = logits.softmax(dim=-1)
            probs.append(p.gather(1, targets[lo : lo + chunk, None].to(p.device))[:, 0].cpu())
        curves[mode] = torch.cat(probs).reshape(b, steps + 1)
    auc = {m: torch.trapezoid(curves[m], fractions, dim=1) for m in curves}
    return {
        "deletion_curve": curves["deletion"],
        "insertion_curve": curves["insertion"],
        "deletion_auc": auc["deletion"],
        "insertion_auc": auc["insertion"],
        "fractions": fractions,
    }


def infidelity_score(
    attribution_fn: Callable[..., Tensor],
    forward_func: Callable[[Tensor], Tensor],
    images: Tensor,
    target: Any,
    n_perturb_samples: int = 10,
    noise_std: float = 0.003,
) -> Tensor:
    r"""Captum's ``infidelity`` with small Gaussian input perturbations.

    ``attribution_fn(images, target=...)`` may return ``[B, 1, H, W]`` maps; they
    are expanded over the input channels (``expand_as``), as infidelity needs
    attributions of the input's shape.

    Args:
        attribution_fn (Callable): e.g. ``explainer.attribute``.
        forward_func (Callable): e.g. the classifier.
        images (Tensor): ``[B, 3, H, W]``.
        target (int, list or Tensor): the explained class.
        n_perturb_samples (int): perturbations per example.
        noise_std (float): standard deviation of the perturbation.

    Returns:
        Tensor: ``[B]`` infidelity (lower is better).
    """

    def perturb(inputs: Tensor) -> Any:
        noise = noise_std * torch.randn_like(inputs)
        return noise, inputs - noise

    attributions = attribution_fn(images, target=target)
    if attributions.shape != images.shape:
        attributions = attributions.expand_as(images)
    return infidelity(forward_func, perturb, images, attributions, target=target,
                      n_perturb_samples=n_perturb_samples)


def sensitivity_score(
    attribution_fn: Callable[..., Tensor],
    images: Tensor,
    target: Any,
    n_perturb_samples: int = 10,
    perturb_radius: float = 0.02,
) -> Tensor:
    r"""Captum's ``sensitivity_max``: the largest change of the explanation under
    uniform input perturbations within ``perturb_radius`` (L-inf).

    Args:
        attribution_fn (Callable): e.g. ``explainer.attribute``.
        images (Tensor): ``[B, 3, H, W]``.
        target (int, list or Tensor): the explained class.
        n_perturb_samples (int): perturbations per example.
        perturb_radius (float): perturbation radius.

    Returns:
        Tensor: ``[B]`` (lower is more stable).
    """
    return sensitivity_max(attribution_fn, images, target=target,
                           n_perturb_samples=n_perturb_samples, perturb_radius=perturb_radius)
