r"""PAMR, pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020).

The function lives in :mod:`captum_clip_surgery.core.mask_refinement` (one layer down, so
that methods whose forward refines a first-pass segmentation, e.g. ResCLIP's semantic
feedback, can use it); this module keeps its import path for applications.
"""

from __future__ import annotations

from captum_clip_surgery.core.mask_refinement import pamr

__all__ = ["pamr"]
