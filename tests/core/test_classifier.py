r"""The zero-shot classifier and the text side."""

from __future__ import annotations

import open_clip
import torch
import torch.nn.functional as F

from captum_clip_surgery import DEFAULT_TEMPLATES, SCENE_TEMPLATES, CLIPZeroShotClassifier
from tests import reference as ref
from tests.helpers import FEW_TEMPLATES, TEXTS, images_for, run_threads
from tests.models import tiny_vit


def test_logits_are_the_unmodified_models(any_model):
    clf = CLIPZeroShotClassifier(any_model, TEXTS, templates=FEW_TEMPLATES)
    images = images_for(any_model, b=3)
    with torch.no_grad():
        img = F.normalize(any_model.encode_image(images), dim=-1)
        txt = ref.text_features(any_model, TEXTS, FEW_TEMPLATES)
        expected = any_model.logit_scale.exp() * img @ txt.t()
    torch.testing.assert_close(clf(images), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(clf.text_features, txt, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(clf.text_features.norm(dim=-1), torch.ones(len(TEXTS)))


def test_default_templates_are_the_releases_85():
    assert len(DEFAULT_TEMPLATES) == 85
    assert len(set(DEFAULT_TEMPLATES)) == 85
    assert DEFAULT_TEMPLATES[-5:] == SCENE_TEMPLATES
    assert "a photo of a {}." in DEFAULT_TEMPLATES
    assert all(t.count("{}") == 1 for t in DEFAULT_TEMPLATES)


def test_default_prompt_ensemble_matches_reference():
    model = tiny_vit()
    clf = CLIPZeroShotClassifier(model, ["dog", "cat"])
    with torch.no_grad():
        expected = ref.text_features(model, ["dog", "cat"], list(DEFAULT_TEMPLATES))
    torch.testing.assert_close(clf.text_features, expected, atol=1e-5, rtol=1e-5)


def test_text_cache_encodes_each_text_once():
    model = tiny_vit()
    seen = []

    def tok(texts):
        seen.extend(texts)
        return open_clip.tokenize(texts, model.context_length)

    clf = CLIPZeroShotClassifier(model, ["dog", "cat"], templates=FEW_TEMPLATES, tokenizer=tok)
    _ = clf.text_features
    _ = clf.text_features
    clf.encode_texts(["cat", "tree"])
    assert len(seen) == 3 * len(FEW_TEMPLATES)
    assert len(clf.text_cache) == 3


def test_classifier_does_not_own_the_model():
    model = tiny_vit()
    clf = CLIPZeroShotClassifier(model, ["dog"], templates=FEW_TEMPLATES)
    assert len(list(clf.parameters())) == 0
    clf.train()
    assert not model.training
    clf.to(torch.float64)
    assert model.visual.conv1.weight.dtype == torch.float32


def test_train_mode_model_is_explained_with_inference_behaviour(snapshot):
    model = tiny_vit(patch_dropout=0.5).train()
    snap = snapshot(model)
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    images = images_for(model)
    a, b = clf(images), clf(images)
    torch.testing.assert_close(a, b)  # no dropout: deterministic
    snap.assert_unchanged()
    assert model.training



def test_gradcam_from_several_threads_at_once(snapshot, tmp_path):
    r"""Issue 18, item 16: Captum's hooks sit on the classifier's shared grid layer; calls
    of several threads (and other methods' forwards through the same layer) must neither
    fail nor see each other's tensors."""
    from captum.attr import LayerGradCam
    from PIL import Image

    from captum_clip_surgery import build_method, compare, explain_images

    model = tiny_vit()
    snap = snapshot(model)
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    images = [images_for(model, b=2, seed=s) for s in range(4)]
    shared = LayerGradCam(clf, clf.gradcam_layer(-1))  # one Captum object for every thread
    expected = [shared.attribute(x, target=[1, 3]) for x in images]
    expected_compare = [compare(clf, x, "grass", methods=["gradcam", "saliency"]) for x in images]
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (40 + 8 * i, 32), color=(60 * i, 90, 200)).save(folder / f"{i}.png")
    expected_folder = dict(explain_images(str(folder), clf, method="gradcam", texts=["cat"]))

    def work(i):
        for r in range(3):
            k = (i + r) % len(images)
            torch.testing.assert_close(shared.attribute(images[k], target=[1, 3]), expected[k],
                                       rtol=0, atol=1e-6)
            own = build_method("gradcam", clf).attribute(images[k], target=[1, 3])
            torch.testing.assert_close(own, expected[k], rtol=0, atol=1e-6)
            got = compare(clf, images[k], "grass", methods=["gradcam", "saliency"])
            for name, m in got.items():
                torch.testing.assert_close(m, expected_compare[k][name], rtol=0, atol=1e-6)
            if r == 0:
                for path, maps in explain_images(str(folder), clf, method="gradcam",
                                                 texts=["cat"]):
                    torch.testing.assert_close(maps, expected_folder[path], rtol=0, atol=1e-6)

    errors = run_threads(4, work)
    assert not errors, repr(errors[0])
    assert all(not layer._forward_hooks and not layer._forward_pre_hooks
               for layer in clf.grid_layers)  # every Captum hook removed again
    snap.assert_unchanged()
