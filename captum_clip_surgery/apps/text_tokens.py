r"""Text-token explanations: which words of a caption match the image (``docs/method.md`` §9)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_clip_surgery.adapters.base import inference_mode_of
from captum_clip_surgery.apps.multilabel import resolve_classifier
from captum_clip_surgery.core.classifier import CLIPZeroShotClassifier
from captum_clip_surgery.core.feature_surgery import feature_surgery_scores as _feature_surgery

if TYPE_CHECKING:  # matplotlib is imported by the plotting function only
    from matplotlib.figure import Figure

__all__ = ["TextTokenExplanation", "explain_text_tokens", "plot_text_tokens"]

_REDUCTIONS = ("mean", "max", "sum", "last")


@dataclass
class TextTokenExplanation:
    r"""Scores of a caption's tokens and words against images.

    Attributes:
        caption (str): the caption, as given.
        token_ids (list[int]): the ids of the scored tokens (between the
            start-of-text and end-of-text tokens).
        tokens (list[str]): each scored token's text (the tokenizer's pieces,
            without the end-of-word marker).
        token_scores (Tensor): ``[B, n_tokens]`` float32 scores.
        words (list[str]): the words (the tokenizer's, e.g. punctuation is a word
            of its own and text is lower-cased).
        word_scores (Tensor): ``[B, n_words]`` token scores reduced per word.
        token_to_word (list[int]): word index of each token.
        caption_score (Tensor): ``[B]`` cosine of each image with the whole
            caption (its pooled end-of-text embedding, the model's own text
            embedding of the caption used verbatim).
        feature_surgery (str): the redundancy removal applied.
        word_reduction (str): how token scores were reduced per word.
    """

    caption: str
    token_ids: List[int]
    tokens: List[str]
    token_scores: Tensor
    words: List[str]
    word_scores: Tensor
    token_to_word: List[int]
    caption_score: Tensor
    feature_surgery: str
    word_reduction: str


def _classifier(obj: Any, caption: str) -> CLIPZeroShotClassifier:
    if isinstance(obj, nn.Module) and not isinstance(obj, CLIPZeroShotClassifier):
        return CLIPZeroShotClassifier(obj, [caption], templates=["{}"])
    return resolve_classifier(obj)


def explain_text_tokens(
    classifier: Any,
    images: Tensor,
    caption: str,
    feature_surgery: str = "classes",
    word_reduction: str = "mean",
    temperature: float = 2.0,
) -> TextTokenExplanation:
    r"""Score each token of a caption against images ("multimodal visualization").

    The caption is tokenized with the classifier's tokenizer and run through the
    unmodified text tower once. Every position's final hidden state goes through
    the final norm (``ln_final``) and the text projection, the same path as the
    pooled end-of-text (EOT) token, giving token features ``g_j`` in the joint
    space (as the image side projects every patch); they are L2-normalised. With
    ``f`` the unit image embedding of the unmodified model and ``s_j = f·g_j``
    for the tokens strictly between start-of-text and EOT:

    - ``"classes"`` (default): ``docs/method.md`` §6 class-set feature surgery with the
      caption's tokens as the set and the image embedding as the class feature:
      ``w_j = p_j / mean(p)``, ``p = softmax(temperature · s)`` over the
      tokens, ``score_j = w_j s_j − mean_k(w_k s_k)``. The component shared by
      all tokens of the caption is removed; scores sum to zero over the tokens,
      positive means "matches the image better than the caption's average
      token". Needs at least 2 tokens.
    - ``"empty"``: the free-form analogue, ``score_j = f·(g_j − r)`` with ``r``
      the unit embedding of the verbatim empty string ``""``: positive means
      "matches the image better than an empty caption" (a common shift of
      ``"none"``, same ranking).
    - ``"none"``: ``score_j = s_j``, the raw cosine.

    Words are the tokenizer's (open_clip's BPE marks word ends); ``word_scores``
    reduce the token scores of each word with ``word_reduction``: ``"mean"``,
    ``"max"``, ``"sum"`` or ``"last"`` (the word's final piece, which has read
    the whole word).

    Caveat: the CLIP text transformer is causal. Token ``j``'s state depends on
    tokens ``0..j`` only, so a score is that of the caption's *prefix* ending at
    the token, projected like a sentence embedding; later tokens carry more
    context (the EOT token carries the whole caption), and early tokens that are
    explained by later words are not credited for them.

    Args:
        classifier (CLIPZeroShotClassifier, attribution or nn.Module): a
            classifier, an explainer built on one, or an open_clip model (its
            default tokenizer is used).
        images (Tensor): preprocessed images ``[B, 3, H, W]``.
        caption (str): the caption to explain.
        feature_surgery (str): ``"classes"``, ``"empty"`` or ``"none"``.
        word_reduction (str): ``"mean"``, ``"max"``, ``"sum"`` or ``"last"``.
        temperature (float): softmax temperature of the ``"classes"`` weights.

    Returns:
        TextTokenExplanation: tokens, words and their ``[B, n]`` scores.

    Examples::

        >>> exp = explain_text_tokens(clf, images, "a dog on the grass")
        >>> exp.words
        ['a', 'dog', 'on', 'the', 'grass']
        >>> exp.word_scores.shape
        torch.Size([8, 5])
        >>> fig = plot_text_tokens(exp)
    """
    if not isinstance(caption, str):
        raise TypeError(f"caption: expected a string, got {type(caption).__name__}")
    if feature_surgery not in ("classes", "empty", "none"):
        raise ValueError(
            f"feature_surgery: expected 'classes', 'empty' or 'none', got {feature_surgery!r}"
        )
    if word_reduction not in _REDUCTIONS:
        raise ValueError(
            f"word_reduction: expected one of {', '.join(map(repr, _REDUCTIONS))}, got "
            f"{word_reduction!r}"
        )
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature: expected a positive number, got {type(temperature).__name__}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature: expected a positive finite number, got {temperature}")
    clf = _classifier(classifier, caption)
    adapter = clf.adapter
    tokenizer = clf.text_cache.tokenizer
    ids = clf.text_cache.token_ids([caption])
    if not isinstance(ids, Tensor) or ids.ndim != 2 or ids.shape[0] != 1:
        raise TypeError(
            "tokenizer: expected token ids as a 2-D tensor [1, L] for one caption, got "
            f"{type(ids).__name__}{list(ids.shape) if isinstance(ids, Tensor) else ''}"
        )
    ids = ids.to(adapter.device)
    with torch.no_grad(), inference_mode_of(clf.model):
        g = F.normalize(adapter.text.token_features(ids)[0].float(), dim=-1)
        eot = int(adapter.text.pooled_positions(ids)[0])
    token_ids = [int(t) for t in ids[0, 1:eot].tolist()]
    n = len(token_ids)
    if n == 0:
        raise ValueError(f"caption: {caption!r} has no tokens to explain (empty caption?)")
    if feature_surgery == "classes" and n < 2:
        raise ValueError(
            f"caption: class-set feature surgery over tokens needs at least 2 tokens, "
            f"{caption!r} has {n}; use feature_surgery='empty' or 'none'"
        )
    grad = torch.is_grad_enabled() and isinstance(images, Tensor) and images.requires_grad
    with torch.set_grad_enabled(grad):  # a graph only towards inputs that ask for one
        f = clf.image_features(images)
        tokens_g = g[1:eot].to(f.device)
        caption_score = f @ g[eot].to(f.device)
        if feature_surgery == "classes":
            scores = _feature_surgery(
                f.unsqueeze(1), tokens_g, "classes", temperature=float(temperature)
            )
        elif feature_surgery == "empty":
            empty = clf.text_cache.features([""], ("{}",))[0]
            scores = _feature_surgery(f.unsqueeze(1), tokens_g, "redundant", empty)
        else:
            scores = _feature_surgery(f.unsqueeze(1), tokens_g, "none")
    token_scores = scores[:, 0, :]

    pieces = adapter.text.token_pieces(token_ids, tokenizer)
    words: List[str] = []
    token_to_word: List[int] = []
    pending = b""
    for raw, ends in pieces:
        token_to_word.append(len(words))
        pending += raw
        if ends:
            words.append(pending.decode("utf-8", errors="replace"))
            pending = b""
    if pending or len(words) == 0:  # a caption cut by the context length ends mid-word
        words.append(pending.decode("utf-8", errors="replace"))
    tokens = [raw.decode("utf-8", errors="replace") for raw, _ in pieces]

    owner = torch.tensor(token_to_word, device=token_scores.device)
    columns = []
    for w in range(len(words)):
        member = token_scores[:, owner == w]
        if word_reduction == "mean":
            columns.append(member.mean(dim=1))
        elif word_reduction == "max":
            columns.append(member.amax(dim=1))
        elif word_reduction == "sum":
            columns.append(member.sum(dim=1))
        else:
            columns.append(member[:, -1])
    return TextTokenExplanation(
        caption=caption,
        token_ids=token_ids,
        tokens=tokens,
        token_scores=token_scores,
        words=words,
        word_scores=torch.stack(columns, dim=1),
        token_to_word=token_to_word,
        caption_score=caption_score,
        feature_surgery=feature_surgery,
        word_reduction=word_reduction,
    )


def plot_text_tokens(
    explanation: TextTokenExplanation,
    index: int = 0,
    level: str = "words",
    cmap: str = "RdBu_r",
    title: Optional[str] = None,
) -> Figure:
    r"""A heat strip of the caption's words (or tokens) over a bar chart of their scores.

    Signed scores (feature surgery) use a colour scale symmetric around zero;
    raw cosines (``"none"``) span their own minimum to maximum.

    Args:
        explanation (TextTokenExplanation): from :func:`explain_text_tokens`.
        index (int): which image of the batch to show.
        level (str): ``"words"`` (default) or ``"tokens"``.
        cmap (str): matplotlib colour map (diverging by default).
        title (str, optional): figure title; default the caption and the
            caption's cosine with the image.

    Returns:
        matplotlib.figure.Figure: the figure (not shown; save or display it).

    Examples::

        >>> fig = plot_text_tokens(explain_text_tokens(clf, images, "a dog on grass"))
        >>> fig.savefig("tokens.png")
    """
    if not isinstance(explanation, TextTokenExplanation):
        raise TypeError(
            f"explanation: expected a TextTokenExplanation, got {type(explanation).__name__}"
        )
    if level not in ("words", "tokens"):
        raise ValueError(f"level: expected 'words' or 'tokens', got {level!r}")
    scores = explanation.word_scores if level == "words" else explanation.token_scores
    batch = scores.shape[0]
    if isinstance(index, bool) or not isinstance(index, int) or not -batch <= index < batch:
        raise ValueError(f"index: expected an image index in [0, {batch - 1}], got {index!r}")
    labels: List[str] = explanation.words if level == "words" else explanation.tokens
    values = scores[index].detach().float().cpu().numpy()
    if explanation.feature_surgery == "none":
        lo, hi = float(values.min()), float(values.max())
        if hi <= lo:
            lo, hi = lo - 1e-6, hi + 1e-6
    else:
        hi = max(float(np.abs(values).max()), 1e-12)
        lo = -hi
    n = len(labels)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.0, 0.85 * n + 1.0), 3.4))
    strip, bars = fig.subplots(2, 1, gridspec_kw={"height_ratios": [1, 2.2]})
    image = strip.imshow(values[None, :], cmap=cmap, vmin=lo, vmax=hi, aspect="auto")
    colours = image.cmap(image.norm(values))
    for j, label in enumerate(labels):
        luminance = 0.299 * colours[j][0] + 0.587 * colours[j][1] + 0.114 * colours[j][2]
        strip.text(j, 0, label, ha="center", va="center",
                   color="black" if luminance > 0.5 else "white", fontsize=10)
    strip.set_xticks([])
    strip.set_yticks([])
    bars.bar(np.arange(n), values, color=colours, edgecolor="0.3", linewidth=0.5)
    bars.axhline(0.0, color="0.3", linewidth=0.8)
    bars.set_xticks(np.arange(n))
    bars.set_xticklabels(labels, rotation=45 if n > 8 else 0, ha="right" if n > 8 else "center")
    bars.set_xlim(-0.5, n - 0.5)
    bars.set_ylabel(f"score ({explanation.feature_surgery})")
    fig.colorbar(image, ax=[strip, bars], fraction=0.03, pad=0.02)
    cosine = float(explanation.caption_score[index].detach())
    fig.suptitle(title if title is not None else f"{explanation.caption!r}  (cos {cosine:.3f})")
    return fig
