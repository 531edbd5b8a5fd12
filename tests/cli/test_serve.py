r"""``clip-surgery serve``: every mistake ends in one line (exit 2) before a model is
loaded or Gradio imported, a missing Gradio names the extra, and the served page binds
to the loopback address only, with no share link, and refuses a port in use."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import pytest

from captum_clip_surgery.cli import main

ONE_LINE = "clip-surgery serve: error: "


@pytest.mark.parametrize("argv, words", [
    (["--precision", "fp64"], "--precision: expected one of fp32, fp16, bf16, got 'fp64'"),
    (["--pretrained", "openai"], "--pretrained: give --model too"),
    (["--port", "70000"], "--port: expected a port number 0..65535, got 70000"),
    (["--scenes", "0"], "--scenes: expected at least 1 scene, got 0"),
    (["--sam-checkpoint", "no/such/sam.pth"], "--sam-checkpoint: file not found"),
    (["--device", "nonsense"], "--device: "),
])
def test_mistakes_are_one_line(argv, words, capsys):
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(ONE_LINE + words) and err.count("\n") == 1, err


def test_missing_gradio_names_the_extra(monkeypatch, capsys):
    from captum_clip_surgery.web import ui

    def missing():
        raise ImportError(f"gradio is not installed; install it with `{ui.APP_HINT}`")

    monkeypatch.setattr(ui, "import_gradio", missing)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err == (ONE_LINE + "gradio is not installed; install it with "
                   "`pip install 'captum-clip-surgery[app]'`\n")


@pytest.mark.slow
def test_serves_on_loopback_and_refuses_a_port_in_use():
    pytest.importorskip("gradio")
    from tests.web.browser import Server

    server = Server()
    try:
        assert server.url == f"http://127.0.0.1:{server.port}/"
        with urllib.request.urlopen(server.url, timeout=30) as response:
            assert response.status == 200
            assert "CLIP Surgery explorer" in response.read().decode()
        taken = subprocess.run(
            [sys.executable, "-m", "captum_clip_surgery", "serve", "--port", str(server.port)],
            capture_output=True, text=True, timeout=300,
        )
        assert taken.returncode == 2, taken.stdout + taken.stderr
        assert taken.stderr.startswith(ONE_LINE + f"--port: cannot serve on 127.0.0.1:"
                                       f"{server.port}")
        assert taken.stderr.count("\n") == 1 and "Traceback" not in taken.stderr
    finally:
        server.stop()
    assert "gradio.live" not in server.log and "public URL" not in server.log


@pytest.mark.slow
def test_a_file_that_is_no_sam_checkpoint_is_one_line(tmp_path):
    pytest.importorskip("segment_anything")
    from captum_clip_surgery.cli import build_parser
    from captum_clip_surgery.cli.common import UserError
    from captum_clip_surgery.cli.serve import build_explorer

    bogus = tmp_path / "sam.pth"
    bogus.write_bytes(b"not a checkpoint")
    args = build_parser().parse_args(["serve", "--sam-checkpoint", str(bogus)])
    with pytest.raises(UserError, match=r"^--sam-checkpoint: cannot load .*sam.pth as a vit_b "
                                        r"SAM checkpoint \(") as info:
        build_explorer(args)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_the_explorer_of_the_command_casts_its_own_model():
    import torch

    from captum_clip_surgery.cli import build_parser
    from captum_clip_surgery.cli.serve import build_explorer

    explorer = build_explorer(build_parser().parse_args(["serve", "--precision", "bf16"]))
    assert next(explorer.model.parameters()).dtype == torch.bfloat16
    assert explorer.name == "the shipped scenes CLIP"
    assert explorer.default_methods == ["surgery", "raw"] and "chefer" in explorer.methods
