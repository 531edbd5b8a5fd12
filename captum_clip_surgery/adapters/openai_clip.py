r"""Adapter for the OpenAI ``clip`` package (``clip.model.CLIP``).

Installed from OpenAI's repository or as ``clip-anytorch`` on PyPI (which imports
``pkg_resources``: keep ``setuptools<81`` beside it). Image towers: the
``VisionTransformer`` (sequence-first ``nn.MultiheadAttention`` blocks, no layer
scale, class-token head) and the ``ModifiedResNet`` (attention pool, no ``stem()``
method: its stem is run here from its modules). Text tower: causal, pooled at the
highest token id (the end-of-text token), run functionally so that it stops at
the batch's last end-of-text position. Default tokenizer: ``clip.tokenize``.

The ``clip`` package is not imported by this module; a user holding one of its
models has imported it.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_clip_surgery.adapters._common import (
    CLIPAttentionPoolHead,
    MultiheadBlockView,
    clip_bpe_pieces,
    run_text_blocks,
)
from captum_clip_surgery.adapters.base import (
    ClassTokenHead,
    CLIPAdapter,
    ImageTowerView,
    TextTowerView,
    resize_positional_embedding,
)

__all__ = ["OpenAICLIPAdapter"]


def _clip_module(name: str) -> Optional[object]:
    return sys.modules.get(name)


class _OpenAITokenHead(ClassTokenHead):
    def __init__(self, visual: nn.Module) -> None:
        self.visual = visual

    def post_norm(self, x: Tensor) -> Tensor:
        return self.visual.ln_post(x)

    def projection(self, x: Tensor) -> Tensor:
        return x @ self.visual.proj.to(x.dtype)


class _OpenAIViTView(ImageTowerView):
    num_prefix_tokens = 1

    def __init__(self, visual: nn.Module) -> None:
        if getattr(visual, "proj", None) is None:
            raise TypeError("model: the ViT tower has no output projection (proj is None)")
        self.visual = visual
        self.patch_size = tuple(visual.conv1.kernel_size)
        rows = visual.positional_embedding.shape[0] - 1
        side = int(round(rows**0.5))
        self.native_grid = (side, side)
        self.blocks = [MultiheadBlockView(b) for b in visual.transformer.resblocks]
        self.head = _OpenAITokenHead(visual)

    def embed(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        v = self.visual
        x = v.conv1(images.to(v.conv1.weight.dtype))
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).reshape(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        pos = resize_positional_embedding(v.positional_embedding, self.native_grid, grid, 1)
        return v.ln_pre(x + pos.to(x.dtype)), grid


class _OpenAIResNetView(ImageTowerView):
    num_prefix_tokens = 0
    blocks = ()

    def __init__(self, visual: nn.Module) -> None:
        self.visual = visual
        self.head = CLIPAttentionPoolHead(visual.attnpool)
        self.patch_size = (32, 32)
        self.native_grid = self.head.native_grid

    def embed(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        v = self.visual
        x = images.to(v.conv1.weight.dtype)
        # the stem is an inner function of ModifiedResNet.forward: three conv-bn-relu, avgpool
        for conv, bn in ((v.conv1, v.bn1), (v.conv2, v.bn2), (v.conv3, v.bn3)):
            x = F.relu(bn(conv(x)))
        x = v.avgpool(x)
        x = v.layer4(v.layer3(v.layer2(v.layer1(x))))
        return x.flatten(2).transpose(1, 2), (x.shape[-2], x.shape[-1])

    def gradcam_module(self) -> nn.Module:
        return self.visual.layer4


def _tokenize(texts: List[str], context_length: int) -> Tensor:
    import clip

    return clip.tokenize(texts, context_length=context_length, truncate=True).long()


class _OpenAITextView(TextTowerView):
    r"""OpenAI CLIP's text tower: causal, pooled at the highest token id (EOT)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.blocks = [MultiheadBlockView(b) for b in model.transformer.resblocks]
        self.context_length = int(model.positional_embedding.shape[0])

    def default_tokenizer(self) -> Callable[[List[str]], Tensor]:
        return functools.partial(_tokenize, context_length=self.context_length)

    def pooled_positions(self, token_ids: Tensor) -> Tensor:
        return token_ids.argmax(dim=-1)

    def _final_states(self, ids: Tensor) -> Tensor:
        m = self.model
        length = ids.shape[1]
        if length > self.context_length:
            raise ValueError(
                f"tokenizer: token ids of length {length} exceed the text tower's context length "
                f"{self.context_length}"
            )
        dtype = m.visual.conv1.weight.dtype
        x = m.token_embedding(ids).to(dtype) + m.positional_embedding[:length].to(dtype)
        return m.ln_final(run_text_blocks(self.blocks, x, causal=True)).to(dtype)

    def encode(self, token_ids: Tensor, truncate: bool = True) -> Tensor:
        pooled = self.pooled_positions(token_ids)
        length = int(pooled.max()) + 1 if truncate else token_ids.shape[1]
        states = self._final_states(token_ids[:, :length])
        rows = torch.arange(states.shape[0], device=states.device)
        return states[rows, pooled.to(states.device)] @ self.model.text_projection.to(states.dtype)

    def token_features(self, token_ids: Tensor) -> Tensor:
        length = int(self.pooled_positions(token_ids).max()) + 1
        states = self._final_states(token_ids[:, :length])
        return states @ self.model.text_projection.to(states.dtype)

    def token_pieces(
        self, token_ids: Sequence[int], tokenizer: Optional[object] = None
    ) -> List[Tuple[bytes, bool]]:
        return clip_bpe_pieces(token_ids, tokenizer)


class OpenAICLIPAdapter(CLIPAdapter):
    r"""Adapter for the OpenAI ``clip`` package's ``clip.model.CLIP`` (ViT and ResNet).

    Args:
        model (nn.Module): the model from ``clip.load`` or ``clip.model.build_model``;
            only read, never changed.

    Examples::

        >>> import clip
        >>> model, preprocess = clip.load("ViT-B/16", device="cpu")
        >>> OpenAICLIPAdapter(model).image.kind
        'token'
    """

    family = "OpenAI clip (clip.model.CLIP, ViT or ModifiedResNet)"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        visual = model.visual
        if hasattr(visual, "attnpool"):
            self.image = _OpenAIResNetView(visual)
        elif hasattr(visual, "transformer") and hasattr(visual, "class_embedding"):
            self.image = _OpenAIViTView(visual)
        else:
            raise TypeError(
                f"model: unsupported OpenAI CLIP image tower {type(visual).__qualname__}; expected "
                "VisionTransformer or ModifiedResNet"
            )
        self.text = _OpenAITextView(model)

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        module = _clip_module("clip.model")
        clip_cls = getattr(module, "CLIP", None)
        return isinstance(clip_cls, type) and isinstance(model, clip_cls)

    def encode_image(self, images: Tensor) -> Tensor:
        return self.model.encode_image(images)

    def logit_scale(self) -> Tensor:
        return self.model.logit_scale.exp().reshape(())

    @property
    def dtype(self) -> torch.dtype:
        return self.model.visual.conv1.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.visual.conv1.weight.device
