r"""The one image reader: every Pillow mode read as the 8-bit RGB computed by hand from the
file's values (16-bit grey scaled from 16 bits, not clipped to white; transparency over
white; CMYK, palette, 1-bit), modes without a known range and conversions that would give
a blank refused, large images read at a bounded working size; the folder path
(``ImageFiles``, ``explain_images``) and the one-image command read through it."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from captum_clip_surgery import CLIPZeroShotClassifier, explain_images
from captum_clip_surgery.explain.folder import ImageFiles
from captum_clip_surgery.explain.images import (
    FIGURE_MAX_SIDE,
    MAX_PIXELS,
    display_size,
    read_rgb,
    working_size,
)

#: 16-bit test values: both ends, the rounding boundaries of v / 257, and the middle.
V16 = np.array([[0, 128, 129, 257, 385, 386], [32767, 32768, 65278, 65279, 65535, 1000]],
               dtype=np.uint16)


def _by_hand_16(values: np.ndarray) -> np.ndarray:
    r"""``round(v * 255 / 65535)`` as RGB, computed in float64."""
    grey = np.floor(values.astype(np.float64) * 255.0 / 65535.0 + 0.5).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def _rgb(path, **kwargs) -> np.ndarray:
    image, size = read_rgb(str(path), **kwargs)
    assert image.mode == "RGB" and size == (image.height, image.width)
    return np.asarray(image)


def _png16_rgb(path, values: np.ndarray) -> None:
    r"""A 48-bit RGB PNG (Pillow cannot write one), chunk by chunk."""
    h, w, _ = values.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    rows = b"".join(b"\x00" + values[r].astype(">u2").tobytes() for r in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_16_bit_grey_is_scaled_from_16_bits_not_clipped(tmp_path):
    png = tmp_path / "grey16.png"
    Image.fromarray(V16).save(png)
    assert Image.open(png).mode == "I;16"
    expected = _by_hand_16(V16)
    np.testing.assert_array_equal(_rgb(png), expected)
    # big-endian 16-bit in a TIFF, and 32-bit integers in 0..65535: the same values
    tiff = tmp_path / "grey16b.tif"
    Image.fromarray(V16.astype(">u2")).save(tiff)
    assert Image.open(tiff).mode == "I;16B"
    np.testing.assert_array_equal(_rgb(tiff), expected)
    wide = tmp_path / "grey32.tif"
    Image.fromarray(V16.astype(np.int32)).save(wide)
    assert Image.open(wide).mode == "I"
    np.testing.assert_array_equal(_rgb(wide), expected)


def test_48_bit_rgb_keeps_its_range(tmp_path):
    values = np.stack([V16, V16[::-1], np.full_like(V16, 40000)], axis=-1)
    path = tmp_path / "rgb16.png"
    _png16_rgb(path, values)
    got = _rgb(path).astype(np.int32)
    # Pillow reads 16-bit RGB by its high byte; within one level of round(v * 255 / 65535)
    assert np.abs(got - values.astype(np.float64) * 255 / 65535).max() <= 1


def test_float_images_in_the_unit_interval(tmp_path):
    values = np.array([[0.0, 0.25, 0.5], [0.75, 0.999, 1.0]], dtype=np.float32)
    path = tmp_path / "float.tif"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "F"
    grey = np.floor(values.astype(np.float64) * 255 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(_rgb(path), np.repeat(grey[..., None], 3, axis=2))


def test_transparency_is_composited_over_white(tmp_path):
    grey = np.array([[0, 100, 200, 255]], dtype=np.uint8)
    alpha = np.array([[255, 128, 0, 64]], dtype=np.uint8)
    la = tmp_path / "la.png"
    Image.fromarray(np.stack([grey, alpha], axis=-1), mode="LA").save(la)
    a = alpha.astype(np.float64) / 255
    expected = np.repeat((grey * a + 255 * (1 - a))[..., None], 3, axis=2)
    assert np.abs(_rgb(la).astype(np.float64) - expected).max() <= 1
    # RGBA, and with another background
    rgba = np.array([[[255, 0, 0, 255], [0, 0, 255, 0], [0, 255, 0, 102]]], dtype=np.uint8)
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    a = rgba[..., 3:].astype(np.float64) / 255
    black = rgba[..., :3] * a
    assert np.abs(_rgb(path, background=(0, 0, 0)) - black).max() <= 1
    assert np.abs(_rgb(path) - (rgba[..., :3] * a + 255 * (1 - a))).max() <= 1
    # a palette image with a transparent colour: that colour shows the background
    pal = Image.new("P", (3, 1))
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 128, 0])
    for x in range(3):
        pal.putpixel((x, 0), x)
    pal.info["transparency"] = 1
    path = tmp_path / "palette.png"
    pal.save(path, transparency=1)
    np.testing.assert_array_equal(_rgb(path), [[[0, 0, 0], [255, 255, 255], [0, 128, 0]]])


def test_cmyk_one_bit_and_grey(tmp_path):
    cmyk = np.array([[[100, 50, 0, 30], [0, 0, 0, 0], [255, 0, 128, 0]]], dtype=np.uint8)
    path = tmp_path / "cmyk.tif"
    Image.fromarray(cmyk, mode="CMYK").save(path)
    c = cmyk.astype(np.float64)
    expected = (255 - c[..., :3]) * (255 - c[..., 3:]) / 255
    assert np.abs(_rgb(path) - expected).max() <= 1
    bits = Image.new("1", (3, 1))
    bits.putpixel((1, 0), 1)
    path = tmp_path / "bits.png"
    bits.save(path)
    np.testing.assert_array_equal(_rgb(path), [[[0] * 3, [255] * 3, [0] * 3]])
    path = tmp_path / "grey.png"
    Image.fromarray(np.array([[7, 77, 177]], dtype=np.uint8)).save(path)
    np.testing.assert_array_equal(_rgb(path), [[[7] * 3, [77] * 3, [177] * 3]])


def test_modes_without_a_known_range_and_blanks_are_refused(tmp_path):
    path = tmp_path / "signed.tif"
    Image.fromarray(np.array([[-5, 70000]], dtype=np.int32)).save(path)
    with pytest.raises(ValueError, match=r"^image: .*signed.tif is a 32-bit integer image .*"
                                         r"from -5 to 70000"):
        read_rgb(str(path))
    path = tmp_path / "hdr.tif"
    Image.fromarray(np.array([[0.0, 3.5]], dtype=np.float32)).save(path)
    with pytest.raises(ValueError, match=r"^image: .*hdr.tif is a floating-point image .*0 to 3.5"):
        read_rgb(str(path))
    # 16-bit values that all lie below half a level: as 8 bits a single colour
    path = tmp_path / "dark16.png"
    Image.fromarray(np.array([[0, 60, 127]], dtype=np.uint16)).save(path)
    with pytest.raises(ValueError, match=r"^image: .*dark16.png \(mode 'I;16', values 0 to 127\) would be "
                                         "explained as one flat colour"):
        read_rgb(str(path))
    # a flat image is not refused when it is flat in the file too
    path = tmp_path / "flat16.png"
    Image.fromarray(np.full((2, 2), 40000, dtype=np.uint16)).save(path)
    assert _rgb(path).tolist() == [[[156] * 3] * 2] * 2
    with pytest.raises(ValueError, match="^max_pixels: expected an int >= 1, got 0"):
        read_rgb(str(path), max_pixels=0)


def test_working_and_display_sizes_by_hand():
    assert working_size((12000, 12000), MAX_PIXELS) == (4096, 4096)
    # s = sqrt(6000 / 60000): 200 s = 63.2, 300 s = 94.9
    assert working_size((200, 300), 6000) == (63, 94)
    assert working_size((200, 300), 60000) == (200, 300)
    assert working_size((200, 300), None) == (200, 300)
    assert working_size((1, 10**6), 1000) == (1, 1000)
    for size in [(997, 13), (4000, 3000), (7, 7)]:
        for limit in (10, 1000, 12345):
            h, w = working_size(size, limit)
            assert h * w <= limit and h >= 1 and w >= 1
    assert display_size((3000, 1500)) == (FIGURE_MAX_SIDE, FIGURE_MAX_SIDE // 2)
    assert display_size((600, 800)) == (600, 800)


def test_large_images_are_read_at_the_working_size(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(200, 300, 3), dtype=np.uint8)
    png = tmp_path / "big.png"
    Image.fromarray(pixels).save(png)
    image, size = read_rgb(str(png), max_pixels=6000)
    assert size == (200, 300) and image.size == (94, 63)
    by_hand = Image.fromarray(pixels).resize((94, 63), Image.BICUBIC)
    np.testing.assert_array_equal(np.asarray(image), np.asarray(by_hand))
    # a JPEG is decoded at a reduced scale, then resized to the same working size
    jpg = tmp_path / "big.jpg"
    Image.fromarray(pixels).save(jpg, quality=95)
    image, size = read_rgb(str(jpg), max_pixels=6000)
    assert size == (200, 300) and image.size == (94, 63)


def _grey16_scene(scenes_clip, path):
    r"""A scene as a 16-bit grey PNG and, by hand, the 8-bit RGB file it stands for."""
    from captum_clip_surgery.scenes import ScenesWorld

    grey = np.asarray(ScenesWorld(seed=0).sample(3)["image"].convert("L"), dtype=np.uint16)
    values = grey * 257 + np.uint16(100)  # every level, plus a little below half a level
    Image.fromarray(values).save(path)
    return _by_hand_16(values)


def test_folder_path_and_command_line_read_through_it(scenes_clip, tmp_path, monkeypatch):
    model, preprocess, tokenizer = scenes_clip
    path = tmp_path / "scene16.png"
    expected = _grey16_scene(scenes_clip, path)
    eight = tmp_path / "scene8.png"
    Image.fromarray(expected).save(eight)
    # the dataset of the folder path
    item = ImageFiles([str(path)], preprocess)[0]
    assert item["error"] is None
    torch.testing.assert_close(item["image"], preprocess(Image.fromarray(expected)))
    # its maps equal those of the 8-bit file computed by hand
    clf = CLIPZeroShotClassifier(model, ["tomato", "grass"], tokenizer=tokenizer)
    (_, got), = explain_images([str(path)], clf)
    (_, want), = explain_images([str(eight)], clf)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    # the one-image command draws the same pixels
    from captum_clip_surgery.apps import comparison
    from captum_clip_surgery.cli import main

    seen = []
    real = comparison.plot_text_grid

    def spy(image, maps, texts, **kwargs):
        seen.append(np.asarray(image))
        return real(image, maps, texts, **kwargs)

    monkeypatch.setattr(comparison, "plot_text_grid", spy)
    assert main(["explain", "--image", str(path), "--text", "tomato",
                 "--out", str(tmp_path / "fig.png")]) == 0
    np.testing.assert_array_equal(seen[0], expected)
