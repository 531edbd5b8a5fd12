r"""The command line: the main job end to end and every user-error path."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from captum_clip_surgery.cli import main
from captum_clip_surgery.scenes import ScenesWorld, load_scenes_clip


def _is_png(path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_explain_default_scene_writes_png(tmp_path, capsys):
    out = tmp_path / "explain.png"
    assert main(["explain", "--out", str(out)]) == 0
    assert _is_png(out) and out.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and " s" in printed


def test_module_entry_point_end_to_end(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "captum_clip_surgery", "explain"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert _is_png(tmp_path / "explain.png")
    assert "wrote" in res.stdout


def test_explain_user_image_and_texts(tmp_path):
    image = tmp_path / "scene.png"
    ScenesWorld(seed=5).sample(3)["image"].resize((100, 80)).save(image)
    out = tmp_path / "mine.png"
    assert main(["explain", "--image", str(image), "--text", "lemon", "--text", "snow",
                 "--size", "96", "--out", str(out)]) == 0
    assert _is_png(out)
    # one text alone uses empty-string feature surgery
    assert main(["explain", "--image", str(image), "--text", "lemon", "--out", str(out)]) == 0


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
        (["explain", "--surgery-blocks", "40"], "--surgery-blocks: surgery_blocks: expected an int in [1, 8]"),
        (["explain", "--size", "4"], "--size: expected a size of at least 8 pixels"),
    ]
    for argv, message in cases:
        line = _error(argv, capsys)
        assert line.startswith("clip-surgery explain: error: "), line
        assert message in line, (message, line)


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
