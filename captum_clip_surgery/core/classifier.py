r"""Zero-shot CLIP classifier: the forward function every attribution explains."""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable, List, Optional, Sequence, Set, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_clip_surgery._validation import check_bool, prepare_images
from captum_clip_surgery.adapters.base import CLIPAdapter, inference_mode_of
from captum_clip_surgery.adapters.registry import get_adapter
from captum_clip_surgery.core.architecture import image_depth, pooled_image_features
from captum_clip_surgery.core.text import TextFeatureCache, validate_templates, validate_texts

__all__ = ["CLIPZeroShotClassifier"]


def _this_thread_only(hook: Callable[..., Any]) -> Callable[..., Any]:
    r"""``hook``, called only for forwards run in the thread that registered it."""
    owner = threading.get_ident()

    @functools.wraps(hook)
    def filtered(*args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() != owner:
            return None  # another thread's forward: not this hook's call
        return hook(*args, **kwargs)

    return filtered


class TokenGrid(nn.Module):
    r"""Identity layer that shows a block's grid tokens as a ``[B, C, h, w]`` map.

    The classifier routes the grid tokens entering a block through this module
    (prefix tokens such as the class token bypass it), so that Captum's layer
    methods, e.g. ``LayerGradCam``, see a spatial layer. It is owned by the
    classifier and never inserted into the user's model.

    One grid layer serves every call on the classifier, also from several threads at
    once: a forward hook or forward pre-hook registered on it (what Captum's layer
    methods install for the length of one ``attribute`` call) fires only for
    forwards run in the thread that registered it, so the hooks of concurrent calls
    never see each other's tensors.

    Args:
        prefix (int): number of tokens before the grid in the stream.
    """

    def __init__(self, prefix: int = 1) -> None:
        super().__init__()
        self.prefix = prefix

    def register_forward_hook(self, hook: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        r"""As :meth:`torch.nn.Module.register_forward_hook`; the hook fires only for
        forwards run in the registering thread."""
        return super().register_forward_hook(_this_thread_only(hook), *args, **kwargs)

    def register_forward_pre_hook(
        self, hook: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        r"""As :meth:`torch.nn.Module.register_forward_pre_hook`; the hook fires only for
        forwards run in the registering thread."""
        return super().register_forward_pre_hook(_this_thread_only(hook), *args, **kwargs)

    def forward(self, tokens: Tensor, grid: Tuple[int, int]) -> Tensor:
        r"""``[B, P + h*w, C]`` tokens to a ``[B, C, h, w]`` grid."""
        b, _, c = tokens.shape
        return tokens[:, self.prefix :].transpose(1, 2).reshape(b, c, grid[0], grid[1])


class CLIPZeroShotClassifier(nn.Module):
    r"""CLIP as a zero-shot classifier over a set of texts.

    ``clf(images)`` returns the logits of the **unmodified** model:
    ``logit_scale.exp() * cos(image embedding, text feature)``, shape ``[B, T]``.
    Text features are prompt-ensembled (``docs/method.md`` §5) and cached per
    (text, templates), so changing or repeating text sets does not re-encode.

    The user's model is held by reference, not registered as a submodule:
    ``clf.to(...)``, ``clf.train()`` or ``clf.parameters()`` never touch it. The
    model runs with inference behaviour (eval mode, restored afterwards).

    Args:
        model (nn.Module): a CLIP model of a supported family (open_clip ``CLIP``,
            transformers ``CLIPModel`` / ``SiglipModel`` / :class:`HFCLIPPair`, OpenAI
            ``clip``), or an adapter.
        texts (list[str]): class names or free-form texts; at least one.
        templates (list[str], optional): prompt templates with one ``{}``;
            default the release's 85 (:data:`~captum_clip_surgery.DEFAULT_TEMPLATES`). Pass ``["{}"]``
            to use the texts verbatim.
        tokenizer (Callable or tokenizer, optional): a callable mapping a list of
            strings to token ids ``[N, L]`` (a tensor or a mapping with ``input_ids``),
            or a transformers tokenizer / processor. Default: the family's own
            (open_clip's tokenizer; ``clip.tokenize``; for transformers models the
            checkpoint's ``AutoTokenizer``, loaded from local files).
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
        check_bool("truncate_text", truncate_text)
        # plain attributes: the user's model must not become a registered submodule
        self.__dict__["adapter"] = adapter
        self.__dict__["model"] = adapter.model
        self.templates = validate_templates(templates)
        self.text_cache = TextFeatureCache(adapter, tokenizer, truncate=truncate_text)
        self.texts: List[str] = texts
        prefix = adapter.image.num_prefix_tokens
        self.grid_layers = nn.ModuleList(TokenGrid(prefix) for _ in range(image_depth(adapter)))
        self._routed: Set[int] = set()

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

    def gradcam_layer(self, block: int = -1) -> nn.Module:
        r"""A spatial layer for Captum's layer methods (e.g. ``LayerGradCam``).

        From now on the classifier's forward routes the patch tokens *entering*
        image-tower block ``block`` through the returned :class:`TokenGrid`, which
        shows them as a ``[B, C, h, w]`` grid; the logits are unchanged. The input
        of a block is used because a CLIP ViT pools the class token only: the
        patch tokens leaving the last block do not reach the logits (their
        gradient is zero), while those entering it are read by its attention.
        ``block=-1`` is therefore the usual CLIP GradCAM layer. For a tower without
        attention blocks (CLIP ResNets, conv trunks) the layer is the trunk's
        output, the stream entering the pooling head; ``block`` must then be 0 or -1.

        Args:
            block (int): block index, negative counts from the end. Default -1.

        Returns:
            nn.Module: the classifier's own grid layer for that block.

        Examples::

            >>> from captum.attr import LayerGradCam, LayerAttribution
            >>> cam = LayerGradCam(clf, clf.gradcam_layer(-1))
            >>> grid = cam.attribute(images, target=0, relu_attributions=True)  # [B, 1, h, w]
            >>> maps = LayerAttribution.interpolate(grid, images.shape[-2:], "bilinear")
        """
        depth = len(self.grid_layers)
        if isinstance(block, bool) or not isinstance(block, int):
            raise TypeError(f"block: expected an int, got {type(block).__name__}")
        if not -depth <= block < depth:
            raise ValueError(
                f"block: expected an index in [{-depth}, {depth - 1}] for an image tower with "
                f"{depth} {'block' if depth == 1 else 'blocks'}, got {block}"
            )
        index = block % depth
        self._routed.add(index)
        return self.grid_layers[index]

    def _tap(self, index: int, x: Tensor, grid: Tuple[int, int]) -> Tensor:
        if index not in self._routed:
            return x
        layer = self.grid_layers[index]
        out = layer(x, grid)
        return torch.cat([x[:, : layer.prefix], out.flatten(2).transpose(1, 2)], dim=1)

    def image_features(self, images: Tensor) -> Tensor:
        r"""The unmodified model's unit image embeddings ``[B, C]`` (float32).

        Computed through the adapter (equal to the model's ``encode_image`` at its
        native resolution, defined at any resolution).
        """
        images = prepare_images(self.adapter, images, "images")
        with inference_mode_of(self.model):
            features = pooled_image_features(self.adapter, images, self._tap)
        return F.normalize(features.float(), dim=-1)

    def forward(self, images: Tensor, *additional_forward_args: Any) -> Tensor:
        r"""Zero-shot logits ``[B, T]`` of the unmodified model.

        Args:
            images (Tensor): preprocessed images ``[B, 3, H, W]``; moved to the
                model's device and dtype.
            *additional_forward_args: accepted for Captum compatibility, unused.

        Returns:
            Tensor: the model's own logits, float32: ``logit_scale.exp() * cos(image,
            text)``, plus ``logit_bias`` for sigmoid-loss models (SigLIP).
        """
        features = self.image_features(images)
        return self.adapter.logits(features, self.text_features).float()

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


def as_classifier(
    forward_func: Any,
    texts: Optional[Sequence[str]] = None,
    templates: Optional[Sequence[str]] = None,
    tokenizer: Optional[Callable[[List[str]], Tensor]] = None,
) -> CLIPZeroShotClassifier:
    r"""The classifier an attribution explains: ``forward_func`` itself, or one built on
    a bare CLIP model with ``texts`` (and optional ``templates`` / ``tokenizer``).

    Every attribution of the package accepts both forms through this function.
    """
    if isinstance(forward_func, CLIPZeroShotClassifier):
        if texts is not None or templates is not None or tokenizer is not None:
            raise ValueError(
                "texts: give texts, templates and tokenizer to the CLIPZeroShotClassifier, "
                "not to the attribution built on it (or pass texts= per attribute call)"
            )
        return forward_func
    if texts is None:
        raise ValueError("texts: required when a model (not a CLIPZeroShotClassifier) is given")
    return CLIPZeroShotClassifier(forward_func, texts, templates, tokenizer)
