r"""CLIP Surgery against the plain reference, batching, gradients, model safety."""

from __future__ import annotations

import pytest
import torch

from captum_clip_surgery import (
    CLIPSimilarityMap,
    CLIPSurgeryAttribution,
    CLIPZeroShotClassifier,
)
from tests import reference as ref
from tests.helpers import FEW_TEMPLATES, TEXTS, images_for, native_size
from tests.models import tiny_resnet, tiny_vit


def _stride(model):
    return 32 if model.visual.__class__.__name__ == "ModifiedResNet" else 8


def _reference_tokens(model, images, surgery_blocks):
    # any image size: the input is padded with zeros (bottom / right) to a multiple of the stride
    images = ref.pad(images, _stride(model))
    if model.visual.__class__.__name__ == "ModifiedResNet":
        return ref.resnet_tokens(model, images, surgery_blocks != 0)
    return ref.vit_tokens(model, images, surgery_blocks)


def _grid(model, images):
    stride = _stride(model)
    return -(-images.shape[-2] // stride), -(-images.shape[-1] // stride)


@pytest.mark.parametrize("scale", [(1, 1), (1.5, 1.5), (1, 1.75), (1.1, 1.3)],
                         ids=["native", "larger", "nonsquare", "nonmultiple"])
@pytest.mark.parametrize("mode", ["classes", "empty", "none"])
def test_matches_plain_reference(any_model, scale, mode):
    model = any_model
    s = native_size(model)
    images = images_for(model, b=3, h=int(s * scale[0]), w=int(s * scale[1]))
    blocks = 3 if model.visual.__class__.__name__ != "ModifiedResNet" else None
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    explainer = CLIPSurgeryAttribution(clf, surgery_blocks=blocks)

    with torch.no_grad():
        f = torch.nn.functional.normalize(_reference_tokens(model, images, blocks), dim=-1)
        e = ref.text_features(model, TEXTS, FEW_TEMPLATES)
        r = ref.text_features(model, [""], FEW_TEMPLATES)[0]
        scores = ref.feature_surgery(f, e, "redundant" if mode == "empty" else mode, r)
        grid = _grid(model, images)
        expected_maps = ref.maps(scores, grid, tuple(images.shape[-2:]), _stride(model))

    sim = explainer.similarity(images, feature_surgery=mode)
    expected_sim = scores[:, 1:, :].permute(0, 2, 1).reshape(sim.shape)
    torch.testing.assert_close(sim, expected_sim, atol=2e-5, rtol=1e-4)
    # the map pipeline (min-max per map, bilinear up) is exact on our own scores ...
    b, t_count = sim.shape[:2]
    own_scores = torch.cat([torch.zeros(b, 1, t_count), sim.flatten(2).transpose(1, 2)], dim=1)
    own_maps = ref.maps(own_scores, grid, tuple(images.shape[-2:]), _stride(model))
    for t in range(len(TEXTS)):
        got = explainer.attribute(images, target=t, feature_surgery=mode)
        torch.testing.assert_close(got[:, 0], own_maps[:, t], atol=1e-5, rtol=1e-5)
        # ... and close to the reference's maps (min-max amplifies float noise on tiny grids)
        torch.testing.assert_close(got[:, 0], expected_maps[:, t], atol=2e-3, rtol=0)


def test_auto_mode_picks_classes_or_empty():
    model = tiny_vit()
    images = images_for(model)
    many = CLIPSurgeryAttribution(model, texts=TEXTS, templates=FEW_TEMPLATES)
    torch.testing.assert_close(many.similarity(images), many.similarity(images, feature_surgery="classes"))
    one = CLIPSurgeryAttribution(model, texts=["dog"], templates=FEW_TEMPLATES)
    torch.testing.assert_close(one.similarity(images), one.similarity(images, feature_surgery="empty"))
    # a user tensor of redundant features equals the empty-string mode when it is that embedding
    empty = one.classifier.empty_text_features()
    torch.testing.assert_close(
        one.similarity(images, feature_surgery=empty), one.similarity(images, feature_surgery="empty")
    )


def test_class_token_is_the_unmodified_embedding(any_model):
    images = images_for(any_model, b=2)
    # a ResNet's mean token follows the release (v-v) unless query_token="model" is asked for
    explainer = CLIPSurgeryAttribution(
        any_model, texts=TEXTS, templates=FEW_TEMPLATES, query_token="model"
    )
    with torch.no_grad():
        tokens, _ = explainer.token_features(images)
        torch.testing.assert_close(tokens[:, 0], any_model.encode_image(images), atol=1e-5, rtol=1e-5)


def test_resnet_query_token_rules_match_the_reference():
    model = tiny_resnet()
    images = images_for(model, b=2)
    for rule in ("release", "model"):
        explainer = CLIPSurgeryAttribution(model, texts=TEXTS, templates=FEW_TEMPLATES,
                                           query_token=rule)
        with torch.no_grad():
            tokens, _ = explainer.token_features(images)
            expected = ref.resnet_tokens(model, images, True, query_token=rule)
        torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="query_token: expected one of 'release', 'model'"):
        CLIPSurgeryAttribution(model, texts=TEXTS, query_token="mean")
    with pytest.raises(ValueError, match="surgery_blocks: this image tower has no attention blocks"):
        CLIPSurgeryAttribution(model, texts=TEXTS, surgery_blocks=99)


def test_raw_map_matches_reference(any_model):
    model = any_model
    images = images_for(model, b=2)
    raw = CLIPSimilarityMap(model, texts=TEXTS, templates=FEW_TEMPLATES)
    with torch.no_grad():
        f = torch.nn.functional.normalize(_reference_tokens(model, images, 0), dim=-1)
        e = ref.text_features(model, TEXTS, FEW_TEMPLATES)
        expected = ref.maps(ref.feature_surgery(f, e, "none"), _grid(model, images), (images.shape[-2], images.shape[-1]), _stride(model))
    torch.testing.assert_close(raw.attribute(images, target=2)[:, 0], expected[:, 2], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", ["classes", "empty"])
def test_batch_equals_per_image_calls(any_model, mode):
    images = images_for(any_model, b=4, seed=3)
    explainer = CLIPSurgeryAttribution(any_model, texts=TEXTS, templates=FEW_TEMPLATES)
    targets = [0, 3, 1, 2]
    batch = explainer.attribute(images, target=targets, feature_surgery=mode)
    single = torch.cat(
        [explainer.attribute(images[i : i + 1], target=t, feature_surgery=mode) for i, t in enumerate(targets)]
    )
    # scores before normalisation agree to float precision; maps up to min-max amplification
    # of batched-kernel rounding on tiny grids
    sim = explainer.similarity(images, feature_surgery=mode)
    sim_single = torch.cat([explainer.similarity(images[i : i + 1], feature_surgery=mode) for i in range(4)])
    torch.testing.assert_close(sim, sim_single, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch, single, atol=1e-3, rtol=0)


def test_target_forms_agree():
    model = tiny_vit()
    images = images_for(model, b=2)
    explainer = CLIPSurgeryAttribution(model, texts=TEXTS, templates=FEW_TEMPLATES)
    by_index = explainer.attribute(images, target=1)
    for form in ("cat", [1, 1], ["cat", "cat"], torch.tensor(1), torch.tensor([1, 1])):
        torch.testing.assert_close(explainer.attribute(images, target=form), by_index)
    as_tuple = explainer.attribute((images,), target=1)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
    torch.testing.assert_close(as_tuple[0], by_index)


def test_texts_per_call_use_cache_and_match_new_classifier():
    model = tiny_vit()
    images = images_for(model)
    calls = []

    def counting_tokenizer(texts):
        calls.append(len(texts))
        import open_clip

        return open_clip.tokenize(texts, model.context_length)

    explainer = CLIPSurgeryAttribution(model, texts=TEXTS, templates=FEW_TEMPLATES, tokenizer=counting_tokenizer)
    other = ["tree", "sky"]
    first = explainer.attribute(images, target="sky", texts=other)
    n_calls = len(calls)
    again = explainer.attribute(images, target="sky", texts=other)
    assert len(calls) == n_calls, "per-call texts were re-encoded"
    torch.testing.assert_close(first, again)
    fresh = CLIPSurgeryAttribution(model, texts=other, templates=FEW_TEMPLATES)
    torch.testing.assert_close(first, fresh.attribute(images, target=1), atol=1e-6, rtol=1e-5)


def test_maps_in_unit_range_and_grid_option(any_model):
    images = images_for(any_model, b=2)
    explainer = CLIPSurgeryAttribution(any_model, texts=TEXTS, templates=FEW_TEMPLATES)
    maps = explainer.attribute(images, target=0)
    assert maps.shape == (2, 1, images.shape[-2], images.shape[-1])
    assert maps.min() >= 0 and maps.max() <= 1
    grid = explainer.attribute(images, target=0, upsample_to_input=False)
    assert grid.shape[:2] == (2, 1)
    flat = grid.flatten(1)
    torch.testing.assert_close(flat.min(dim=1).values, torch.zeros(2))
    torch.testing.assert_close(flat.max(dim=1).values, torch.ones(2))


def test_gradients_flow_to_inputs():
    model = tiny_vit()
    images = images_for(model).requires_grad_(True)
    explainer = CLIPSurgeryAttribution(model, texts=TEXTS, templates=FEW_TEMPLATES)
    maps = explainer.attribute(images, target=0)
    assert maps.requires_grad
    (grad,) = torch.autograd.grad(maps[:, :, :8, :8].sum(), images)
    assert grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_no_grad_and_inference_mode():
    model = tiny_vit()
    images = images_for(model)
    explainer = CLIPSurgeryAttribution(model, texts=TEXTS, templates=FEW_TEMPLATES)
    expected = explainer.attribute(images, target=2)
    with torch.no_grad():
        torch.testing.assert_close(explainer.attribute(images, target=2), expected)
    with torch.inference_mode():
        torch.testing.assert_close(explainer.attribute(images.clone(), target=2), expected)


def test_surgery_blocks_changes_the_map():
    model = tiny_vit()
    images = images_for(model)
    a = CLIPSurgeryAttribution(model, surgery_blocks=1, texts=TEXTS, templates=FEW_TEMPLATES)
    b = CLIPSurgeryAttribution(model, surgery_blocks=7, texts=TEXTS, templates=FEW_TEMPLATES)
    assert not torch.allclose(a.similarity(images), b.similarity(images))


def test_layer_scale_and_custom_attention_options_follow_the_reference():
    model = tiny_vit(ls_init_value=0.5)
    images = images_for(model)
    explainer = CLIPSurgeryAttribution(model, surgery_blocks=2, texts=TEXTS, templates=FEW_TEMPLATES)
    with torch.no_grad():
        expected = ref.vit_tokens(model, images, 2)
        got, _ = explainer.token_features(images)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # open_clip's custom block with head scaling / inner norm / scaled cosine still runs and
    # keeps the class token exact
    fancy = tiny_vit("custom", scale_heads=True, scale_attn_inner=True, scale_attn=True, qk_norm=True)
    explainer = CLIPSurgeryAttribution(fancy, surgery_blocks=2, texts=TEXTS, templates=FEW_TEMPLATES)
    with torch.no_grad():
        tokens, _ = explainer.token_features(images)
        torch.testing.assert_close(tokens[:, 0], fancy.encode_image(images), atol=1e-5, rtol=1e-5)


def test_resnet_other_resolution_does_not_touch_pool_embedding():
    model = tiny_resnet()
    before = model.visual.attnpool.positional_embedding.detach().clone()
    explainer = CLIPSurgeryAttribution(model, texts=TEXTS, templates=FEW_TEMPLATES)
    a = explainer.attribute(images_for(model, h=128, w=96), target=0)
    assert a.shape == (2, 1, 128, 96)
    assert torch.equal(model.visual.attnpool.positional_embedding, before)
    native = images_for(model)
    # the native resolution afterwards equals a fresh model's result (no state carried over)
    fresh = CLIPSurgeryAttribution(tiny_resnet(), texts=TEXTS, templates=FEW_TEMPLATES)
    torch.testing.assert_close(explainer.attribute(native, target=0), fresh.attribute(native, target=0))
