r"""The open-vocabulary segmentation benchmark of training-free CLIP methods (VOC20, VOC21,
PASCAL Context59 / 60, COCO-Object, COCO-Stuff171, Cityscapes, ADE20k, and the package's
scenes world) under the published protocols of SCLIP, ClearCLIP, NACLIP and ProxyCLIP.

- :mod:`~captum_clip_surgery.benchmark.presets`: the four protocols as data, each value
  citing its source line;
- :mod:`~captum_clip_surgery.benchmark.datasets`: the folder layouts, the class-name files
  (package data), the scenes world as a dataset, COCO-Object from COCO-Stuff164k;
- :mod:`~captum_clip_surgery.benchmark.inputs`: images and labels read as the protocol
  reads them (OpenCV decoding and resizing);
- :mod:`~captum_clip_surgery.benchmark.inference`: windows of several images per forward,
  the protocol's post-processing;
- :mod:`~captum_clip_surgery.benchmark.metrics`: mmsegmentation's mIoU / aAcc;
- :mod:`~captum_clip_surgery.benchmark.runner`: :func:`segmentation_benchmark` (streamed,
  resumable, under ``torchrun``) and its tables. ``clip-surgery benchmark`` runs it.

Names are imported on first use, so that building the command line's parser (which reads
the preset names) imports neither torch's model code nor OpenCV.
"""

from __future__ import annotations

from typing import Dict

from captum_clip_surgery._lazy import lazy_exports

#: public name -> module of this package that defines it
_LAZY: Dict[str, str] = {
    "BENCHMARK_DATASETS": "datasets",
    "LAYOUTS": "datasets",
    "DatasetLayout": "datasets",
    "ScenesBenchmarkDataset": "datasets",
    "SegmentationFiles": "datasets",
    "convert_coco_object": "datasets",
    "read_class_file": "datasets",
    "ProtocolSegmenter": "inference",
    "ConfusionMatrix": "metrics",
    "segmentation_metrics": "metrics",
    "PRESET_FIELDS": "presets",
    "PRESETS": "presets",
    "DatasetSettings": "presets",
    "Preset": "presets",
    "ProtocolSettings": "presets",
    "get_preset": "presets",
    "preset_names": "presets",
    "BenchmarkResult": "runner",
    "DatasetResult": "runner",
    "MethodScores": "runner",
    "segmentation_benchmark": "runner",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
