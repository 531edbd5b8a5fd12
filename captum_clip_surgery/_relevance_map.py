r"""Shared machinery of the gradient-map attributions (Chefer relevance, LeGrad, Grad-ECLIP)."""

from __future__ import annotations

import abc
from typing import Any, Optional, Sequence, Tuple, Union

from captum.log import log_usage
from torch import Tensor

from captum_clip_surgery._map_attribution import ClassifierAttribution
from captum_clip_surgery._maps import minmax_normalize, to_pixels
from captum_clip_surgery._validation import check_bool, unpack_inputs

__all__ = ["RelevanceMapAttribution"]


class RelevanceMapAttribution(ClassifierAttribution, abc.ABC):
    r"""Base class of attributions that compute a grid map per example by a backward pass.

    Subclasses provide :meth:`relevance` (``[B, 1, h, w]`` on the token grid of the
    padded input); this class turns it into Captum attributions: min-max per map,
    upsampled to the input with the padding left out.

    Args:
        forward_func (CLIPZeroShotClassifier or nn.Module): a classifier, or a CLIP
            model from which one is built with ``texts``.
        texts (list[str], optional): required when a model is given.
        templates (list[str], optional): prompt templates (model given only).
        tokenizer (Callable, optional): tokenizer (model given only).
    """

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
        maps = minmax_normalize(self.relevance(images, target, texts))
        if upsample_to_input:
            maps = to_pixels(maps, self.adapter.image.patch_size, images.shape[-2:])
        maps = maps.to(device=images.device, dtype=images.dtype)
        return (maps,) if is_tuple else maps
