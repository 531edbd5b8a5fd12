r"""The on-disk datasets on tiny fixtures written by the tests: PASCAL VOC's layout with
palette PNGs and the 255 boundary label, and the generic folder with a class-names file;
every missing or malformed part is a clear error naming it."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from captum_clip_surgery.evaluation import (
    VOC_CLASSES,
    FolderSegmentation,
    ScenesSegmentation,
    VOCSegmentationMasks,
)


def _palette_png(labels: np.ndarray, path) -> None:
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    palette = np.random.default_rng(0).integers(0, 256, size=768, dtype=np.uint8)
    palette[255 * 3 : 256 * 3] = (224, 224, 192)  # VOC's boundary colour
    im.putpalette(palette.tolist())
    im.save(path)


def _labels(h: int, w: int, blocks) -> np.ndarray:
    out = np.zeros((h, w), dtype=np.uint8)
    for label, (r0, r1, c0, c1) in blocks:
        out[r0:r1, c0:c1] = label
    return out


#: two images: a person (15) with a 255 boundary ring; a cat (8) beside a dog (12)
VOC_LABELS = {
    "2008_000001": _labels(6, 8, [(255, (1, 5, 1, 5)), (15, (2, 4, 2, 4))]),
    "2008_000002": _labels(5, 7, [(8, (0, 5, 0, 3)), (12, (1, 4, 4, 7))]),
}


@pytest.fixture
def voc_root(tmp_path):
    base = tmp_path / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True)
    for stem, labels in VOC_LABELS.items():
        rgb = np.random.default_rng(1).integers(0, 256, size=(*labels.shape, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(base / "JPEGImages" / f"{stem}.jpg")
        _palette_png(labels, base / "SegmentationClass" / f"{stem}.png")
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(VOC_LABELS) + "\n")
    return tmp_path


def test_voc_masks_follow_the_palette_labels_and_ignore_255(voc_root):
    data = VOCSegmentationMasks(str(voc_root))
    assert len(data) == 2 and data.class_names == list(VOC_CLASSES)
    for i, labels in enumerate(VOC_LABELS.values()):
        item = data[i]
        assert item["index"] == i and item["image"].mode == "RGB"
        assert item["image"].size == (labels.shape[1], labels.shape[0])
        masks = item["masks"]
        assert masks.shape == (21, *labels.shape) and masks.dtype == torch.bool
        for k in range(21):
            assert torch.equal(masks[k], torch.as_tensor(labels == k)), k
        # boundary pixels (255) belong to no class; every other pixel to exactly one
        assert torch.equal(masks.sum(0) == 0, torch.as_tensor(labels == 255))
        assert item["present"].tolist() == [bool((labels == k).any()) for k in range(21)]
    assert [VOC_CLASSES[k] for k in torch.nonzero(data[1]["present"]).flatten()] == [
        "background", "cat", "dog"]


def test_voc_without_background_shifts_the_classes(voc_root):
    data = VOCSegmentationMasks(str(voc_root), include_background=False)
    assert data.class_names == list(VOC_CLASSES[1:])
    item = data[0]
    assert item["masks"].shape[0] == 20
    person = data.class_names.index("person")
    assert torch.equal(item["masks"][person], torch.as_tensor(VOC_LABELS["2008_000001"] == 15))
    assert item["present"].tolist() == [name == "person" for name in data.class_names]


def test_voc_missing_parts_are_named(voc_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="root: PASCAL VOC 2012 not found: expected the folder"):
        VOCSegmentationMasks(str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match=r"root: the split file .*train\.txt is missing"):
        VOCSegmentationMasks(str(voc_root), image_set="train")
    with pytest.raises(ValueError, match="image_set: expected one of train, trainval, val, got 'test'"):
        VOCSegmentationMasks(str(voc_root), image_set="test")
    with pytest.raises(ValueError, match="year: expected one of 2007"):
        VOCSegmentationMasks(str(voc_root), year="2020")
    base = voc_root / "VOCdevkit" / "VOC2012"
    os.remove(base / "SegmentationClass" / "2008_000002.png")
    data = VOCSegmentationMasks(str(voc_root))
    with pytest.raises(FileNotFoundError, match=r"root: .*2008_000002\.png is missing \(listed"):
        data[1]
    os.remove(base / "JPEGImages" / "2008_000001.jpg")
    with pytest.raises(FileNotFoundError, match=r"root: .*2008_000001\.jpg is missing"):
        data[0]


def _folder(tmp_path, classes="sky\ntree\ncar\n", masks=None, size=(5, 6)):
    root = tmp_path / "folder"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text(classes)
    masks = masks if masks is not None else {
        "a": _labels(*size, [(1, (0, 2, 0, 6)), (2, (3, 5, 1, 3)), (255, (4, 5, 5, 6))]),
        "b": _labels(*size, [(2, (0, 5, 0, 6))]),
    }
    for stem, labels in masks.items():
        h, w = labels.shape
        Image.new("RGB", (w, h), (10, 200, 30)).save(root / "images" / f"{stem}.png")
        _palette_png(labels, root / "masks" / f"{stem}.png")
    (root / "images" / "notes.txt").write_text("not an image")  # skipped by extension
    return root


def test_folder_reads_images_masks_and_class_names(tmp_path):
    root = _folder(tmp_path)
    data = FolderSegmentation(str(root))
    assert data.class_names == ["sky", "tree", "car"] and len(data) == 2
    item = data[0]
    labels = _labels(5, 6, [(1, (0, 2, 0, 6)), (2, (3, 5, 1, 3)), (255, (4, 5, 5, 6))])
    for k in range(3):
        assert torch.equal(item["masks"][k], torch.as_tensor(labels == k)), k
    assert not bool(item["masks"][:, 4, 5].any())  # the 255 pixel belongs to no class
    assert item["present"].tolist() == [True, True, True]
    assert data[1]["present"].tolist() == [False, False, True]
    # another ignore label: 255 is then an unknown label, 0 is refused (it is a class)
    with pytest.raises(ValueError, match="ignore_index: 0 is the label of class 'sky'"):
        FolderSegmentation(str(root), ignore_index=0)
    with pytest.raises(ValueError, match=r"root: mask .*a\.png has label\(s\) 255 outside the 3"):
        FolderSegmentation(str(root), ignore_index=-1)[0]


def test_folder_errors_name_the_missing_or_bad_part(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"root: .*images not found; a folder dataset needs"):
        FolderSegmentation(str(tmp_path))
    root = _folder(tmp_path)
    os.remove(root / "masks" / "b.png")
    with pytest.raises(FileNotFoundError, match="root: no mask in masks/ for image b.png"):
        FolderSegmentation(str(root))


@pytest.mark.parametrize("classes,message", [
    ("\n\n", "lists no class"),
    ("sky\n\ncar\n", "line 2 of .* is empty; each line names one class"),
    ("sky\ncar\nsky\n", "class 'sky' appears twice"),
])
def test_folder_class_names_file_is_checked(tmp_path, classes, message):
    root = _folder(tmp_path, classes=classes)
    with pytest.raises(ValueError, match=f"root: .*{message}" if "line" in message else message):
        FolderSegmentation(str(root))


def test_folder_masks_are_checked_on_access(tmp_path):
    root = _folder(tmp_path, masks={"a": _labels(5, 6, [(7, (0, 1, 0, 1))])})
    with pytest.raises(ValueError, match=r"root: mask .*a\.png has label\(s\) 7 outside the 3 "
                                         r"classes \(labels 0\.\.2, 255 = ignore\)"):
        FolderSegmentation(str(root))[0]
    Image.new("RGB", (9, 9)).save(root / "images" / "a.png")
    with pytest.raises(ValueError, match=r"root: mask .*a\.png is 5x6, expected the image's 9x9"):
        FolderSegmentation(str(root))[0]
    (root / "images" / "a.png").write_text("broken")
    with pytest.raises(ValueError, match=r"root: cannot read .*a\.png as an image"):
        FolderSegmentation(str(root))[0]


def test_scenes_arguments_are_checked():
    with pytest.raises(ValueError, match="size: expected an int >= 1, got 0"):
        ScenesSegmentation(size=0)
    with pytest.raises(TypeError, match="size: expected an int, got str"):
        ScenesSegmentation(size="10")
    with pytest.raises(ValueError, match="start: expected an int >= 0"):
        ScenesSegmentation(size=1, start=-1)


def test_cli_names_a_broken_folder_item(tmp_path, capsys):
    from captum_clip_surgery.cli import main

    root = _folder(tmp_path, masks={"a": _labels(5, 6, [(7, (0, 1, 0, 1))])})
    assert main(["evaluate", "--dataset", "folder", "--root", str(root), "--no-faithfulness",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err  # the progress bar may precede the one-line error
    assert err.strip().splitlines()[-1].startswith("clip-surgery evaluate: error: --root: mask ")
