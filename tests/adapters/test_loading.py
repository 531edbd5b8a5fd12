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


# --------------------------------------------------------------------------------------
# nothing loaded partly, nothing built that the checkpoint cannot fill (issue 18, item 2)


def _hf_folder(tmp_path, name="hf-clip"):
    r"""A very small transformers ``CLIPModel`` saved with ``save_pretrained`` (3 vision
    layers of 16 tensors each) and a tokenizer."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=64,
                         num_attention_heads=2, num_hidden_layers=2, max_position_embeddings=16),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                           num_hidden_layers=3, image_size=32, patch_size=8),
        projection_dim=16,
    )
    hf = transformers.CLIPModel(config).eval()
    folder = tmp_path / name
    hf.save_pretrained(str(folder))
    # a small word-level tokenizer (ids below the vocabulary of 99) beside the weights
    pytest.importorskip("tests.adapters.hosts").siglip_tokenizer().save_pretrained(str(folder))
    return hf, folder


def _rewrite_weights(path, keep=None, extra=None):
    from safetensors.torch import load_file

    state = load_file(str(path))
    state = {k: v for i, (k, v) in enumerate(sorted(state.items())) if keep is None or keep(i, k)}
    state.update(extra or {})
    save_file(state, str(path), metadata={"format": "pt"})


def _edit_config(path, edit):
    cfg = json.loads(path.read_text())
    edit(cfg)
    path.write_text(json.dumps(cfg))


def test_transformers_checkpoint_lacking_tensors_is_an_error_naming_them(tmp_path):
    hf, folder = _hf_folder(tmp_path)
    weights = folder / "model.safetensors"
    # every vision tensor dropped: half of the model would be random
    _rewrite_weights(weights, keep=lambda i, k: not k.startswith("vision_model.encoder.layers.1."))
    with pytest.raises(ValueError, match=r"model: the checkpoint of .* lacks 16 of the model's "
                                         r"tensors \(vision_model\.encoder\.layers\.1\..*"
                                         r"randomly initialised; pass allow_partial=True"):
        load_clip(str(folder))
    # the explicit opt-in loads it, with a warning naming the tensors
    with pytest.warns(UserWarning, match=r"lacks 16 of the model's tensors \(vision_model\."):
        model, _, _ = load_clip(str(folder), allow_partial=True)
    loaded = model.state_dict()
    for k, v in hf.state_dict().items():
        if not k.startswith("vision_model.encoder.layers.1."):
            assert torch.equal(loaded[k], v), k


def test_transformers_checkpoint_with_unknown_tensors_is_an_error(tmp_path):
    _, folder = _hf_folder(tmp_path)
    _rewrite_weights(folder / "model.safetensors", extra={"vision_model.extra.weight": torch.ones(3)})
    with pytest.raises(ValueError, match=r"holds 1 tensors the model does not have "
                                         r"\(vision_model\.extra\.weight\)"):
        load_clip(str(folder))


def test_transformers_config_with_more_layers_than_the_checkpoint(tmp_path):
    hf, folder = _hf_folder(tmp_path)
    # one layer more: built, then refused by name (the checkpoint lacks its tensors)
    _edit_config(folder / "config.json", lambda c: c["vision_config"].update(num_hidden_layers=4))
    with pytest.raises(ValueError, match=r"lacks 16 of the model's tensors "
                                         r"\(vision_model\.encoder\.layers\.3\."):
        load_clip(str(folder))
    # far more: refused from the config and the checkpoint's header, before building
    held = sum(p.numel() for p in hf.parameters())
    _edit_config(folder / "config.json", lambda c: c["vision_config"].update(num_hidden_layers=300))
    with pytest.raises(ValueError, match=rf"describes about [\d,]+ parameters but its checkpoint "
                                         rf"holds {held:,}: the rest would be random"):
        load_clip(str(folder), allow_partial=True)


def test_config_of_minutes_is_refused_before_building(tmp_path, monkeypatch):
    from captum_clip_surgery.adapters import loading

    _, folder = _hf_folder(tmp_path)
    _edit_config(folder / "config.json", lambda c: c["text_config"].update(num_hidden_layers=10**7))
    (folder / "model.safetensors").unlink()  # no header to compare with: the size alone decides
    _rewrite_index = {"weight_map": {}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(_rewrite_index))

    def no_build(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr("transformers.AutoModel.from_pretrained", no_build)
    with pytest.raises(ValueError, match=r"describes about [\d,]+ parameters, more than "
                                         r"load_clip builds \(10,000,000,000"):
        load_clip(str(folder))
    assert loading.MAX_PARAMETERS == 10**10


def test_config_parameters_estimates_the_real_count():
    hosts = pytest.importorskip("tests.adapters.hosts")
    from captum_clip_surgery.adapters.loading import config_parameters

    # a lower bound (norms, biases and SigLIP's pooling head are left out), close to the
    # real count already for these tiny models
    for model, low in ((hosts.to_hf(hosts.openclip_vit()), 0.99), (hosts.siglip(), 0.75)):
        real = sum(p.numel() for p in model.parameters())
        estimate = config_parameters(model.config.to_dict())
        assert low * real <= estimate <= real, (estimate, real)


def test_truncated_safetensors_is_an_error(tmp_path):
    _, folder = _hf_folder(tmp_path)
    weights = folder / "model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="model: could not load the transformers model"):
        load_clip(str(folder))


def test_open_clip_folder_without_weights_or_with_partial_weights(tmp_path):
    model = tiny_vit()
    folder = tmp_path / "tiny"
    _save_open_clip_folder(folder, model, (0.5,) * 3, (0.2,) * 3)
    weights = folder / "open_clip_model.safetensors"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file({k: v for k, v in state.items() if k != "visual.proj"}, str(weights))
    with pytest.raises(ValueError, match=r"Missing key\(s\) in state_dict: \"visual\.proj\""):
        load_clip(str(folder))
    save_file(dict(state, extra=torch.zeros(2)), str(weights))
    with pytest.raises(ValueError, match=r"Unexpected key\(s\) in state_dict: \"extra\""):
        load_clip(str(folder))
    save_file(state, str(weights))
    _edit_config(folder / "open_clip_config.json",
                 lambda c: c["model_cfg"]["vision_cfg"].update(layers=400))
    with pytest.raises(ValueError, match=r"describes about [\d,]+ parameters but its checkpoint "
                                         r"holds [\d,]+: the rest would be random"):
        load_clip(str(folder))
    _edit_config(folder / "open_clip_config.json",
                 lambda c: c["model_cfg"]["vision_cfg"].update(layers=7))
    weights.unlink()  # open_clip itself would build a random model and only log it
    with pytest.raises(ValueError, match=r"holds an open_clip_config\.json but no weights"):
        load_clip(str(folder))


# --------------------------------------------------------------------------------------
# a model folder saved without its tokenizer files (issue 18, item 3)


def test_folder_without_tokenizer_files_needs_a_tokenizer(tmp_path):
    from captum_clip_surgery import CLIPZeroShotClassifier
    from captum_clip_surgery.adapters.loading import load_tokenizer

    hosts = pytest.importorskip("tests.adapters.hosts")
    source = hosts.openclip_vit()
    folder = tmp_path / "hf-clip"
    hosts.to_hf(source).save_pretrained(str(folder))
    with pytest.raises(ValueError, match=r"^tokenizer \(the tokenizer files of .*\): gives the "
                                         r"same token ids .*--tokenizer PATH_OR_NAME"):
        load_clip(str(folder))
    tokenizer_folder = tmp_path / "clip-tokenizer"
    hosts.clip_tokenizer().save_pretrained(str(tokenizer_folder))
    model, _, tokenizer = load_clip(str(folder), tokenizer=str(tokenizer_folder))
    ours = CLIPZeroShotClassifier(model, ["dog", "a red car"], templates=["{}"], tokenizer=tokenizer)
    theirs = CLIPZeroShotClassifier(source, ["dog", "a red car"], templates=["{}"])
    torch.testing.assert_close(ours.text_features, theirs.text_features, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"^tokenizer: could not load a tokenizer from "):
        load_clip(str(folder), tokenizer=str(tmp_path / "nowhere"))
    # SigLIP: AutoTokenizer knows no tokenizer for the bare folder; the message says what to pass
    siglip_folder = tmp_path / "siglip"
    hosts.siglip().save_pretrained(str(siglip_folder))
    with pytest.raises(ValueError, match=r"to build an AutoTokenizer\); pass the model's own "
                                         r"tokenizer: .*google/siglip-base-patch16-224"):
        load_clip(str(siglip_folder))
    # an open_clip model name gives open_clip's tokenizer
    assert load_tokenizer("ViT-B-16")(["a dog"]).shape == (1, 77)
