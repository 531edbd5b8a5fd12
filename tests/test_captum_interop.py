r"""The attributions work with Captum's own utilities."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from captum.attr import Attribution, NoiseTunnel
from captum.attr import visualization as viz
from captum.metrics import infidelity, sensitivity_max

from captum_clip_surgery import CLIPSimilarityMap, CLIPSurgeryAttribution
from tests.helpers import FEW_TEMPLATES, TEXTS, images_for
from tests.models import tiny_vit


def _setup():
    model = tiny_vit()
    explainer = CLIPSurgeryAttribution(model, texts=TEXTS, templates=FEW_TEMPLATES)
    return model, explainer, images_for(model, b=2)


def test_is_a_captum_attribution():
    _, explainer, _ = _setup()
    assert isinstance(explainer, Attribution)
    assert explainer.forward_func is explainer.classifier
    assert explainer.multiplies_by_inputs is False
    assert explainer.has_convergence_delta() is False
    assert isinstance(CLIPSimilarityMap(explainer.classifier), Attribution)


def test_visualize_image_attr():
    _, explainer, images = _setup()
    maps = explainer.attribute(images, target=0)
    image = images[0].permute(1, 2, 0).numpy()
    image = (image - image.min()) / (image.max() - image.min())
    fig, ax = viz.visualize_image_attr(
        maps[0].permute(1, 2, 0).numpy(), image, method="blended_heat_map", sign="positive",
        show_colorbar=True, use_pyplot=False,
    )
    assert fig is not None and ax is not None


@pytest.mark.slow
def test_infidelity_and_sensitivity():
    _, explainer, images = _setup()

    def perturb(inputs):
        noise = 0.01 * torch.randn_like(inputs)
        return noise, inputs - noise

    maps = explainer.attribute(images, target=1)
    score = infidelity(explainer.classifier, perturb, images, maps.expand_as(images), target=1, n_perturb_samples=4)
    assert score.shape == (2,) and torch.isfinite(score).all()
    sens = sensitivity_max(explainer.attribute, images, target=1, n_perturb_samples=3, perturb_radius=0.01)
    assert sens.shape == (2,) and torch.isfinite(sens).all() and (sens >= 0).all()


@pytest.mark.slow
def test_noise_tunnel():
    _, explainer, images = _setup()
    nt = NoiseTunnel(explainer)
    out = nt.attribute(images, nt_samples=3, nt_type="smoothgrad", stdevs=0.05, target=2)
    assert out.shape == (2, 1, 32, 32)
    plain = explainer.attribute(images, target=2)
    # tiny noise: smoothing stays close to the plain map
    tiny = nt.attribute(images, nt_samples=2, stdevs=1e-6, target=[2, 2])
    torch.testing.assert_close(tiny, plain, atol=1e-3, rtol=0)
