r"""The method registry: the built-in records, what is defined for which tower, and
registering a method of one's own."""

from __future__ import annotations

import threading

import pytest
import torch
from captum.attr import Attribution, IntegratedGradients, LayerGradCam, NoiseTunnel, Occlusion

from captum_clip_surgery import (
    CLIPSurgeryAttribution,
    CLIPZeroShotClassifier,
    TokenMapAttribution,
    build_method,
    register_method,
    supported_methods,
)
from captum_clip_surgery.methods import registry
from captum_clip_surgery.methods.registry import (
    DEFAULT_METHODS,
    DENSE_METHODS,
    METHOD_NAMES,
    TRAINING_FREE_METHODS,
    get_method,
    method_defaults,
    method_names,
    method_title,
    unregister_method,
)
from tests.helpers import FEW_TEMPLATES, TEXTS
from tests.models import tiny_resnet, tiny_vit

BUILTIN = (
    "surgery", "raw", "maskclip", "gradcam", "chefer", "saliency", "ig", "surgery_empty",
    "surgery_none", "inputxgradient", "smoothgrad", "occlusion", "gem", "sclip", "clearclip",
    "naclip", "legrad", "gradeclip", "scclip", "resclip", "proxyclip", "cass", "corrclip",
)


def test_builtin_names_groups_and_titles():
    assert METHOD_NAMES == BUILTIN
    assert method_names()[: len(BUILTIN)] == BUILTIN  # methods registered later come after
    assert DEFAULT_METHODS == ("surgery", "raw", "maskclip", "gradcam", "chefer", "saliency", "ig")
    assert TRAINING_FREE_METHODS == ("gem", "sclip", "clearclip", "naclip", "legrad", "gradeclip",
                                     "scclip", "resclip", "proxyclip", "cass", "corrclip")
    assert DENSE_METHODS == ("surgery", "raw", "maskclip", "gem", "sclip", "clearclip", "naclip",
                             "scclip", "resclip", "proxyclip", "cass", "corrclip")
    assert method_names("evaluate") == ("surgery", "raw", "maskclip", "gradcam", "chefer", "ig")
    assert method_title("surgery") == "CLIP Surgery" and method_title("gradeclip") == "Grad-ECLIP"
    assert method_title("scclip") == "SC-CLIP" and method_title("resclip") == "ResCLIP"
    assert method_title("my own display name") == "my own display name"
    assert len({method_title(m) for m in BUILTIN}) == len(BUILTIN)


def test_records_agree_with_their_classes():
    kinds = {m: get_method(m).kind for m in BUILTIN}
    assert {m for m, k in kinds.items() if k == "token"} == set(DENSE_METHODS) | {
        "surgery_empty", "surgery_none"}
    assert {m for m, k in kinds.items() if k == "relevance"} == {"chefer", "legrad", "gradeclip"}
    assert kinds["occlusion"] == "perturbation"
    assert {m for m, k in kinds.items() if k == "gradient"} == {
        "gradcam", "saliency", "ig", "inputxgradient", "smoothgrad"}
    for m in BUILTIN:
        target = get_method(m).load()
        if isinstance(target, type):
            assert target.map_kind == kinds[m], m


@pytest.mark.parametrize("make, expected", [
    (tiny_vit, BUILTIN),
    (tiny_resnet, ("surgery", "raw", "maskclip", "gradcam", "saliency", "ig", "surgery_empty",
                   "surgery_none", "inputxgradient", "smoothgrad", "occlusion")),
], ids=["vit", "resnet"])
def test_supported_methods_per_tower(make, expected):
    clf = CLIPZeroShotClassifier(make(), TEXTS, templates=FEW_TEMPLATES)
    assert tuple(m for m in supported_methods(clf) if m in BUILTIN) == expected
    assert supported_methods(clf.adapter) == supported_methods(clf)
    assert supported_methods(clf, tag="default") == tuple(
        m for m in DEFAULT_METHODS if m in expected)
    reason = get_method("chefer").unsupported_reason(clf.adapter)
    assert (reason is None) == ("chefer" in expected)


def test_build_method_and_defaults():
    clf = CLIPZeroShotClassifier(tiny_vit(), TEXTS, templates=FEW_TEMPLATES)
    images = torch.zeros(3, 3, 32, 32)
    assert isinstance(build_method("gradcam", clf), LayerGradCam)
    assert isinstance(build_method("ig", clf), IntegratedGradients)
    assert isinstance(build_method("smoothgrad", clf), NoiseTunnel)
    assert isinstance(build_method("occlusion", clf), Occlusion)
    assert type(build_method("surgery_empty", clf)) is CLIPSurgeryAttribution
    assert build_method("surgery", clf, surgery_blocks=2).surgery_blocks == 2
    assert method_defaults("surgery_empty", clf, images) == {"feature_surgery": "empty"}
    assert method_defaults("ig", clf, images) == {"n_steps": 50, "internal_batch_size": 8}
    assert method_defaults("occlusion", clf, images) == {
        "sliding_window_shapes": (3, 8, 8), "strides": (3, 8, 8)}
    assert method_defaults("gradcam", clf, images) == {"relu_attributions": True}
    with pytest.raises(ValueError, match="^methods: unknown method 'nope'; expected one of surgery"):
        build_method("nope", clf)
    with pytest.raises(TypeError, match="method_options: method 'gradcam' is built by a factory"):
        build_method("gradcam", clf, block=1)


class _Constant(TokenMapAttribution):
    def token_features(self, images):
        b = images.shape[0]
        feats = torch.arange(17.0).repeat(b, 1)[..., None].expand(b, 17, 24)
        return feats, (4, 4)


def test_register_method_decorator_and_errors():
    try:
        decorated = register_method("constant_test", title="Constant", feature_surgery="none")(
            _Constant)
        assert decorated is _Constant
        record = get_method("constant_test")
        assert record.source == "register_method" and record.display_title == "Constant"
        assert record.kind == "token" and record.defaults == {"feature_surgery": "none"}
        clf = CLIPZeroShotClassifier(tiny_resnet(), TEXTS, templates=FEW_TEMPLATES)
        assert "constant_test" in supported_methods(clf)
        # registering the same class again is a no-op; another class needs replace=True
        register_method("constant_test", _Constant)
        with pytest.raises(ValueError, match="^name: method 'constant_test' is already registered"):
            register_method("constant_test", CLIPSurgeryAttribution)
        register_method("constant_test", CLIPSurgeryAttribution, replace=True)
        assert get_method("constant_test").load() is CLIPSurgeryAttribution
        with pytest.raises(ValueError, match="^name: method 'surgery' is already registered"):
            register_method("surgery", _Constant)
        with pytest.raises(ValueError, match="^name: expected a method name"):
            register_method("has space", _Constant)
        with pytest.raises(TypeError, match="title: expected a string"):
            register_method("x_test", _Constant, title=3)
        with pytest.raises(TypeError, match="expected an attribution class or a factory"):
            register_method("x_test", 3)
        with pytest.raises(ValueError, match="^name: 'surgery' is a built-in method"):
            unregister_method("surgery")
    finally:
        unregister_method("constant_test")
    assert "constant_test" not in method_names()
    with pytest.raises(ValueError, match="^name: no method 'constant_test' is registered"):
        unregister_method("constant_test")


def test_registry_under_threads():
    errors = []

    def work(i: int) -> None:
        try:
            name = f"thread_test_{i}"
            register_method(name, _Constant)
            assert name in method_names()
            unregister_method(name)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and not any(n.startswith("thread_test_") for n in method_names())


def test_registry_imports_no_method_until_one_is_built():
    r"""The registry names the built-in classes by ``module:attribute`` until first use."""
    fresh = registry.MethodRecord("x", "captum_clip_surgery.methods.sclip:SCLIPAttribution")
    assert fresh.display_title == "x"
    assert issubclass(fresh.load(), Attribution) and not isinstance(fresh.target, str)


def test_registry_is_truthful_for_the_coca_pooler():
    r"""CoCa's attentional pooler takes queries narrower than its tokens: the raw map (grid
    tokens as queries of the pool) is not defined there, and the registry says so, so that
    every caller (``compare``'s default, the command line) leaves it out; every method it
    lists runs."""
    from captum_clip_surgery import compare
    from tests.adapters.test_openclip_towers import _tokenize
    from tests.adapters.timm_models import native_size, tiny_native_clip

    model = tiny_native_clip("coca")
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES, tokenizer=_tokenize)
    defined = supported_methods(clf)
    assert "raw" not in defined and {"surgery", "maskclip"} <= set(defined)
    reason = get_method("raw").unsupported_reason(clf.adapter)
    assert reason.startswith("the CoCa attentional pooler takes 24-wide queries but the stream "
                             "tokens are 32 wide")
    s = native_size(model)
    images = torch.rand(1, 3, s, s)
    with pytest.raises(TypeError, match="model: the CoCa attentional pooler"):
        build_method("raw", clf).attribute(images, target=0)  # what the registry foresaw
    maps = compare(clf, images, 0)  # the default methods defined for this tower
    assert "raw" not in maps and set(maps) == set(supported_methods(clf, tag="default"))
    for name in defined:
        if get_method(name).kind in ("token", "relevance"):
            out = build_method(name, clf).attribute(images, target=1)
            assert out.shape == (1, 1, s, s) and torch.isfinite(out).all(), name


def test_integrated_gradients_runs_a_bounded_number_of_steps_per_pass():
    r"""Issue 18, item 18: 50 steps of a batch in one pass keep every step's activations
    (13.6 GB for the README's ViT-B/16 example); the default runs 8 steps per forward
    whatever the batch, with the same attributions."""
    from captum.attr import IntegratedGradients

    from captum_clip_surgery import compare
    from captum_clip_surgery.methods.captum_methods import IG_INTERNAL_BATCH

    model = tiny_vit()
    clf = CLIPZeroShotClassifier(model, ["dog", "cat"], templates=["{}"])
    for batch in (1, 2, 30):
        defaults = method_defaults("ig", clf, torch.zeros(batch, 3, 32, 32))
        assert defaults["internal_batch_size"] == IG_INTERNAL_BATCH == 8
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    rows = []
    real_forward = clf.forward

    def counting(x, *args):
        rows.append(x.shape[0])
        return real_forward(x, *args)

    clf.forward = counting  # Captum calls the classifier: count the rows of each pass
    maps = compare(clf, images, target=1, methods=["ig"])["ig"]
    del clf.forward
    assert max(rows) <= 8 and sum(r for r in rows if r > 2) >= 2 * 50
    whole = IntegratedGradients(clf).attribute(images, target=1, n_steps=50)  # one pass
    from captum_clip_surgery.apps.comparison import footing

    torch.testing.assert_close(maps, footing(whole, clf, (32, 32)), atol=1e-5, rtol=1e-4)
