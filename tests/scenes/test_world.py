r"""The scenes world: determinism, exact masks, truthful captions."""

from __future__ import annotations

import re

import numpy as np
import pytest

from captum_clip_surgery.scenes import BACKGROUNDS, OBJECTS, ScenesWorld

LOOKS = {**OBJECTS, **BACKGROUNDS}
TOL = 36  # 6 sigma of the rendering noise


def _palette(name):
    look = LOOKS[name]
    accent = look.colour if look.pattern == "plain" else look.accent  # plain looks use no accent
    return np.array([look.colour, accent], dtype=np.int64)


def test_deterministic_random_access():
    a, b = ScenesWorld(seed=3), ScenesWorld(seed=3)
    for i in (0, 7, 123456):
        sa, sb = a.sample(i), b.sample(i)
        assert np.array_equal(np.asarray(sa["image"]), np.asarray(sb["image"]))
        assert sa["caption"] == sb["caption"] and sa["objects"] == sb["objects"]
        assert sa["masks"].keys() == sb["masks"].keys()
        for k in sa["masks"]:
            assert np.array_equal(sa["masks"][k], sb["masks"][k])
    # order of access does not matter, other indices and seeds differ
    assert np.array_equal(np.asarray(a.sample(5)["image"]), np.asarray(b.sample(5)["image"]))
    assert not np.array_equal(np.asarray(a.sample(1)["image"]), np.asarray(a.sample(2)["image"]))
    assert not np.array_equal(np.asarray(a.sample(1)["image"]), np.asarray(ScenesWorld(4).sample(1)["image"]))


@pytest.mark.parametrize("index", range(0, 40))
def test_masks_equal_rendered_pixels(index):
    s = ScenesWorld(seed=0).sample(index)
    image = np.asarray(s["image"]).astype(np.int64)
    assert image.shape == (96, 96, 3)
    masks = s["masks"]
    assert set(masks) == set(s["objects"]) | {s["background"]}
    stack = np.stack([masks[k] for k in masks])
    assert stack.dtype == bool
    assert (stack.sum(axis=0) == 1).all(), "masks must be disjoint and cover the image"
    names = list(masks)
    palettes = np.stack([_palette(n) for n in names])  # [K, 2, 3]
    # distance of every pixel to each class's palette (nearest of base / accent colour)
    dist = np.abs(image[None, :, :, None, :] - palettes[:, None, None, :, :]).max(-1).min(-1)
    for k, name in enumerate(names):
        assert masks[name].sum() >= 12
        assert (dist[k][masks[name]] <= TOL).all(), f"{name} mask holds pixels not of its colours"
    # where a pixel's colours fit one class only, that class owns it (some accents are shared,
    # e.g. white candy stripes on snow, so ambiguous pixels are skipped)
    owner = stack.argmax(axis=0)
    fits = dist <= TOL
    unique = fits.sum(axis=0) == 1
    assert unique.mean() > 0.15
    assert (fits.argmax(axis=0)[unique] == owner[unique]).all()


def test_captions_name_exactly_what_is_present():
    world = ScenesWorld(seed=1)
    backgrounds_named = 0
    for i in range(60):
        s = world.sample(i)
        for name in world.object_classes:  # every object, and only the present ones
            named = re.search(rf"\b{name}\b", s["caption"]) is not None
            assert named == (name in s["objects"]), (s["caption"], s["objects"])
        for name in world.background_classes:  # at most the scene's own background
            named = re.search(rf"\b{name}\b", s["caption"]) is not None
            assert not named or name == s["background"], s["caption"]
            backgrounds_named += named
    assert 30 <= backgrounds_named < 60  # most captions name the background, some only objects


def test_object_counts_and_classes():
    world = ScenesWorld(seed=0)
    assert len(world.object_classes) >= 8 and len(world.background_classes) >= 5
    assert not set(world.object_classes) & set(world.background_classes)
    counts = [len(world.sample(i)["objects"]) for i in range(80)]
    assert min(counts) >= 1 and max(counts) == 3
    for i in range(20):
        s = world.sample(i, n_objects=1)
        assert len(s["objects"]) == 1 and set(s["masks"]) == {s["objects"][0], s["background"]}
    # objects may overlap: some scene has an object occluded by a later one
    assert any(
        s["masks"][o].sum() < 0.9 * np.pi * (0.12 * 96) ** 2
        for s in (world.sample(i) for i in range(80)) for o in s["objects"]
    )


def test_bad_arguments():
    with pytest.raises(ValueError, match="size: expected at least 16"):
        ScenesWorld(size=8)
    with pytest.raises(ValueError, match="max_objects: expected 1..8"):
        ScenesWorld(max_objects=0)
    with pytest.raises(ValueError, match="index: expected a non-negative int"):
        ScenesWorld().sample(-1)


def test_default_scene_is_the_first_held_out_scene_with_two_objects():
    from captum_clip_surgery.scenes.world import HELD_OUT_START

    world = ScenesWorld(seed=0)
    index = world.default_scene()
    assert index >= HELD_OUT_START and len(world.sample(index)["objects"]) >= 2
    assert all(len(world.sample(i)["objects"]) < 2 for i in range(HELD_OUT_START, index))
    assert world.default_scene(1) == HELD_OUT_START  # every scene has an object
    with pytest.raises(ValueError, match="min_objects"):
        world.default_scene(4)
    with pytest.raises(TypeError, match="min_objects"):
        world.default_scene(2.0)
