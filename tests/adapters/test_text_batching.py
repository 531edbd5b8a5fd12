r"""Fast first-call text encoding: length buckets and shared prefixes give the full-context
features (to float rounding), the bucketing is the cheapest grouping, and every prompt is
encoded once whatever the chunk and segment sizes."""

from __future__ import annotations

import itertools
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from captum_clip_surgery import CLIPZeroShotClassifier, get_adapter
from captum_clip_surgery.adapters.base import TextTowerView
from captum_clip_surgery.adapters.text_batching import encode_sharing_prefixes, length_buckets
from captum_clip_surgery.core.text import default_templates
from tests.models import TEXT_CFG, _randomize, tiny_vit

CLASSES = ["dog", "mint candy", "a red car", "x", "grass"]


def _text_model(block_type: str = "default", **text: object) -> open_clip.CLIP:
    torch.manual_seed(0)
    cfg = dict(TEXT_CFG, **text)
    if block_type != "default":
        cfg["block_type"] = block_type
    model = open_clip.CLIP(embed_dim=24, text_cfg=cfg,
                           vision_cfg=dict(image_size=32, patch_size=8, width=48, layers=1,
                                           head_width=16))
    _randomize(model)
    return model.eval()


def _prompts(context_length: int):
    prompts = [t.format(c) for c in CLASSES for t in default_templates()[::4]]
    # duplicates, an empty prompt, one cut by the context length, prefixes of each other
    prompts += ["", "dog", "dog", "a photo of", "a photo of a", " ".join("abcdefghijklmnopqrstuvw")]
    return open_clip.tokenize(prompts, context_length=context_length)


@pytest.mark.parametrize("block_type", ["default", "custom"])
def test_shared_prefixes_and_buckets_equal_the_full_context(block_type, one_thread):
    model = _text_model(block_type)
    view = get_adapter(model).text
    ids = _prompts(model.context_length)
    assert int(ids.argmax(-1).max()) == model.context_length - 1  # one prompt fills the context
    with torch.no_grad():
        full = model.encode_text(ids)
        for max_prompts, overhead in ((512, 32.0), (7, 0.0), (3, 1000.0)):
            shared = view.encode_many(ids, max_prompts, overhead)
            buckets = TextTowerView.encode_many(view, ids, max_prompts, overhead)
            torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(buckets, full, atol=1e-5, rtol=1e-5)
        # prompts split over several segments (each shares within itself)
        tower = model
        lengths = ids.argmax(-1) + 1
        blocks = view._shareable_blocks(ids)
        assert blocks is not None

        def embed(i, p):
            return tower.token_embedding(i) + tower.positional_embedding[p]

        def finish(x):
            return tower.ln_final(x) @ tower.text_projection

        for segment in (1, 5, 64):
            out = encode_sharing_prefixes(ids, lengths, embed, blocks, finish, 4, 8.0, segment)
            torch.testing.assert_close(out, full, atol=1e-5, rtol=1e-5)


def test_sharing_follows_the_tower_where_it_is_exact():
    # without a causal mask nothing may be truncated or shared: the model's own encode_text
    model = _text_model(no_causal_mask=True)
    view = get_adapter(model).text
    ids = _prompts(model.context_length)
    assert view._shareable_blocks(ids) is None
    with torch.no_grad():
        torch.testing.assert_close(view.encode_many(ids, 16), model.encode_text(ids))


def test_text_cache_features_equal_full_context_features():
    model = tiny_vit()
    templates = default_templates()[:20]
    fast = CLIPZeroShotClassifier(model, CLASSES, templates=templates)
    full = CLIPZeroShotClassifier(model, CLASSES, templates=templates, truncate_text=False)
    torch.testing.assert_close(fast.text_features, full.text_features, atol=1e-5, rtol=1e-5)
    # by hand: the mean of the unit prompt features, normalised
    ids = open_clip.tokenize([t.format(c) for c in CLASSES for t in templates],
                             context_length=model.context_length)
    with torch.no_grad():
        prompts = F.normalize(model.encode_text(ids), dim=-1).reshape(len(CLASSES), 20, -1)
    torch.testing.assert_close(fast.text_features, F.normalize(prompts.mean(1), dim=-1),
                               atol=1e-5, rtol=1e-5)


def test_half_precision_model_is_close_to_its_own_encode_text():
    model = _text_model().to(torch.bfloat16)
    view = get_adapter(model).text
    ids = _prompts(model.context_length)
    with torch.no_grad():
        ours = F.normalize(view.encode_many(ids).float(), dim=-1)
        full = F.normalize(model.encode_text(ids).float(), dim=-1)
    assert float((ours - full).abs().max()) < 0.05


def _cost(groups, overhead, max_prompts):
    return sum(len(g) * max(g) + math.ceil(len(g) / max_prompts) * overhead for g in groups)


def test_length_buckets_are_the_cheapest_grouping():
    g = torch.Generator().manual_seed(0)
    for trial in range(30):
        n = int(torch.randint(1, 9, (1,), generator=g))
        lengths = torch.randint(2, 12, (n,), generator=g)
        overhead = float(torch.randint(0, 40, (1,), generator=g))
        max_prompts = int(torch.randint(1, 6, (1,), generator=g))
        chunks = length_buckets(lengths, max_prompts, overhead)
        # every prompt once, chunks within the size limit, shortest first
        assert sorted(i for c in chunks for i in c.tolist()) == list(range(n))
        assert all(1 <= len(c) <= max_prompts for c in chunks)
        maxima = [int(lengths[c].max()) for c in chunks]
        assert maxima == sorted(maxima)
        # the cost of the chosen grouping equals the best over every partition of the
        # sorted lengths into consecutive groups (brute force)
        values = sorted(lengths.tolist())
        best = math.inf
        for cuts in itertools.product([False, True], repeat=n - 1):
            groups, current = [], [values[0]]
            for v, cut in zip(values[1:], cuts):
                if cut:
                    groups.append(current)
                    current = []
                current.append(v)
            groups.append(current)
            best = min(best, _cost(groups, overhead, max_prompts))
        chosen = sum(len(c) * m for c, m in zip(chunks, maxima)) + len(chunks) * overhead
        assert chosen <= best + 1e-9, (trial, chosen, best)


def test_length_buckets_by_hand():
    lengths = torch.tensor([9, 3, 3, 9])
    assert [c.tolist() for c in length_buckets(lengths, 8, 0.0)] == [[1, 2], [0, 3]]
    # a forward dearer than the padding: one bucket
    assert [c.tolist() for c in length_buckets(lengths, 8, 100.0)] == [[1, 2, 0, 3]]
    # at most 3 per chunk: 4 prompts of one length split 2 + 2
    assert [len(c) for c in length_buckets(torch.full((4,), 5), 3, 0.0)] == [2, 2]
    assert length_buckets(torch.tensor([], dtype=torch.long), 3, 0.0) == []
    with pytest.raises(ValueError, match="^max_prompts: expected >= 1, got 0"):
        length_buckets(lengths, 0, 0.0)
