r"""The Quantus bridge: Quantus' ``explain_func`` contract for every method, the model
wrapper Quantus sees, and the metrics run through Quantus itself on a tiny model."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from captum_clip_surgery import CLIPZeroShotClassifier, compare, register_method
from captum_clip_surgery.evaluation.quantus_bridge import (
    QUANTUS_METRICS,
    QuantusCLIPModel,
    _pixel_imputation,
    quantus_evaluate,
    quantus_explain_func,
)
from captum_clip_surgery.methods.registry import unregister_method
from tests.evaluation.test_sanity import FixedPatternAttribution
from tests.helpers import FEW_TEMPLATES, TEXTS, ModelSnapshot, images_for
from tests.models import tiny_vit

quantus = pytest.importorskip("quantus")


@pytest.fixture
def fixed_method():
    register_method("fixed_test", FixedPatternAttribution, title="Fixed pattern")
    try:
        yield "fixed_test"
    finally:
        unregister_method("fixed_test")


def _classifier(layers: int = 3) -> CLIPZeroShotClassifier:
    return CLIPZeroShotClassifier(tiny_vit(layers=layers), TEXTS, templates=FEW_TEMPLATES)


@pytest.mark.parametrize("method", ["surgery", "gradcam", "chefer", "fixed_test"])
def test_explain_func_contract_equals_compare(method, fixed_method):
    clf = _classifier()
    snap = ModelSnapshot(clf.model)
    x = images_for(clf.model, 3, seed=1)
    y = np.array([0, 3, 1])
    a = quantus_explain_func(QuantusCLIPModel(clf), x.numpy(), y, method=method, device="cpu")
    assert isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == (3, 1, 32, 32)
    expected = compare(clf, x, y.tolist(), methods=[method])[method]
    np.testing.assert_array_equal(a, expected.numpy())
    # a tensor in, the classifier itself as the model, a target list: the same maps
    b = quantus_explain_func(clf, x, [0, 3, 1], method=method)
    np.testing.assert_array_equal(a, b)
    snap.assert_unchanged()


def test_explain_func_passes_method_kwargs_and_seeds():
    clf = _classifier()
    x = images_for(clf.model, 2).numpy()
    a = quantus_explain_func(clf, x, np.array([1, 2]), method="surgery",
                             method_kwargs={"feature_surgery": "none"})
    none = compare(clf, torch.from_numpy(x), [1, 2], methods={"s": "surgery"},
                   method_kwargs={"s": {"feature_surgery": "none"}})["s"]
    np.testing.assert_array_equal(a, none.numpy())
    state = torch.random.get_rng_state()
    kwargs = dict(method="smoothgrad", method_kwargs={"nt_samples": 2}, seed=5)
    first = quantus_explain_func(clf, x, np.array([1, 2]), **kwargs)
    np.testing.assert_array_equal(first, quantus_explain_func(clf, x, np.array([1, 2]), **kwargs))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_explain_func_errors():
    clf = _classifier()
    x = images_for(clf.model, 1).numpy()
    with pytest.raises(TypeError, match="^model: expected a QuantusCLIPModel"):
        quantus_explain_func(clf.model, x, np.array([0]))
    with pytest.raises(ValueError, match="^methods: unknown method 'nope'"):
        quantus_explain_func(clf, x, np.array([0]), method="nope")
    with pytest.raises(ValueError, match=r"^inputs: expected channels-first images \[B, 3, H, W\]"):
        quantus_explain_func(clf, x.transpose(0, 2, 3, 1), np.array([0]))
    with pytest.raises(TypeError, match="^inputs: expected a NumPy array or a tensor"):
        quantus_explain_func(clf, x.tolist(), np.array([0]))
    with pytest.raises(ValueError, match="^target"):
        quantus_explain_func(clf, x, np.array([7]))


def test_wrapper_is_the_classifier_and_only_copies_are_randomised():
    clf = _classifier()
    snap = ModelSnapshot(clf.model)
    wrapped = QuantusCLIPModel(clf)
    x = images_for(clf.model, 2)
    assert isinstance(wrapped, torch.nn.Module) and not wrapped.training
    torch.testing.assert_close(wrapped(x), clf(x), rtol=0, atol=0)
    # Quantus' view: its layers are the image tower's blocks, nothing of the CLIP model
    layers = [n for n, m in wrapped.named_modules() if hasattr(m, "reset_parameters")]
    assert layers == ["blocks.0", "blocks.1", "blocks.2"]
    assert list(wrapped.parameters()) == []
    assert wrapped.state_dict().keys() == clf.model.state_dict().keys()
    # Quantus' model wrapper takes it for a torch model, channels first, logits
    interface = quantus.helpers.utils.get_wrapped_model(wrapped, channel_first=True, softmax=False)
    np.testing.assert_allclose(interface.predict(x.numpy()), clf(x).detach().numpy(), rtol=1e-6)
    probs = quantus.helpers.utils.get_wrapped_model(wrapped, channel_first=True, softmax=True)
    np.testing.assert_allclose(probs.predict(x.numpy()), clf(x).softmax(-1).detach().numpy(), rtol=1e-5)
    with pytest.raises(RuntimeError, match="^reset_parameters: this would re-initialise a block"):
        wrapped.blocks[2].reset_parameters()
    # Quantus randomises a deep copy (cascading from the last block): the copy's logits
    # change, the user's model does not; "independent" restores the copy between layers
    names = []
    for name, randomised in interface.get_random_layer_generator(order="top_down", seed=42):
        names.append(name)
        assert randomised.classifier.model is not clf.model
        assert not torch.allclose(randomised(x), clf(x))
    assert names == ["blocks.2", "blocks.1", "blocks.0"]
    changed = []
    for _, randomised in interface.get_random_layer_generator(order="independent", seed=42):
        trained = clf.model.state_dict()
        changed.append(sorted({k.split(".")[3] for k, v in randomised.state_dict().items()
                               if not torch.equal(v, trained[k])}))
    assert changed == [["0"], ["1"], ["2"]]
    snap.assert_unchanged()
    copied = copy.deepcopy(wrapped)
    copied.blocks[0].reset_parameters()  # a copy may be randomised
    snap.assert_unchanged()


def test_pixel_imputation_imputes_whole_pixels():
    rng = np.random.default_rng(0)
    arr = rng.random((3, 6, 5))
    pixels = 30
    # indices over channels x pixels: pixel 7 (channel 0), 7 again (channel 2), 12 (channel 1)
    out = _pixel_imputation(arr, np.array([7, 2 * pixels + 7, pixels + 12]), noise=0.0)
    changed = np.nonzero(np.any(out.reshape(3, -1) != arr.reshape(3, -1), axis=0))[0]
    assert changed.tolist() == [7, 12]
    flat = out.reshape(3, -1)
    # the imputed values are the weighted means of their neighbours (the linear system)
    assert np.all(flat[:, 7] != arr.reshape(3, -1)[:, 7])


@pytest.mark.slow
def test_quantus_evaluate_every_metric_on_a_tiny_model(fixed_method, tmp_path):
    clf = _classifier()
    snap = ModelSnapshot(clf.model)
    x = images_for(clf.model, 3, seed=2)
    masks = torch.zeros(3, 1, 32, 32, dtype=torch.bool)
    masks[0, :, :16, :16] = masks[1, :, 8:24, 8:24] = masks[2, :, 16:, :] = True
    methods = ["surgery", "gradcam", fixed_method]
    state = np.random.get_state()
    result = quantus_evaluate(clf, x, [0, 1, 2], masks, methods=methods)
    assert np.array_equal(np.random.get_state()[1], state[1])  # the user's generator restored
    snap.assert_unchanged()
    assert result.methods == methods and result.metrics == [k for k, _, _ in QUANTUS_METRICS]
    for method in methods:
        for metric in result.metrics:
            values = result.scores[method][metric]
            assert values.shape == ((5,) if metric == "road" else (3,)), (method, metric)
    summary = result.summary()
    # the fixed map ignores the weights: its randomised map is the trained one
    assert summary[fixed_method]["mprt"] == pytest.approx(1.0)
    assert summary["surgery"]["mprt"] < 0.99
    # ... and ignores the class: Random Logit (SSIM with another class's map) is 1
    assert summary[fixed_method]["random_logit"] == pytest.approx(1.0)
    # localisation by hand for the fixed pattern: its maximum (value 6 of (x + 2y) % 7)
    a = quantus_explain_func(clf, x.numpy(), np.array([0, 1, 2]), method=fixed_method)
    top = a.reshape(3, -1) == a.reshape(3, -1).max(axis=1, keepdims=True)
    inside = masks.reshape(3, -1).numpy()
    hits = np.any(top & inside, axis=1).astype(float)
    np.testing.assert_array_equal(result.scores[fixed_method]["pointing_game"], hits)
    mass = (a.reshape(3, -1) * inside).sum(1) / a.reshape(3, -1).sum(1)
    np.testing.assert_allclose(result.scores[fixed_method]["relevance_mass"], mass, rtol=1e-5)
    # the same call gives the same numbers (the generators are seeded per metric)
    again = quantus_evaluate(clf, x, [0, 1, 2], masks, methods=["surgery"],
                             metrics=["faithfulness_correlation", "road", "random_logit"])
    for metric in again.metrics:
        np.testing.assert_array_equal(again.scores["surgery"][metric], result.scores["surgery"][metric])
    paths = result.write(str(tmp_path))
    assert "| Fixed pattern |" in open(paths["quantus_markdown"], encoding="utf-8").read()
    assert open(paths["quantus_figure"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.part"))


def test_quantus_evaluate_errors():
    clf = _classifier()
    x = images_for(clf.model, 1)
    masks = torch.ones(1, 1, 32, 32, dtype=torch.bool)
    with pytest.raises(ValueError, match="^metrics: expected some of pointing_game"):
        quantus_evaluate(clf, x, [0], masks, methods=["raw"], metrics=["accuracy"])
    with pytest.raises(ValueError, match=r"^masks: expected \[N, 1, H, W\] masks"):
        quantus_evaluate(clf, x, [0], masks[..., :16], methods=["raw"])
    with pytest.raises(ValueError, match=r"^images: expected \[N, 3, H, W\]"):
        quantus_evaluate(clf, x[0], [0], masks, methods=["raw"])
