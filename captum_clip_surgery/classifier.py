r"""Zero-shot CLIP classifier: the forward function every attribution explains."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_clip_surgery._text import TextFeatureCache, validate_templates, validate_texts
from captum_clip_surgery._validation import prepare_images
from captum_clip_surgery.adapters.base import CLIPAdapter, get_adapter, inference_mode_of

__all__ = ["CLIPZeroShotClassifier"]


class CLIPZeroShotClassifier(nn.Module):
    r"""CLIP as a zero-shot classifier over a set of texts.

    ``clf(images)`` returns the logits of the **unmodified** model:
    ``logit_scale.exp() * cos(image embedding, text feature)``, shape ``[B, T]``.
    Text features are prompt-ensembled (METHOD §5) and cached per
    (text, templates), so changing or repeating text sets does not re-encode.

    The user's model is held by reference, not registered as a submodule:
    ``clf.to(...)``, ``clf.train()`` or ``clf.parameters()`` never touch it. The
    model runs with inference behaviour (eval mode, restored afterwards).

    Args:
        model (nn.Module): a CLIP model of a supported family (open_clip ``CLIP``).
        texts (list[str]): class names or free-form texts; at least one.
        templates (list[str], optional): prompt templates with one ``{}``;
            default the release's 85 (:data:`DEFAULT_TEMPLATES`). Pass ``["{}"]``
            to use the texts verbatim.
        tokenizer (Callable, optional): list of strings to token ids ``[N, L]``;
            default open_clip's standard tokenizer with the model's context length.
        truncate_text (bool): encode texts only up to the last EOT position
            (exact under the causal mask, several times faster). Default True.

    Examples::

        >>> import open_clip
        >>> model, _, preprocess = open_clip.create_model_and_transforms(
        ...     "ViT-B-16", pretrained="openai")
        >>> clf = CLIPZeroShotClassifier(model.eval(), texts=["dog", "cat", "grass"])
        >>> clf(images).shape
        torch.Size([8, 3])
    """

    def __init__(
        self,
        model: nn.Module,
        texts: Sequence[str],
        templates: Optional[Sequence[str]] = None,
        tokenizer: Optional[Callable[[List[str]], Tensor]] = None,
        truncate_text: bool = True,
    ) -> None:
        super().__init__()
        adapter = get_adapter(model)
        texts = validate_texts(texts)
        # plain attributes: the user's model must not become a registered submodule
        self.__dict__["adapter"] = adapter
        self.__dict__["model"] = adapter.model
        self.templates = validate_templates(templates)
        self.text_cache = TextFeatureCache(adapter, tokenizer, truncate=truncate_text)
        self.texts: List[str] = texts

    adapter: CLIPAdapter
    model: nn.Module

    @property
    def text_features(self) -> Tensor:
        r"""``[T, C]`` unit-norm, prompt-ensembled features of :attr:`texts` (float32)."""
        return self.encode_texts(self.texts)

    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        r"""Prompt-ensembled unit features of any texts, ``[T, C]`` (cached).

        Args:
            texts (list[str]): texts to encode with this classifier's templates.

        Returns:
            Tensor: ``[T, C]`` float32.
        """
        return self.text_cache.features(validate_texts(texts), self.templates)

    def empty_text_features(self) -> Tensor:
        r"""The prompt-ensembled embedding of the empty string ``""``, ``[C]``."""
        return self.text_cache.features([""], self.templates)[0]

    def image_features(self, images: Tensor) -> Tensor:
        r"""The unmodified model's unit image embeddings ``[B, C]`` (float32)."""
        images = prepare_images(self.adapter, images, "images")
        with inference_mode_of(self.model):
            features = self.adapter.encode_image(images)
        return F.normalize(features.float(), dim=-1)

    def forward(self, images: Tensor, *additional_forward_args: Any) -> Tensor:
        r"""Zero-shot logits ``[B, T]`` of the unmodified model.

        Args:
            images (Tensor): preprocessed images ``[B, 3, H, W]``; moved to the
                model's device and dtype.
            *additional_forward_args: accepted for Captum compatibility, unused.

        Returns:
            Tensor: ``logit_scale.exp() * cos(image, text)``, float32.
        """
        features = self.image_features(images)
        scale = self.adapter.logit_scale().float()
        return scale * features @ self.text_features.t()

    def extra_repr(self) -> str:
        return f"texts={self.texts!r}, templates={len(self.templates)}"

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "texts":
            value = validate_texts(value)
        super().__setattr__(name, value)

    @property
    def device(self) -> torch.device:
        r"""The model's device."""
        return self.adapter.device
