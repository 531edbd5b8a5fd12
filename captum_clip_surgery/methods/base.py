r"""The base classes every attribution of the package derives from.

Subclass one of them to write a method (``docs/architecture.md`` has the recipe):

- :class:`ClassifierAttribution`: any attribution of a :class:`CLIPZeroShotClassifier`
  (takes the classifier, or a bare CLIP model with ``texts``);
- :class:`TokenMapAttribution`: methods that score every image token against every text
  (CLIP Surgery, the raw map, MaskCLIP, GEM ...); a subclass implements
  :meth:`~TokenMapAttribution.token_features` and gets :meth:`~TokenMapAttribution.similarity`,
  :meth:`~TokenMapAttribution.attribute`, feature surgery, segmentation and the folder
  explain path for free;
- :class:`LastBlockAttribution`: token-map methods that change the last attention block
  only (SCLIP, ClearCLIP, NACLIP); a subclass implements
  :meth:`~LastBlockAttribution.last_block_tokens`;
- :class:`RelevanceMapAttribution`: methods that compute one map per example and target
  by a backward pass (Chefer relevance, LeGrad, Grad-ECLIP); a subclass implements
  :meth:`~RelevanceMapAttribution.relevance`.

Each class states what the method registry reads from it: :attr:`~ClassifierAttribution.map_kind`,
:attr:`~ClassifierAttribution.head_kinds` and :attr:`~ClassifierAttribution.needs_blocks`.
Everything is computed functionally through the adapter views: no module of the user's
model is replaced, no parameter edited, no hook installed.
"""

from __future__ import annotations

import abc
import contextlib
import functools
from typing import (
    Any,
    Callable,
    ClassVar,
    ContextManager,
    Iterator,
    List,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import torch
import torch.nn.functional as F
from captum.attr import Attribution
from captum.log import log_usage
from torch import Tensor, nn

from captum_clip_surgery._validation import (
    check_bool,
    check_feature_surgery,
    prepare_images,
    resolve_target,
    unpack_inputs,
)
from captum_clip_surgery.adapters.base import (
    AttentionPoolHead,
    BlockView,
    CLIPAdapter,
    ImageTowerView,
    check_positional_resize,
    inference_mode_of,
    positional_resize,
)
from captum_clip_surgery.core.architecture import dense_rows, run_blocks
from captum_clip_surgery.core.classifier import CLIPZeroShotClassifier, as_classifier
from captum_clip_surgery.core.feature_surgery import check_distinct_texts
from captum_clip_surgery.core.feature_surgery import feature_surgery_scores as _feature_surgery
from captum_clip_surgery.core.maps import grid_extent, minmax_normalize, to_pixels, upsample
from captum_clip_surgery.core.text import validate_texts

__all__ = [
    "HEAD_KINDS",
    "ClassifierAttribution",
    "FeatureSurgery",
    "LastBlockAttribution",
    "RelevanceMapAttribution",
    "TokenMapAttribution",
    "dense_features",
    "original_last_block_pooled",
    "require_attention_blocks",
]

FeatureSurgery = Union[str, Tensor]

#: The pooling-head kinds of an image tower (:attr:`ImageTowerView.kind`).
HEAD_KINDS: Tuple[str, ...] = ("token", "attention", "average")

Tokenizer = Optional[Callable[[List[str]], Tensor]]


def require_attention_blocks(adapter: CLIPAdapter, method: str, what: str) -> None:
    r"""Raise ``TypeError`` (naming ``forward_func``) when the tower has no attention blocks.

    Args:
        adapter (CLIPAdapter): the model's adapter.
        method (str): the method's display name, e.g. ``"SCLIP"``.
        what (str): what the method changes, e.g. ``"the last block's attention"``.
    """
    image = adapter.image
    if not image.blocks:
        raise TypeError(
            f"forward_func: {method} changes {what}, but this model's image tower has no "
            f"attention blocks (a conv trunk; pooling head kind {image.kind!r}); use a tower "
            "with attention blocks (ViT), or 'surgery' / 'raw' / 'maskclip' for this model"
        )


def dense_features(image: ImageTowerView, tokens: Tensor, grid: Tuple[int, int]) -> Tensor:
    r"""The head applied to every grid token of a stream, ``[B, h*w, D]``.

    ``tokens`` is a ``[B, P + h*w, C]`` stream (``P`` prefix tokens). Class-token and
    average heads apply :meth:`~PoolingHead.dense` to the grid tokens; attention-pool
    heads first :meth:`~AttentionPoolHead.prepare` the stream (positional table, norm)
    and apply their value path to the grid rows of the prepared tokens.
    """
    head = image.head
    if isinstance(head, AttentionPoolHead):
        keys = head.prepare(tokens, image.num_prefix_tokens, grid)
        return head.dense(keys)[:, dense_rows(image) :]
    return head.dense(tokens[:, image.num_prefix_tokens :])


def original_last_block_pooled(
    image: ImageTowerView,
    block: BlockView,
    x: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    grid: Tuple[int, int],
) -> Tensor:
    r"""The model's own embedding ``[B, D]`` from the stream ``x`` entering its last block.

    ``q, k, v`` are the last block's projections of ``norm1(x)`` (shared with the
    method's own path). A class-token head reads the first token only, so the
    block is then run for that query row alone (the keys and values are all
    tokens, as in the model); other heads get the full block.
    """
    if image.head.kind == "token":
        q, x = q[:, :, :1], x[:, :1]
    x = block.residual(x, block.original_attention(q, k, v))
    return image.head.pool(x, image.num_prefix_tokens, grid)


def _in_running(fn: Callable[..., Any]) -> Callable[..., Any]:
    r"""``fn(self, ...)`` run inside ``self.running()``."""

    @functools.wraps(fn)
    def wrapped(self: ClassifierAttribution, *args: Any, **kwargs: Any) -> Any:
        with self.running():
            return fn(self, *args, **kwargs)

    wrapped._in_running = True  # type: ignore[attr-defined]
    return wrapped


class ClassifierAttribution(Attribution):
    r"""A Captum attribution explaining a :class:`CLIPZeroShotClassifier`.

    Takes the classifier, or a CLIP model from which one is built with ``texts``
    (and optional ``templates`` / ``tokenizer``); every attribution of the package
    derives from it.

    A subclass implements Captum's ``attribute`` (or derives from one of the bases
    below that implement it) and sets the class attributes the method registry reads:
    :attr:`map_kind`, :attr:`head_kinds` and :attr:`needs_blocks` (or overrides
    :meth:`unsupported_reason` for a finer rule).

    Args:
        forward_func (CLIPZeroShotClassifier or nn.Module): a classifier, or a
            CLIP model from which one is built with ``texts``.
        texts (list[str], optional): required when a model is given.
        templates (list[str], optional): prompt templates (model given only).
        tokenizer (Callable, optional): tokenizer (model given only).
        positional_resize (str, optional): how the positional embedding is resized
            at a non-native input size (see
            :data:`~captum_clip_surgery.adapters.base.POSITIONAL_RESIZE_MODES`); default
            the method's release (:attr:`default_positional_resize`).
    """

    #: What the method computes: ``"token"`` (scores of every image token against every
    #: text; usable for segmentation), ``"relevance"`` (one map per example and target,
    #: by a backward pass), ``"gradient"`` or ``"perturbation"`` (Captum's pixel methods).
    map_kind: ClassVar[str] = ""
    #: The pooling-head kinds of image towers the method is defined for.
    head_kinds: ClassVar[Tuple[str, ...]] = HEAD_KINDS
    #: Whether the method needs attention blocks in the image tower (ViTs, not CLIP
    #: ResNets or conv trunks).
    needs_blocks: ClassVar[bool] = False
    #: How the method's release resizes the positional embedding to another input size.
    default_positional_resize: ClassVar[str] = "bilinear"

    def __init__(
        self,
        forward_func: Union[CLIPZeroShotClassifier, nn.Module],
        texts: Optional[Sequence[str]] = None,
        templates: Optional[Sequence[str]] = None,
        tokenizer: Tokenizer = None,
        *,
        positional_resize: Optional[str] = None,
    ) -> None:
        mode = self.default_positional_resize if positional_resize is None else positional_resize
        self.positional_resize = check_positional_resize(mode)
        classifier = as_classifier(forward_func, texts, templates, tokenizer)
        super().__init__(classifier)
        self.classifier = classifier

    def __init_subclass__(cls, **kwargs: Any) -> None:
        r"""A subclass's ``token_features`` and ``relevance`` run in the method's
        positional-resize rule (:meth:`running`) however they are called."""
        super().__init_subclass__(**kwargs)
        for name in ("token_features", "relevance"):
            fn = cls.__dict__.get(name)
            if fn is None or getattr(fn, "__isabstractmethod__", False) or getattr(
                fn, "_in_running", False
            ):
                continue
            setattr(cls, name, _in_running(fn))

    def running(self) -> ContextManager[None]:
        r"""The context of the method's own forward: the positional embedding resized by
        :attr:`positional_resize`. :meth:`~TokenMapAttribution.similarity`,
        :meth:`~TokenMapAttribution.attribute` and
        :meth:`~RelevanceMapAttribution.relevance` enter it, and so does a subclass's
        ``token_features`` or ``relevance`` whenever it is called."""
        return positional_resize(self.positional_resize)

    @classmethod
    def unsupported_reason(cls, adapter: CLIPAdapter) -> Optional[str]:
        r"""Why the method is not defined for the model behind ``adapter``, or ``None``
        when it is. The default reads :attr:`head_kinds` and :attr:`needs_blocks`.

        Args:
            adapter (CLIPAdapter): the model's adapter.

        Returns:
            str or None: a reason, e.g. ``"needs attention blocks"``.
        """
        image = adapter.image
        if image.kind not in cls.head_kinds:
            return f"not defined for a {image.kind!r} pooling head"
        if cls.needs_blocks and not image.blocks:
            return "needs attention blocks in the image tower"
        return None

    @property
    def adapter(self) -> CLIPAdapter:
        r"""The model adapter."""
        return self.classifier.adapter

    @property
    def multiplies_by_inputs(self) -> bool:
        return False


class TokenMapAttribution(ClassifierAttribution, abc.ABC):
    r"""Base class of attributions that score every image token against texts.

    A subclass implements :meth:`token_features` (and may set
    :attr:`default_feature_surgery`); this class turns them into similarity grids
    (:meth:`similarity`), Captum attributions (:meth:`attribute`) and maps for many
    texts from one forward (:meth:`maps_from_scores`). Such a method also works with
    :func:`~captum_clip_surgery.segment`, :func:`~captum_clip_surgery.text_to_points`
    and the folder explain path, which score every text in one pass.

    Args:
        forward_func (CLIPZeroShotClassifier or nn.Module): a classifier, or a
            CLIP model from which one is built with ``texts``.
        texts (list[str], optional): required when a model is given.
        templates (list[str], optional): prompt templates (model given only).
        tokenizer (Callable, optional): tokenizer (model given only).
    """

    map_kind: ClassVar[str] = "token"
    #: The feature surgery of calls that do not ask for one (see :meth:`similarity`).
    default_feature_surgery: FeatureSurgery = "none"

    @abc.abstractmethod
    def token_features(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        r"""Joint-space features of every token ``[B, 1 + h*w, D]`` (class first,
        not normalised) and the grid ``(h, w)``, for prepared images."""

    def _texts(self, texts: Optional[Sequence[str]]) -> List[str]:
        return list(self.classifier.texts) if texts is None else validate_texts(texts)

    def _scores(
        self, images: Tensor, texts: List[str], mode: FeatureSurgery
    ) -> Tuple[Tensor, Tuple[int, int]]:
        check_feature_surgery(mode)
        grad = torch.is_grad_enabled() and images.requires_grad
        classes = not isinstance(mode, Tensor) and (
            mode == "classes" or (mode == "auto" and len(texts) >= 2)
        )
        with inference_mode_of(self.classifier.model), torch.set_grad_enabled(grad), \
                self.running():
            e = self.classifier.encode_texts(texts)
            if classes:  # duplicate texts cancel out: refused before the image forward
                check_distinct_texts(texts, e)
            feats, grid = self.token_features(images)
            f = F.normalize(feats.float(), dim=-1)
            s = self.text_scores(f, e, texts, mode)
        return s, grid

    def text_scores(
        self, features: Tensor, text_features: Tensor, texts: List[str], mode: FeatureSurgery
    ) -> Tensor:
        r"""Scores ``[B, 1 + h*w, T]`` of unit token features ``[B, 1 + h*w, D]`` against
        unit text features ``[T, D]`` under the feature surgery ``mode`` (see
        :meth:`similarity`). A method that changes the text side per image (CASS) overrides
        it."""
        f, e = features, text_features
        if isinstance(mode, Tensor):
            return _feature_surgery(f, e, "redundant", mode.to(f.device))
        if mode == "empty" or (mode == "auto" and len(texts) < 2):
            return _feature_surgery(f, e, "redundant", self.classifier.empty_text_features())
        if mode in ("classes", "auto"):
            return _feature_surgery(f, e, "classes")
        return _feature_surgery(f, e, "none")

    def sliding_windows(self, images: Tensor) -> ContextManager[None]:
        r"""The context in which :func:`~captum_clip_surgery.sliding_window_scores` scores
        the windows of ``images`` (prepared, not padded); by default nothing. A method that
        reads the whole image while scoring its windows (CASS's global scores) overrides it.
        """
        return contextlib.nullcontext()

    def similarity(
        self,
        images: Tensor,
        texts: Optional[Sequence[str]] = None,
        feature_surgery: Optional[FeatureSurgery] = None,
    ) -> Tensor:
        r"""Token-grid scores before normalisation, ``[B, T, h, w]`` (float32).

        Args:
            images (Tensor): preprocessed images ``[B, 3, H, W]``.
            texts (list[str], optional): texts to score; default the classifier's.
            feature_surgery (str or Tensor, optional): ``"auto"`` (class-set
                surgery with >= 2 texts, else empty-string surgery), ``"classes"``,
                ``"empty"``, ``"none"``, or a tensor of redundant features
                (``[C]`` or ``[T, C]``) subtracted from the text features.
                Default: this attribution's own default.

        Returns:
            Tensor: ``[B, T, h, w]``; the grid covers the input padded at the
            bottom / right to a multiple of the patch (stride), see :meth:`attribute`.
        """
        texts_ = self._texts(texts)
        mode = self.default_feature_surgery if feature_surgery is None else feature_surgery
        prepared = prepare_images(self.adapter, images, "images")
        s, (h, w) = self._scores(prepared, texts_, mode)
        b = s.shape[0]
        return s[:, 1:, :].transpose(1, 2).reshape(b, len(texts_), h, w)

    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor]],
        target: Any = None,
        additional_forward_args: Any = None,
        texts: Optional[Sequence[str]] = None,
        feature_surgery: Optional[FeatureSurgery] = None,
        upsample_to_input: bool = True,
    ) -> Union[Tensor, Tuple[Tensor]]:
        r"""One normalised map per example for its target text.

        Args:
            inputs (Tensor or tuple[Tensor]): preprocessed images ``[B, 3, H, W]``,
                or a 1-tuple of them (the output then is a 1-tuple too).
            target (int, str, list, Tensor, optional): the text to explain: an
                index into the texts, one of the texts, or one of those per
                example. May be omitted when there is one text.
            additional_forward_args (Any, optional): accepted for Captum
                compatibility; the maps do not depend on them.
            texts (list[str], optional): texts for this call (encoded once and
                cached); default the classifier's texts.
            feature_surgery (str or Tensor, optional): see :meth:`similarity`.
            upsample_to_input (bool): bilinearly upsample to the input's ``H×W``
                (default); ``False`` returns the token grid ``[B, 1, h, w]``. An
                input whose sides are not a multiple of the patch (stride) is
                padded at the bottom / right to the next multiple: the grid then
                covers the padding too, and the upsampled map leaves it out, so
                each map pixel lines up with the input pixel the model saw.

        Returns:
            Tensor or tuple[Tensor]: ``[B, 1, H, W]`` maps in ``[0, 1]`` (min-max
            per map, computed in float32), on the inputs' device and in their dtype.

        Examples::

            >>> explainer.attribute(images, target="dog").shape
            torch.Size([8, 1, 224, 224])
        """
        images, is_tuple = unpack_inputs(inputs)
        check_bool("upsample_to_input", upsample_to_input)
        texts_ = self._texts(texts)
        prepared = prepare_images(self.adapter, images)
        index = resolve_target(target, prepared.shape[0], texts_)
        mode = self.default_feature_surgery if feature_surgery is None else feature_surgery
        s, (h, w) = self._scores(prepared, texts_, mode)
        b = s.shape[0]
        picked = s[torch.arange(b, device=s.device), 1:, index.to(s.device)]
        maps = self.maps_from_scores(picked.reshape(b, 1, h, w), images, upsample_to_input)
        return (maps,) if is_tuple else maps

    def maps_from_scores(
        self, scores: Tensor, images: Tensor, upsample_to_input: bool = True
    ) -> Tensor:
        r"""Token-grid scores to maps, as :meth:`attribute` does: min-max per map (in
        float32), then upsampled to the images' pixels (padding left out).

        With :meth:`similarity` this explains one image for many texts from a single
        forward: ``explainer.maps_from_scores(explainer.similarity(images)[i, ks][None],
        images[i : i + 1])`` equals ``attribute`` for each text ``k`` of ``ks``.

        Args:
            scores (Tensor): ``[B, K, h, w]`` scores of :meth:`similarity` (any rows).
            images (Tensor): the images the scores belong to (for size, device, dtype).
            upsample_to_input (bool): as in :meth:`attribute`.

        Returns:
            Tensor: ``[B, K, H, W]`` (or ``[B, K, h, w]``) maps in ``[0, 1]``.
        """
        maps = minmax_normalize(scores)
        if upsample_to_input:
            size = (int(images.shape[-2]), int(images.shape[-1]))
            maps = upsample(maps, size, self.token_extent((maps.shape[-2], maps.shape[-1]), size))
        return maps.to(device=images.device, dtype=images.dtype)

    def token_extent(
        self, grid: Tuple[int, int], input_size: Tuple[int, int]
    ) -> Tuple[float, float]:
        r"""The fraction ``(fy, fx)`` of a ``grid`` of this method's maps that an input of
        ``input_size`` pixels covers, from the grid's top-left corner (the rest is the
        padding :func:`~captum_clip_surgery._validation.prepare_images` added).

        The default is the grid of the model's patches over the padded input
        (:func:`~captum_clip_surgery.core.maps.grid_extent`); a method whose maps lie on
        another grid over the padded input (a second backbone's) overrides it. Used by
        :meth:`maps_from_scores`, :func:`~captum_clip_surgery.segment` and
        :func:`~captum_clip_surgery.text_to_points` to line the maps up with the input.

        Args:
            grid (tuple[int, int]): ``(h, w)`` of the maps.
            input_size (tuple[int, int]): ``(H, W)`` of the input before padding.

        Returns:
            tuple[float, float]: ``(fy, fx)`` in ``(0, 1]``.
        """
        return grid_extent(grid, self.adapter.image.patch_size, input_size)


class RelevanceMapAttribution(ClassifierAttribution, abc.ABC):
    r"""Base class of attributions that compute a grid map per example by a backward pass.

    A subclass implements :meth:`relevance` (``[B, 1, h, w]`` on the token grid of the
    padded input, for each example's target); this class turns it into Captum
    attributions: min-max per map, upsampled to the input with the padding left out.

    Args:
        forward_func (CLIPZeroShotClassifier or nn.Module): a classifier, or a CLIP
            model from which one is built with ``texts``.
        texts (list[str], optional): required when a model is given.
        templates (list[str], optional): prompt templates (model given only).
        tokenizer (Callable, optional): tokenizer (model given only).
    """

    map_kind: ClassVar[str] = "relevance"
    needs_blocks: ClassVar[bool] = True

    @contextlib.contextmanager
    def gradient_inputs(
        self, images: Tensor, target: Any = None, texts: Optional[Sequence[str]] = None
    ) -> Iterator[Tuple[Tensor, Tensor, Tensor]]:
        r"""The context of one relevance computation: gradients on (also under
        ``torch.no_grad()`` / ``torch.inference_mode()``), the model in inference
        behaviour (its mode restored on exit).

        Args:
            images (Tensor): ``[B, 3, H, W]``.
            target: as in :meth:`attribute`.
            texts (list[str], optional): texts for this call (default the classifier's).

        Yields:
            tuple: ``(prepared images, detached [B, 3, H', W'], target indices [B] on
            their device, unit text features [T, D] of the texts)``.
        """
        texts_ = list(self.classifier.texts) if texts is None else validate_texts(texts)
        with torch.inference_mode(False), torch.enable_grad(), inference_mode_of(
            self.classifier.model
        ), self.running():
            prepared = prepare_images(self.adapter, images).detach().clone()
            index = resolve_target(target, prepared.shape[0], texts_).to(prepared.device)
            yield prepared, index, self.classifier.encode_texts(texts_)

    @abc.abstractmethod
    def relevance(
        self, images: Tensor, target: Any = None, texts: Optional[Sequence[str]] = None
    ) -> Tensor:
        r"""The map of every grid token, ``[B, 1, h, w]`` (float32, not normalised)."""

    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor]],
        target: Any = None,
        additional_forward_args: Any = None,
        texts: Optional[Sequence[str]] = None,
        upsample_to_input: bool = True,
    ) -> Union[Tensor, Tuple[Tensor]]:
        r"""One normalised map per example for its target text.

        Args:
            inputs (Tensor or tuple[Tensor]): images ``[B, 3, H, W]`` or a 1-tuple.
            target (int, str, list, Tensor, optional): same forms as
                :meth:`CLIPSurgeryAttribution.attribute`.
            additional_forward_args (Any, optional): accepted for Captum
                compatibility, unused.
            texts (list[str], optional): texts for this call.
            upsample_to_input (bool): upsample to ``H×W`` (default) or return the
                token grid ``[B, 1, h, w]``.

        Returns:
            Tensor or tuple[Tensor]: maps in ``[0, 1]`` (min-max per map), on the
            inputs' device and in their dtype.

        Examples::

            >>> explainer.attribute(images, target="dog").shape
            torch.Size([8, 1, 224, 224])
        """
        images, is_tuple = unpack_inputs(inputs)
        check_bool("upsample_to_input", upsample_to_input)
        maps = self._finish(self.relevance(images, target, texts), images, upsample_to_input)
        return (maps,) if is_tuple else maps

    def _finish(self, grid: Tensor, images: Tensor, upsample_to_input: bool) -> Tensor:
        maps = minmax_normalize(grid)
        if upsample_to_input:
            maps = to_pixels(maps, self.adapter.image.patch_size, images.shape[-2:])
        return maps.to(device=images.device, dtype=images.dtype)

    def relevance_per_text(self, images: Tensor, texts: Optional[Sequence[str]] = None) -> Tensor:
        r"""The map of every grid token for every text, ``[B, T, h, w]`` (float32, not
        normalised): row ``t`` is :meth:`relevance` with target ``t`` for every image. The
        default calls :meth:`relevance` once per text; a method whose texts can share one
        forward overrides it (LeGrad).

        Args:
            images (Tensor): ``[B, 3, H, W]``.
            texts (list[str], optional): texts (default the classifier's).

        Returns:
            Tensor: float32 ``[B, T, h, w]``.
        """
        texts_ = list(self.classifier.texts) if texts is None else validate_texts(texts)
        return torch.cat([self.relevance(images, t, texts_) for t in range(len(texts_))], dim=1)

    def attribute_per_text(
        self,
        images: Tensor,
        texts: Optional[Sequence[str]] = None,
        upsample_to_input: bool = True,
    ) -> Tensor:
        r"""Every image explained for every text, as :meth:`attribute` explains one target:
        ``[B, T, H, W]`` maps in ``[0, 1]`` (min-max per map), from
        :meth:`relevance_per_text`.

        Args:
            images (Tensor): ``[B, 3, H, W]``.
            texts (list[str], optional): texts (default the classifier's).
            upsample_to_input (bool): upsample to ``H×W`` (default) or return the grid.

        Returns:
            Tensor: ``[B, T, H, W]`` (or ``[B, T, h, w]``), on the images' device and in
            their dtype.

        Examples::

            >>> LeGradAttribution(clf).attribute_per_text(images).shape   # 3 texts
            torch.Size([8, 3, 224, 224])
        """
        check_bool("upsample_to_input", upsample_to_input)
        return self._finish(self.relevance_per_text(images, texts), images, upsample_to_input)


class LastBlockAttribution(TokenMapAttribution, abc.ABC):
    r"""Base of the methods that change the last attention block only.

    Blocks before the last run unchanged; in the last block ``q, k, v`` come from
    ``norm1`` of the stream as in the model, and :meth:`last_block_tokens` builds
    the method's output tokens from them. Row 0 of :meth:`token_features` is the
    unmodified model's embedding; rows 1.. are the head applied per grid token of
    the method's output (:func:`dense_features`).

    A subclass implements :meth:`last_block_tokens` and sets :attr:`method_name`
    (used in error messages); a tower without attention blocks is refused with a
    ``TypeError``.

    Args:
        forward_func (CLIPZeroShotClassifier or nn.Module): a classifier, or a
            CLIP model from which one is built with ``texts``.
        texts (list[str], optional): required when a model is given.
        templates (list[str], optional): prompt templates (model given only).
        tokenizer (Callable, optional): tokenizer (model given only).
    """

    needs_blocks: ClassVar[bool] = True
    default_feature_surgery: FeatureSurgery = "none"
    #: display name used in error messages
    method_name: ClassVar[str] = ""

    def __init__(
        self,
        forward_func: Union[CLIPZeroShotClassifier, nn.Module],
        texts: Optional[Sequence[str]] = None,
        templates: Optional[Sequence[str]] = None,
        tokenizer: Tokenizer = None,
        *,
        positional_resize: Optional[str] = None,
    ) -> None:
        super().__init__(forward_func, texts, templates, tokenizer,
                         positional_resize=positional_resize)
        require_attention_blocks(self.adapter, self.method_name, "the last block's attention")

    @abc.abstractmethod
    def last_block_tokens(
        self, block: BlockView, x: Tensor, q: Tensor, k: Tensor, v: Tensor, grid: Tuple[int, int]
    ) -> Tensor:
        r"""The method's output tokens ``[B, P + h*w, C]`` of the last block.

        Args:
            block (BlockView): the last block.
            x (Tensor): the stream entering it, ``[B, P + h*w, C]``.
            q, k, v (Tensor): its projections of ``norm1(x)``, ``[B, heads, N, d]``.
            grid (tuple[int, int]): the patch grid ``(h, w)``.
        """

    def token_features(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        r"""Token features ``[B, 1 + h*w, D]`` (row 0 the model's own embedding) and
        the grid ``(h, w)``."""
        image = self.adapter.image
        x, grid = image.embed(images)
        x = run_blocks(image, x, grid, len(image.blocks) - 1)
        block = image.blocks[-1]
        q, k, v = block.qkv(block.norm1(x))
        tokens = self.last_block_tokens(block, x, q, k, v, grid)
        pooled = original_last_block_pooled(image, block, x, q, k, v, grid)
        return torch.cat([pooled[:, None], dense_features(image, tokens, grid)], dim=1), grid
