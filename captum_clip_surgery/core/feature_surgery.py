r"""Feature surgery: removal of the redundant features shared by all texts (``docs/method.md`` §6)."""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor

from captum_clip_surgery._validation import check_positive_number

__all__ = ["check_distinct_texts", "duplicate_rows", "feature_surgery_scores"]


def duplicate_rows(features: Tensor) -> List[List[int]]:
    r"""Groups of indices of rows that are exactly equal, ``[[i, j, ...], ...]`` (each
    group in increasing order, groups by their first index; empty when all rows differ).

    Args:
        features (Tensor): ``[T, C]``.

    Returns:
        list[list[int]]: the groups of two or more equal rows.
    """
    _, inverse = torch.unique(features.detach(), dim=0, return_inverse=True)
    groups: dict = {}
    for i, g in enumerate(inverse.tolist()):
        groups.setdefault(g, []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def check_distinct_texts(texts: Sequence[str], text_features: Tensor) -> None:
    r"""Refuse a text set that class-set feature surgery cannot use: duplicate texts.

    Class-set feature surgery subtracts from each text's score the weighted mean over
    the set; texts with equal features (the same text twice, or texts that the
    tokenizer maps to the same tokens, e.g. ``"Dog"`` and ``"dog"`` for CLIP's
    lower-casing BPE) get equal scores, so with only such texts every map would be
    exactly zero, and otherwise the repeated text counts twice in the redundant
    features. Rather than return such maps silently, this raises.

    Args:
        texts (list[str]): the ``T`` texts (for the message).
        text_features (Tensor): their ``[T, C]`` features.

    Raises:
        ValueError: naming ``texts`` and the duplicates.
    """
    groups = duplicate_rows(text_features)
    if not groups:
        return
    shown = "; ".join(
        (f"{texts[g[0]]!r} {len(g)} times" if len({texts[i] for i in g}) == 1
         else " and ".join(repr(texts[i]) for i in g) + " have identical text features")
        for g in groups[:5]
    )
    raise ValueError(
        f"texts: class-set feature surgery needs distinct texts, got duplicates ({shown}): "
        "equal texts cancel out (two equal texts give all-zero maps); remove the "
        "duplicates, or use feature_surgery='empty' or 'none'"
    )


def feature_surgery_scores(
    image_features: Tensor,
    text_features: Tensor,
    mode: str = "classes",
    redundant_features: Optional[Tensor] = None,
    temperature: float = 2.0,
) -> Tensor:
    r"""Similarity of every image token with every text after feature surgery.

    Batched closed forms of ``docs/method.md`` §6, computed in float32 with memory
    O(B·N·T) (the element-wise ``B×N×T×C`` product of the release is never
    built):

    - ``"classes"``: ``w = p / mean(p)``, ``p = softmax(temperature · f_cls·e_t)``
      over the texts, per image; ``S[i, t] = w_t s_it − mean_t' (w_t' s_it')``
      with ``s_it = f_i·e_t``. The text features must be distinct: equal rows
      (duplicate texts) cancel out — two equal texts alone give all-zero scores —
      and are refused with a ``ValueError`` (see :func:`check_distinct_texts`).
    - ``"redundant"``: ``S[i, t] = f_i·(e_t − r)`` with ``r`` the
      ``redundant_features`` (e.g. the empty string's embedding).
    - ``"none"``: ``S[i, t] = f_i·e_t``.

    Args:
        image_features (Tensor): ``[B, N, C]`` unit features, class token first.
        text_features (Tensor): ``[T, C]`` unit text features.
        mode (str): ``"classes"``, ``"redundant"`` or ``"none"``.
        redundant_features (Tensor, optional): ``[C]`` or ``[T, C]``, needed by
            ``"redundant"``; finite (NaN or infinity would make every score NaN).
        temperature (float): softmax temperature of the class-set weights (2 in
            the release).

    Returns:
        Tensor: ``[B, N, T]`` float32 scores (class token included).

    Examples::

        >>> f = torch.nn.functional.normalize(torch.randn(2, 50, 64), dim=-1)
        >>> e = torch.nn.functional.normalize(torch.randn(3, 64), dim=-1)
        >>> feature_surgery_scores(f, e).shape
        torch.Size([2, 50, 3])
    """
    _check_features(image_features, text_features)
    if not isinstance(mode, str) or mode not in ("classes", "redundant", "none"):
        raise ValueError(f"mode: expected 'classes', 'redundant' or 'none', got {mode!r}")
    f = image_features.float()
    e = text_features.float().to(f.device)
    if mode == "none":
        return f @ e.t()
    if mode == "redundant":
        if redundant_features is None:
            raise ValueError("redundant_features: required when mode='redundant'")
        if not isinstance(redundant_features, Tensor):
            raise TypeError(
                f"redundant_features: expected a Tensor, got {type(redundant_features).__name__}"
            )
        if not bool(torch.isfinite(redundant_features).all()):
            raise ValueError("redundant_features: expected finite values, got NaN or infinity")
        r = redundant_features.float().to(e.device)
        if r.ndim == 1:
            r = r.unsqueeze(0)
        if r.ndim != 2 or r.shape[-1] != e.shape[-1] or r.shape[0] not in (1, e.shape[0]):
            raise ValueError(
                f"redundant_features: expected shape [{e.shape[-1]}] or "
                f"[{e.shape[0]}, {e.shape[-1]}], got {list(redundant_features.shape)}"
            )
        return f @ (e - r).t()
    t = check_positive_number("temperature", temperature)
    groups = duplicate_rows(e)
    if groups:
        rows = "; ".join(" = ".join(str(i) for i in g) for g in groups[:5])
        raise ValueError(
            f"text_features: mode 'classes' needs distinct text features, rows {rows} are "
            "equal (duplicate texts cancel out: the redundant features they share are "
            "the texts themselves); remove the duplicates, or use mode 'redundant' or 'none'"
        )
    s = f @ e.t()
    p = torch.softmax(t * s[:, 0, :], dim=-1)
    w = p / p.mean(dim=-1, keepdim=True)
    weighted = s * w.unsqueeze(1)
    return weighted - weighted.mean(dim=-1, keepdim=True)


def _check_features(image_features: object, text_features: object) -> None:
    for name, x, ndim, shape in (("image_features", image_features, 3, "[B, N, C]"),
                                 ("text_features", text_features, 2, "[T, C]")):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name}: expected a Tensor {shape}, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got {x.dtype}")
        if x.ndim != ndim or 0 in x.shape:
            raise ValueError(f"{name}: expected a non-empty {shape} tensor, got shape "
                             f"{list(x.shape)}")
    if image_features.shape[-1] != text_features.shape[-1]:  # type: ignore[union-attr]
        raise ValueError(
            f"text_features: expected {image_features.shape[-1]} channels like image_features, "  # type: ignore[union-attr]
            f"got shape {list(text_features.shape)}"  # type: ignore[union-attr]
        )


#: The same function under the module's name, for code that imports it from this module.
#: The package exports it as :func:`feature_surgery_scores` so that
#: ``captum_clip_surgery.feature_surgery`` stays this module.
feature_surgery = feature_surgery_scores
