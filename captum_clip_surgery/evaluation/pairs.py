r"""The (image, present class) pairs of a segmentation dataset as one batch: what the
trust checks (:mod:`~captum_clip_surgery.evaluation.sanity`,
:mod:`~captum_clip_surgery.evaluation.quantus_bridge`) explain."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_clip_surgery._validation import check_int
from captum_clip_surgery.adapters.loading import square_preprocess
from captum_clip_surgery.core.classifier import CLIPZeroShotClassifier

__all__ = ["DatasetPairs", "check_method_names", "dataset_pairs"]


@dataclass
class DatasetPairs:
    r"""Every (image, present class) pair of the first images of a dataset.

    Attributes:
        images (Tensor): ``[N, 3, H, W]`` preprocessed images, row ``r`` the image of pair
            ``r`` (an image with several classes appears once per class).
        targets (Tensor): ``[N]`` class indices (int64).
        masks (Tensor): ``[N, 1, H, W]`` bool, the class's mask resized (nearest) to the
            images' size.
        pairs (list[tuple[int, str]]): ``(dataset index, class name)`` per row.
        num_images (int): images read.
    """

    images: Tensor
    targets: Tensor
    masks: Tensor
    pairs: List[Tuple[int, str]]
    num_images: int

    def __len__(self) -> int:
        return len(self.pairs)


def dataset_pairs(
    dataset: Any,
    classifier: CLIPZeroShotClassifier,
    limit: int,
    preprocess: Optional[Callable[[Any], Tensor]] = None,
) -> DatasetPairs:
    r"""The (image, present class) pairs of the first ``limit`` images of ``dataset``.

    Args:
        dataset: a dataset of :mod:`~captum_clip_surgery.evaluation.datasets` (items with
            ``image``, ``masks``, ``present``, ``index``; ``class_names``).
        classifier (CLIPZeroShotClassifier): its texts must be the dataset's class names.
        limit (int): images read (fewer when the dataset is shorter).
        preprocess (Callable, optional): PIL image → ``[3, H, W]``; default a square resize
            to the model's input size with its normalisation.

    Returns:
        DatasetPairs: the batch, on the model's device.

    Raises:
        ValueError: when the classifier's texts are not the dataset's classes, or the images
            hold no class at all.

    Examples::

        >>> pairs = dataset_pairs(ScenesSegmentation(size=4), clf, limit=4)
        >>> pairs.images.shape[0] == len(pairs.pairs)
        True
    """
    if not isinstance(classifier, CLIPZeroShotClassifier):
        raise TypeError(
            f"classifier: expected a CLIPZeroShotClassifier, got {type(classifier).__name__}"
        )
    check_int("limit", limit, minimum=1)
    if preprocess is not None and not callable(preprocess):
        raise TypeError(
            f"preprocess: expected a callable PIL image -> [3, h, w] tensor, got "
            f"{type(preprocess).__name__}"
        )
    class_names = list(getattr(dataset, "class_names", []))
    if class_names != list(classifier.texts):
        raise ValueError(
            "classifier: its texts must be the dataset's class_names "
            f"({len(class_names)} names), got {len(classifier.texts)} texts"
        )
    if preprocess is None:
        adapter = classifier.adapter
        preprocess = square_preprocess(int(adapter.input_size()[0]), adapter.image_mean,
                                       adapter.image_std)
    images: List[Tensor] = []
    targets: List[int] = []
    masks: List[Tensor] = []
    pairs: List[Tuple[int, str]] = []
    count = min(limit, len(dataset))
    for i in range(count):
        item = dataset[i]
        image = preprocess(item["image"])
        for c in torch.nonzero(item["present"]).flatten().tolist():
            mask = item["masks"][c][None, None].float()
            mask = F.interpolate(mask, size=image.shape[-2:], mode="nearest")[0] > 0.5
            images.append(image)
            targets.append(c)
            masks.append(mask)
            pairs.append((int(item["index"]), class_names[c]))
    if not pairs:
        raise ValueError(f"dataset: the first {count} images hold no class to explain")
    device = classifier.adapter.device
    return DatasetPairs(
        images=torch.stack(images).to(device),
        targets=torch.tensor(targets, dtype=torch.int64),
        masks=torch.stack(masks),
        pairs=pairs,
        num_images=count,
    )


def check_method_names(methods: Optional[Sequence[str]], classifier: CLIPZeroShotClassifier,
                       ) -> List[str]:
    r"""Registered method names defined for the classifier's model (default: all of them).

    The trust checks rebuild each method on other models (a randomised copy), so they
    take registry names, not attribution objects bound to one classifier.
    """
    from captum_clip_surgery.methods.registry import get_method, supported_methods

    defined = supported_methods(classifier)
    if methods is None:
        return list(defined)
    if isinstance(methods, str) or not all(isinstance(m, str) for m in methods):
        raise TypeError(
            "methods: expected a list of registered method names (the checks rebuild each "
            f"method on a randomised copy of the model), got {methods!r}"
        )
    names = list(dict.fromkeys(methods))
    if not names:
        raise ValueError("methods: expected at least one method, got none")
    for name in names:
        record = get_method(name)  # unknown names: a ValueError listing the known ones
        reason = record.unsupported_reason(classifier.adapter)
        if reason is not None:
            raise ValueError(f"methods: {name!r} cannot run on this model ({reason})")
    return names
