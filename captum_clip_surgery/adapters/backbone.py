r"""Second backbones: a vision transformer beside CLIP, seen through one protocol.

ProxyCLIP, CASS and LPOSS read a second vision model (DINO, DINOv2) beside CLIP: its
patch features, the q/k/v of one of its blocks, its attention or its class token, on
the same image as CLIP (at any size). :class:`VisionBackbone` gives those for every
family through the same :class:`~captum_clip_surgery.adapters.base.BlockView` blocks the
CLIP adapters use; one module per family fills it in:

- :mod:`~captum_clip_surgery.adapters.backbone_timm`: timm ``VisionTransformer`` (DINO
  ``vit_base_patch8_224.dino`` / ``vit_base_patch16_224.dino``, DINOv2
  ``vit_base_patch14_dinov2.lvd142m`` and ``vit_base_patch14_reg4_dinov2.lvd142m`` with
  registers, ...);
- :mod:`~captum_clip_surgery.adapters.backbone_hf`: Hugging Face ``Dinov2Model``
  (``facebook/dinov2-base``), ``Dinov2WithRegistersModel``
  (``facebook/dinov2-with-registers-base``) and ``ViTModel`` (``facebook/dino-vitb8``,
  ``facebook/dino-vitb16``);
- :class:`CLIPTowerBackbone` (here): the image tower of any CLIP model the package
  adapts.

:func:`~captum_clip_surgery.adapters.backbone_registry.get_backbone` picks the view of a
model. Views are functional like the CLIP adapters: they call the model's own modules,
never replace a module, edit a parameter or install a hook, and run the model in eval
mode (its own modes restored afterwards). The positional table is resized per call by
:func:`~captum_clip_surgery.adapters.base.resize_positional_embedding`, by the rule of the
weights' release by default (DINO's and DINOv2's hub code: bicubic with a scale factor of
``(n + 0.1) / n_native``, ``"bicubic_offset"``); :attr:`VisionBackbone.library_positional_resize`
names the rule of the library's own forward (timm's ``dynamic_img_size``, Hugging Face's
``interpolate_pos_encoding``), which reproduces ``model(images)`` exactly.
"""

from __future__ import annotations

import abc
import contextlib
import math
from typing import ClassVar, Iterator, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_clip_surgery._validation import check_int
from captum_clip_surgery.adapters.base import (
    BlockView,
    ClassTokenHead,
    CLIPAdapter,
    check_positional_resize,
    inference_mode_of,
    positional_resize,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CLIPTowerBackbone",
    "VisionBackbone",
    "aligned_size",
]

#: ImageNet's per-channel mean and standard deviation (DINO's and DINOv2's input statistics).
IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)


def aligned_size(size: Tuple[int, int], patch_size: Tuple[int, int]) -> Tuple[int, int]:
    r"""``size`` rounded to the nearest multiple of the patch per side (at least one patch).

    A backbone whose patch does not divide the image sees the image resized to this size,
    so that its grid spans the same pixels as CLIP's (see :meth:`VisionBackbone.prepare`).

    Examples::

        >>> aligned_size((224, 336), (14, 14)), aligned_size((240, 100), (14, 14))
        ((224, 336), (238, 98))
    """
    return tuple(  # type: ignore[return-value]
        max(int(math.floor(s / p + 0.5)), 1) * int(p) for s, p in zip(size, patch_size)
    )


class VisionBackbone(abc.ABC):
    r"""A vision transformer beside CLIP: embedding, blocks and final norm.

    A family module subclasses it and sets, in its constructor, :attr:`blocks` (one
    :class:`~captum_clip_surgery.adapters.base.BlockView` per block), :attr:`patch_size`,
    :attr:`native_grid`, :attr:`num_prefix_tokens` (class and register tokens before the
    grid) and :attr:`num_register_tokens`; it implements :meth:`supports` and
    :meth:`embed_tokens` (the tokens entering block 0, the positional table resized by
    :func:`~captum_clip_surgery.adapters.base.resize_positional_embedding`) and, where the
    model has one, :meth:`final_norm`. Everything a method reads is then written once here:
    :meth:`stream`, :meth:`tokens`, :meth:`patch_tokens`, :meth:`class_token`, :meth:`qkv`,
    :meth:`attention` and :meth:`prepare` (re-normalisation and size alignment of CLIP's
    input for this backbone).

    Layers are block indices (``0`` the first block; negative values count from the end,
    ``-1`` the last block).

    Args:
        model (nn.Module): the backbone; it is only read, never changed.
        positional_resize (str, optional): how the positional table is resized to another
            grid (one of :data:`~captum_clip_surgery.adapters.base.POSITIONAL_RESIZE_MODES`);
            default :attr:`release_positional_resize`.
    """

    #: What the view understands, for messages and :func:`supported_backbones`.
    family: ClassVar[str] = ""
    #: The positional rule of the weights' release (DINO / DINOv2 hub code: ``"bicubic_offset"``);
    #: ``None``: the rule of the caller's :func:`~captum_clip_surgery.adapters.base.positional_resize`.
    release_positional_resize: ClassVar[Optional[str]] = "bicubic_offset"
    #: The positional rule of the library's own forward at another size (``None`` when it has
    #: none); with it the views reproduce ``model(images)`` exactly.
    library_positional_resize: ClassVar[Optional[str]] = None
    #: The input statistics the backbone was trained with (ImageNet's for DINO / DINOv2).
    image_mean: Tuple[float, float, float] = IMAGENET_MEAN
    image_std: Tuple[float, float, float] = IMAGENET_STD

    patch_size: Tuple[int, int]
    native_grid: Tuple[int, int]
    num_prefix_tokens: int = 1
    num_register_tokens: int = 0
    blocks: Sequence[BlockView] = ()

    def __init__(self, model: nn.Module, positional_resize: Optional[str] = None) -> None:
        self.model = model
        mode = self.release_positional_resize if positional_resize is None else positional_resize
        self.positional_resize = None if mode is None else check_positional_resize(mode)

    @classmethod
    @abc.abstractmethod
    def supports(cls, model: nn.Module) -> bool:
        r"""Whether this view understands ``model``."""

    @abc.abstractmethod
    def embed_tokens(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        r"""Tokens entering block 0, ``[B, P + h*w, C]`` (``P = num_prefix_tokens``, class
        token first, then the registers, then the grid row-major), and the grid ``(h, w)``.
        Called inside :meth:`running`."""

    def final_norm(self, x: Tensor) -> Tensor:
        r"""The norm after the last block (identity when the model has none)."""
        return x

    # ------------------------------------------------------------------ derived facts

    @property
    def has_class_token(self) -> bool:
        r"""Whether the first prefix token is a class token."""
        return self.num_prefix_tokens - self.num_register_tokens >= 1

    @property
    def depth(self) -> int:
        r"""The number of blocks."""
        return len(self.blocks)

    @property
    def num_heads(self) -> int:
        r"""Attention heads of the last block."""
        return self.blocks[-1].num_heads

    @property
    def dtype(self) -> torch.dtype:
        r"""The dtype of the model's floating-point weights."""
        for p in self.model.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.get_default_dtype()

    @property
    def device(self) -> torch.device:
        r"""The device of the model's weights."""
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({type(self.model).__name__}, patch {self.patch_size}, "
                f"{self.depth} blocks, positional_resize={self.positional_resize!r})")

    # ------------------------------------------------------------------ running

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        r"""The model in eval mode (its modes restored on exit) and the positional rule of
        this view (the caller's when :attr:`positional_resize` is ``None``)."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(inference_mode_of(self.model))
            if self.positional_resize is not None:
                stack.enter_context(positional_resize(self.positional_resize))
            yield

    def _layer(self, layer: int) -> int:
        depth = self.depth
        index = check_int("layer", layer, -depth, depth - 1)
        return index % depth

    def embed(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        r"""The tokens entering block 0 and the grid (:meth:`embed_tokens` run in
        :meth:`running`)."""
        with self.running():
            return self.embed_tokens(images)

    def stream(self, images: Tensor, layer: int) -> Tuple[Tensor, Tuple[int, int]]:
        r"""The tokens entering block ``layer`` (``layer = depth``: leaving the last block),
        ``[B, P + h*w, C]``, and the grid.

        Args:
            images (Tensor): ``[B, 3, H, W]`` prepared for this backbone (:meth:`prepare`).
            layer (int): in ``[0, depth]``.
        """
        stop = check_int("layer", layer, 0, self.depth)
        with self.running():
            x, grid = self.embed_tokens(images)
            for block in list(self.blocks)[:stop]:
                x = block.forward(x)
        return x, grid

    def tokens(
        self, images: Tensor, layer: int = -1, norm: bool = True
    ) -> Tuple[Tensor, Tuple[int, int]]:
        r"""The output of block ``layer``, ``[B, P + h*w, C]`` (every token), through the
        final norm when ``norm`` (DINO's ``get_intermediate_layers``), and the grid."""
        x, grid = self.stream(images, self._layer(layer) + 1)
        return (self.final_norm(x) if norm else x), grid

    def patch_tokens(
        self, images: Tensor, layer: int = -1, norm: bool = True
    ) -> Tuple[Tensor, Tuple[int, int]]:
        r"""The grid tokens of :meth:`tokens` (class and register tokens dropped),
        ``[B, h*w, C]``, and the grid."""
        x, grid = self.tokens(images, layer, norm)
        return x[:, self.num_prefix_tokens :], grid

    def class_token(self, images: Tensor, layer: int = -1, norm: bool = True) -> Tensor:
        r"""The class token of :meth:`tokens`, ``[B, C]``; a ``TypeError`` when the model
        has none."""
        if not self.has_class_token:
            raise TypeError(f"backbone: {type(self.model).__name__} has no class token")
        return self.tokens(images, layer, norm)[0][:, 0]

    def qkv(
        self, images: Tensor, layer: int = -1
    ) -> Tuple[Tensor, Tensor, Tensor, Tuple[int, int]]:
        r"""Block ``layer``'s projections of its normed input, ``q, k, v`` each
        ``[B, heads, P + h*w, d]`` (prefix tokens first), and the grid. The block itself
        is not run."""
        index = self._layer(layer)
        x, grid = self.stream(images, index)
        block = self.blocks[index]
        with self.running():
            q, k, v = block.qkv(block.norm1(x))
        return q, k, v, grid

    def attention(self, images: Tensor, layer: int = -1) -> Tuple[Tensor, Tuple[int, int]]:
        r"""Block ``layer``'s own attention probabilities ``[B, heads, N, N]`` (softmax in
        float32, ``N = P + h*w``) and the grid."""
        q, k, _, grid = self.qkv(images, layer)
        block = self.blocks[self._layer(layer)]
        return block.attention_logits(q, k).float().softmax(dim=-1), grid

    def prepare(
        self,
        images: Tensor,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
    ) -> Tensor:
        r"""CLIP's (normalised) images as this backbone's input.

        The images are un-normalised with ``mean`` / ``std`` (the CLIP model's statistics)
        and normalised with the backbone's own (:attr:`image_mean`, :attr:`image_std`);
        with equal statistics (or ``mean`` / ``std`` omitted) they pass unchanged. A side
        that is not a multiple of the backbone's patch is resized (bilinear,
        ``align_corners=False``) to the nearest multiple (:func:`aligned_size`), so that the
        backbone's grid spans exactly the pixels CLIP's grid spans and the two grids line up
        under a bilinear resize. The result is on the backbone's device and in its dtype.

        Args:
            images (Tensor): ``[B, 3, H, W]``.
            mean (sequence of float, optional): the per-channel mean the images were
                normalised with.
            std (sequence of float, optional): their per-channel standard deviation.

        Returns:
            Tensor: ``[B, 3, H', W']`` on the backbone's device and dtype.
        """
        x = images.to(device=self.device, dtype=torch.float32)
        if mean is not None and std is not None and (
            tuple(float(m) for m in mean) != tuple(self.image_mean)
            or tuple(float(s) for s in std) != tuple(self.image_std)
        ):
            src_m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
            src_s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
            dst_m = torch.tensor(self.image_mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
            dst_s = torch.tensor(self.image_std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
            x = (x * src_s + src_m - dst_m) / dst_s
        size = aligned_size((x.shape[-2], x.shape[-1]), self.patch_size)
        if size != (x.shape[-2], x.shape[-1]):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x.to(self.dtype)


class CLIPTowerBackbone(VisionBackbone):
    r"""The image tower of a CLIP model the package adapts, as a second backbone.

    Its blocks, embedding and grid are the adapter's own
    (:class:`~captum_clip_surgery.adapters.base.ImageTowerView`); the final norm is the
    class-token head's ``post_norm`` (CLIP's ``ln_post``; identity for other heads); the
    input statistics are the model's. The positional table follows the caller's rule
    (the method's) unless ``positional_resize`` is given. Towers without attention blocks
    (CLIP ResNets, conv trunks) are refused.

    Args:
        model (nn.Module or CLIPAdapter): a CLIP model of a supported family, or its adapter.
        positional_resize (str, optional): a fixed positional rule; default the caller's.

    Examples::

        >>> backbone = CLIPTowerBackbone(model)
        >>> feats, grid = backbone.patch_tokens(images)     # ln_post(x_L) of every patch
    """

    family = "the image tower of any CLIP model the package adapts (ViT towers)"
    release_positional_resize = None

    def __init__(self, model: object, positional_resize: Optional[str] = None) -> None:
        from captum_clip_surgery.adapters.registry import get_adapter

        adapter = model if isinstance(model, CLIPAdapter) else get_adapter(model)
        super().__init__(adapter.model, positional_resize)
        image = adapter.image
        if not image.blocks:
            raise TypeError(
                "backbone: this CLIP image tower has no attention blocks (a conv trunk; pooling "
                f"head kind {image.kind!r}); a second backbone needs a ViT"
            )
        self.adapter = adapter
        self.image = image
        self.blocks = list(image.blocks)
        self.patch_size = tuple(image.patch_size)  # type: ignore[assignment]
        self.native_grid = tuple(image.native_grid)  # type: ignore[assignment]
        self.num_prefix_tokens = int(image.num_prefix_tokens)
        token = image.kind == "token" and self.num_prefix_tokens >= 1
        self.num_register_tokens = self.num_prefix_tokens - (1 if token else 0)
        self.image_mean = tuple(adapter.image_mean)  # type: ignore[assignment]
        self.image_std = tuple(adapter.image_std)  # type: ignore[assignment]

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        from captum_clip_surgery.adapters.registry import get_adapter

        if isinstance(model, CLIPAdapter):
            return True
        try:
            get_adapter(model)
        except TypeError:
            return False
        return True

    @property
    def dtype(self) -> torch.dtype:
        return self.adapter.dtype

    @property
    def device(self) -> torch.device:
        return self.adapter.device

    def embed_tokens(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        return self.image.embed(images)

    def final_norm(self, x: Tensor) -> Tensor:
        head = self.image.head
        return head.post_norm(x) if isinstance(head, ClassTokenHead) else x
