r"""Explanation methods: one module per method, their base classes and the registry.

- :mod:`~captum_clip_surgery.methods.base`: the classes a method subclasses;
- :mod:`~captum_clip_surgery.methods.registry`: one record per method
  (:func:`register_method`, :func:`build_method`, :func:`supported_methods`, ...);
- one module per method: ``clip_surgery``, ``raw``, ``maskclip``, ``gem``, ``sclip``,
  ``clearclip``, ``naclip``, ``legrad``, ``gradeclip``, ``chefer``, ``scclip``,
  ``resclip``, ``proxyclip``, ``cass``, ``corrclip``, and ``captum_methods`` (Captum's own methods as the
  registry builds them).

Names are imported on first use, so that reading the registry (the command line's
help) imports neither Captum nor the methods.
"""

from __future__ import annotations

from typing import Dict

from captum_clip_surgery._lazy import lazy_exports

#: public name -> module of this package that defines it
_LAZY: Dict[str, str] = {
    "ClassifierAttribution": "base",
    "LastBlockAttribution": "base",
    "RelevanceMapAttribution": "base",
    "TokenMapAttribution": "base",
    "CLIPSurgeryAttribution": "clip_surgery",
    "RawCLIPAttribution": "raw",
    "CLIPSimilarityMap": "raw",
    "MaskCLIPAttribution": "maskclip",
    "GEMAttribution": "gem",
    "SCLIPAttribution": "sclip",
    "ClearCLIPAttribution": "clearclip",
    "NACLIPAttribution": "naclip",
    "LeGradAttribution": "legrad",
    "GradECLIPAttribution": "gradeclip",
    "SCCLIPAttribution": "scclip",
    "ResCLIPAttribution": "resclip",
    "CheferAttribution": "chefer",
    "ProxyCLIPAttribution": "proxyclip",
    "CASSAttribution": "cass",
    "CASS_SETTINGS": "cass",
    "CorrCLIPAttribution": "corrclip",
    "CLIPAttentionRelevance": "chefer",
    "DEFAULT_METHODS": "registry",
    "DENSE_METHODS": "registry",
    "METHOD_NAMES": "registry",
    "TRAINING_FREE_METHODS": "registry",
    "MethodRecord": "registry",
    "build_method": "registry",
    "get_method": "registry",
    "method_defaults": "registry",
    "method_names": "registry",
    "method_title": "registry",
    "register_method": "registry",
    "supported_methods": "registry",
    "unregister_method": "registry",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
