r"""LeGrad equals separate per-layer gradients of a plain forward; each layer's score
reaches only its own attention (finite differences); batching and no_grad callers."""

from __future__ import annotations

import pytest
import torch

from captum_clip_surgery import CLIPZeroShotClassifier, LeGradAttribution
from tests import reference as ref
from tests.helpers import FEW_TEMPLATES, TEXTS, images_for
from tests.models import tiny_resnet, tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("block_type", ["default", "custom"])
@pytest.mark.parametrize("size", [(32, 32), (40, 24)], ids=["native", "non-native"])
@pytest.mark.parametrize("layers", [2, 4])
def test_legrad_matches_separate_gradients_per_layer(block_type, size, layers, snapshot):
    model = tiny_vit(block_type)
    snap = snapshot(model)
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    explainer = LeGradAttribution(clf, layers=layers)
    images = images_for(model, b=3, h=size[0], w=size[1])
    targets = [0, 2, 3]
    got = explainer.relevance(images, target=targets)
    assert got.shape == (3, 1, size[0] // 8, size[1] // 8)
    e = clf.text_features
    for i, t in enumerate(targets):
        expected = ref.legrad_map(model, images[i : i + 1], e[t], layers)
        torch.testing.assert_close(got[i, 0], expected, atol=1e-7, rtol=1e-4)
    snap.assert_unchanged()


def test_each_layer_score_reaches_only_its_own_attention():
    # float64 model: G^ℓ from the package equals the finite difference of s^ℓ alone when
    # block ℓ's attention entry moves, and differs from the gradient of s^ℓ + s^ℓ+1 (which
    # would also reach block ℓ through the later layer)
    model = tiny_vit().double()
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    explainer = LeGradAttribution(clf, layers=2)
    image = images_for(model, b=1).double()
    t = clf.text_features[1].double()
    grads, grid, first = explainer.layer_gradients(image, target=1)
    assert len(grads) == 2 and grid == (4, 4) and first == 1
    depth = len(model.visual.transformer.resblocks)
    entries = [(0, 0, 3), (1, 5, 9), (1, 16, 0), (0, 7, 12)]
    for n, layer in enumerate((depth - 2, depth - 1)):
        for h, i, j in entries:
            eps = 1e-6
            delta = torch.zeros(1, 3, 17, 17, dtype=torch.float64)
            delta[0, h, i, j] = eps
            with torch.no_grad():
                up, _, _ = ref.legrad_scores(model, image, t, 2, {layer: delta})
                down, _, _ = ref.legrad_scores(model, image, t, 2, {layer: -delta})
            fd = (up[n] - down[n]) / (2 * eps)
            assert float(grads[n][0, h, i, j]) == pytest.approx(float(fd), rel=1e-5, abs=1e-9)
    scores, attentions, _ = ref.legrad_scores(model, image, t, 2)
    (mixed,) = torch.autograd.grad(scores[0] + scores[1], attentions[0])
    assert (mixed[0].float() - grads[0][0]).abs().max() > 1e-4


def test_legrad_batch_equals_single_images_and_grid_output():
    model = tiny_vit()
    explainer = LeGradAttribution(CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES))
    images = images_for(model, b=3, seed=7)
    batch = explainer.attribute(images, target=[1, 1, 3])
    single = torch.cat([explainer.attribute(images[i : i + 1], target=t)
                        for i, t in enumerate([1, 1, 3])])
    torch.testing.assert_close(batch, single, atol=1e-6, rtol=1e-5)
    assert batch.shape == (3, 1, 32, 32) and batch.min() >= 0 and batch.max() <= 1
    grid = explainer.attribute(images, target=1, upsample_to_input=False)
    assert grid.shape == (3, 1, 4, 4)
    for m in grid:
        assert m.min() == 0 and m.max() == pytest.approx(1.0)


def test_legrad_under_no_grad_and_target_forms():
    model = tiny_vit()
    explainer = LeGradAttribution(CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES))
    images = images_for(model, b=2)
    a = explainer.attribute(images, target=1)
    with torch.no_grad():
        torch.testing.assert_close(explainer.attribute(images, target="cat"), a)
    with torch.inference_mode():
        torch.testing.assert_close(explainer.attribute((images,), target=torch.tensor([1, 1]))[0], a)


def test_legrad_errors():
    clf = CLIPZeroShotClassifier(tiny_vit(), TEXTS, templates=FEW_TEMPLATES)
    with pytest.raises(ValueError, match=r"layers: expected an int in \[1, 7\]"):
        LeGradAttribution(clf, layers=0)
    with pytest.raises(TypeError, match="layers: expected an int"):
        LeGradAttribution(clf, layers="2")
    with pytest.raises(ValueError, match="texts: required when a model"):
        LeGradAttribution(tiny_vit())
    with pytest.raises(TypeError, match="forward_func: LeGrad .* no attention blocks"):
        LeGradAttribution(CLIPZeroShotClassifier(tiny_resnet(), TEXTS, templates=FEW_TEMPLATES))


@pytest.mark.parametrize("name", ["LeGradAttribution", "GradECLIPAttribution",
                                  "CLIPAttentionRelevance"])
def test_gradient_maps_take_a_bare_model_like_a_classifier(name):
    import captum_clip_surgery as cs

    cls = getattr(cs, name)
    model = tiny_vit()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    from_clf = cls(clf).attribute(images, target=[0, 2])
    from_model = cls(model, texts=TEXTS, templates=FEW_TEMPLATES).attribute(images, target=[0, 2])
    torch.testing.assert_close(from_model, from_clf)


@pytest.mark.parametrize("make", ["vit", "siglip"])
def test_every_text_from_one_forward_equals_one_target_at_a_time(make, snapshot):
    r"""``relevance_per_text``: one forward, one batched backward for all texts, the same
    maps as one call per target (class-token head and a SigLIP MAP head)."""
    if make == "vit":
        model = tiny_vit()
    else:
        from tests.adapters.timm_models import tiny_timm_clip

        model = tiny_timm_clip("siglip")
    snap = snapshot(model)
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    explainer = LeGradAttribution(clf)
    images = images_for(model, b=2, h=40, w=56, seed=4)
    every = explainer.relevance_per_text(images)
    assert every.shape == (2, len(TEXTS), 5, 7)
    maps = explainer.attribute_per_text(images, texts=["cat", "a red car"])
    for t in range(len(TEXTS)):
        torch.testing.assert_close(every[:, t : t + 1], explainer.relevance(images, target=t),
                                   atol=1e-7, rtol=1e-5)
    for j, text in enumerate(["cat", "a red car"]):
        torch.testing.assert_close(
            maps[:, j : j + 1], explainer.attribute(images, target=text), atol=1e-6, rtol=1e-5)
    snap.assert_unchanged()


def test_default_per_text_path_of_a_relevance_method():
    from captum_clip_surgery import CheferAttribution

    clf = CLIPZeroShotClassifier(tiny_vit(), TEXTS, templates=FEW_TEMPLATES)
    explainer = CheferAttribution(clf)
    images = images_for(clf.model, b=2, seed=2)
    maps = explainer.attribute_per_text(images, upsample_to_input=False)
    assert maps.shape == (2, len(TEXTS), 4, 4)
    for t in range(len(TEXTS)):
        torch.testing.assert_close(
            maps[:, t : t + 1], explainer.attribute(images, target=t, upsample_to_input=False),
            atol=0, rtol=0)
