r"""Multi-label recognition with feature surgery on the class token, and a presence gate.

``docs/method.md`` §9: applying feature surgery to the class feature ``f_cls`` (in place of a
patch feature ``f_i``) gives one score per class that is better suited to
multi-label ranking than CLIP's raw cosine. The class feature is the
**unmodified** model's image embedding: CLIP Surgery's dual path keeps the class
token on the original stream (``docs/method.md`` §3), so the same scores come out whichever
explainer (or plain classifier) is given.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Union

import torch
from torch import Tensor

from captum_clip_surgery._validation import check_positive_number, check_unit_interval
from captum_clip_surgery.core.classifier import CLIPZeroShotClassifier
from captum_clip_surgery.core.feature_surgery import check_distinct_texts
from captum_clip_surgery.core.feature_surgery import feature_surgery_scores as _feature_surgery
from captum_clip_surgery.core.text import validate_texts
from captum_clip_surgery.methods.base import TokenMapAttribution

__all__ = ["multilabel_scores", "text_presence"]

ClassifierLike = Union[CLIPZeroShotClassifier, TokenMapAttribution]


def resolve_classifier(obj: Any, name: str = "classifier") -> CLIPZeroShotClassifier:
    r"""The :class:`CLIPZeroShotClassifier` of a classifier or of an attribution built on one."""
    if isinstance(obj, CLIPZeroShotClassifier):
        return obj
    clf = getattr(obj, "classifier", None)
    if isinstance(clf, CLIPZeroShotClassifier):
        return clf
    raise TypeError(
        f"{name}: expected a CLIPZeroShotClassifier or an attribution built on one (e.g. "
        f"CLIPSurgeryAttribution), got {type(obj).__name__}"
    )


def _needs_grad(images: Tensor) -> bool:
    r"""Build an autograd graph only for inputs that ask for one (never for the weights)."""
    return torch.is_grad_enabled() and isinstance(images, Tensor) and images.requires_grad


def text_probabilities(clf: CLIPZeroShotClassifier, images: Tensor, texts: List[str]) -> Tensor:
    r"""The model's own probabilities of ``texts``, ``[B, T]``: a softmax over the texts of
    the logits for CLIP (contrastive loss), an independent sigmoid per text for
    sigmoid-loss models (SigLIP: ``sigmoid(logit_scale · cos + logit_bias)``)."""
    with torch.set_grad_enabled(_needs_grad(images)):
        features = clf.image_features(images)
        logits = clf.adapter.logits(features, clf.encode_texts(texts)).float()
        if clf.adapter.score_kind == "sigmoid":
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=-1)


def multilabel_scores(
    classifier: ClassifierLike,
    images: Tensor,
    texts: Optional[Sequence[str]] = None,
    feature_surgery: str = "classes",
    temperature: float = 2.0,
) -> Tensor:
    r"""Per-class multi-label scores: feature surgery applied to the class feature.

    With ``f`` the unit image embedding of the unmodified model (the class token,
    which CLIP Surgery leaves untouched) and ``e_t`` the unit prompt-ensembled
    text features, ``s_t = f·e_t``:

    - ``"classes"`` (``docs/method.md`` §6 class-set mode with ``f_cls`` in place of
      ``f_i``, §9): ``w_t = p_t / mean(p)``, ``p = softmax(temperature · s)``
      over the texts; ``score_t = w_t s_t − mean_t'(w_t' s_t')``. Needs at
      least 2 texts; the scores of one image sum to zero.
    - ``"empty"``: ``score_t = f·(e_t − r)`` with ``r`` the prompt-ensembled
      empty string (a per-image constant shift of the raw cosine).
    - ``"none"``: ``score_t = s_t``, CLIP's raw cosine (the baseline).

    Rank or threshold the scores per class (e.g. average precision per class);
    they are not probabilities.

    Args:
        classifier (CLIPZeroShotClassifier or TokenMapAttribution): the
            classifier, or an explainer built on one (its classifier is used).
        images (Tensor): preprocessed images ``[B, 3, H, W]``.
        texts (list[str], optional): the class names; default the classifier's
            texts. Encoded with the classifier's templates (cached).
        feature_surgery (str): ``"classes"`` (default), ``"empty"`` or ``"none"``.
        temperature (float): softmax temperature of the class-set weights (2 in
            the release).

    Returns:
        Tensor: ``[B, T]`` float32 scores on the model's device.

    Examples::

        >>> clf = CLIPZeroShotClassifier(model, ["person", "dog", "bench", "car"])
        >>> multilabel_scores(clf, images).shape
        torch.Size([8, 4])
    """
    clf = resolve_classifier(classifier)
    texts_ = list(clf.texts) if texts is None else validate_texts(texts)
    if feature_surgery not in ("classes", "empty", "none"):
        raise ValueError(
            f"feature_surgery: expected 'classes', 'empty' or 'none', got {feature_surgery!r}"
        )
    temperature = check_positive_number("temperature", temperature)
    if feature_surgery == "classes" and len(texts_) < 2:
        raise ValueError(
            f"texts: class-set feature surgery needs at least 2 texts, got {len(texts_)}; "
            "use feature_surgery='empty' for a single text"
        )
    with torch.set_grad_enabled(_needs_grad(images)):
        f = clf.image_features(images).unsqueeze(1)
        e = clf.encode_texts(texts_)
        if feature_surgery == "classes":
            check_distinct_texts(texts_, e)  # duplicates cancel out: refused, named
            s = _feature_surgery(f, e, "classes", temperature=float(temperature))
        elif feature_surgery == "empty":
            s = _feature_surgery(f, e, "redundant", clf.empty_text_features())
        else:
            s = _feature_surgery(f, e, "none")
    return s[:, 0, :]


def text_presence(
    classifier: ClassifierLike,
    images: Tensor,
    texts: Optional[Sequence[str]] = None,
    threshold: Optional[float] = None,
) -> Tensor:
    r"""Existence gate: which texts the image's class token judges present.

    The zero-shot probabilities of the unmodified model over the text set,
    ``p = softmax(logit_scale · cos(image embedding, e_t))`` (the classifier's
    logits, softmaxed; for sigmoid-loss models such as SigLIP the model's own
    per-text ``sigmoid(logit_scale · cos + logit_bias)``), are compared with
    ``threshold``. This is the gate the
    CLIP Surgery authors suggest before turning a map into point prompts
    (``docs/method.md`` §8): min-max normalised maps always have a maximum, even for an
    absent object, so a text is first checked against the whole image.

    The softmax is relative to the set: give the full class set of the task
    (including likely background classes), not only the texts of interest.
    Sigmoid scores are per text and need no set.

    Args:
        classifier (CLIPZeroShotClassifier or TokenMapAttribution): the
            classifier, or an explainer built on one.
        images (Tensor): preprocessed images ``[B, 3, H, W]``.
        texts (list[str], optional): the text set (at least 2 for softmax models);
            default the classifier's texts.
        threshold (float, optional): probability in ``[0, 1]`` a text needs to
            be judged present; default ``1 / T`` (more likely than uniform), 0.5
            for sigmoid-loss models.

    Returns:
        Tensor: ``[B, T]`` bool, ``True`` where ``p >= threshold``.

    Examples::

        >>> clf = CLIPZeroShotClassifier(model, ["dog", "cat", "grass", "sky"])
        >>> present = text_presence(clf, images, threshold=0.2)   # [B, 4] bool
    """
    clf = resolve_classifier(classifier)
    texts_ = list(clf.texts) if texts is None else validate_texts(texts)
    sigmoid = clf.adapter.score_kind == "sigmoid"
    if len(texts_) < 2 and not sigmoid:
        raise ValueError(
            f"texts: presence is judged by a softmax over a set of texts; expected at least 2, "
            f"got {len(texts_)} (a softmax over one text is always 1)"
        )
    default = 0.5 if sigmoid else 1.0 / len(texts_)
    thr = default if threshold is None else check_unit_interval("threshold", threshold)
    return text_probabilities(clf, images, texts_) >= thr
