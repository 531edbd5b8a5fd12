r"""The transformers adapters (CLIPModel, the CLIP tower pair, SiglipModel): views agree
with the model's own forward, every method runs, the model is never changed.

transformers 5.x installs output-capturing hooks the first time a model's own
``forward`` runs, so references are computed on deep copies: the snapshot checks
that our code never adds a hook.
"""

from __future__ import annotations

import copy
import tempfile
from typing import Any, List, Tuple

import pytest
import torch
import transformers
from captum.attr import LayerGradCam
from torch import Tensor, nn

from captum_clip_surgery import (
    CLIPSimilarityMap,
    CLIPSurgeryAttribution,
    CLIPZeroShotClassifier,
    MaskCLIPAttribution,
    explain_text_tokens,
    get_adapter,
)
from captum_clip_surgery.adapters import (
    HFCLIPAdapter,
    HFCLIPPair,
    HFCLIPPairAdapter,
    HFSiglipAdapter,
    resize_positional_embedding,
)
from captum_clip_surgery.adapters.huggingface import _HFBlockView, _tower
from captum_clip_surgery.core.architecture import image_token_features, pooled_image_features
from tests.adapters import hosts

TEXTS = ["dog", "cat", "red car"]
TEMPLATES = ["a photo of a {}.", "{}"]
FAMILIES = ["clip-sdpa", "clip-eager", "pair", "siglip-sdpa", "siglip-eager"]


def build(family: str) -> Tuple[nn.Module, Any]:
    r"""A tiny model of ``family`` and a transformers tokenizer for it."""
    attn = "eager" if family.endswith("eager") else "sdpa"
    if family.startswith("siglip"):
        return hosts.siglip(attn=attn), hosts.siglip_tokenizer()
    vit = hosts.openclip_vit()
    if family == "pair":
        return HFCLIPPair(*hosts.to_hf_pair(vit), logit_scale=7.5), hosts.clip_tokenizer()
    return hosts.to_hf(vit, attn=attn), hosts.clip_tokenizer()


def images(b: int = 2, size: Tuple[int, int] = (32, 32), seed: int = 0) -> Tensor:
    return torch.randn(b, 3, *size, generator=torch.Generator().manual_seed(seed))


def own_image_features(model: nn.Module, pixels: Tensor) -> Tensor:
    r"""The model's own image embedding (on a copy: its forward installs hooks)."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        if isinstance(m, HFCLIPPair):
            return m.vision(pixel_values=pixels).image_embeds
        out = m.get_image_features(pixel_values=pixels)
    return out if isinstance(out, Tensor) else out.pooler_output  # 4.x tensor, 5.x output


def own_text_features(model: nn.Module, ids: Tensor) -> Tensor:
    m = copy.deepcopy(model)
    with torch.no_grad():
        if isinstance(m, HFCLIPPair):
            return m.text(input_ids=ids).text_embeds
        out = m.get_text_features(input_ids=ids)
    return out if isinstance(out, Tensor) else out.pooler_output


def own_logits(model: nn.Module, ids: Tensor, pixels: Tensor) -> Tensor:
    if isinstance(model, HFCLIPPair):
        img = torch.nn.functional.normalize(own_image_features(model, pixels), dim=-1)
        txt = torch.nn.functional.normalize(own_text_features(model, ids), dim=-1)
        return model.logit_scale * img @ txt.t()
    with torch.no_grad():
        return copy.deepcopy(model)(input_ids=ids, pixel_values=pixels).logits_per_image


def hf_ids(tokenizer: Any, texts: List[str], length: int) -> Tensor:
    return tokenizer(texts, padding="max_length", max_length=length, truncation=True,
                     return_tensors="pt")["input_ids"]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_views_reproduce_the_model(family):
    model, tokenizer = build(family)
    adapter = get_adapter(model)
    expected_cls = {"clip": HFCLIPAdapter, "pair": HFCLIPPairAdapter, "siglip": HFSiglipAdapter}
    assert type(adapter) is expected_cls[family.split("-")[0]]
    pixels = images()
    with torch.no_grad():
        x, grid = adapter.image.embed(pixels)
        assert grid == (4, 4) and x.shape[1] == adapter.image.num_prefix_tokens + 16
        for block in adapter.image.blocks:  # functional pieces == the model's own layer call
            q, k, v = block.qkv(block.norm1(x))
            functional = x + block.ls1(block.out(block.original_attention(q, k, v)))
            functional = functional + block.ls2(block.mlp(block.norm2(functional)))
            own = block.forward(x)
            torch.testing.assert_close(functional, own, atol=1e-5, rtol=1e-5)
            x = own
        reference = own_image_features(model, pixels)
        torch.testing.assert_close(adapter.image.head.pool(x, adapter.image.num_prefix_tokens, grid),
                                   reference, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pooled_image_features(adapter, pixels), reference,
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(adapter.encode_image(pixels), reference, atol=1e-5, rtol=1e-5)
        ids = hf_ids(tokenizer, ["a photo of a dog.", "cat", "there is a red car in the scene."],
                     adapter.text.context_length)
        own_text = own_text_features(model, ids)
        for truncate in (True, False):
            torch.testing.assert_close(adapter.text.encode(ids, truncate=truncate), own_text,
                                       atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["clip-sdpa", "pair", "siglip-sdpa"])
def test_classifier_equals_the_models_own_logits_and_batches(family, snapshot):
    model, tokenizer = build(family)
    snap = snapshot(model)
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=["{}"], tokenizer=tokenizer)
    pixels = images(3)
    logits = clf(pixels)
    expected = own_logits(model, hf_ids(tokenizer, TEXTS, clf.adapter.text.context_length), pixels)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-5)
    if family.startswith("siglip"):  # the bias is part of the logits
        assert clf.adapter.score_kind == "sigmoid"
        bias = float(model.logit_bias.detach())
        scale = float(model.logit_scale.detach().exp())
        torch.testing.assert_close(logits, scale * clf.image_features(pixels) @ clf.text_features.t()
                                   + bias, atol=1e-4, rtol=1e-5)
    surgery = CLIPSurgeryAttribution(clf)
    batch_maps = surgery.attribute(pixels, target=[0, 2, 1])
    for i in range(3):
        torch.testing.assert_close(clf(pixels[i : i + 1]), logits[i : i + 1], atol=1e-5, rtol=1e-5)
        one = surgery.attribute(pixels[i : i + 1], target=[0, 2, 1][i])
        torch.testing.assert_close(one, batch_maps[i : i + 1], atol=1e-5, rtol=1e-5)
    snap.assert_unchanged()


@pytest.mark.parametrize("family", ["clip-sdpa", "pair", "siglip-eager"])
def test_every_method_runs_and_leaves_the_model_unchanged(family, snapshot):
    model, tokenizer = build(family)
    model.train()  # the flags must come back as they were
    snap = snapshot(model)
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=TEMPLATES, tokenizer=tokenizer)
    pixels = images(2, (40, 48)).requires_grad_(True)
    for method in (CLIPSurgeryAttribution(clf), CLIPSimilarityMap(clf), MaskCLIPAttribution(clf)):
        maps = method.attribute(pixels, target=1)
        assert maps.shape == (2, 1, 40, 48) and bool(torch.isfinite(maps).all())
    cam = LayerGradCam(clf, clf.gradcam_layer(-1)).attribute(pixels, target=0)
    assert cam.shape == (2, 1, 5, 6) and bool(torch.isfinite(cam).all())
    if family.startswith("siglip"):
        with pytest.raises(TypeError, match="model: SigLIP's text tower"):
            explain_text_tokens(clf, pixels.detach(), "a photo of a dog")
    else:
        result = explain_text_tokens(clf, pixels.detach(), "a photo of a red dog")
        assert result.words == ["a", "photo", "of", "a", "red", "dog"]
    snap.assert_unchanged()


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("family", ["clip-sdpa", "pair", "siglip-sdpa"])
def test_half_precision_maps_are_finite_and_normalised(family, dtype):
    model, tokenizer = build(family)
    model = model.to(dtype)
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=["{}"], tokenizer=tokenizer)
    pixels = images(2)
    assert bool(torch.isfinite(clf(pixels)).all())
    for method in (CLIPSurgeryAttribution(clf), CLIPSimilarityMap(clf), MaskCLIPAttribution(clf)):
        maps = method.attribute(pixels, target=0)
        assert bool(torch.isfinite(maps).all())
        assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_non_native_size_equals_the_model_built_at_that_size(family):
    r"""At another size the views resize the positional table bilinearly: equal to the
    model's own forward after its table is resized that way and loaded at that size."""
    model, _ = build(family + "-sdpa")
    adapter = get_adapter(model)
    prefix = adapter.image.num_prefix_tokens
    config = copy.deepcopy(model.config)
    config.vision_config.image_size = 48
    bigger = type(model)(config).eval()
    state = dict(model.state_dict())
    key = "vision_model.embeddings.position_embedding.weight"
    state[key] = resize_positional_embedding(state[key], (4, 4), (6, 6), prefix_rows=prefix)
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    bigger.load_state_dict(state, strict=False)
    pixels = images(2, (48, 48))
    with torch.no_grad():
        torch.testing.assert_close(pooled_image_features(adapter, pixels),
                                   own_image_features(bigger, pixels), atol=1e-5, rtol=1e-5)


def test_siglip_head_is_a_probe_pool_without_prefix_tokens():
    model, _ = build("siglip-sdpa")
    adapter = get_adapter(model)
    image = adapter.image
    assert image.num_prefix_tokens == 0 and image.kind == "attention"
    assert image.head.query_kind == "probe"
    assert adapter.image_mean == (0.5, 0.5, 0.5) and adapter.image_std == (0.5, 0.5, 0.5)
    assert adapter.input_size() == (32, 32)
    tower = model.vision_model
    with torch.no_grad():
        tokens = torch.randn(2, 16, 48, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(image.head.pool(tokens, 0, (4, 4)),
                                   tower.head(tower.post_layernorm(tokens)), atol=1e-5, rtol=1e-5)
        # dense rows: the head's value path per post-normed token (MaskCLIP, surgery)
        keys = image.head.prepare(tokens, 0, (4, 4))
        mha = tower.head.attention
        c = mha.embed_dim
        v = keys @ mha.in_proj_weight[2 * c :].t() + mha.in_proj_bias[2 * c :]
        h = mha.out_proj(v)
        expected = h + tower.head.mlp(tower.head.layernorm(h))
        torch.testing.assert_close(image.head.dense(keys), expected, atol=1e-5, rtol=1e-5)
        feats, grid = image_token_features(adapter, images(1), 2)
        assert feats.shape == (1, 1 + 16, 48) and grid == (4, 4)
    assert float(adapter.logit_bias().detach()) == pytest.approx(float(model.logit_bias.detach()))


def test_clip_text_pooling_follows_the_eos_rule_and_truncation_is_exact():
    vit = hosts.openclip_vit()
    tok = hosts.clip_tokenizer()
    texts = ["a dog", "there is a red car in the scene."]
    ids = hf_ids(tok, texts, 77)  # pads with the end-of-text id 49407
    eot = (ids == 49407).int().argmax(dim=-1)
    for eos, ids_ in ((49407, ids), (2, ids)):
        model = hosts.to_hf(vit, eos_token_id=eos)
        text = get_adapter(model).text
        assert torch.equal(text.pooled_positions(ids_), eot)
        with torch.no_grad():
            own = own_text_features(model, ids_)
            torch.testing.assert_close(text.encode(ids_, truncate=True), own, atol=1e-5, rtol=1e-5)
            per_token = text.token_features(ids_)
            assert per_token.shape[1] == int(eot.max()) + 1  # stops at the last EOT of the batch
            torch.testing.assert_close(per_token[torch.arange(2), eot], own, atol=1e-5, rtol=1e-5)
    # the first-EOS rule differs from argmax when a higher id precedes the EOS
    model = hosts.to_hf(vit, eos_token_id=100)
    weird = torch.tensor([[49406, 320, 100, 49407, 0]])
    assert int(get_adapter(model).text.pooled_positions(weird)[0]) == 2


def test_tokenizer_forms_give_the_same_features():
    model, tok = build("clip-sdpa")

    def callable_tensor(texts: List[str]) -> Tensor:
        return hf_ids(tok, texts, 77)

    def callable_mapping(texts: List[str]) -> Any:
        return tok(texts, padding=True, return_tensors="pt")  # a BatchEncoding, shorter

    processor = transformers.CLIPProcessor(image_processor=transformers.CLIPImageProcessor(),
                                           tokenizer=tok)
    forms = [tok, hosts.ProcessorLike(tok), processor, callable_tensor, callable_mapping]
    # open_clip's own tokenizer on the same weights is the reference
    reference = CLIPZeroShotClassifier(hosts.openclip_vit(), TEXTS, templates=TEMPLATES).text_features
    for form in forms:
        clf = CLIPZeroShotClassifier(model, TEXTS, templates=TEMPLATES, tokenizer=form)
        torch.testing.assert_close(clf.text_features, reference, atol=1e-5, rtol=1e-5,
                                   msg=lambda m, f=form: f"{type(f).__name__}: {m}")


@pytest.mark.parametrize(
    "bad, error, message",
    [
        (lambda texts: [[1, 2, 3]] * len(texts), TypeError, "got list"),
        (lambda texts: torch.zeros(len(texts), 5), TypeError, "float32 tensor"),
        (lambda texts: torch.zeros(5, dtype=torch.long), TypeError, "shape \\[5\\]"),
        (lambda texts: torch.zeros(len(texts) + 1, 5, dtype=torch.long), ValueError,
         "one row of token ids"),
        (lambda texts: {"input_ids": [[1, 2]]}, TypeError, "its input_ids"),
    ],
)
@pytest.mark.slow
def test_bad_tokenizer_output_is_an_error_naming_tokenizer(bad, error, message):
    model, _ = build("clip-sdpa")
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=["{}"], tokenizer=bad)
    with pytest.raises(error, match=f"^tokenizer: .*{message}"):
        clf.encode_texts(TEXTS)
    with pytest.raises(TypeError, match="^tokenizer: expected a callable"):
        CLIPZeroShotClassifier(model, TEXTS, tokenizer="openai/clip-vit-base-patch32")


@pytest.mark.slow
def test_default_tokenizer_comes_from_the_checkpoint_folder_or_a_clear_error():
    model, tok = build("siglip-sdpa")
    with pytest.raises(ValueError, match="^tokenizer: this transformers model was not loaded"):
        CLIPZeroShotClassifier(model, TEXTS)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        loaded = type(model).from_pretrained(folder).eval()
        # SigLIP's AutoTokenizer error, on one line and to the end: what to pass
        with pytest.raises(ValueError, match=r"^tokenizer: no tokenizer for .* in local files "
                                             r"\(transformers: .*to build an AutoTokenizer\); "
                                             r"pass the model's own tokenizer: .*--tokenizer "
                                             r"PATH_OR_NAME$") as caught:
            CLIPZeroShotClassifier(loaded, TEXTS)
        assert "\n" not in str(caught.value) and "google/siglip" in str(caught.value)
        tok.save_pretrained(folder)
        default = CLIPZeroShotClassifier(loaded, TEXTS, templates=TEMPLATES)
        given = CLIPZeroShotClassifier(model, TEXTS, templates=TEMPLATES, tokenizer=tok)
        torch.testing.assert_close(default.text_features, given.text_features)


def test_processor_statistics_and_registration():
    model, tok = build("clip-sdpa")
    adapter = get_adapter(model)
    assert adapter.image_mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert adapter.input_size() == (32, 32) and adapter.score_kind == "softmax"
    assert adapter.logit_bias() is None
    custom = HFCLIPAdapter(model, processor=hosts.ProcessorLike(tok, [0.3, 0.3, 0.3], [0.2, 0.1, 0.2]))
    assert custom.image_mean == (0.3, 0.3, 0.3) and custom.image_std == (0.2, 0.1, 0.2)
    processor = transformers.CLIPProcessor(
        image_processor=transformers.CLIPImageProcessor(image_mean=[0.1, 0.2, 0.3]), tokenizer=tok)
    assert HFCLIPAdapter(model, processor=processor).image_mean == pytest.approx((0.1, 0.2, 0.3))
    with pytest.raises(TypeError, match="^processor: expected"):
        HFCLIPAdapter(model, processor=object())
    # an adapter is accepted wherever a model is
    assert CLIPZeroShotClassifier(custom, TEXTS, tokenizer=tok).adapter is custom
    vision, text = hosts.to_hf_pair(hosts.openclip_vit())
    with pytest.raises(TypeError, match="model: unsupported model of type .*CLIPVisionModelWithProjection"):
        get_adapter(vision)
    with pytest.raises(TypeError, match="^vision: expected a transformers CLIPVisionModelWithProjection"):
        HFCLIPPair(text, vision)
    with pytest.raises(ValueError, match="^logit_scale: expected a positive finite number"):
        HFCLIPPair(vision, text, logit_scale=0.0)
    pair = get_adapter(HFCLIPPair(vision, text, logit_scale=12.0))
    assert float(pair.logit_scale()) == 12.0


class _Legacy(nn.Module):
    r"""A transformers 4.x encoder layer: ``(x, attention_mask, causal_attention_mask)``,
    returning a tuple."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.inner = layer
        self.layer_norm1, self.self_attn = layer.layer_norm1, layer.self_attn
        self.layer_norm2, self.mlp = layer.layer_norm2, layer.mlp

    def forward(self, hidden_states: Tensor, attention_mask: Any, causal_attention_mask: Any,
                output_attentions: bool = False) -> Tuple[Tensor]:
        assert attention_mask is None and causal_attention_mask is None
        return (self.inner(hidden_states, None),)


def test_both_layer_calling_forms_and_wrapped_tower_layouts():
    model, _ = build("clip-sdpa")
    layer = model.vision_model.encoder.layers[0]
    x = torch.randn(2, 17, 128)
    with torch.no_grad():
        new, old = _HFBlockView(layer), _HFBlockView(_Legacy(layer))
        assert not new._three_args and old._three_args
        torch.testing.assert_close(old.forward(x), new.forward(x), atol=0, rtol=0)
    # before transformers 5.6: model.vision_model may be a wrapper holding the tower again
    holder = nn.Module()
    holder.vision_model = nn.Module()
    holder.vision_model.vision_model = model.vision_model
    assert _tower(holder, "vision_model", "vision tower") is model.vision_model
    with pytest.raises(TypeError, match="model: no text tower found"):
        _tower(holder, "text_model", "text tower")


def test_folder_without_tokenizer_files_is_a_clear_error_not_identical_maps(tmp_path):
    r"""Issue 18, item 3: ``AutoTokenizer`` of a CLIP folder saved without its tokenizer
    files is an empty tokenizer (a vocabulary of 2) that gives every text the same ids."""
    model, tok = build("clip-sdpa")
    folder = tmp_path / "clip-without-tokenizer"
    model.save_pretrained(str(folder))
    loaded = type(model).from_pretrained(str(folder)).eval()
    empty = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    padded = empty(["dog", "a red car"], padding="max_length", max_length=16)["input_ids"]
    assert len(empty) <= 3 and padded[0] == padded[1]  # every text the same ids
    degenerate = r"gives the same token ids .* to every one of 2 different texts"
    with pytest.raises(ValueError, match=r"^tokenizer \(AutoTokenizer of .*\): " + degenerate):
        CLIPZeroShotClassifier(loaded, TEXTS, templates=["{}"])  # the default tokenizer
    with pytest.raises(ValueError, match=r"^tokenizer: " + degenerate + r" .*--tokenizer"):
        CLIPZeroShotClassifier(loaded, TEXTS, templates=["{}"], tokenizer=empty)
    with pytest.raises(ValueError, match=r"^tokenizer: " + degenerate):
        CLIPZeroShotClassifier(loaded, TEXTS, tokenizer=hosts.ProcessorLike(empty))
    # any tokenizer: texts of a call that all get the same ids are refused when encoded
    constant = CLIPZeroShotClassifier(loaded, TEXTS, templates=["{}"],
                                      tokenizer=lambda texts: tok(["dog"] * len(texts),
                                                                  return_tensors="pt"))
    with pytest.raises(ValueError, match=r"^tokenizer: gives the same token ids .* to every "
                                         r"one of 3 different texts \(e\.g\. 'dog' and 'cat'\)"):
        constant.encode_texts(TEXTS)
    # the real tokenizer saved beside the weights: the default works and tells texts apart
    tok.save_pretrained(str(folder))
    clf = CLIPZeroShotClassifier(loaded, TEXTS, templates=["{}"])
    features = clf.text_features
    assert torch.unique(features, dim=0).shape[0] == len(TEXTS)
