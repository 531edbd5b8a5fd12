r"""segmentation_benchmark end to end: counts equal the per-image predictions of the
protocol, saved predictions, resume after an interruption, the eight-dataset table, the
scenes world, errors, and two torchrun ranks."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from captum_clip_surgery import CLIPZeroShotClassifier, build_method
from captum_clip_surgery.benchmark import (
    LAYOUTS,
    DatasetLayout,
    ProtocolSegmenter,
    SegmentationFiles,
    get_preset,
    segmentation_benchmark,
)
from captum_clip_surgery.benchmark.inputs import normalize_image, rescale_image
from captum_clip_surgery.benchmark.metrics import confusion_matrix
from captum_clip_surgery.benchmark.runner import protocol_templates
from tests.helpers import ModelSnapshot, write_segmentation_layout
from tests.models import tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = [["background", "sky"], ["dog", "puppy"], ["cat"], ["grass"]]
LAYOUT = DatasetLayout("custom", "mine", "images", "annotations", ".jpg", ".png", None, False,
                       None, True)
SMALL = {"short_side": 40, "crop": 32, "stride": 16}


@pytest.fixture(scope="module")
def model():
    return tiny_vit()


@pytest.fixture
def data(tmp_path):
    ids = write_segmentation_layout(str(tmp_path / "data"), LAYOUT, num_labels=4)
    return str(tmp_path / "data"), ids


def _expected(model, root, method, settings):
    r"""Per image: the protocol's prediction and its confusion counts, one image at a time."""
    files = SegmentationFiles(LAYOUT, root)
    queries = [q for line in CLASSES for q in line]
    clf = CLIPZeroShotClassifier(model, queries, templates=protocol_templates("openai_imagenet"),
                                 truncate_text=False)
    seg = ProtocolSegmenter(build_method(method, clf), CLASSES, settings)
    out = {}
    for i in range(len(files)):
        item = files[i]
        image = normalize_image(rescale_image(item["image"], settings.short_side),
                                settings.mean, settings.std)
        labels = seg.predict([image], [item["label"].shape])[0]
        truth = torch.from_numpy(item["label"])
        out[item["id"]] = (labels, truth, confusion_matrix(labels, truth, len(CLASSES)))
    return out


def test_counts_and_saved_predictions_are_the_protocols(model, data, tmp_path):
    root, ids = data
    snapshot = ModelSnapshot(model)
    result = segmentation_benchmark(
        model, LAYOUT, root, preset="sclip", methods="sclip,raw", classes=CLASSES,
        overrides=dict(SMALL, prob_thd=0.3), save_predictions=str(tmp_path / "pred"),
        batch_size=2)
    snapshot.assert_unchanged()
    (d,) = result.datasets
    assert [s.method for s in d.scores] == ["sclip", "raw"] and d.class_names[0] == "background"
    settings = get_preset("sclip").settings("custom").replace(**SMALL, prob_thd=0.3)
    for score in d.scores:
        expected = _expected(model, root, score.method, settings)
        total = sum(counts for _, _, counts in expected.values())
        assert torch.equal(score.confusion, total)
        assert score.images == 3 and score.seconds > 0
        for image_id, (labels, truth, _) in expected.items():
            saved = np.array(Image.open(tmp_path / "pred" / score.method / (image_id + ".png")))
            want = labels.numpy().astype(np.uint8)
            want[truth.numpy() == 255] = 255
            np.testing.assert_array_equal(saved, want)
    assert math.isclose(result.miou("sclip"), d.scores[0].metrics["mIoU"])
    text = result.to_markdown()
    assert "| SCLIP |" in text and "| background |" in text and "| prob_thd | 0.3 * |" in text
    assert d.to_csv().splitlines()[0].startswith("dataset,preset,method,mIoU,aAcc,mAcc")


def test_resume_continues_and_equals_a_full_run(model, data, tmp_path, monkeypatch):
    root, ids = data
    state = str(tmp_path / "state")
    kwargs = dict(preset="naclip", methods=["naclip"], classes=CLASSES,
                  overrides=dict(SMALL, pamr_steps=1, pamr_dilations=(1,)), batch_size=2)
    full = segmentation_benchmark(model, LAYOUT, root, **kwargs)
    segmentation_benchmark(model, LAYOUT, root, state_dir=state, limit=2, **kwargs)
    (stored,) = [os.path.join(dp, f) for dp, _, fs in os.walk(state) for f in fs]
    assert len(open(stored).read().splitlines()) == 2
    with open(stored, "a") as fh:  # an interrupted write: a partial last line
        fh.write('{"id": "img_00')
    seen = []
    original = ProtocolSegmenter.predict
    monkeypatch.setattr(ProtocolSegmenter, "predict",
                        lambda self, images, *a, **k: seen.append(len(images))
                        or original(self, images, *a, **k))
    resumed = segmentation_benchmark(model, LAYOUT, root, state_dir=state, **kwargs)
    assert sum(seen) == 1  # only the third image was segmented again
    assert torch.equal(resumed.datasets[0].scores[0].confusion, full.datasets[0].scores[0].confusion)
    assert resumed.datasets[0].scores[0].images == 3
    lines = open(stored).read().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["id"] in ids for line in lines)
    # other settings are never taken from the stored results
    seen.clear()
    segmentation_benchmark(model, LAYOUT, root, state_dir=state,
                           **{**kwargs, "overrides": dict(SMALL, pamr_steps=0)})
    assert sum(seen) == 3


def test_preset_method_options_run_as_the_release_and_yours_win(model, data, tmp_path,
                                                                monkeypatch):
    r"""The ``proxyclip`` preset builds ProxyCLIP with ``empty_rows="nan"``: with ``β`` so
    large that every window's mean similarity exceeds ``1/β``, every cosine is NaN and every
    pixel is labelled 0 (the release's argmax), scored without error; the caller's
    ``empty_rows="largest"`` wins and equals the protocol run by hand. The resume state
    follows the options the method runs with."""
    root, _ = data
    built = []
    original = ProtocolSegmenter.__init__
    monkeypatch.setattr(ProtocolSegmenter, "__init__", lambda self, method, *a, **k: built.append(
        method) or original(self, method, *a, **k))
    state = str(tmp_path / "state")
    kwargs = dict(preset="proxyclip", classes=CLASSES, overrides=SMALL, state_dir=state,
                  save_predictions=str(tmp_path / "pred"))
    huge = {"proxyclip": {"beta": 1e6}}  # mean(S) = |sum of unit features|^2 / N^2 > 1e-6
    nan_run = segmentation_benchmark(model, LAYOUT, root, method_options=huge, **kwargs)
    assert (built[-1].empty_rows, built[-1].beta) == ("nan", 1e6)
    (d,) = nan_run.datasets
    assert d.score("proxyclip").images == 3
    assert d.score("proxyclip").confusion[:, 1:].sum() == 0  # every pixel predicted 0
    assert 0 < d.score("proxyclip").metrics["aAcc"] < 1
    for path in (tmp_path / "pred" / "proxyclip").iterdir():
        assert set(np.unique(np.array(Image.open(path)))) <= {0, 255}
    text = nan_run.to_markdown()
    assert "| method_options | proxyclip: empty_rows='nan', beta=1000000.0 * |" in text
    assert d.settings.options_for("proxyclip") == {"empty_rows": "nan", "beta": 1e6}

    mine = {"proxyclip": {"beta": 1e6, "empty_rows": "largest"}}
    largest = segmentation_benchmark(model, LAYOUT, root, method_options=mine, **kwargs)
    assert built[-1].empty_rows == "largest"
    settings = get_preset("proxyclip").settings("custom").replace(**SMALL)
    files = SegmentationFiles(LAYOUT, root)
    queries = [q for line in CLASSES for q in line]
    clf = CLIPZeroShotClassifier(model, queries, templates=protocol_templates("openai_imagenet"),
                                 truncate_text=False)
    seg = ProtocolSegmenter(build_method("proxyclip", clf, **mine["proxyclip"]), CLASSES, settings)
    total = 0
    for i in range(len(files)):
        item = files[i]
        image = normalize_image(rescale_image(item["image"], settings.short_side),
                                settings.mean, settings.std)
        labels = seg.predict([image], [item["label"].shape])[0]
        total = total + confusion_matrix(labels, torch.from_numpy(item["label"]), len(CLASSES))
    assert torch.equal(largest.datasets[0].score("proxyclip").confusion, total)
    assert total[:, 1:].sum() > 0  # finite cosines: not every pixel is class 0

    # resume: the same effective options reuse the stored counts, other options do not
    seen = []
    monkeypatch.setattr(ProtocolSegmenter, "predict",
                        lambda self, images, *a, **k: seen.append(len(images)) or [
                            torch.zeros(size, dtype=torch.long) for size in a[0]])
    again = segmentation_benchmark(model, LAYOUT, root, **{
        **kwargs, "method_options": {"proxyclip": {"beta": 1e6, "empty_rows": "nan"}}})
    assert seen == [] and torch.equal(again.datasets[0].scores[0].confusion,
                                      d.score("proxyclip").confusion)
    segmentation_benchmark(model, LAYOUT, root, **{**kwargs, "method_options": mine})
    assert seen == []
    segmentation_benchmark(model, LAYOUT, root, **kwargs)  # β = 1.2, another setting
    assert sum(seen) == 3


def test_method_option_errors(model, data):
    root, _ = data
    base = dict(preset="proxyclip", classes=CLASSES, overrides=SMALL, limit=1)
    with pytest.raises(ValueError, match="method_options: proxyclip: empty_rows: expected one "
                                         "of 'largest', 'nan', got 'zero'"):
        segmentation_benchmark(model, LAYOUT, root, method_options={
            "proxyclip": {"empty_rows": "zero"}}, **base)
    with pytest.raises(TypeError, match="method_options: proxyclip: .*unexpected keyword "
                                        "argument 'betta'"):
        segmentation_benchmark(model, LAYOUT, root, method_options={
            "proxyclip": {"betta": 1.0}}, **base)
    with pytest.raises(ValueError, match=r"method_options: options for 'sclip', which is not "
                                         r"among the methods run \(proxyclip\)"):
        segmentation_benchmark(model, LAYOUT, root, method_options={"sclip": {}}, **base)
    with pytest.raises(TypeError, match="method_options: expected a dict"):
        segmentation_benchmark(model, LAYOUT, root, method_options=[("proxyclip", {})], **base)


def test_errors(model, data, tmp_path):
    root, _ = data
    with pytest.raises(ValueError, match="methods: 'gradcam' is a 'gradient' method"):
        segmentation_benchmark(model, LAYOUT, root, methods=["gradcam"], classes=CLASSES)
    with pytest.raises(ValueError, match="methods: unknown method 'nope'"):
        segmentation_benchmark(model, LAYOUT, root, methods="nope", classes=CLASSES)
    # the ProxyCLIP preset runs ProxyCLIP (the model's own tower as the proxy without a
    # backbone among the method's options)
    result = segmentation_benchmark(model, LAYOUT, root, preset="proxyclip", classes=CLASSES,
                                    limit=1, progress=False)
    assert result.methods == ["proxyclip"] and result.datasets[0].scores[0].method == "proxyclip"
    with pytest.raises(ValueError, match="classes: required"):
        segmentation_benchmark(model, LAYOUT, root, methods=["raw"])
    voc = tmp_path / "voc"
    write_segmentation_layout(str(voc), LAYOUTS["voc21"], sizes=((20, 20),))
    with pytest.raises(ValueError, match="classes: 4 classes given, but VOC21 has 21"):
        segmentation_benchmark(model, "voc21", str(voc), methods=["raw"], classes=CLASSES)
    with pytest.raises(ValueError, match="root: required for dataset 'voc21'"):
        segmentation_benchmark(model, "voc21", methods=["raw"])
    with pytest.raises(ValueError, match="dataset: expected one of"):
        segmentation_benchmark(model, "voc", root)
    with pytest.raises(ValueError, match="overrides: unknown setting"):
        segmentation_benchmark(model, LAYOUT, root, methods=["raw"], classes=CLASSES,
                               overrides={"crops": 3})


@pytest.mark.slow
def test_scenes_two_images(scenes_clip):
    model, _, tokenizer = scenes_clip
    result = segmentation_benchmark(model, "scenes", preset="sclip", methods=["surgery"],
                                    tokenizer=tokenizer, scenes_size=2)
    (d,) = result.datasets
    assert d.title == "scenes" and d.scores[0].images == 2
    assert d.scores[0].metrics["pixels"] == 2 * 96 * 96  # every pixel labelled
    assert d.scores[0].metrics["mIoU"] > 0.3  # CLIP Surgery finds the scenes' objects


@pytest.mark.slow
def test_all_eight_datasets_table(model, tmp_path):
    data = tmp_path / "data"
    folders = {"voc20": "VOCdevkit/VOC2012", "context59": "VOCdevkit/VOC2010",
               "coco_object": "coco_stuff164k", "cityscapes": "cityscapes",
               "ade20k": "ade/ADEChallengeData2016"}
    for name, sub in folders.items():  # voc21, context60, coco_stuff share these folders
        write_segmentation_layout(str(data / sub), LAYOUTS[name], sizes=((30, 41),),
                                  num_labels=19)
    coco = data / "coco_stuff164k"
    for p in (coco / "images" / "val2017").iterdir():  # COCO-Stuff's labels beside COCO-Object's
        src = coco / "annotations" / "val2017" / (p.stem + "_instanceTrainIds.png")
        (coco / "annotations" / "val2017" / (p.stem + "_labelTrainIds.png")).write_bytes(src.read_bytes())
    result = segmentation_benchmark(model, "all", str(data), preset="sclip", methods=["sclip", "raw"],
                                    overrides=SMALL)
    assert [d.dataset for d in result.datasets] == list(LAYOUTS)
    summary = result.summary_markdown().splitlines()
    assert summary[0] == ("| method | VOC20 | VOC21 | Context59 | Context60 | COCO-Object | "
                          "COCO-Stuff | Cityscapes | ADE20k | Avg |")
    values = [float(v) for v in summary[2].split("|")[2:-1]]
    assert math.isclose(values[-1], np.mean(values[:-1]), abs_tol=0.006)
    written = result.write(str(tmp_path / "out"))
    names = {os.path.basename(p) for p in written}
    assert {"summary.csv", "summary.md", "voc20.md", "ade20k.csv"} <= names and len(names) == 18


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process(tmp_path, scenes_clip):
    model, _, tokenizer = scenes_clip
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", str(_free_port()), "-m", "captum_clip_surgery", "benchmark",
         "--dataset", "scenes", "--scenes", "5", "--methods", "surgery,raw", "--out", str(out),
         "--workers", "0", "--batch-size", "2", "--no-progress"],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("### scenes") == 1  # only rank 0 reports
    single = segmentation_benchmark(model, "scenes", methods=["surgery", "raw"],
                                    tokenizer=tokenizer, scenes_size=5)
    rows = [line.split(",") for line in (out / "scenes.csv").read_text().splitlines()[1:]]
    for row, score in zip(rows, single.datasets[0].scores):
        assert row[2] == score.method and row[6] == "5"
        assert row[3] == f"{100 * score.metrics['mIoU']:.2f}"
    # each rank kept its own per-image results: 5 images in all, none twice
    lines = [json.loads(line)["id"] for dp, _, fs in os.walk(out / "state") for f in fs
             if f.startswith("surgery.") for line in open(os.path.join(dp, f))]
    assert sorted(lines) == sorted(f"scene_{1_000_000 + i}" for i in range(5))
