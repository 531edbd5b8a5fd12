r"""All methods on one footing: GradCAM layer, gradient methods, compare and the figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
import torch.nn.functional as F
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam
from matplotlib.figure import Figure

from captum_clip_surgery import (
    DEFAULT_METHODS,
    METHOD_NAMES,
    CLIPSimilarityMap,
    CLIPZeroShotClassifier,
    channel_reduce,
    compare,
    plot_comparison,
)
from tests.helpers import FEW_TEMPLATES, TEXTS, images_for
from tests.models import one_patch_vit, tiny_resnet, tiny_vit

GRADIENT_METHODS = ["gradcam", "chefer", "saliency", "ig", "inputxgradient", "smoothgrad", "occlusion"]


def _one_patch_classifier(k: int) -> CLIPZeroShotClassifier:
    probe = CLIPZeroShotClassifier(one_patch_vit(k), ["dog", "cat"], templates=["{}"])
    model = one_patch_vit(k, evidence=probe.text_features[0])
    return CLIPZeroShotClassifier(model, ["dog", "cat"], templates=["{}"])


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_every_gradient_method_finds_the_one_patch_the_logit_depends_on(k):
    clf = _one_patch_classifier(k)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(k))
    # the construction: changing any other patch leaves the logits unchanged
    other = images.clone()
    rows, cols = divmod(k, 2)
    mask = torch.ones(16, 16, dtype=torch.bool)
    mask[rows * 8 : rows * 8 + 8, cols * 8 : cols * 8 + 8] = False
    other[:, :, mask] = torch.rand(2, 3, int(mask.sum()))
    torch.testing.assert_close(clf(other), clf(images), atol=1e-5, rtol=1e-5)

    maps = compare(clf, images, target="dog", methods=GRADIENT_METHODS)
    for name, m in maps.items():
        per_patch = F.avg_pool2d(m, 8).flatten(1)
        assert per_patch.argmax(dim=1).tolist() == [k, k], f"{name} missed patch {k}: {per_patch}"


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_maps_line_up_with_the_pixels_at_a_non_multiple_size(k):
    # 13x14 pixels: padded to 16x16 (a 2x2 grid of 8-px patches) at the bottom / right;
    # patch k covers rows [8r, min(8r + 8, 13)) and columns [8c, min(8c + 8, 14)) of the image
    clf = _one_patch_classifier(k)
    images = torch.rand(2, 3, 13, 14, generator=torch.Generator().manual_seed(k))
    regions = torch.zeros(4, 13, 14, dtype=torch.bool)
    for j in range(4):
        r, c = divmod(j, 2)
        regions[j, r * 8 : r * 8 + 8, c * 8 : c * 8 + 8] = True
    # only the pixels of patch k reach the logits (the padding is not an input)
    grad = torch.autograd.functional.jacobian(lambda x: clf(x)[:, 0].sum(), images)
    assert bool(grad.abs().sum(dim=(0, 1))[~regions[k]].eq(0).all())
    assert bool(grad.abs().sum(dim=(0, 1))[regions[k]].gt(0).any())

    methods = GRADIENT_METHODS + ["raw", "surgery", "maskclip", "legrad"]
    maps = compare(clf, images, target="dog", methods=methods)
    for name, m in maps.items():
        assert m.shape == (2, 1, 13, 14), name
        means = torch.stack([m[:, 0, regions[j]].mean(dim=1) for j in range(4)], dim=1)
        assert means.argmax(dim=1).tolist() == [k, k], f"{name} missed patch {k}: {means}"
    # the token maps themselves: the upsampled grid leaves the padding out
    grid = CLIPSimilarityMap(clf).attribute(images, target="dog", upsample_to_input=False)
    full = F.interpolate(grid, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(CLIPSimilarityMap(clf).attribute(images, target="dog"),
                               full[..., :13, :14])


def _hand_gradcam(model, clf, images, target):
    r"""GradCAM from a hook on the model's last block input and torch.autograd.grad."""
    store = {}
    block = model.visual.transformer.resblocks[-1]
    handle = block.register_forward_pre_hook(lambda mod, args: store.update(x=args[0]))
    try:
        with torch.enable_grad():
            feats = F.normalize(model.encode_image(images), dim=-1)
            logits = model.logit_scale.exp() * feats @ clf.text_features.t()
            (grad,) = torch.autograd.grad(logits[:, target].sum(), store["x"])
    finally:
        handle.remove()
    acts, grads = store["x"][:, 1:].detach(), grad[:, 1:]
    weights = grads.mean(dim=1, keepdim=True)  # [B, 1, C], mean over tokens
    cam = F.relu((weights * acts).sum(dim=-1))  # [B, N]
    h = w = int(cam.shape[1] ** 0.5)
    return cam.reshape(-1, 1, h, w)


def test_gradcam_layer_equals_hand_gradcam(snapshot):
    model = tiny_vit()
    snap = snapshot(model)
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    images = images_for(model, b=3)
    before = clf(images)
    layer = clf.gradcam_layer(-1)
    assert layer is clf.grid_layers[-1] and layer is clf.gradcam_layer(len(clf.grid_layers) - 1)
    torch.testing.assert_close(clf(images), before)  # routing keeps the logits
    with torch.no_grad():
        torch.testing.assert_close(
            clf(images), model.logit_scale.exp() * F.normalize(model.encode_image(images), dim=-1)
            @ clf.text_features.t(), atol=1e-5, rtol=1e-5)
    grid = LayerGradCam(clf, layer).attribute(images, target=2, relu_attributions=True)
    assert grid.shape == (3, 1, 4, 4)
    torch.testing.assert_close(grid, _hand_gradcam(model, clf, images, 2), atol=1e-6, rtol=1e-4)
    up = LayerAttribution.interpolate(grid, (32, 32), "bilinear")
    assert up.shape == (3, 1, 32, 32)
    snap.assert_unchanged()


def test_gradcam_layer_for_resnet_is_the_trunk_output():
    model = tiny_resnet()
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    images = images_for(model, b=2)
    grid = LayerGradCam(clf, clf.gradcam_layer()).attribute(images, target=0, relu_attributions=True)
    assert grid.shape == (2, 1, 2, 2)
    store = {}
    handle = model.visual.layer4.register_forward_hook(lambda m, a, out: store.update(x=out))
    try:
        feats = F.normalize(model.encode_image(images), dim=-1)
        logits = model.logit_scale.exp() * feats @ clf.text_features.t()
        (g,) = torch.autograd.grad(logits[:, 0].sum(), store["x"])
    finally:
        handle.remove()
    expected = F.relu((g.mean(dim=(2, 3), keepdim=True) * store["x"]).sum(1, keepdim=True))
    torch.testing.assert_close(grid, expected.detach(), atol=1e-6, rtol=1e-4)
    with pytest.raises(ValueError, match=r"block: expected an index in \[-1, 0\]"):
        clf.gradcam_layer(1)


def test_gradcam_layer_bad_block():
    clf = CLIPZeroShotClassifier(tiny_vit(), TEXTS, templates=FEW_TEMPLATES)
    with pytest.raises(ValueError, match=r"block: expected an index in \[-7, 6\]"):
        clf.gradcam_layer(7)
    with pytest.raises(TypeError, match="block: expected an int"):
        clf.gradcam_layer("last")


def test_integrated_gradients_convergence_delta_is_small():
    model = tiny_vit()
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    images = images_for(model, b=2)
    ig = IntegratedGradients(clf)
    attr, delta = ig.attribute(images, target=1, n_steps=200, return_convergence_delta=True)
    gap = (clf(images)[:, 1] - clf(torch.zeros_like(images))[:, 1]).abs()
    assert (delta.abs() < 0.01 * gap + 1e-3).all(), (delta, gap)


@pytest.mark.parametrize("make", [tiny_vit, tiny_resnet], ids=["vit", "resnet"])
def test_compare_default_methods_one_footing(make, snapshot):
    model = make()
    snap = snapshot(model)
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    images = images_for(model, b=2)
    maps = compare(clf, images, target=["dog", "grass"], method_kwargs={"ig": {"n_steps": 8}})
    expected = [m for m in DEFAULT_METHODS if make is tiny_vit or m != "chefer"]
    assert list(maps) == expected
    for name, m in maps.items():
        assert m.shape == (2, 1, images.shape[-2], images.shape[-1]), name
        assert m.dtype == torch.float32 and m.min() >= 0 and m.max() <= 1, name
    snap.assert_unchanged()


def test_compare_accepts_objects_and_callables_and_batches_like_single_calls():
    model = tiny_vit()
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    images = images_for(model, b=3)
    methods = {
        "mine": IntegratedGradients(clf),
        "fn": lambda x, t: x[:, :1] * 0 + t.float()[:, None, None, None] + x[:, :1],
        "surgery": "surgery",
        "gradcam": "gradcam",
        "chefer": "chefer",
    }
    kwargs = {"mine": {"n_steps": 8}}
    batch = compare(clf, images, target=[0, 1, 2], methods=methods, method_kwargs=kwargs)
    for i in range(3):
        single = compare(clf, images[i : i + 1], target=i, methods=methods, method_kwargs=kwargs)
        for name in methods:
            torch.testing.assert_close(batch[name][i : i + 1], single[name], atol=1e-4, rtol=0)


def test_compare_errors():
    clf = CLIPZeroShotClassifier(tiny_vit(), TEXTS, templates=FEW_TEMPLATES)
    images = images_for(clf.model)
    with pytest.raises(ValueError, match="methods: unknown method 'lime'"):
        compare(clf, images, 0, methods=["lime"])
    with pytest.raises(TypeError, match="methods: expected a list of method names"):
        compare(clf, images, 0, methods="surgery")
    with pytest.raises(TypeError, match="classifier: expected a CLIPZeroShotClassifier"):
        compare(clf.model, images, 0)
    with pytest.raises(ValueError, match="target: unknown text 'zebra'"):
        compare(clf, images, "zebra", methods=["surgery"])
    assert set(DEFAULT_METHODS) <= set(METHOD_NAMES)


def test_channel_reduce_hand_values():
    a = torch.tensor([1.0, -2.0, 0.5]).reshape(1, 3, 1, 1)
    assert channel_reduce(a).item() == pytest.approx(3.5)
    assert channel_reduce(a, "sum").item() == pytest.approx(-0.5)
    assert channel_reduce(a, "l2").item() == pytest.approx((1 + 4 + 0.25) ** 0.5)
    assert channel_reduce(a, "max_abs").item() == pytest.approx(2.0)
    one = torch.randn(2, 1, 4, 4)
    assert channel_reduce(one) is one
    with pytest.raises(ValueError, match="reduction: expected"):
        channel_reduce(a, "mean")
    with pytest.raises(ValueError, match=r"attributions: expected \[B, K, H, W\]"):
        channel_reduce(torch.randn(3, 4, 4))


def test_plot_comparison_figure(tmp_path):
    model = tiny_vit()
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    images = images_for(model, b=2)
    maps = compare(clf, images, target="cat", methods=["surgery", "raw", "gradcam"])
    fig = plot_comparison(images[1], maps, texts=["dog", "cat"], index=1)
    assert isinstance(fig, Figure)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[:4] == ["image", "CLIP Surgery", "raw CLIP", "GradCAM"]
    assert fig._suptitle.get_text() == "target: cat"
    out = tmp_path / "cmp.png"
    fig.savefig(out)
    assert out.stat().st_size > 1000
    with pytest.raises(ValueError, match="maps: expected at least one map"):
        plot_comparison(images[0], {})


def test_plot_comparison_all_zero_map_is_drawn_not_raised():
    # a ReLU'd GradCAM can be all zero; Captum's visualization refuses to scale it
    model = tiny_vit()
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    images = images_for(model, b=1)
    maps = compare(clf, images, target="cat", methods=["surgery"])
    maps["zero"] = torch.zeros_like(maps["surgery"])
    fig = plot_comparison(images[0], maps, texts="cat")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[2] == "zero\n(all-zero map)"
    # the suptitle sits above every panel title
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    top_of_panels = max(ax.title.get_window_extent(renderer).y1 for ax in fig.axes)
    assert fig._suptitle.get_window_extent(renderer).y0 >= top_of_panels
