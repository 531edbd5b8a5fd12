r"""Images and labels as the protocol reads them: mmcv's keep-ratio size, OpenCV's bilinear
resize without antialiasing, the preprocessor's normalisation, palette labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from captum_clip_surgery.benchmark.inputs import (
    normalize_image,
    read_image,
    read_label,
    rescale_image,
    rescaled_size,
)


def test_rescaled_size_hand_cases():
    assert rescaled_size(375, 500, 336) == (336, 448)
    assert rescaled_size(500, 333, 336) == (505, 336)  # 500 * 336 / 333 = 504.5 -> 505
    assert rescaled_size(180, 200, 448) == (448, 498)  # upscaled: 200 * 2.4889 = 497.8
    assert rescaled_size(130, 1500, 336) == (177, 2048)  # the long side bounds it: 2048/1500
    assert rescaled_size(1024, 2048, 560) == (560, 1120)


def test_rescaled_size_is_mmcvs_formula():
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(20, 3000, 2))
        s = int(rng.choice([224, 336, 448, 560]))
        f = min(2048 / max(h, w), s / min(h, w))
        assert rescaled_size(h, w, s) == (int(h * f + 0.5), int(w * f + 0.5))


def _bilinear(image, size):
    r"""Plain half-pixel bilinear resampling (edges clamped), in float64."""
    h, w = image.shape[:2]
    H, W = size
    ys = np.clip((np.arange(H) + 0.5) * h / H - 0.5, 0, h - 1)
    xs = np.clip((np.arange(W) + 0.5) * w / W - 0.5, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    im = image.astype(np.float64)
    top = im[y0][:, x0] * (1 - fx) + im[y0][:, x1] * fx
    bottom = im[y1][:, x0] * (1 - fx) + im[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


@pytest.mark.parametrize("size,short", [((37, 50), 40), ((60, 45), 20)])
def test_rescale_is_bilinear_without_antialias(size, short):
    image = np.random.default_rng(1).integers(0, 256, size + (3,), dtype=np.uint8)
    out = rescale_image(image, short)
    assert out.shape[:2] == rescaled_size(*size, short) and out.dtype == np.uint8
    # OpenCV's fixed-point bilinear: within one grey level of the exact value (an
    # antialiased resize would differ by far more when shrinking random pixels)
    assert np.abs(out - _bilinear(image, out.shape[:2])).max() <= 1.0


def test_normalize_is_the_preprocessors(tmp_path):
    bgr = np.zeros((1, 2, 3), np.uint8)
    bgr[0, 0] = (10, 20, 30)
    x = normalize_image(bgr, (122.771, 116.746, 104.094), (68.501, 66.632, 70.323))
    assert x.dtype == torch.float32 and x.shape == (3, 1, 2)
    expected = (torch.tensor([30.0, 20.0, 10.0]) - torch.tensor([122.771, 116.746, 104.094])) \
        / torch.tensor([68.501, 66.632, 70.323])
    assert torch.equal(x[:, 0, 0], expected)


def test_read_image_is_bgr_and_grey_gets_three_channels(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 200  # red
    Image.fromarray(rgb).save(tmp_path / "red.png")
    Image.fromarray(np.full((4, 5), 77, np.uint8)).save(tmp_path / "grey.png")
    assert read_image(str(tmp_path / "red.png"))[0, 0].tolist() == [0, 0, 200]
    assert read_image(str(tmp_path / "grey.png")).shape == (4, 5, 3)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(OSError, match="cannot decode image"):
        read_image(str(tmp_path / "bad.jpg"))


def test_read_label_palette_indices_and_reduced_zero(tmp_path):
    label = np.array([[0, 1, 2], [255, 20, 0]], np.uint8)
    im = Image.fromarray(label, mode="P")
    im.putpalette([0, 0, 0, 128, 0, 0] * 128)
    im.save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_label(str(tmp_path / "l.png")), label)
    np.testing.assert_array_equal(read_label(str(tmp_path / "l.png"), reduce_zero_label=True),
                                  [[255, 0, 1], [255, 19, 255]])
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="expected a single-channel"):
        read_label(str(tmp_path / "rgb.png"))
