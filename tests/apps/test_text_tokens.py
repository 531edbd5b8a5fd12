r"""Text-token explanations: per-token features, scores, words, plot, errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from captum_clip_surgery import (
    CLIPSurgeryAttribution,
    CLIPZeroShotClassifier,
    TextTokenExplanation,
    explain_text_tokens,
    get_adapter,
    plot_text_tokens,
)
from tests.helpers import FEW_TEMPLATES, TEXTS, images_for, scene_batch
from tests.models import tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")


def _all_token_features(model: open_clip.CLIP, ids: torch.Tensor) -> torch.Tensor:
    r"""open_clip's own text path, full context, every position projected: ``[N, L, D]``."""
    x = model.token_embedding(ids) + model.positional_embedding
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
    return x @ model.text_projection


def test_adapter_token_features_match_the_text_tower():
    model = tiny_vit()
    adapter = get_adapter(model)
    ids = open_clip.tokenize(["a dog", "a red car on the grass", ""], model.context_length)
    with torch.no_grad():
        tokens = adapter.text.token_features(ids)
        full = _all_token_features(model, ids)
        pooled = model.encode_text(ids)
    eot = adapter.text.pooled_positions(ids)
    assert eot.tolist() == [3, 7, 1]
    assert tokens.shape[:2] == (3, 8)  # stops after the last end-of-text position (causal mask)
    torch.testing.assert_close(tokens, full[:, :8], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tokens[torch.arange(3), eot], pooled, atol=1e-5, rtol=1e-5)
    pieces = adapter.text.token_pieces(ids[1, :8].tolist())
    assert pieces[0][0] == b"<start_of_text>" and pieces[-1][0] == b"<end_of_text>"
    assert pieces[1:-1] == [(b"a", True), (b"red", True), (b"car", True), (b"on", True),
                            (b"the", True), (b"grass", True)]


def _elementwise(f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(2.0 * f @ g.t(), dim=-1)
    w = p / p.mean(dim=-1, keepdim=True)
    m = f[:, None, :] * g[None, :, :] * w[:, :, None]
    return (m - m.mean(dim=1, keepdim=True)).sum(dim=-1)


@pytest.mark.parametrize("caption", ["a red car on the grass", "Watermelons, naïve café!"])
def test_scores_equal_an_independent_computation(caption):
    model = tiny_vit()
    images = images_for(model, b=3)
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    exp = explain_text_tokens(clf, images, caption)
    ids = open_clip.tokenize([caption], model.context_length)
    eot = int(ids.argmax(dim=-1))
    with torch.no_grad():
        f = F.normalize(model.encode_image(images), dim=-1)
        g = F.normalize(_all_token_features(model, ids)[0], dim=-1)
        r = F.normalize(model.encode_text(open_clip.tokenize([""], model.context_length)), dim=-1)
    assert exp.token_ids == ids[0, 1:eot].tolist()
    assert exp.token_scores.shape == (3, eot - 1) and exp.token_scores.dtype == torch.float32
    torch.testing.assert_close(exp.token_scores, _elementwise(f, g[1:eot]), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(exp.token_scores.sum(dim=-1), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(exp.caption_score, f @ g[eot], atol=1e-5, rtol=1e-4)
    raw = explain_text_tokens(clf, images, caption, feature_surgery="none")
    torch.testing.assert_close(raw.token_scores, f @ g[1:eot].t(), atol=1e-5, rtol=1e-4)
    empty = explain_text_tokens(clf, images, caption, feature_surgery="empty")
    torch.testing.assert_close(empty.token_scores, f @ (g[1:eot] - r).t(), atol=1e-5, rtol=1e-4)


def test_words_align_with_the_caption():
    model = tiny_vit()
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    images = images_for(model, b=2)
    caption = "two watermelons and a captum surgery"
    exp = explain_text_tokens(clf, images, caption)
    assert exp.words == caption.split()
    assert len(exp.tokens) == len(exp.token_to_word) == exp.token_scores.shape[1] > len(exp.words)
    assert exp.word_scores.shape == (2, len(exp.words))
    # the pieces of each word spell it, and all pieces decode like open_clip's tokenizer
    for w, word in enumerate(exp.words):
        assert "".join(t for t, o in zip(exp.tokens, exp.token_to_word) if o == w) == word
    assert exp.token_to_word == sorted(exp.token_to_word)
    assert " ".join(exp.words) + " " == open_clip.SimpleTokenizer().decode(exp.token_ids)
    # tokenizer-style words: lower case, punctuation apart, utf-8 characters intact
    other = explain_text_tokens(clf, images, "Naïve CAFÉ, ok!")
    assert other.words == ["naïve", "café", ",", "ok", "!"]


def test_word_reductions():
    model = tiny_vit()
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    images = images_for(model, b=2)
    caption = "watermelons on a captum table"
    base = explain_text_tokens(clf, images, caption)
    owner = torch.tensor(base.token_to_word)
    for reduction, fn in [("mean", lambda x: x.mean(1)), ("max", lambda x: x.amax(1)),
                          ("sum", lambda x: x.sum(1)), ("last", lambda x: x[:, -1])]:
        exp = explain_text_tokens(clf, images, caption, word_reduction=reduction)
        expected = torch.stack([fn(base.token_scores[:, owner == w]) for w in range(len(base.words))], 1)
        torch.testing.assert_close(exp.word_scores, expected)
        assert exp.word_reduction == reduction


def test_batch_explainer_and_model_inputs_agree(snapshot):
    model = tiny_vit()
    snap = snapshot(model)
    images = images_for(model, b=3, seed=9)
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    caption = "a dog and a cat on the grass"
    batch = explain_text_tokens(clf, images, caption)
    single = torch.cat([explain_text_tokens(clf, images[i : i + 1], caption).token_scores
                        for i in range(3)])
    torch.testing.assert_close(batch.token_scores, single, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(explain_text_tokens(CLIPSurgeryAttribution(clf), images, caption)
                               .token_scores, batch.token_scores)
    torch.testing.assert_close(explain_text_tokens(model, images, caption).token_scores,
                               batch.token_scores)
    snap.assert_unchanged()


def test_plot_text_tokens():
    model = tiny_vit()
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    exp = explain_text_tokens(clf, images_for(model, b=2), "two watermelons on the grass")
    fig = plot_text_tokens(exp, index=1)
    assert isinstance(fig, Figure)
    strip, bars = fig.axes[:2]
    assert [t.get_text() for t in strip.texts] == exp.words
    assert len(bars.patches) == len(exp.words)
    tokens = plot_text_tokens(exp, level="tokens", title="tokens")
    assert [t.get_text() for t in tokens.axes[0].texts] == exp.tokens
    raw = explain_text_tokens(clf, images_for(model, b=1), "a dog", feature_surgery="none")
    assert isinstance(plot_text_tokens(raw), Figure)
    with pytest.raises(ValueError, match="index: expected an image index in \\[0, 1\\], got 2"):
        plot_text_tokens(exp, index=2)
    with pytest.raises(ValueError, match="level: expected 'words' or 'tokens'"):
        plot_text_tokens(exp, level="letters")
    with pytest.raises(TypeError, match="explanation: expected a TextTokenExplanation"):
        plot_text_tokens("a dog")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(caption=["a dog"]), TypeError, "caption: expected a string, got list"),
        (dict(caption=""), ValueError, "caption: '' has no tokens"),
        (dict(caption="dog"), ValueError, "caption: class-set feature surgery over tokens needs"),
        (dict(feature_surgery="auto"), ValueError, "feature_surgery: expected 'classes'"),
        (dict(word_reduction="median"), ValueError, "word_reduction: expected one of"),
        (dict(temperature=-1.0), ValueError, "temperature"),
        (dict(classifier="model"), TypeError, "classifier: expected a CLIPZeroShotClassifier"),
    ],
)
def test_errors_name_the_argument(kwargs, error, match):
    model = tiny_vit()
    args: dict = dict(classifier=CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES),
                      images=images_for(model), caption="a dog on grass")
    args.update(kwargs)
    with pytest.raises(error, match=match):
        explain_text_tokens(**args)


def test_single_token_caption_in_empty_mode():
    model = tiny_vit()
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    exp = explain_text_tokens(clf, images_for(model), "dog", feature_surgery="empty")
    assert isinstance(exp, TextTokenExplanation)
    assert exp.words == ["dog"] and exp.word_scores.shape == (2, 1)


@pytest.fixture(scope="module")
def scenes(scenes_clip: Any) -> Any:
    _, samples, images, clf = scene_batch(scenes_clip, 400, 10)
    return samples, images, clf


def test_scenes_content_words_outscore_function_words(scenes):
    samples, images, clf = scenes
    best_is_content, content, function = 0, [], []
    for i, sample in enumerate(samples):
        exp = explain_text_tokens(clf, images[i : i + 1], sample["caption"])
        names = set(" ".join(sample["objects"] + [sample["background"]]).split())
        assert len(exp.words) >= len(sample["caption"].split())  # punctuation is a word of its own
        best_is_content += exp.words[int(exp.word_scores[0].argmax())] in names
        for word, score in zip(exp.words, exp.word_scores[0].tolist()):
            (content if word in names else function).append(score)
    assert best_is_content >= 6
    assert np.mean(content) > np.mean(function) + 0.1
