r"""The eight layouts on tiny synthetic copies made here, their label conventions, the roots
they are found under, the scenes world as a dataset, and COCO-Object from COCO-Stuff."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from captum_clip_surgery.benchmark import LAYOUTS, ScenesBenchmarkDataset, SegmentationFiles
from captum_clip_surgery.benchmark.datasets import (
    DatasetLayout,
    coco_object_table,
    convert_coco_object,
    resolve_root,
)
from tests.helpers import write_segmentation_layout

# where mmsegmentation's data folder keeps each dataset
DATA_FOLDER = {"voc20": "VOCdevkit/VOC2012", "voc21": "VOCdevkit/VOC2012",
               "context59": "VOCdevkit/VOC2010", "context60": "VOCdevkit/VOC2010",
               "coco_object": "coco_stuff164k", "coco_stuff": "coco_stuff164k",
               "cityscapes": "cityscapes", "ade20k": "ade/ADEChallengeData2016"}


def _raw_label(layout, root, image_id):
    path = os.path.join(root, layout.ann_dir, image_id + layout.seg_map_suffix)
    return np.array(Image.open(path))


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_each_layout_reads_as_the_protocol(name, tmp_path):
    layout = LAYOUTS[name]
    root = tmp_path / DATA_FOLDER[name]
    ids = write_segmentation_layout(str(root), layout, num_labels=min(layout.num_classes + 1, 60))
    for given in (root, tmp_path):  # the dataset's folder, or the data folder holding it
        ds = SegmentationFiles(name, str(given))
        assert ds.root == str(root)
        assert ds.ids == ids and len(ds) == 3
    for i, image_id in enumerate(ids):
        item = ds[i]
        raw = _raw_label(layout, str(root), image_id)
        assert item["id"] == image_id and item["index"] == i
        assert item["image"].dtype == np.uint8 and item["image"].shape == raw.shape + (3,)
        expected = raw.astype(np.int64)
        if layout.reduce_zero_label:  # 0 -> 255, k -> k - 1, 255 stays
            expected = np.where(expected == 0, 255, np.where(expected == 255, 255, expected - 1))
        np.testing.assert_array_equal(item["label"], expected)
    with pytest.raises(IndexError):
        ds[3]


def test_voc_is_found_under_torchvisions_root_and_the_image_suffix_is_configurable(tmp_path):
    layout = LAYOUTS["voc21"].with_suffix(img_suffix=".png")
    ids = write_segmentation_layout(str(tmp_path / "VOCdevkit" / "VOC2012"), layout)
    ds = SegmentationFiles("voc21", str(tmp_path), img_suffix=".png")
    assert ds.ids == ids and ds.image_paths[0].endswith(".png")
    with pytest.raises(OSError, match="missing file"):
        SegmentationFiles("voc21", str(tmp_path))[0]  # the .jpg files are not there


def test_scan_order_is_by_path_and_hidden_files_are_left_out(tmp_path):
    layout = LAYOUTS["cityscapes"]
    ids = write_segmentation_layout(str(tmp_path), layout, sizes=((20, 30),) * 4)
    hidden = tmp_path / layout.img_dir / "city0" / (".hidden" + layout.img_suffix)
    hidden.write_bytes(b"")
    ds = SegmentationFiles("cityscapes", str(tmp_path))
    assert ds.ids == ids == sorted(ids) and ids[0].startswith("city0/")


def test_custom_layout_and_errors(tmp_path):
    layout = DatasetLayout("custom", "mine", "imgs", "labels", ".png", "_seg.png", None, True,
                           None, False)
    ids = write_segmentation_layout(str(tmp_path), layout, num_labels=4)
    ds = SegmentationFiles(layout, str(tmp_path))
    assert ds.ids == ids
    assert set(np.unique(ds[0]["label"])) <= {0, 1, 2, 255}
    with pytest.raises(ValueError, match="root: no folder"):
        SegmentationFiles(layout, str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="has no VOC21 layout"):
        resolve_root(LAYOUTS["voc21"], str(tmp_path))
    with pytest.raises(ValueError, match="dataset: expected one of"):
        SegmentationFiles("voc", str(tmp_path))
    with pytest.raises(ValueError, match="img_suffix: expected a non-empty string"):
        layout.with_suffix(img_suffix="")


def test_scenes_dataset_labels_are_the_worlds_masks():
    ds = ScenesBenchmarkDataset(size=2, start=5)
    item = ds[1]
    sample = ds.world.sample(6)
    rgb = np.asarray(sample["image"])
    np.testing.assert_array_equal(item["image"], rgb[:, :, ::-1])  # BGR, as cv2 decodes
    for name, mask in sample["masks"].items():
        assert (item["label"][mask] == ds.class_names.index(name)).all()
    assert (item["label"] != 255).all() and item["id"] == "scene_6"
    assert ds.class_lines()[0] == [ds.class_names[0]]


def test_coco_object_table_hand_values():
    t = coco_object_table()
    # raw ids 0..10 are the first things (train ids 0..10, +1); 11 is unused
    assert [int(t[i]) for i in (0, 1, 10)] == [1, 2, 11]
    assert int(t[12]) == 12 and int(t[26]) == 25  # 11, then 11 and 25 skipped
    assert int(t[89]) == 80  # the last thing
    assert int(t[91]) == 0 and int(t[181]) == 0 and int(t[255]) == 0  # stuff, unlabelled
    assert int(t[90]) == 90 and int(t[200]) == 200  # ids no label uses keep their value


def test_convert_coco_object_writes_resumes_and_keeps_inputs(tmp_path):
    src = tmp_path / "annotations" / "val2017"
    src.mkdir(parents=True)
    raw = np.array([[0, 1, 12], [91, 255, 89]], dtype=np.uint8)
    Image.fromarray(raw).save(src / "000000000139.png")
    Image.fromarray(raw).save(src / "000000000139_labelTrainIds.png")  # not a raw label
    before = (src / "000000000139.png").read_bytes()
    assert convert_coco_object(str(tmp_path)) == (1, 0)
    out = np.array(Image.open(src / "000000000139_instanceTrainIds.png"))
    np.testing.assert_array_equal(out, [[1, 2, 12], [0, 0, 80]])
    assert (src / "000000000139.png").read_bytes() == before
    assert convert_coco_object(str(tmp_path)) == (0, 1)  # already written: skipped
    other = tmp_path / "other"
    assert convert_coco_object(str(tmp_path), str(other)) == (1, 0)
    assert (other / "annotations" / "val2017" / "000000000139_instanceTrainIds.png").exists()
    assert not [n for n in os.listdir(src) if n.endswith(".tmp")]
    with pytest.raises(ValueError, match="root: no folder"):
        convert_coco_object(str(tmp_path / "nowhere"))
