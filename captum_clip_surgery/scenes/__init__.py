r"""The scenes world and the small CLIP trained on it (shipped with the package)."""

from captum_clip_surgery.scenes.model import load_scenes_clip
from captum_clip_surgery.scenes.world import BACKGROUNDS, OBJECTS, ScenesWorld

__all__ = ["BACKGROUNDS", "OBJECTS", "ScenesWorld", "load_scenes_clip"]
