r"""Every bad input raises a clear error naming its argument; the model is never changed."""

from __future__ import annotations

import pytest
import torch

from captum_clip_surgery import CLIPSimilarityMap, CLIPSurgeryAttribution, CLIPZeroShotClassifier
from tests.helpers import FEW_TEMPLATES, TEXTS, images_for
from tests.models import tiny_resnet, tiny_vit


def _explainer(model=None):
    model = model if model is not None else tiny_vit()
    return CLIPSurgeryAttribution(model, texts=TEXTS, templates=FEW_TEMPLATES)


BAD_IMAGES = [
    (torch.randn(3, 32, 32), ValueError, "inputs: expected a 4-D tensor"),
    (torch.randn(2, 1, 32, 32), ValueError, "inputs: expected 3 colour channels"),
    (torch.randn(0, 3, 32, 32), ValueError, "inputs: expected at least one image"),
    (torch.randn(1, 3, 4, 32), ValueError, "inputs: spatial size 4x32 is below"),
    (torch.full((1, 3, 32, 32), float("nan")), ValueError, "inputs: images contain NaN"),
    (torch.full((1, 3, 32, 32), float("inf")), ValueError, "inputs: images contain NaN or infinite"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), TypeError, "inputs: expected a floating-point"),
    ([[1.0]], TypeError, "inputs: expected a torch.Tensor"),
    ((torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)), ValueError, "inputs: expected a tensor or a 1-tuple"),
]


@pytest.mark.slow
@pytest.mark.parametrize("images,error,message", BAD_IMAGES)
def test_bad_images(images, error, message, snapshot):
    explainer = _explainer()
    snap = snapshot(explainer.classifier.model)
    with pytest.raises(error, match=message):
        explainer.attribute(images, target=0)
    snap.assert_unchanged()


def test_resnet_minimum_size():
    with pytest.raises(ValueError, match="below the model's minimum 32x32"):
        _explainer(tiny_resnet()).attribute(torch.randn(1, 3, 16, 64), target=0)


def test_bad_images_for_classifier_and_similarity():
    explainer = _explainer()
    with pytest.raises(ValueError, match="images: expected 3 colour channels"):
        explainer.classifier(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="images: images contain NaN"):
        explainer.similarity(torch.full((1, 3, 32, 32), float("nan")))


@pytest.mark.parametrize(
    "target,error,message",
    [
        (4, ValueError, r"target: index 4 out of range for 4 texts \(expected 0..3\)"),
        (-1, ValueError, "target: index -1 out of range"),
        ("horse", ValueError, "target: unknown text 'horse'; known texts: 'dog'"),
        ([0], ValueError, r"target: expected one target per example \(2\), got 1"),
        ([0, "zebra"], ValueError, r"target: unknown text 'zebra' \(example 1\)"),
        (1.5, TypeError, "target: expected an int index or one of the texts"),
        (True, TypeError, "target: expected an int index"),
        (torch.tensor([0.0, 1.0]), TypeError, "target: expected an integer tensor"),
        (torch.tensor([[0, 1]]), ValueError, "target: expected a 0-d tensor or one index per example"),
        (None, ValueError, "target: required when there are 4 texts"),
    ],
)
@pytest.mark.slow
def test_bad_targets(target, error, message, snapshot):
    explainer = _explainer()
    snap = snapshot(explainer.classifier.model)
    with pytest.raises(error, match=message):
        explainer.attribute(torch.randn(2, 3, 32, 32), target=target)
    snap.assert_unchanged()


def test_target_may_be_omitted_with_one_text():
    explainer = CLIPSurgeryAttribution(tiny_vit(), texts=["dog"], templates=FEW_TEMPLATES)
    assert explainer.attribute(torch.randn(2, 3, 32, 32)).shape == (2, 1, 32, 32)


@pytest.mark.parametrize(
    "texts,error,message",
    [
        ([], ValueError, "texts: expected at least one text"),
        ("dog", TypeError, "texts: expected a list of strings, got a single string"),
        (["dog", 3], TypeError, r"texts: expected strings, item 1 is int"),
        (None, ValueError, "texts: required when a model"),
        (5, TypeError, "texts: expected a list of strings, got int"),
    ],
)
def test_bad_texts(texts, error, message):
    with pytest.raises(error, match=message):
        CLIPSurgeryAttribution(tiny_vit(), texts=texts)


def test_bad_texts_per_call_and_templates():
    explainer = _explainer()
    with pytest.raises(ValueError, match="texts: expected at least one text"):
        explainer.attribute(torch.randn(1, 3, 32, 32), target=0, texts=[])
    with pytest.raises(ValueError, match="templates: template 0 .* must hold exactly one"):
        CLIPZeroShotClassifier(tiny_vit(), ["dog"], templates=["no placeholder"])
    with pytest.raises(TypeError, match="tokenizer: expected a callable"):
        CLIPZeroShotClassifier(tiny_vit(), ["dog"], tokenizer="bpe")
    clf = CLIPZeroShotClassifier(tiny_vit(), ["dog"], templates=FEW_TEMPLATES)
    with pytest.raises(ValueError, match="texts: give texts, templates and tokenizer to the"):
        CLIPSurgeryAttribution(clf, texts=["cat"])


@pytest.mark.parametrize(
    "blocks,error,message",
    [
        (0, ValueError, r"surgery_blocks: expected an int in \[1, 7\] \(the image tower has 7 blocks\), got 0"),
        (8, ValueError, r"surgery_blocks: expected an int in \[1, 7\]"),
        (2.0, TypeError, "surgery_blocks: expected an int or None, got float"),
        (True, TypeError, "surgery_blocks: expected an int or None, got bool"),
    ],
)
def test_bad_surgery_blocks(blocks, error, message):
    with pytest.raises(error, match=message):
        CLIPSurgeryAttribution(tiny_vit(), surgery_blocks=blocks, texts=TEXTS)


def test_bad_feature_surgery():
    explainer = _explainer()
    with pytest.raises(ValueError, match="feature_surgery: expected 'auto', 'classes'"):
        explainer.attribute(torch.randn(1, 3, 32, 32), target=0, feature_surgery="bogus")
    with pytest.raises(ValueError, match=r"redundant_features: expected shape \[24\] or \[4, 24\]"):
        explainer.attribute(torch.randn(1, 3, 32, 32), target=0, feature_surgery=torch.zeros(7))


@pytest.mark.slow
@pytest.mark.parametrize("cls", [CLIPSurgeryAttribution, CLIPSimilarityMap])
def test_model_unchanged_after_every_public_call(any_model, cls, snapshot):
    any_model.train()  # the user's mode must survive too
    snap = snapshot(any_model)
    size = 64 if any_model.visual.__class__.__name__ == "ModifiedResNet" else 32
    explainer = cls(any_model, texts=TEXTS, templates=FEW_TEMPLATES)
    images = images_for(any_model, b=2)
    explainer.classifier(images)
    _ = explainer.classifier.text_features
    explainer.similarity(images)
    explainer.attribute(images, target=1)
    explainer.attribute(torch.randn(1, 3, size * 2, size + 8), target="cat", texts=["cat", "sky"])
    grads = images.clone().requires_grad_(True)
    out = explainer.attribute(grads, target=0)
    torch.autograd.grad(out.sum(), grads)
    snap.assert_unchanged()


def _bad_argument_cases():
    import captum_clip_surgery as cs
    from captum_clip_surgery.evaluation import ScenesSegmentation, evaluate, square_preprocess

    model = tiny_vit()
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    explainer = CLIPSurgeryAttribution(clf)
    images = torch.randn(2, 3, 32, 32)
    f = torch.nn.functional.normalize(torch.randn(2, 5, 24), dim=-1)
    e = torch.nn.functional.normalize(torch.randn(3, 24), dim=-1)

    def tokenizer_giving(ids):
        return lambda texts: ids(len(texts))

    def clf_with(tokenizer):
        return CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES, tokenizer=tokenizer)

    scenes = ScenesSegmentation(size=1)
    return [
        (lambda: CLIPZeroShotClassifier(model, TEXTS, truncate_text="yes"), TypeError,
         "truncate_text: expected True or False, got str"),
        (lambda: clf_with(tokenizer_giving(lambda n: torch.zeros(n, 5))).text_features, TypeError,
         r"tokenizer: expected integer token ids.*got torch.float32"),
        (lambda: clf_with(tokenizer_giving(lambda n: torch.ones(1, 5, dtype=torch.long))).text_features,
         ValueError, r"tokenizer: expected one row of token ids per string \(12 rows"),
        (lambda: clf_with(tokenizer_giving(lambda n: torch.ones(n, 99, dtype=torch.long))).text_features,
         ValueError, "tokenizer: expected at most 24 tokens per row"),
        (lambda: clf_with(tokenizer_giving(lambda n: -torch.ones(n, 5, dtype=torch.long))).text_features,
         ValueError, "tokenizer: expected non-negative token ids"),
        (lambda: cs.feature_surgery_scores(f, e, "classes", temperature=0), ValueError,
         "temperature: expected a finite number > 0, got 0"),
        (lambda: cs.feature_surgery_scores(f, e, "classes", temperature="2"), TypeError,
         "temperature: expected a number > 0, got str"),
        (lambda: cs.feature_surgery_scores(f[0], e), ValueError,
         r"image_features: expected a non-empty \[B, N, C\] tensor, got shape \[5, 24\]"),
        (lambda: cs.feature_surgery_scores(f, e[:, :5]), ValueError,
         "text_features: expected 24 channels like image_features"),
        (lambda: cs.feature_surgery_scores(f, e, "bogus"), ValueError, "mode: expected 'classes'"),
        (lambda: cs.feature_surgery_scores(f, e, "redundant", [0.0]), TypeError,
         "redundant_features: expected a Tensor, got list"),
        (lambda: explainer.attribute(images, target=0, upsample_to_input="no"), TypeError,
         "upsample_to_input: expected True or False"),
        (lambda: cs.minmax_normalize(torch.zeros(2, 3, 4)), ValueError,
         r"maps: expected a non-empty \[B, K, h, w\] tensor"),
        (lambda: cs.minmax_normalize([1.0]), TypeError, "maps: expected a Tensor"),
        (lambda: cs.compare(clf, images, 0, methods=["raw"], reduction="mean"), ValueError,
         "reduction: expected one of 'abs_sum'"),
        (lambda: cs.compare(clf, images, 0, methods=["raw"], method_kwargs=[("raw", 1)]), TypeError,
         "method_kwargs: expected a dict from method names to dicts"),
        (lambda: cs.compare(clf, images, 0, methods=[]), ValueError,
         "methods: expected at least one method"),
        (lambda: cs.multilabel_scores(clf, images, temperature=-1), ValueError,
         "temperature: expected a finite number > 0, got -1"),
        (lambda: cs.plot_comparison(images[0], {"a": torch.rand(2, 1, 32, 32)}, alpha=5), ValueError,
         r"alpha: expected a number in \[0, 1\], got 5"),
        (lambda: cs.plot_comparison(images[0], {"a": torch.rand(2, 1, 32, 32)}, index=7), ValueError,
         "index: expected an example index below 2"),
        (lambda: cs.plot_text_grid(images[0], {"a": torch.rand(1, 1, 32, 32)}, ["a", "b"]), ValueError,
         r"maps: expected maps\['a'\] of shape \[2, 1, H, W\]"),
        (lambda: cs.CLIPAttentionRelevance(clf, start_block=7), ValueError,
         r"start_block: expected an int in \[0, 6\], got 7"),
        (lambda: cs.CLIPAttentionRelevance(clf, start_block=1.0), TypeError,
         "start_block: expected an int, got float"),
        (lambda: square_preprocess(0, None, None), ValueError, "size: expected an int >= 1"),
        (lambda: evaluate(["raw"], scenes, clf, batch_size="8"), TypeError,
         "batch_size: expected an int, got str"),
        (lambda: evaluate(["raw"], scenes, clf, tolerance=-1), ValueError,
         "tolerance: expected a finite number >= 0"),
        (lambda: evaluate(["raw"], scenes, clf, deletion_steps=0), ValueError,
         "deletion_steps: expected an int >= 1"),
        (lambda: evaluate(["raw"], scenes, clf, preprocess="square"), TypeError,
         "preprocess: expected a callable"),
    ]


def test_every_bad_argument_is_named(snapshot):
    # each case's message starts with the argument's name and says what was given
    cases = _bad_argument_cases()
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()



def _meta(shape=(1, 3, 32, 32)):
    return torch.empty(*shape, device="meta")


def _sparse(shape=(1, 3, 32, 32)):
    return torch.randn(*shape).to_sparse()


def _entry_points(explainer):
    r"""Every public function images enter by (issue 18, item 14), as ``(argument name,
    call)``; ``maps`` of the deletion metric too."""
    from captum_clip_surgery import (
        CheferAttribution,
        compare,
        explain_text_tokens,
        multilabel_scores,
        segment,
        text_to_points,
    )
    from captum_clip_surgery.evaluation.faithfulness import (
        deletion_insertion,
        infidelity_score,
        sensitivity_score,
    )

    clf = explainer.classifier
    maps, images = torch.rand(1, 1, 32, 32), torch.randn(1, 3, 32, 32)
    return [
        ("inputs", lambda make: explainer.attribute(make(), target=0)),
        ("inputs", lambda make: CheferAttribution(clf).attribute(make(), target=0)),
        ("images", lambda make: explainer.similarity(make())),
        ("images", lambda make: clf(make())),
        ("images", lambda make: compare(clf, make(), 0, methods=["surgery", "saliency"])),
        ("images", lambda make: segment(explainer, make())),
        ("images", lambda make: multilabel_scores(clf, make())),
        ("images", lambda make: text_to_points(explainer, make(), ["dog"])),
        ("images", lambda make: explain_text_tokens(clf, make(), "a red car")),
        ("images", lambda make: deletion_insertion(clf, make(), maps, 0)),
        ("maps", lambda make: deletion_insertion(clf, images, make((1, 1, 32, 32)), 0)),
        ("images", lambda make: infidelity_score(explainer.attribute, clf, make(), 0)),
        ("images", lambda make: sensitivity_score(explainer.attribute, make(), 0)),
    ]


@pytest.mark.parametrize("make,message", [
    (_meta, "expected a tensor holding data, got a meta tensor"),
    (_sparse, "expected a dense \\(strided\\) tensor, got layout torch.sparse_coo"),
])
def test_meta_and_sparse_images_are_refused_where_images_enter(make, message, snapshot):
    explainer = _explainer()
    snap = snapshot(explainer.classifier.model)
    for name, call in _entry_points(explainer):
        with pytest.raises(TypeError, match=f"^{name}: {message}"):
            call(make)
    snap.assert_unchanged()
