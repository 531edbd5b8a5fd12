r"""The command line: the main job end to end and every user-error path."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from captum_clip_surgery.cli import main
from captum_clip_surgery.scenes import ScenesWorld, load_scenes_clip


def _is_png(path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_explain_default_scene_writes_png(tmp_path, capsys):
    out = tmp_path / "explain.png"
    assert main(["explain", "--out", str(out)]) == 0
    assert _is_png(out) and out.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and " s" in printed


@pytest.mark.slow
def test_explain_default_scene_is_the_fixed_rule(tmp_path, monkeypatch):
    import captum_clip_surgery.apps.comparison as comparison

    drawn = {}
    real = comparison.plot_text_grid

    def spy(image, maps, texts, **kwargs):
        drawn.update(image=image, texts=list(texts))
        return real(image, maps, texts, **kwargs)

    monkeypatch.setattr(comparison, "plot_text_grid", spy)
    assert main(["explain", "--out", str(tmp_path / "e.png")]) == 0
    world = ScenesWorld(seed=0)
    scene = world.sample(world.default_scene())  # first held-out scene with >= 2 objects
    assert drawn["texts"] == scene["objects"] + [scene["background"]]
    assert np.array_equal(np.asarray(drawn["image"]), np.asarray(scene["image"]))


@pytest.mark.slow
def test_module_entry_point_end_to_end(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "captum_clip_surgery", "explain"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert _is_png(tmp_path / "explain.png")
    assert "wrote" in res.stdout


@pytest.mark.slow
def test_explain_user_image_and_texts(tmp_path):
    image = tmp_path / "scene.png"
    ScenesWorld(seed=5).sample(3)["image"].resize((100, 80)).save(image)
    out = tmp_path / "mine.png"
    assert main(["explain", "--image", str(image), "--text", "lemon", "--text", "snow",
                 "--size", "96", "--out", str(out)]) == 0
    assert _is_png(out)
    # one text alone uses empty-string feature surgery
    assert main(["explain", "--image", str(image), "--text", "lemon", "--out", str(out)]) == 0


@pytest.mark.slow
def test_explain_named_architecture_with_a_local_checkpoint(tmp_path):
    model, _, _ = load_scenes_clip()
    ckpt = tmp_path / "scenes_full.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()
               if not k.endswith("attn_mask")}, str(ckpt))
    image = tmp_path / "scene.png"
    ScenesWorld(seed=5).sample(4)["image"].save(image)
    out = tmp_path / "ckpt.png"
    code = main(["explain", "--image", str(image), "--text", "grape", "--text", "sand",
                 "--model", "scenes_clip", "--pretrained", str(ckpt), "--out", str(out)])
    assert code == 0 and _is_png(out)


@pytest.mark.slow
def test_evaluate_named_architecture_with_a_local_checkpoint(tmp_path, capsys):
    # --model/--pretrained path of `evaluate` (as for ViT-B-16/openai on a user's
    # machine): the shipped weights saved as a checkpoint give the shipped model's table
    model, _, _ = load_scenes_clip()
    ckpt = tmp_path / "scenes_full.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()
               if not k.endswith("attn_mask")}, str(ckpt))
    common = ["evaluate", "--limit", "3", "--methods", "surgery,raw", "--no-faithfulness"]
    assert main(common + ["--out", str(tmp_path / "a")]) == 0
    assert main(common + ["--model", "scenes_clip", "--pretrained", str(ckpt),
                          "--out", str(tmp_path / "b")]) == 0
    shipped = (tmp_path / "a" / "results.csv").read_text().splitlines()
    named = (tmp_path / "b" / "results.csv").read_text().splitlines()
    assert len(shipped) == len(named) == 3
    for row_a, row_b in zip(shipped[1:], named[1:]):
        a, b = row_a.split(","), row_b.split(",")
        assert a[0] == b[0]
        for x, y, key in zip(a[1:6], b[1:6], ("msc", "miou", "threshold", "pointing", "energy")):
            assert abs(float(x) - float(y)) < 1e-6, (key, x, y)
    for name in ("results.md", "metrics.png", "iou_threshold.png"):
        assert (tmp_path / "b" / name).stat().st_size > 0


def _error(argv, capsys, monkeypatch=None):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_error_paths(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bad = tmp_path / "not_an_image.png"
    bad.write_text("hello")
    good = tmp_path / "ok.png"
    Image.new("RGB", (32, 32)).save(good)
    cases = [
        (["explain", "--image", str(tmp_path / "missing.jpg"), "--text", "a"], "--image: file not found"),
        (["explain", "--image", str(bad), "--text", "a"], "--image: cannot read"),
        (["explain", "--image", str(good)], "--text: give at least one text"),
        (["explain", "--model", "ViT-Z-99"], "--model: unknown open_clip model 'ViT-Z-99'"),
        (["explain", "--model", "RN50", "--pretrained", str(tmp_path / "no" / "w.pt")],
         "--pretrained: checkpoint file not found"),
        (["explain", "--pretrained", "openai"], "--pretrained: give --model too"),
        (["explain", "--out", str(tmp_path / "nowhere" / "x.png")], "--out: folder does not exist"),
        (["explain", "--device", "tpu9"], "--device: cannot use device 'tpu9'"),
        (["explain", "--surgery-blocks", "40"], "--surgery-blocks: surgery_blocks: expected an int in [1, 6]"),
        (["explain", "--size", "4"], "--size: expected a size of at least 8 pixels"),
    ]
    for argv, message in cases:
        line = _error(argv, capsys)
        assert line.startswith("clip-surgery explain: error: "), line
        assert message in line, (message, line)


def _fake_loader(model):
    r"""A ``cli.common.load_model`` stand-in returning ``model`` with the scenes preprocessing."""
    from captum_clip_surgery.scenes.model import scenes_preprocess

    def load(name, pretrained, device):
        return model, scenes_preprocess(64), None

    return load


@pytest.mark.slow
def test_unsupported_models_and_methods_are_one_line_errors(tmp_path, capsys, monkeypatch):
    import captum_clip_surgery.cli.common as common
    from tests.models import tiny_resnet

    monkeypatch.setattr(common, "load_model", _fake_loader(torch.nn.Linear(2, 2)))
    for command in ("explain", "evaluate"):
        line = _error([command, "--model", "anything", "--out", str(tmp_path / "x")], capsys)
        assert line.startswith(f"clip-surgery {command}: error: --model: model: unsupported model"), line

    monkeypatch.setattr(common, "load_model", _fake_loader(tiny_resnet()))
    line = _error(["evaluate", "--model", "rn", "--methods", "surgery,chefer", "--limit", "1"], capsys)
    assert "--methods: chefer not defined for this model's image tower" in line, line
    line = _error(["explain", "--model", "rn", "--size", "16"], capsys)
    assert "--size: expected a size of at least 32 pixels" in line, line
    line = _error(["explain", "--model", "rn", "--surgery-blocks", "2"], capsys)
    assert "--surgery-blocks: surgery_blocks: this image tower has no attention blocks" in line
    # the default needs no --surgery-blocks on a tower without blocks
    assert main(["explain", "--model", "rn", "--out", str(tmp_path / "rn.png")]) == 0
    assert _is_png(tmp_path / "rn.png")


def test_evaluate_default_methods_are_those_defined_for_the_model():
    from captum_clip_surgery import CLIPZeroShotClassifier
    from captum_clip_surgery.cli.evaluate import methods_option as _methods
    from captum_clip_surgery.methods.registry import method_names
    from tests.models import tiny_resnet, tiny_vit

    vit = CLIPZeroShotClassifier(tiny_vit(), ["a", "b"], templates=["{}"])
    resnet = CLIPZeroShotClassifier(tiny_resnet(), ["a", "b"], templates=["{}"])
    evaluate_methods = method_names("evaluate")
    assert evaluate_methods == ("surgery", "raw", "maskclip", "gradcam", "chefer", "ig")
    assert _methods(None, vit) == list(evaluate_methods)
    assert _methods(None, resnet) == [m for m in evaluate_methods if m != "chefer"]
    assert _methods("raw, surgery,raw", resnet) == ["raw", "surgery"]


def test_evaluate_error_paths(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    cases = [
        (["evaluate", "--device", "tpu9"], "--device: cannot use device 'tpu9'"),
        (["evaluate", "--batch-size", "0"], "--batch-size: expected a value of at least 1"),
        (["evaluate", "--ig-steps", "0"], "--ig-steps: expected a value of at least 1"),
        (["evaluate", "--deletion-steps", "0"], "--deletion-steps: expected a value of at least 1"),
        (["evaluate", "--tolerance", "-1"], "--tolerance: expected a value of at least 0"),
        (["evaluate", "--limit", "0"], "--limit: expected a positive number"),
        (["evaluate", "--size", "2"], "--size: expected a size of at least 8"),
        (["evaluate", "--methods", "surgery,nope"], "--methods: unknown method(s) nope"),
        (["evaluate", "--methods", ","], "--methods: unknown method(s) (none given)"),
        (["evaluate", "--dataset", "voc"], "--root: required for --dataset voc"),
        (["evaluate", "--dataset", "voc", "--root", str(tmp_path)], "--root: PASCAL VOC 2012 not found"),
        (["evaluate", "--dataset", "folder"], "--root: required for --dataset folder"),
        (["evaluate", "--dataset", "folder", "--root", str(tmp_path / "empty")],
         "--root: " + str(tmp_path / "empty" / "images") + " not found"),
        (["evaluate", "--pretrained", "openai"], "--pretrained: give --model too"),
    ]
    for argv, message in cases:
        line = _error(argv, capsys)
        assert line.startswith("clip-surgery evaluate: error: "), line
        assert message in line, (message, line)


@pytest.mark.slow
def test_unavailable_hub_weights_are_one_line_error(tmp_path):
    # A subprocess, so that huggingface_hub reads HF_HUB_OFFLINE at import time
    # and fails at once instead of retrying a network that is not there.
    good = tmp_path / "ok.png"
    Image.new("RGB", (32, 32)).save(good)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    res = subprocess.run(
        [sys.executable, "-m", "captum_clip_surgery", "explain", "--model", "RN50",
         "--pretrained", "openai", "--image", str(good), "--text", "a"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env,
    )
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    last = lines[0]
    assert last.startswith("clip-surgery explain: error: --pretrained: could not load weights "
                           "'openai' for RN50"), last
    assert "Traceback" not in res.stderr


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "explain" in capsys.readouterr().out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_explain_on_gpu(tmp_path):
    assert main(["explain", "--device", "cuda", "--out", str(tmp_path / "g.png")]) == 0
    assert os.path.exists(tmp_path / "g.png")


@pytest.mark.slow
def test_explain_with_a_transformers_folder(tmp_path):
    hosts = pytest.importorskip("tests.adapters.hosts")
    folder = tmp_path / "hf-clip"
    hosts.to_hf(hosts.openclip_vit()).save_pretrained(str(folder))
    hosts.clip_tokenizer().save_pretrained(str(folder))
    image = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), color=(200, 30, 30)).save(image)
    out = tmp_path / "hf.png"
    argv = ["explain", "--model", str(folder), "--image", str(image), "--text", "dog",
            "--text", "a red car", "--out", str(out)]
    assert main(argv) == 0
    assert out.stat().st_size > 0


def test_coca_figure_shows_the_methods_defined_for_it(tmp_path, capsys, monkeypatch):
    r"""``--model coca_ViT-B-32`` ended in a traceback: the raw map of the default figure is
    not defined for CoCa's attentional pooler. The figure now holds the methods defined for
    the model and one line says which it left out."""
    import captum_clip_surgery.cli.common as common
    from captum_clip_surgery.apps import comparison
    from tests.adapters.test_openclip_towers import _tokenize
    from tests.adapters.timm_models import tiny_native_clip

    def load(name, pretrained, device):
        from captum_clip_surgery.scenes.model import scenes_preprocess

        return tiny_native_clip("coca"), scenes_preprocess(32), _tokenize

    monkeypatch.setattr(common, "load_model", load)
    drawn = []
    real = comparison.plot_text_grid
    monkeypatch.setattr(comparison, "plot_text_grid",
                        lambda image, maps, texts: drawn.append(list(maps)) or real(image, maps, texts))
    out = tmp_path / "coca.png"
    assert main(["explain", "--model", "coca", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and _is_png(out)
    assert drawn == [["CLIP Surgery"]]
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("clip-surgery explain: note: showing CLIP Surgery only, left out "
                               "raw CLIP: the CoCa attentional pooler takes 24-wide queries")
    assert "methods defined for this model: surgery, maskclip" in lines[0]
    # asking for the raw map of many images is a one-line error saying why
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (32, 32)).save(folder / "a.png")
    line = _error(["explain", "--model", "coca", "--images", str(folder), "--text", "dog",
                   "--out", str(tmp_path / "maps"), "--method", "raw", "--save-maps"], capsys)
    assert line.startswith("clip-surgery explain: error: --method: 'raw' is not defined for this "
                           "model's image tower (the CoCa attentional pooler"), line


def test_help_documents_the_exit_status():
    from captum_clip_surgery.cli import build_parser

    parser = build_parser()
    for command in ([], ["explain"]):
        text = (parser if not command else parser._subparsers._group_actions[0].choices[
            command[0]]).format_help()
        assert "exit status:" in text
        for code in ("0 ", "1 ", "2 ", "3 ", "130 "):
            assert f"\n  {code}" in text, (command, code)
    evaluate = parser._subparsers._group_actions[0].choices["evaluate"].format_help()
    assert "\n  2 " in evaluate and "\n  130 " in evaluate and "\n  3 " not in evaluate


def test_every_method_choice_lists_the_registry_names(tmp_path, capsys):
    r"""``--method`` / ``--methods`` help and every "unknown method" message list the
    registered names (item 20 of issue 18; already so on main, kept so here)."""
    from captum_clip_surgery import CLIPZeroShotClassifier, compare, explain_images
    from captum_clip_surgery.cli import build_parser
    from captum_clip_surgery.methods.registry import build_method, method_names

    names = method_names()
    choices = build_parser()._subparsers._group_actions[0].choices
    flat = {c: " ".join(choices[c].format_help().split()) for c in ("explain", "evaluate")}
    assert ("explanation method (default surgery): " + ", ".join(names)) in flat["explain"]
    assert ("any of: " + ", ".join(names)) in flat["evaluate"]
    listed = ", ".join(names)
    lines = [_error(["explain", "--images", str(tmp_path), "--text", "a", "--method", "nope"],
                    capsys),
             _error(["evaluate", "--methods", "surgery,nope", "--limit", "1"], capsys)]
    assert all(listed in line for line in lines), lines
    model, _, tokenizer = load_scenes_clip()
    clf = CLIPZeroShotClassifier(model, ["a", "b"], tokenizer=tokenizer)
    for call in (lambda: build_method("nope", clf),
                 lambda: compare(clf, torch.zeros(1, 3, 64, 64), 0, methods=["nope"]),
                 lambda: explain_images([], clf, method="nope")):
        with pytest.raises(ValueError, match="nope") as info:
            call()
        assert listed in str(info.value)


def test_tokenizer_option_for_a_folder_without_tokenizer_files(tmp_path, capsys):
    r"""Issue 18, item 3: without tokenizer files one line says to pass --tokenizer; with it
    the folder explains (and evaluates)."""
    hosts = pytest.importorskip("tests.adapters.hosts")
    folder = tmp_path / "hf-clip"
    hosts.to_hf(hosts.openclip_vit()).save_pretrained(str(folder))
    tokenizer = tmp_path / "tokenizer"
    hosts.clip_tokenizer().save_pretrained(str(tokenizer))
    image = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), color=(200, 30, 30)).save(image)
    argv = ["explain", "--model", str(folder), "--image", str(image), "--text", "dog",
            "--text", "a red car", "--out", str(tmp_path / "hf.png")]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--tokenizer PATH_OR_NAME" in err, err
    assert "gives the same token ids" in err
    assert main(argv + ["--tokenizer", str(tokenizer)]) == 0
    assert main(["explain", "--tokenizer", str(tokenizer), "--out", str(tmp_path / "x.png")]) == 2
    assert "--tokenizer: give --model too" in capsys.readouterr().err


def test_evaluate_checks_error_paths(tmp_path, capsys, monkeypatch):
    import captum_clip_surgery.cli.common as common
    from tests.models import tiny_resnet

    monkeypatch.setattr(common, "load_model", _fake_loader(tiny_resnet()))
    line = _error(["evaluate", "--model", "rn", "--sanity", "--methods", "raw",
                   "--out", str(tmp_path / "x")], capsys)
    assert line == ("clip-surgery evaluate: error: --sanity: the model's image tower has no "
                    "attention blocks to randomise"), line
    monkeypatch.setitem(sys.modules, "quantus", None)  # as if Quantus were not installed
    line = _error(["evaluate", "--quantus", "--out", str(tmp_path / "x")], capsys)
    assert line == ('clip-surgery evaluate: error: --quantus: needs Quantus: pip install '
                    '"captum-clip-surgery[quantus]"'), line
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_evaluate_quantus_and_sanity_give_the_api_numbers(tmp_path, capsys):
    # the same defaults as tutorial 06: the scenes model, its classes as texts with the
    # default templates, every class present in the first --limit held-out scenes
    pytest.importorskip("quantus")
    import csv

    from captum_clip_surgery import CLIPZeroShotClassifier
    from captum_clip_surgery.evaluation import ScenesSegmentation
    from captum_clip_surgery.evaluation.pairs import dataset_pairs
    from captum_clip_surgery.evaluation.quantus_bridge import quantus_evaluate
    from captum_clip_surgery.evaluation.sanity import sanity_checks

    out = tmp_path / "checks"
    methods = ["surgery", "gradcam"]
    argv = ["evaluate", "--quantus", "--sanity", "--limit", "1", "--methods", ",".join(methods),
            "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}/quantus.md, quantus.csv, sanity.md, sanity.csv and figures" in printed
    assert "| CLIP Surgery |" in printed

    model, _, tokenizer = load_scenes_clip()
    data = ScenesSegmentation(size=1)
    clf = CLIPZeroShotClassifier(model, data.class_names, tokenizer=tokenizer)
    pairs = dataset_pairs(data, clf, limit=1)
    quantus = quantus_evaluate(clf, pairs.images, pairs.targets, pairs.masks, methods=methods)
    with open(out / "quantus.csv", newline="", encoding="utf-8") as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    for method, row in quantus.summary().items():
        for metric, value in row.items():
            assert float(rows[method][metric]) == pytest.approx(value, abs=1e-12, nan_ok=True), \
                (method, metric)
    sanity = sanity_checks(clf, pairs.images, pairs.targets, methods=methods)
    with open(out / "sanity.csv", newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            expected = sanity.curve(r["method"], r["mode"], "spearman")[int(r["step"])]
            assert float(r["spearman"]) == pytest.approx(expected, abs=1e-12, nan_ok=True), r
    for name in ("quantus.md", "quantus_records.csv", "sanity.md", "sanity_records.csv"):
        assert (out / name).stat().st_size > 0
    assert _is_png(out / "quantus.png") and _is_png(out / "sanity.png")
