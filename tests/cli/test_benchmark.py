r"""``clip-surgery benchmark`` and ``clip-surgery coco-object``: end to end on the scenes
world and a layout of one's own, resuming, and every user mistake in one line."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import captum_clip_surgery.cli.common as common
from captum_clip_surgery.benchmark import DatasetLayout
from captum_clip_surgery.cli import main
from captum_clip_surgery.cli.benchmark import parse_method_option, parse_setting
from tests.helpers import write_segmentation_layout
from tests.models import tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")


def _error(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def tiny_model(monkeypatch):
    model = tiny_vit()
    monkeypatch.setattr(common, "load_model", lambda name, pretrained, device: (model, None, None))
    return model


@pytest.mark.slow
def test_scenes_end_to_end_and_resume(tmp_path, capsys):
    argv = ["benchmark", "--dataset", "scenes", "--scenes", "2", "--methods", "surgery,raw",
            "--out", str(tmp_path / "out"), "--workers", "0", "--no-progress"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "### scenes — preset `sclip`" in first and "| CLIP Surgery |" in first
    assert (tmp_path / "out" / "scenes.md").read_text().startswith("### scenes")
    header = (tmp_path / "out" / "scenes.csv").read_text().splitlines()[0]
    assert header.startswith("dataset,preset,method,mIoU,aAcc,mAcc,images,images_per_s,IoU:")
    # a second run finds every image in out/state and prints the same numbers
    assert main(argv) == 0
    second = capsys.readouterr().out
    rows = lambda text: [line for line in text.splitlines() if line.startswith("| CLIP Surgery |")]  # noqa: E731
    assert rows(first)[0].split("|")[2:5] == rows(second)[0].split("|")[2:5]


def test_custom_layout_with_a_class_file(tmp_path, capsys, tiny_model):
    layout = DatasetLayout("custom", "custom", "imgs", "labels", ".png", ".png", None, False,
                           None, True)
    ids = write_segmentation_layout(str(tmp_path / "data"), layout, num_labels=3)
    (tmp_path / "classes.txt").write_text("background, sky\ndog, puppy\ncat")
    code = main(["benchmark", "--dataset", "custom", "--root", str(tmp_path / "data"),
                 "--model", "tiny", "--classes", str(tmp_path / "classes.txt"), "--img-dir", "imgs",
                 "--ann-dir", "labels", "--img-suffix", ".png", "--background",
                 "--methods", "sclip", "--set", "short_side=40", "--set", "crop=32",
                 "--set", "stride=16", "--set", "prob_thd=0.4",
                 "--save-predictions", str(tmp_path / "pred"), "--out", str(tmp_path / "out"),
                 "--workers", "0", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "| prob_thd | 0.4 * |" in out and "| background |" in out
    for image_id in ids:
        saved = np.array(Image.open(tmp_path / "pred" / "sclip" / (image_id + ".png")))
        truth = np.array(Image.open(tmp_path / "data" / "labels" / (image_id + ".png")))
        assert saved.shape == truth.shape and ((saved == 255) == (truth == 255)).all()
        assert set(np.unique(saved)) <= {0, 1, 2, 255}


def test_method_options_over_the_presets(tmp_path, capsys, tiny_model):
    r"""The proxyclip preset runs ProxyCLIP with the release's empty_rows='nan': with a β
    that makes every window's attention empty, every pixel is class 0; --method-option
    proxyclip.empty_rows=largest wins (finite maps, not all class 0); the table shows the
    options each run used."""
    layout = DatasetLayout("custom", "custom", "imgs", "labels", ".png", ".png", None, False,
                           None, True)
    write_segmentation_layout(str(tmp_path / "data"), layout, num_labels=3)
    (tmp_path / "classes.txt").write_text("background; sky\ndog; puppy\ncat")
    argv = ["benchmark", "--dataset", "custom", "--root", str(tmp_path / "data"), "--model",
            "tiny", "--classes", str(tmp_path / "classes.txt"), "--img-dir", "imgs",
            "--ann-dir", "labels", "--img-suffix", ".png", "--background", "--preset",
            "proxyclip", "--set", "short_side=40", "--set", "crop=32", "--set", "stride=16",
            "--method-option", "proxyclip.beta=1e6", "--workers", "0", "--no-progress"]
    predicted = {}
    for extra in ([], ["--method-option", "proxyclip.empty_rows=largest"]):
        out = tmp_path / f"out{len(extra)}"
        code = main(argv + extra + ["--out", str(out), "--save-predictions", str(out / "pred")])
        assert code == 0, capsys.readouterr().err
        table = capsys.readouterr().out
        mode = "'largest'" if extra else "'nan'"
        assert f"| method_options | proxyclip: empty_rows={mode}, beta=1000000.0 * |" in table
        predicted[mode] = set()
        for path in (out / "pred" / "proxyclip").iterdir():
            predicted[mode] |= set(np.unique(np.array(Image.open(path))).tolist())
    assert predicted["'nan'"] <= {0, 255}  # every window NaN: the release's label 0
    assert predicted["'largest'"] - {0, 255}


def test_parse_method_option():
    assert parse_method_option("proxyclip.empty_rows=largest") == ("proxyclip", "empty_rows",
                                                                    "largest")
    assert parse_method_option("proxyclip.empty_rows='nan'") == ("proxyclip", "empty_rows", "nan")
    assert parse_method_option("proxyclip.beta=1.5") == ("proxyclip", "beta", 1.5)
    assert parse_method_option("cass.backbone=None") == ("cass", "backbone", None)
    assert parse_method_option("naclip.gaussian_std = 5") == ("naclip", "gaussian_std", 5)
    assert parse_method_option("a-b.c=(1, 2)") == ("a-b", "c", (1, 2))
    assert parse_method_option("x.y= two words ") == ("x", "y", "two words")
    assert parse_method_option("x.y=") == ("x", "y", "")


def test_parse_setting():
    assert parse_setting("prob_thd=0.2") == ("prob_thd", 0.2)
    assert parse_setting("crop=0") == ("crop", 0)
    assert parse_setting("pamr_dilations=8,16") == ("pamr_dilations", (8, 16))
    assert parse_setting("area_thd=none") == ("area_thd", None)
    assert parse_setting("pamr_without_window=true") == ("pamr_without_window", True)
    assert parse_setting("synonym_separator=; ") == ("synonym_separator", "; ")
    assert parse_setting("synonym_separator=, ") == ("synonym_separator", ", ")


def test_error_paths(tmp_path, capsys, tiny_model):
    (tmp_path / "empty").mkdir()
    cases = [
        (["benchmark", "--dataset", "voc21"], "--root: required for --dataset voc21"),
        (["benchmark", "--dataset", "voc21", "--root", str(tmp_path)],
         "--model: required for --dataset voc21"),
        (["benchmark", "--dataset", "voc21", "--root", str(tmp_path), "--model", "m"],
         "--root: " + str(tmp_path) + " has no VOC21 layout"),
        (["benchmark", "--dataset", "custom", "--root", str(tmp_path), "--model", "m"],
         "--classes: required for --dataset custom"),
        (["benchmark", "--limit", "0"], "--limit: expected a value of at least 1"),
        (["benchmark", "--workers", "-1"], "--workers: expected a value of at least 0"),
        (["benchmark", "--device", "tpu9"], "--device: cannot use device 'tpu9'"),
        (["benchmark", "--set", "prob_thd"], "--set: expected FIELD=VALUE"),
        (["benchmark", "--model", "m", "--set", "crops=3"], "--set: unknown setting(s) crops"),
        (["benchmark", "--model", "m", "--set", "prob_thd=2"],
         "--set prob_thd: expected a number in [0, 1]"),
        (["benchmark", "--model", "m", "--methods", "gradcam"],
         "--methods: 'gradcam' is a 'gradient' method"),
        (["benchmark", "--model", "m", "--methods", "nope"], "--methods: unknown method 'nope'"),
        (["benchmark", "--pretrained", "openai"], "--pretrained: give --model too"),
        (["benchmark", "--method-option", "empty_rows=nan"],
         "--method-option: expected METHOD.ARGUMENT=VALUE (e.g. proxyclip.empty_rows=largest), "
         "got 'empty_rows=nan'"),
        (["benchmark", "--method-option", "proxyclip.empty_rows"],
         "--method-option: expected METHOD.ARGUMENT=VALUE"),
        (["benchmark", "--method-option", "proxyclip.empty rows=nan"],
         "--method-option: expected METHOD.ARGUMENT=VALUE"),
        (["benchmark", "--model", "m", "--method-option", "proxyclip.beta=1"],
         "--method-option: options for 'proxyclip', which is not among the methods run (sclip)"),
        (["benchmark", "--model", "m", "--preset", "proxyclip", "--method-option",
          "proxyclip.empty_rows=zero"],
         "--method-option: proxyclip: empty_rows: expected one of 'largest', 'nan', got 'zero'"),
        (["benchmark", "--model", "m", "--preset", "proxyclip", "--method-option",
          "proxyclip.betta=1"],
         "--method-option: proxyclip: ProxyCLIPAttribution.__init__() got an unexpected "
         "keyword argument 'betta'"),
        (["coco-object", "--root", str(tmp_path / "empty")], "--root: no folder"),
    ]
    for argv, message in cases:
        line = _error(argv, capsys)
        assert line.startswith(f"clip-surgery {argv[0]}: error: "), line
        assert message in line, (message, line)


def test_coco_object_command(tmp_path, capsys):
    src = tmp_path / "annotations" / "val2017"
    src.mkdir(parents=True)
    Image.fromarray(np.array([[0, 91]], np.uint8)).save(src / "a.png")
    assert main(["coco-object", "--root", str(tmp_path)]) == 0
    assert "wrote 1 COCO-Object labels" in capsys.readouterr().out
    assert np.array(Image.open(src / "a_instanceTrainIds.png")).tolist() == [[1, 0]]
