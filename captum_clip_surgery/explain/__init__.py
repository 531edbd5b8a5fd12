r"""Explain image files at scale: a streaming generator of maps
(:func:`explain_images`) and a resumable folder writer (:func:`explain_to_folder`),
both working under ``torchrun``. The command line's ``clip-surgery explain --images``
runs on them.
"""

from captum_clip_surgery.explain.folder import (
    IMAGE_EXTENSIONS,
    ExplainSummary,
    ImageFiles,
    explain_images,
    explain_to_folder,
    find_images,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "ExplainSummary",
    "ImageFiles",
    "explain_images",
    "explain_to_folder",
    "find_images",
]
