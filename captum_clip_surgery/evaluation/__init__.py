r"""Evaluation harness: the paper's explainability metrics, faithfulness, task metrics,
datasets and the runner (``evaluate``)."""

from captum_clip_surgery.evaluation.datasets import (
    VOC_CLASSES,
    FolderSegmentation,
    ScenesSegmentation,
    VOCSegmentationMasks,
)
from captum_clip_surgery.evaluation.faithfulness import (
    deletion_insertion,
    infidelity_score,
    sensitivity_score,
)
from captum_clip_surgery.evaluation.localization import (
    ThresholdIoU,
    best_threshold_miou,
    energy_pointing_game,
    mean_score_contrast,
    pointing_game,
)
from captum_clip_surgery.evaluation.runner import EvaluationResult, evaluate, square_preprocess
from captum_clip_surgery.evaluation.tasks import SegmentationMIoU, multilabel_map, segmentation_miou

__all__ = [
    "VOC_CLASSES",
    "EvaluationResult",
    "FolderSegmentation",
    "ScenesSegmentation",
    "SegmentationMIoU",
    "ThresholdIoU",
    "VOCSegmentationMasks",
    "best_threshold_miou",
    "deletion_insertion",
    "energy_pointing_game",
    "evaluate",
    "infidelity_score",
    "mean_score_contrast",
    "multilabel_map",
    "pointing_game",
    "segmentation_miou",
    "sensitivity_score",
    "square_preprocess",
]
