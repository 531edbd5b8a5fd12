r"""Explain image files at scale: a streaming generator of maps
(:func:`explain_images`) and a resumable folder writer (:func:`explain_to_folder`),
both working under ``torchrun``, reading every file through one image reader
(:func:`read_rgb`). The command line's ``clip-surgery explain --images`` runs on them.
"""

from captum_clip_surgery.explain.folder import (
    IMAGE_EXTENSIONS,
    RECORDS_DIR,
    ExplainInterrupted,
    ExplainSummary,
    ImageFiles,
    OutputsExist,
    check_out_dir,
    explain_images,
    explain_to_folder,
    find_images,
)
from captum_clip_surgery.explain.images import (
    FIGURE_MAX_SIDE,
    MAX_PIXELS,
    display_size,
    read_rgb,
    working_size,
)

__all__ = [
    "FIGURE_MAX_SIDE",
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "RECORDS_DIR",
    "ExplainInterrupted",
    "ExplainSummary",
    "ImageFiles",
    "OutputsExist",
    "check_out_dir",
    "display_size",
    "explain_images",
    "explain_to_folder",
    "find_images",
    "read_rgb",
    "working_size",
]
