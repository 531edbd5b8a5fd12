r"""Captum's own attribution methods on a :class:`CLIPZeroShotClassifier`, as the method
registry builds them: GradCAM on the classifier's token-grid layer, Saliency, Integrated
Gradients, Input x Gradient, SmoothGrad and Occlusion, with the defaults
:func:`~captum_clip_surgery.compare` uses."""

from __future__ import annotations

from typing import Any, Dict

from captum.attr import (
    InputXGradient,
    IntegratedGradients,
    LayerGradCam,
    NoiseTunnel,
    Occlusion,
    Saliency,
)
from torch import Tensor

from captum_clip_surgery.core.classifier import CLIPZeroShotClassifier

__all__ = [
    "gradcam",
    "input_x_gradient",
    "integrated_gradients",
    "integrated_gradients_defaults",
    "occlusion",
    "occlusion_defaults",
    "saliency",
    "smoothgrad",
]


def gradcam(classifier: CLIPZeroShotClassifier) -> LayerGradCam:
    r"""``LayerGradCam`` on the grid tokens entering the last block
    (:meth:`~CLIPZeroShotClassifier.gradcam_layer`)."""
    return LayerGradCam(classifier, classifier.gradcam_layer(-1))


def saliency(classifier: CLIPZeroShotClassifier) -> Saliency:
    r"""Captum's ``Saliency`` (input gradients)."""
    return Saliency(classifier)


def integrated_gradients(classifier: CLIPZeroShotClassifier) -> IntegratedGradients:
    r"""Captum's ``IntegratedGradients``."""
    return IntegratedGradients(classifier)


def input_x_gradient(classifier: CLIPZeroShotClassifier) -> InputXGradient:
    r"""Captum's ``InputXGradient``."""
    return InputXGradient(classifier)


def smoothgrad(classifier: CLIPZeroShotClassifier) -> NoiseTunnel:
    r"""SmoothGrad: Captum's ``NoiseTunnel`` around ``Saliency``."""
    return NoiseTunnel(Saliency(classifier))


def occlusion(classifier: CLIPZeroShotClassifier) -> Occlusion:
    r"""Captum's ``Occlusion``."""
    return Occlusion(classifier)


def integrated_gradients_defaults(classifier: CLIPZeroShotClassifier, images: Tensor) -> Dict[str, Any]:
    r"""50 steps, run 10 images' steps per forward."""
    return {"n_steps": 50, "internal_batch_size": max(1, images.shape[0]) * 10}


def occlusion_defaults(classifier: CLIPZeroShotClassifier, images: Tensor) -> Dict[str, Any]:
    r"""One grid cell (a patch, or a conv trunk's stride) occluded at a time, all channels."""
    size = tuple(classifier.adapter.image.patch_size)
    return {"sliding_window_shapes": (3, *size), "strides": (3, *size)}
