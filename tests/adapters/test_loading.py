r"""load_clip(): models by name, hub id or local folder, from local files only."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from captum_clip_surgery.adapters import get_adapter
from captum_clip_surgery.adapters.loading import load_clip
from tests.models import TEXT_CFG, tiny_vit


def _save_open_clip_folder(path, model, mean, std):
    cfg = {
        "model_cfg": {
            "embed_dim": 24,
            "vision_cfg": dict(image_size=32, patch_size=8, width=48, layers=7, head_width=16,
                               mlp_ratio=2.0),
            "text_cfg": dict(TEXT_CFG),
        },
        "preprocess_cfg": {"mean": list(mean), "std": list(std)},
    }
    path.mkdir()
    (path / "open_clip_config.json").write_text(json.dumps(cfg))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / "open_clip_model.safetensors"))


def test_local_open_clip_folder_loads_its_weights_and_normalisation(tmp_path):
    model = tiny_vit()
    folder = tmp_path / "tiny"
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    _save_open_clip_folder(folder, model, mean, std)
    loaded, preprocess, tokenizer = load_clip(str(folder))
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    adapter = get_adapter(loaded)
    assert adapter.image_mean == pytest.approx(mean) and adapter.image_std == pytest.approx(std)
    assert adapter.input_size() == (32, 32)
    # the returned preprocessing: square resize to the model's size, the model's own normalisation
    image = Image.new("RGB", (50, 20), color=(255, 0, 128))
    x = preprocess(image)
    assert x.shape == (3, 32, 32)
    expected = (torch.tensor([1.0, 0.0, 128 / 255]) - torch.tensor(mean)) / torch.tensor(std)
    torch.testing.assert_close(x[:, 16, 16], expected, atol=1e-2, rtol=0)
    assert tokenizer(["a dog"]).shape[0] == 1


@pytest.mark.parametrize(
    "name,message",
    [
        ("ViT-Z-99", "model: unknown open_clip model 'ViT-Z-99'"),
        ("", "model: expected a model name"),
    ],
)
def test_unknown_names_are_value_errors(name, message):
    with pytest.raises(ValueError, match=message):
        load_clip(name)


def test_folder_without_a_config_is_refused(tmp_path):
    with pytest.raises(ValueError, match="model: folder .* holds neither a config.json"):
        load_clip(str(tmp_path))


def test_hub_id_missing_from_the_cache_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="not in the local Hugging Face cache"):
        load_clip("hf-hub:nobody/no-such-clip")


def test_transformers_folder_loads_with_its_tokenizer(tmp_path):
    hosts = pytest.importorskip("tests.adapters.hosts")
    source = hosts.openclip_vit()
    hf = hosts.to_hf(source)
    folder = tmp_path / "hf-clip"
    hf.save_pretrained(str(folder))
    hosts.clip_tokenizer().save_pretrained(str(folder))
    model, preprocess, tokenizer = load_clip(str(folder))
    assert type(model).__name__ == "CLIPModel" and not model.training
    for (k, a), (_, b) in zip(hf.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), k
    assert preprocess(Image.new("RGB", (40, 30))).shape == (3, 32, 32)
    # the folder's tokenizer and open_clip's give the same classifier
    from captum_clip_surgery import CLIPZeroShotClassifier

    images = torch.randn(2, 3, 32, 32)
    ours = CLIPZeroShotClassifier(model, ["dog", "a red car"], templates=["{}"], tokenizer=tokenizer)
    theirs = CLIPZeroShotClassifier(source, ["dog", "a red car"], templates=["{}"])
    torch.testing.assert_close(ours(images), theirs(images), atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="pretrained: only for open_clip models"):
        load_clip(str(folder), pretrained="openai")
