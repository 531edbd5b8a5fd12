r"""The open_clip adapter: views agree with the model, text truncation is exact."""

from __future__ import annotations

import open_clip
import pytest
import torch

from captum_clip_surgery import CLIPZeroShotClassifier
from captum_clip_surgery.adapters import (
    OpenCLIPAdapter,
    get_adapter,
    resize_positional_embedding,
    supported_families,
)
from captum_clip_surgery.core.architecture import image_token_features, pooled_image_features
from tests.helpers import images_for
from tests.models import tiny_resnet, tiny_vit


@pytest.mark.parametrize("block_type", ["default", "custom"])
def test_vit_blocks_reproduce_the_model(block_type):
    model = tiny_vit(block_type)
    adapter = get_adapter(model)
    assert isinstance(adapter, OpenCLIPAdapter) and adapter.image.kind == "token"
    images = images_for(model)
    with torch.no_grad():
        x, grid = adapter.image.embed(images)
        assert grid == (4, 4)
        for block in adapter.image.blocks:
            q, k, v = block.qkv(block.norm1(x))
            functional = x + block.ls1(block.out(block.original_attention(q, k, v)))
            functional = functional + block.ls2(block.mlp(block.norm2(functional)))
            own = block.forward(x)
            torch.testing.assert_close(functional, own, atol=1e-5, rtol=1e-5)
            # logits + fp32 softmax path equals the fused path
            manual = block.attention_logits(q, k).softmax(-1) @ v
            torch.testing.assert_close(manual, block.original_attention(q, k, v), atol=1e-5, rtol=1e-5)
            x = own
        pooled = adapter.image.head.pool(x, 1, grid)
        torch.testing.assert_close(pooled, model.encode_image(images), atol=1e-5, rtol=1e-5)


def test_resnet_view_reproduces_the_pool():
    model = tiny_resnet()
    adapter = get_adapter(model)
    assert adapter.image.kind == "attention" and adapter.image.head.query_kind == "mean"
    assert adapter.image.num_prefix_tokens == 0 and not adapter.image.blocks
    images = images_for(model)
    with torch.no_grad():
        tokens, grid = adapter.image.embed(images)
        assert grid == (2, 2) and tokens.shape[1] == 4
        pool = adapter.image.head
        x = pool.prepare(tokens, 0, grid)
        q = pool.split_heads(pool.q(x[:, :1]))
        k, v = pool.split_heads(pool.k(x)), pool.split_heads(pool.v(x))
        attn = (q @ k.transpose(-2, -1) * pool.head_dim**-0.5).softmax(-1) @ v
        out = pool.out(pool.merge_heads(attn))[:, 0]
        torch.testing.assert_close(out, model.encode_image(images), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pool.pool(tokens, 0, grid), out, atol=1e-6, rtol=1e-6)
    assert adapter.image.gradcam_module() is model.visual.layer4


def test_positional_embedding_resize_is_bilinear_and_pure():
    table = torch.randn(1 + 3 * 3, 5)
    copy = table.clone()
    assert resize_positional_embedding(table, (3, 3), (3, 3)) is table
    out = resize_positional_embedding(table, (3, 3), (6, 4))
    assert out.shape == (1 + 24, 5)
    assert torch.equal(out[0], table[0])
    grid = table[1:].reshape(3, 3, 5).permute(2, 0, 1)[None]
    expected = torch.nn.functional.interpolate(grid, size=(6, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[1:], expected[0].permute(1, 2, 0).reshape(24, 5))
    assert torch.equal(table, copy)


def test_truncated_text_encoding_equals_full_context():
    model = tiny_vit()
    adapter = get_adapter(model)
    ids = open_clip.tokenize(["a photo of a dog.", "x", "a much longer prompt about a cat on grass"],
                             context_length=model.context_length)
    with torch.no_grad():
        full = model.encode_text(ids)
        short = adapter.text.encode(ids, truncate=True)
        no_trunc = adapter.text.encode(ids, truncate=False)
    torch.testing.assert_close(short, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(no_trunc, full)


def test_truncation_length_stops_at_last_eot():
    model = tiny_vit()
    adapter = get_adapter(model)
    ids = open_clip.tokenize(["dog", "a photo of a dog"], context_length=model.context_length)
    assert adapter.text._truncation_length(ids) == int(ids.argmax(-1).max()) + 1
    assert adapter.text._truncation_length(ids) < model.context_length


def test_unsupported_models_raise_type_error_naming_families():
    with pytest.raises(TypeError, match="model: unsupported model of type .*Linear.*open_clip"):
        get_adapter(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="model: unsupported model"):
        get_adapter("ViT-B-16")
    assert any("open_clip" in f for f in supported_families())


@pytest.mark.parametrize("pool_type", ["tok", "avg"])
def test_attentional_pool_tower_pools_like_the_model(pool_type):
    # tokens as wide as the pooler's queries: one fused in-projection, and grid tokens can
    # query the pool (the raw map); 'tok' pools the first query, 'avg' the mean of the others
    torch.manual_seed(0)
    cfg = dict(image_size=32, patch_size=8, width=32, layers=2, head_width=16,
               attentional_pool=True, attn_pooler_queries=4, attn_pooler_heads=2,
               pool_type=pool_type)
    model = open_clip.CLIP(embed_dim=32, vision_cfg=cfg, text_cfg=dict(context_length=8, vocab_size=100, width=16, heads=2, layers=1))
    assert model.visual.attn_pool.attn._qkv_same_embed_dim
    adapter = get_adapter(model)
    assert adapter.image.kind == "attention" and adapter.image.head.query_kind == "probe"
    images = images_for(model)
    with torch.no_grad():
        torch.testing.assert_close(pooled_image_features(adapter, images),
                                   model.encode_image(images), atol=1e-5, rtol=1e-5)
        raw, grid = image_token_features(adapter, images, 0, surgery=False)
    assert raw.shape == (2, 1 + 16, 32) and grid == (4, 4)


def test_default_tokenizer_is_refused_for_another_vocabulary():
    torch.manual_seed(0)
    text = dict(context_length=8, vocab_size=100, width=16, heads=2, layers=1)
    model = open_clip.CLIP(embed_dim=16, vision_cfg=dict(image_size=32, patch_size=8, width=16,
                                                         layers=1, head_width=8), text_cfg=text)
    with pytest.raises(TypeError, match=r"^tokenizer: .*100-token vocabulary.*get_tokenizer"):
        CLIPZeroShotClassifier(model, ["dog"])
    clf = CLIPZeroShotClassifier(model, ["dog", "cat"], templates=["{}"],
                                 tokenizer=lambda texts: open_clip.tokenize(texts, 8) % 100)
    assert clf.text_features.shape == (2, 16)
