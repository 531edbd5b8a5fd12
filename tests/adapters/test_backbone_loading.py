r"""load_backbone: timm names with a checkpoint file or the local cache, transformers
folders, strict loading, clear errors; and ``--backbone`` on the command line."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from captum_clip_surgery import CLIPZeroShotClassifier, ProxyCLIPAttribution, get_backbone
from captum_clip_surgery.adapters import backbone_loading
from captum_clip_surgery.adapters.backbone_loading import load_backbone
from captum_clip_surgery.cli import main

timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")

NAME = "test_vit"  # timm's own tiny test architecture (a VisionTransformer, patch 16)


def _seeded(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(NAME, pretrained=False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))  # not the initialiser's values
    return model.eval()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("backbone")
    model = _seeded()
    file = folder / "dino.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                                str(file))
    return model, file


def test_timm_name_with_a_checkpoint_file(weights, tmp_path):
    model, file = weights
    loaded = load_backbone(NAME, checkpoint=str(file))
    assert _same_weights(loaded, model) and not loaded.training
    assert get_backbone(loaded).depth == get_backbone(model).depth
    # a training checkpoint written by torch.save is read with weights_only=True
    pth = tmp_path / "dino.pth"
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, pth)
    assert _same_weights(load_backbone(NAME, checkpoint=str(pth)), model)


def test_strict_loading_and_clear_errors(weights, tmp_path):
    model, _ = weights
    state = dict(model.state_dict())
    dropped = sorted(state)[0]
    del state[dropped]
    state["extra.weight"] = torch.zeros(2)
    partial = tmp_path / "partial.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()}, str(partial))
    with pytest.raises(ValueError, match=r"^backbone: the checkpoint of .* lacks 1 of the model's "
                                         rf"tensors \({dropped}\).*holds 1 tensors the model does "
                                         r"not have \(extra.weight\)") as info:
        load_backbone(NAME, checkpoint=str(partial))
    assert "allow_partial" not in str(info.value)

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pth"
    torch.save({"x": Payload()}, evil)
    with pytest.raises(ValueError, match="backbone_checkpoint: could not read .* weights-only"):
        load_backbone(NAME, checkpoint=str(evil))
    with pytest.raises(ValueError, match="backbone_checkpoint: no such file"):
        load_backbone(NAME, checkpoint=str(tmp_path / "none.safetensors"))
    with pytest.raises(ValueError, match="backbone: 'no_such_net' is neither a local folder"):
        load_backbone("no_such_net")
    with pytest.raises(ValueError, match="backbone: folder .* holds no config.json"):
        load_backbone(str(tmp_path))
    with pytest.raises(ValueError, match="backbone: expected a timm name"):
        load_backbone("")


def test_timm_weights_come_from_the_local_cache_only(weights, monkeypatch):
    model, file = weights
    asked = []

    def cached(repo, filename):
        asked.append((repo, filename))
        return None

    monkeypatch.setattr(backbone_loading, "_hf_cached_file", cached)
    with pytest.raises(ValueError, match=r"backbone: the weights of 'test_vit' are not in the local "
                                         r"Hugging Face cache \(timm/test_vit"):
        load_backbone(NAME)
    assert asked and asked[0] == ("timm/test_vit.r160_in1k", "model.safetensors")
    monkeypatch.setattr(backbone_loading, "_hf_cached_file",
                        lambda repo, filename: str(file) if filename == "model.safetensors" else None)
    assert _same_weights(load_backbone(NAME), model)


def test_transformers_folder(tmp_path):
    from tests.adapters.backbones import hf_dinov2

    model = hf_dinov2(seed=3)
    model.save_pretrained(str(tmp_path / "dinov2"))
    loaded = load_backbone(str(tmp_path / "dinov2"))
    assert type(loaded) is type(model) and _same_weights(loaded, model)
    with pytest.raises(ValueError, match="backbone_checkpoint: only for timm names"):
        load_backbone(str(tmp_path / "dinov2"), checkpoint="x.safetensors")


@pytest.mark.slow
def test_cli_backbone_gives_the_api_s_maps(weights, scenes_clip, tmp_path, capsys):
    model, file = weights
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(folder / "a.png")
    out = tmp_path / "out"
    argv = ["explain", "--images", str(folder), "--text", "tomato", "--text", "grass",
            "--method", "proxyclip", "--backbone", NAME, "--backbone-checkpoint", str(file),
            "--out", str(out), "--save-maps", "--no-figures", "--workers", "0"]
    assert main(argv) == 0, capsys.readouterr().err
    maps = np.load(out / "a.npy")
    clf_model, _, tokenizer = scenes_clip
    from captum_clip_surgery import explain_images

    clf = CLIPZeroShotClassifier(clf_model, ["tomato", "grass"], tokenizer=tokenizer)
    explainer = ProxyCLIPAttribution(clf, backbone=model)
    (_, expected), = list(explain_images(str(folder), explainer))
    np.testing.assert_allclose(maps, expected.numpy(), atol=1e-5, rtol=0)
    # another backbone's weights are other settings: the run is refused, not resumed
    other = tmp_path / "other.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in _seeded(1).state_dict().items()},
                                str(other))
    capsys.readouterr()
    assert main(argv[:-8] + ["--backbone-checkpoint", str(other), "--out", str(out),
                             "--save-maps", "--no-figures", "--workers", "0"]) == 2
    assert "--out:" in capsys.readouterr().err


def test_cli_backbone_errors(tmp_path, capsys):
    def error(argv):
        assert main(argv) == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in lines[0], lines
        return lines[0]

    (tmp_path / "in").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "in" / "a.png")
    base = ["explain", "--images", str(tmp_path / "in"), "--text", "a", "--out",
            str(tmp_path / "out")]
    assert error(base + ["--backbone", NAME]).endswith(
        "--backbone: none of the methods (surgery) takes a second backbone; proxyclip, cass and corrclip do")
    assert "--backbone-checkpoint: give --backbone too" in error(
        base + ["--backbone-checkpoint", "x.safetensors"])
    assert "--backbone: 'no_such_net' is neither" in error(
        base + ["--method", "proxyclip", "--backbone", "no_such_net"])
    assert "--backbone: only with --images" in error(
        ["explain", "--backbone", NAME, "--out", str(tmp_path / "x.png")])


@pytest.mark.slow
def test_benchmark_cli_takes_the_backbone(weights, tmp_path, capsys):
    _, file = weights
    argv = ["benchmark", "--dataset", "scenes", "--scenes", "1", "--methods", "proxyclip",
            "--workers", "0", "--no-progress"]
    assert main(argv + ["--out", str(tmp_path / "own")]) == 0
    own = capsys.readouterr().out
    assert main(argv + ["--out", str(tmp_path / "dino"), "--backbone", NAME,
                        "--backbone-checkpoint", str(file)]) == 0
    dino = capsys.readouterr().out
    assert "proxyclip" in own.lower() and own.split("wrote")[0] != dino.split("wrote")[0]
    assert main(["benchmark", "--dataset", "scenes", "--scenes", "1", "--methods", "surgery",
                 "--backbone", NAME, "--out", str(tmp_path / "x")]) == 2
    assert "--backbone: none of the methods (surgery) takes a second backbone; proxyclip, " \
        "cass and corrclip do, and so does --set refine=lposs / lposs+" in capsys.readouterr().err
    # the LPOSS refinement's graph backbone
    assert main(["benchmark", "--dataset", "scenes", "--scenes", "1", "--methods", "surgery",
                 "--set", "refine=lposs", "--backbone", NAME, "--backbone-checkpoint", str(file),
                 "--out", str(tmp_path / "lposs"), "--workers", "0", "--no-progress"]) == 0
    assert "refine" in capsys.readouterr().out
