r"""captum-clip-surgery: CLIP Surgery explanations for CLIP as Captum attributions.

Every public name is importable from here (``from captum_clip_surgery import compare``)
and is loaded from its layer on first use, so importing the package is cheap. The
layers, bottom to top (``docs/architecture.md``):

- :mod:`captum_clip_surgery._validation`: argument checks;
- :mod:`captum_clip_surgery.adapters`: the model adapter protocol, one module per
  model family, the adapter registry and :func:`~captum_clip_surgery.adapters.load_clip`;
- :mod:`captum_clip_surgery.core`: the classifier, text features, architecture and
  feature surgery, maps;
- :mod:`captum_clip_surgery.methods`: one module per method, their base classes and the
  method registry;
- :mod:`captum_clip_surgery.apps` and :mod:`captum_clip_surgery.scenes`: comparison and
  figures, segmentation, multi-label, text → points / SAM, text tokens; the scenes
  world and its shipped model;
- :mod:`captum_clip_surgery.evaluation`, :mod:`captum_clip_surgery.benchmark` and
  :mod:`captum_clip_surgery.explain`: the evaluation harness; the open-vocabulary
  segmentation benchmark; explaining folders of images;
- :mod:`captum_clip_surgery.web`: the page of ``clip-surgery serve`` (Gradio, imported
  only when a page is built);
- :mod:`captum_clip_surgery.cli`: the ``clip-surgery`` command.
"""

from __future__ import annotations

from typing import Dict

from captum_clip_surgery._lazy import lazy_exports

__version__ = "0.1.0"

#: public name -> the module that defines it
_LAZY: Dict[str, str] = {
    # adapters
    "CLIPAdapter": "adapters.base",
    "HFCLIPPair": "adapters.huggingface",
    "get_adapter": "adapters.registry",
    "get_backbone": "adapters.backbone_registry",
    "register_backbone": "adapters.backbone_registry",
    "VisionBackbone": "adapters.backbone",
    "load_backbone": "adapters.backbone_loading",
    "load_clip": "adapters.loading",
    "register_adapter": "adapters.registry",
    # core
    "CLIPZeroShotClassifier": "core.classifier",
    "DEFAULT_TEMPLATES": "core.text",
    "SCENE_TEMPLATES": "core.text",
    "feature_surgery_scores": "core.feature_surgery",
    "minmax_normalize": "core.maps",
    # methods: bases, methods, registry
    "ClassifierAttribution": "methods.base",
    "LastBlockAttribution": "methods.base",
    "RelevanceMapAttribution": "methods.base",
    "TokenMapAttribution": "methods.base",
    "CLIPSurgeryAttribution": "methods.clip_surgery",
    "RawCLIPAttribution": "methods.raw",
    "CLIPSimilarityMap": "methods.raw",
    "MaskCLIPAttribution": "methods.maskclip",
    "GEMAttribution": "methods.gem",
    "SCLIPAttribution": "methods.sclip",
    "ClearCLIPAttribution": "methods.clearclip",
    "NACLIPAttribution": "methods.naclip",
    "LeGradAttribution": "methods.legrad",
    "GradECLIPAttribution": "methods.gradeclip",
    "SCCLIPAttribution": "methods.scclip",
    "ResCLIPAttribution": "methods.resclip",
    "CheferAttribution": "methods.chefer",
    "ProxyCLIPAttribution": "methods.proxyclip",
    "CASSAttribution": "methods.cass",
    "CASS_SETTINGS": "methods.cass",
    "CorrCLIPAttribution": "methods.corrclip",
    "sam_mask_generator": "apps.region_masks",
    "region_majority_vote": "apps.region_masks",
    "CLIPAttentionRelevance": "methods.chefer",
    "DEFAULT_METHODS": "methods.registry",
    "DENSE_METHODS": "methods.registry",
    "METHOD_NAMES": "methods.registry",
    "TRAINING_FREE_METHODS": "methods.registry",
    "build_method": "methods.registry",
    "method_names": "methods.registry",
    "method_title": "methods.registry",
    "register_method": "methods.registry",
    "supported_methods": "methods.registry",
    # apps
    "channel_reduce": "apps.comparison",
    "compare": "apps.comparison",
    "plot_comparison": "apps.comparison",
    "plot_text_grid": "apps.comparison",
    "pamr": "apps.mask_refinement",
    "lposs": "apps.label_propagation",
    "lposs_plus": "apps.label_propagation",
    "lposs_scores": "apps.label_propagation",
    "multilabel_scores": "apps.multilabel",
    "text_presence": "apps.multilabel",
    "PointPrompts": "apps.points",
    "build_sam_predictor": "apps.points",
    "segment_with_sam": "apps.points",
    "text_to_points": "apps.points",
    "segment": "apps.segmentation",
    "sliding_window_scores": "apps.segmentation",
    "TextTokenExplanation": "apps.text_tokens",
    "explain_text_tokens": "apps.text_tokens",
    "plot_text_tokens": "apps.text_tokens",
    # the open-vocabulary segmentation benchmark
    "BenchmarkResult": "benchmark.runner",
    "ProtocolSegmenter": "benchmark.inference",
    "convert_coco_object": "benchmark.datasets",
    "get_preset": "benchmark.presets",
    "segmentation_benchmark": "benchmark.runner",
    # checks to trust the maps
    "QuantusCLIPModel": "evaluation.quantus_bridge",
    "quantus_evaluate": "evaluation.quantus_bridge",
    "quantus_explain_func": "evaluation.quantus_bridge",
    "randomized_copy": "evaluation.sanity",
    "sanity_checks": "evaluation.sanity",
    # explaining folders
    "ExplainInterrupted": "explain.folder",
    "ExplainSummary": "explain.folder",
    "OutputsExist": "explain.folder",
    "explain_images": "explain.folder",
    "explain_to_folder": "explain.folder",
    "read_rgb": "explain.images",
    # the web explorer (clip-surgery serve)
    "Explorer": "web.explorer",
    "build_app": "web.ui",
    "launch_app": "web.ui",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
