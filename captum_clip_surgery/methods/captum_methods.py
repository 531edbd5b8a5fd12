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
    "IG_INTERNAL_BATCH",
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


#: Images (interpolation steps) per forward and backward of Integrated Gradients, whatever
#: the batch: the activations of 8 ViT-B/16 images at 224 px take about 1.2 GB, so the
#: README's ``compare`` example stays under 4 GB (``benchmarks/readme_ig_memory.py``);
#: 50 steps of a batch of 2 in one pass would keep 100 images' activations (13.6 GB).
IG_INTERNAL_BATCH = 8


def integrated_gradients_defaults(classifier: CLIPZeroShotClassifier, images: Tensor) -> Dict[str, Any]:
    r"""50 steps, run :data:`IG_INTERNAL_BATCH` (8) steps per forward whatever the batch
    (memory bounded; pass ``internal_batch_size`` in ``method_kwargs`` to change it)."""
    return {"n_steps": 50, "internal_batch_size": IG_INTERNAL_BATCH}


def occlusion_defaults(classifier: CLIPZeroShotClassifier, images: Tensor) -> Dict[str, Any]:
    r"""One grid cell (a patch, or a conv trunk's stride) occluded at a time, all channels."""
    size = tuple(classifier.adapter.image.patch_size)
    return {"sliding_window_shapes": (3, *size), "strides": (3, *size)}
