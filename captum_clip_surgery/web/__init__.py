r"""The web explorer behind ``clip-surgery serve``: a Gradio page over one loaded model.

- :mod:`~captum_clip_surgery.web.explorer`: everything the page computes, in plain
  functions (:class:`Explorer`: maps, segmentation, point prompts; the files offered
  for download; the held-out scene gallery), tested without a browser;
- :mod:`~captum_clip_surgery.web.figures`: its figures;
- :mod:`~captum_clip_surgery.web.ui`: the Gradio page (:func:`build_app`,
  :func:`launch_app`), the only module that imports Gradio (``pip install
  'captum-clip-surgery[app]'``), and only when a page is built.

Examples::

    >>> from captum_clip_surgery.scenes import load_scenes_clip
    >>> from captum_clip_surgery.web import Explorer, launch_app
    >>> model, _, tokenizer = load_scenes_clip()
    >>> launch_app(Explorer(model, tokenizer, name="scenes CLIP"))   # http://127.0.0.1:7860
"""

from __future__ import annotations

from typing import Dict

from captum_clip_surgery._lazy import lazy_exports

_LAZY: Dict[str, str] = {
    "Explanation": "explorer",
    "Explorer": "explorer",
    "InputError": "explorer",
    "PointsResult": "explorer",
    "Scene": "explorer",
    "Segmentation": "explorer",
    "parse_texts": "explorer",
    "scene_gallery": "explorer",
    "plot_explanation": "figures",
    "plot_points": "figures",
    "plot_segmentation": "figures",
    "build_app": "ui",
    "launch_app": "ui",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
