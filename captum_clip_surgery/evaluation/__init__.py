r"""Evaluation harness: the paper's explainability metrics, faithfulness, task metrics,
datasets and the runner (``evaluate``); checks to trust the maps: Quantus on every method
(``quantus_evaluate``; Quantus itself is imported only when it runs) and
model-randomisation sanity checks (``sanity_checks``)."""

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
from captum_clip_surgery.evaluation.pairs import DatasetPairs, dataset_pairs
from captum_clip_surgery.evaluation.quantus_bridge import (
    QUANTUS_IMAGES,
    QUANTUS_METRICS,
    QUANTUS_SETTINGS,
    QuantusCLIPModel,
    QuantusResult,
    quantus_evaluate,
    quantus_explain_func,
)
from captum_clip_surgery.evaluation.runner import EvaluationResult, evaluate, square_preprocess
from captum_clip_surgery.evaluation.sanity import (
    SANITY_MODES,
    SanityResult,
    randomized_copy,
    sanity_checks,
    spearman,
    ssim,
)
from captum_clip_surgery.evaluation.tasks import SegmentationMIoU, multilabel_map, segmentation_miou

__all__ = [
    "QUANTUS_IMAGES",
    "QUANTUS_METRICS",
    "QUANTUS_SETTINGS",
    "SANITY_MODES",
    "VOC_CLASSES",
    "DatasetPairs",
    "EvaluationResult",
    "FolderSegmentation",
    "ScenesSegmentation",
    "SegmentationMIoU",
    "QuantusCLIPModel",
    "QuantusResult",
    "SanityResult",
    "ThresholdIoU",
    "VOCSegmentationMasks",
    "best_threshold_miou",
    "dataset_pairs",
    "deletion_insertion",
    "energy_pointing_game",
    "evaluate",
    "infidelity_score",
    "mean_score_contrast",
    "multilabel_map",
    "pointing_game",
    "quantus_evaluate",
    "quantus_explain_func",
    "randomized_copy",
    "sanity_checks",
    "segmentation_miou",
    "sensitivity_score",
    "spearman",
    "square_preprocess",
    "ssim",
]
