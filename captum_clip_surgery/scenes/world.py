r"""A procedural world of scenes with exact ground-truth masks.

Each scene is a 96x96 background "stuff" texture with one to three foreground
objects. Object identity is carried by colour and texture (shape and size vary
freely); backgrounds use colours and textures that no object uses. Rendering is pure numpy without anti-aliasing, so
every mask equals the rendered object pixels exactly (later objects occlude
earlier ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

__all__ = ["BACKGROUNDS", "HELD_OUT_START", "OBJECTS", "ScenesWorld"]

#: First scene index never used for training (training uses ``step * batch + j``,
#: far below it); evaluation and tests draw held-out scenes from here on.
HELD_OUT_START = 1_000_000


@dataclass(frozen=True)
class _Look:
    colour: Tuple[int, int, int]
    pattern: str  # "plain", "dots", "stripes", "speckles", "bricks", "waves", "mottled", "grain"
    accent: Tuple[int, int, int] = (255, 255, 255)


#: Foreground classes: name -> colour and texture.
OBJECTS: Dict[str, _Look] = {
    "tomato": _Look((215, 30, 30), "plain"),
    "lemon": _Look((245, 225, 40), "plain"),
    "orange": _Look((250, 140, 20), "speckles", (255, 190, 90)),
    "grape": _Look((125, 35, 160), "plain"),
    "blueberry": _Look((35, 45, 150), "dots", (170, 180, 240)),
    "watermelon": _Look((250, 95, 135), "dots", (30, 20, 20)),
    "kiwi": _Look((135, 155, 55), "speckles", (40, 30, 10)),
    "mint candy": _Look((40, 210, 200), "stripes", (250, 250, 250)),
}

#: Background ("stuff") classes: name -> colour and texture.
BACKGROUNDS: Dict[str, _Look] = {
    "grass": _Look((55, 120, 35), "mottled", (30, 85, 20)),
    "sand": _Look((215, 190, 140), "grain", (190, 165, 115)),
    "water": _Look((45, 95, 185), "waves", (90, 140, 220)),
    "snow": _Look((238, 240, 245), "grain", (205, 210, 222)),
    "brick": _Look((150, 100, 85), "bricks", (175, 170, 160)),
    "asphalt": _Look((70, 70, 72), "grain", (40, 40, 42)),
}

_CAPTIONS = (
    "{objects} on {background}.",
    "a photo of {objects}.",
    "a photo of {objects} on {background}.",
    "{objects} lying on the {background}.",
    "there is {objects} on the {background}.",
    "a picture of {objects} with {background} behind.",
)


def _article(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


def _join(names: List[str]) -> str:
    items = [_article(n) for n in names]
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _texture(look: _Look, size: int, rng: np.random.Generator) -> np.ndarray:
    r"""A full-frame ``size×size×3`` uint8 texture for one look."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = np.array(look.colour, dtype=np.float32)
    accent = np.array(look.accent, dtype=np.float32)
    img = np.broadcast_to(base, (size, size, 3)).copy()
    noise = rng.normal(0.0, 6.0, (size, size, 1)).astype(np.float32)
    if look.pattern == "dots":
        period = rng.uniform(4.5, 6.5)
        ox, oy = rng.uniform(0, period, 2)
        d = ((xx + ox) % period - period / 2) ** 2 + ((yy + oy) % period - period / 2) ** 2
        img[d < 1.6] = accent
    elif look.pattern == "stripes":
        period = rng.uniform(5.0, 7.0)
        angle = rng.uniform(0, np.pi)
        phase = xx * np.cos(angle) + yy * np.sin(angle) + rng.uniform(0, period)
        img[(phase % period) < period / 2.5] = accent
    elif look.pattern == "speckles":
        img[rng.random((size, size)) < 0.12] = accent
    elif look.pattern == "mottled":
        coarse = rng.random((size // 4 + 1, size // 4 + 1)) < 0.45
        mask = np.kron(coarse, np.ones((4, 4), dtype=bool))[:size, :size]
        img[mask] = accent
    elif look.pattern == "grain":
        img[rng.random((size, size)) < 0.3] = accent
    elif look.pattern == "waves":
        phase = yy + 2.0 * np.sin(xx / rng.uniform(2.5, 4.0) + rng.uniform(0, 6.3))
        img[(phase % 6.0) < 2.0] = accent
    elif look.pattern == "bricks":
        h, w = 6, 12
        row = (yy // h).astype(int)
        shift = (row % 2) * (w // 2)
        mortar = ((yy % h) < 1) | (((xx + shift) % w) < 1)
        img[mortar] = accent
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def _shape_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    r"""A random ellipse, polygon or blob, fully inside the frame, as a bool mask."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r = rng.uniform(0.12, 0.28) * size
    cx, cy = rng.uniform(r, size - r, 2)
    kind = rng.integers(3)
    if kind == 0:  # rotated ellipse
        a, b = r, r * rng.uniform(0.55, 1.0)
        t = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
        v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    angle = np.arctan2(yy - cy, xx - cx)
    dist = np.hypot(xx - cx, yy - cy)
    if kind == 1:  # regular polygon with 3..6 sides
        n = int(rng.integers(3, 7))
        rot = rng.uniform(0, 2 * np.pi)
        sector = (angle - rot) % (2 * np.pi / n) - np.pi / n
        return dist * np.cos(sector) <= r * np.cos(np.pi / n)
    # blob: radius modulated by a few harmonics
    radius = np.full_like(angle, r * 0.8)
    for k in (2, 3, 5):
        radius += r * rng.uniform(0.0, 0.15) * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
    return dist <= radius


class ScenesWorld:
    r"""A seeded, deterministic generator of scenes with exact masks.

    ``sample(i)`` is random access: scene ``i`` depends only on ``(seed, i)``.

    Args:
        seed (int): world seed.
        size (int): image side in pixels (the shipped model's input size, 96).
        max_objects (int): at most this many objects per scene (1..3 by default).
        min_pixels (int, optional): an object keeps at least this many visible
            pixels, otherwise it is dropped from the scene (default
            ``round(12 * (size / 64) ** 2)``, i.e. 27 at 96 px).

    Examples::

        >>> world = ScenesWorld(seed=0)
        >>> s = world.sample(0)
        >>> sorted(s)
        ['background', 'caption', 'image', 'masks', 'objects']
        >>> s["masks"][s["background"]].shape
        (96, 96)
    """

    def __init__(
        self, seed: int = 0, size: int = 96, max_objects: int = 3, min_pixels: Optional[int] = None
    ) -> None:
        if size < 16:
            raise ValueError(f"size: expected at least 16 pixels, got {size}")
        if not 1 <= max_objects <= len(OBJECTS):
            raise ValueError(f"max_objects: expected 1..{len(OBJECTS)}, got {max_objects}")
        self.seed = int(seed)
        self.size = int(size)
        self.max_objects = int(max_objects)
        self.min_pixels = round(12 * (size / 64) ** 2) if min_pixels is None else int(min_pixels)
        self.object_classes: List[str] = list(OBJECTS)
        self.background_classes: List[str] = list(BACKGROUNDS)

    @property
    def class_names(self) -> List[str]:
        r"""Object classes followed by background classes."""
        return self.object_classes + self.background_classes

    def sample(self, index: int, n_objects: Optional[int] = None) -> Dict[str, Any]:
        r"""Render scene ``index``.

        Args:
            index (int): scene index (any non-negative int).
            n_objects (int, optional): force this many objects (e.g. 1 for
                single-object evaluation); default random in ``1..max_objects``.

        Returns:
            dict: ``"image"`` (PIL RGB), ``"masks"`` ({class: bool [H, W]} for each
            present object and the background), ``"objects"`` (present object names,
            in drawing order), ``"background"`` (name), ``"caption"`` (str).
        """
        if index < 0:
            raise ValueError(f"index: expected a non-negative int, got {index}")
        forced = 0 if n_objects is None else int(n_objects)
        rng = np.random.default_rng([self.seed, int(index), forced])
        size = self.size
        background = self.background_classes[int(rng.integers(len(self.background_classes)))]
        image = _texture(BACKGROUNDS[background], size, rng)
        count = forced or int(rng.integers(1, self.max_objects + 1))
        names = list(rng.choice(self.object_classes, size=count, replace=False))
        owner = np.full((size, size), -1, dtype=np.int64)
        for k, name in enumerate(names):
            shape = _shape_mask(size, rng)
            image[shape] = _texture(OBJECTS[name], size, rng)[shape]
            owner[shape] = k
        objects, masks = [], {}
        for k, name in enumerate(names):
            mask = owner == k
            if mask.sum() >= self.min_pixels:
                objects.append(str(name))
                masks[str(name)] = mask
            else:  # (almost) fully occluded: repaint as background so the pixels stay exact
                image[mask] = _texture(BACKGROUNDS[background], size, rng)[mask]
                owner[mask] = -1
        masks[background] = owner == -1
        caption = _CAPTIONS[int(rng.integers(len(_CAPTIONS)))].format(
            objects=_join(objects), background=background
        )
        return {
            "image": Image.fromarray(image, mode="RGB"),
            "masks": masks,
            "objects": objects,
            "background": background,
            "caption": caption,
        }

    def default_scene(self, min_objects: int = 2) -> int:
        r"""The index of the first held-out scene with at least ``min_objects`` objects.

        A fixed rule (no picture is looked at): ``clip-surgery explain`` without
        ``--image`` explains this scene, and the tutorials use it as their example.

        Args:
            min_objects (int): least number of present objects (1..``max_objects``).

        Returns:
            int: a scene index ``>= HELD_OUT_START``.

        Examples::

            >>> world = ScenesWorld(seed=0)
            >>> i = world.default_scene()
            >>> i >= HELD_OUT_START and len(world.sample(i)["objects"]) >= 2
            True
        """
        if isinstance(min_objects, bool) or not isinstance(min_objects, int):
            raise TypeError(f"min_objects: expected an int, got {type(min_objects).__name__}")
        if not 1 <= min_objects <= self.max_objects:
            raise ValueError(f"min_objects: expected 1..{self.max_objects}, got {min_objects}")
        index = HELD_OUT_START
        while len(self.sample(index)["objects"]) < min_objects:
            index += 1
        return index

    def __repr__(self) -> str:
        return f"ScenesWorld(seed={self.seed}, size={self.size}, max_objects={self.max_objects})"
