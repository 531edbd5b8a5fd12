r"""ResCLIP equals the release's forward written plainly (``tests/reference.py``): the
first pass's patch labels first, then the maps; its reductions to the base methods; the
semantic prior on hand-made label grids; batches; the call's texts; errors."""

from __future__ import annotations

import math

import pytest
import torch

from captum_clip_surgery import (
    ClearCLIPAttribution,
    CLIPZeroShotClassifier,
    NACLIPAttribution,
    ResCLIPAttribution,
    SCLIPAttribution,
)
from captum_clip_surgery.methods.resclip import (
    RESCLIP_SETTINGS,
    _same_entity_paths,
    patch_mode,
    resclip_rcs_layers,
    sfr_prior,
)
from tests import reference as ref
from tests.helpers import FEW_TEMPLATES, TEXTS, assert_decisions_then_maps, images_for
from tests.models import tiny_resnet, tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")

BASES = {"naclip": NACLIPAttribution, "clearclip": ClearCLIPAttribution, "sclip": SCLIPAttribution}


def deep_vit():
    r"""12 blocks (the release's RCS blocks 6..9) on 64x64 inputs, patch 8 (8x8 grid)."""
    return tiny_vit(layers=12, image_size=64)


@pytest.mark.parametrize(
    "base,size,dataset",
    [("naclip", (64, 64), "voc20"), ("naclip", (48, 80), "voc20"),
     ("clearclip", (48, 80), "ade20k"), ("sclip", (48, 80), "voc21")],
    ids=["naclip-native", "naclip-non-native", "clearclip-non-native", "sclip-non-native"],
)
def test_resclip_matches_the_release_formula(base, size, dataset, snapshot):
    model = deep_vit()
    snap = snapshot(model)
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    explainer = ResCLIPAttribution(clf, base=base, dataset=dataset)
    setting = RESCLIP_SETTINGS[dataset]
    assert explainer.rcs_layers == (6, 7, 8, 9)
    assert (explainer.rcs_weights, explainer.sfr_weights, explainer.temp_thd) == (
        setting["rcs_weights"], setting["sfr_weights"], setting["temp_thd"])
    images = images_for(model, b=2, h=size[0], w=size[1], seed=3)
    with torch.no_grad():
        got, grid = explainer.token_features(images)
        expected, labels = ref.resclip_tokens(
            model, images, clf.text_features, base, setting["rcs_weights"],
            setting["sfr_weights"], setting["temp_thd"])
    mine = explainer.patch_labels(images)
    assert grid == (size[0] // 8, size[1] // 8) and mine.shape == labels.shape
    assert len(labels.unique()) >= 2  # the prior is not trivial
    assert_decisions_then_maps(got, expected, mine, labels)
    snap.assert_unchanged()


def test_a_shallow_tower_uses_proportional_rcs_blocks():
    model = tiny_vit()  # 7 blocks
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    assert resclip_rcs_layers(7) == (4, 5) and resclip_rcs_layers(12) == (6, 7, 8, 9)
    assert resclip_rcs_layers(24) == (6, 7, 8, 9) and resclip_rcs_layers(3) == (2,)
    assert resclip_rcs_layers(1) == ()
    explainer = ResCLIPAttribution(clf, temp_thd=0.3, sigma=1.5, pamr_dilations=(1, 2))
    assert explainer.rcs_layers == (4, 5)
    images = images_for(model, b=2, h=40, w=56, seed=4)
    with torch.no_grad():
        got, _ = explainer.token_features(images)
        expected, labels = ref.resclip_tokens(model, images, clf.text_features, "naclip",
                                              temp_thd=0.3, rcs_layers=(4, 5), sigma=1.5,
                                              dilations=(1, 2))
    assert_decisions_then_maps(got, expected, explainer.patch_labels(images), labels)
    with torch.no_grad():  # explicit blocks, no PAMR
        other = ResCLIPAttribution(clf, rcs_layers=[2, 6], pamr_iterations=0)
        got, _ = other.token_features(images)
        expected, labels = ref.resclip_tokens(model, images, clf.text_features, "naclip",
                                              rcs_layers=(2, 6), pamr_steps=0)
    assert_decisions_then_maps(got, expected, other.patch_labels(images), labels)


@pytest.mark.parametrize("base", sorted(BASES))
def test_reductions_to_the_base_method(base):
    model = tiny_vit()
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    images = images_for(model, b=2, h=40, w=24, seed=2)

    def tokens(**kw):
        with torch.no_grad():
            return ResCLIPAttribution(clf, base=base, **kw).token_features(images)[0]

    with torch.no_grad():
        plain = BASES[base](clf).token_features(images)[0]
    # neither module: the base method, computed the same way
    torch.testing.assert_close(tokens(use_rcs=False, use_sfr=False), plain, atol=0, rtol=0)
    # RCS with weight 0 and τ_r = 1: the base method (the middle blocks run explicitly)
    torch.testing.assert_close(tokens(rcs_weights=(1.0, 0.0), use_sfr=False), plain,
                               atol=1e-5, rtol=1e-5)
    # τ_r = 2 scales A v but not the output projection's bias: not the base method
    assert (tokens(rcs_weights=(2.0, 0.0), use_sfr=False) - plain)[:, 1:].abs().max() > 1e-3
    # the prior with weight 0 and τ_s = 1 changes nothing
    torch.testing.assert_close(tokens(sfr_weights=(1.0, 0.0)), tokens(use_sfr=False),
                               atol=1e-6, rtol=1e-6)
    # and each module matters
    assert (tokens() - tokens(use_sfr=False))[:, 1:].abs().max() > 1e-4
    assert (tokens(use_sfr=False) - plain)[:, 1:].abs().max() > 1e-4


def test_prior_by_hand_on_a_row():
    prior = sfr_prior(torch.tensor([[0, 1, 0]]), (1, 3), sigma=1.0)
    # pair (0, 2): d = M = 2, its path meets label 1 -> exp(-1); kernel 3 wide [a, b, a]
    e = math.exp(-1.0)
    a, b = math.exp(-0.5) / (1 + 2 * math.exp(-0.5)), 1 / (1 + 2 * math.exp(-0.5))
    rows = [[b, a * (1 + e), b * e], [a, b, a], [b * e, a * (1 + e), b]]
    rows = [[v / (sum(r) + 1e-8) for v in r] for r in rows]
    top = max(max(r) for r in rows)
    expected = (torch.tensor(rows, dtype=torch.float64) / top).half().float()
    torch.testing.assert_close(prior[0], expected, atol=1e-3, rtol=0)
    # without the same-entity decay the pair (0, 2) keeps 1: row 0 is [b, a, b] normalised
    plain = sfr_prior(torch.tensor([[0, 1, 0]]), (1, 3), sigma=1.0, delete_same_entity=False)
    assert plain[0, 0, 0] == plain[0, 0, 2]


def test_same_entity_paths_look_only_at_the_first_d_over_m_of_the_way():
    labels = torch.tensor([[0, 0, 0, 1, 0, 0, 0, 0, 0]])  # a 1x9 grid, M = 8
    idx = torch.arange(9)
    steps = (idx[:, None] - idx[None, :]).abs()
    ok = _same_entity_paths(labels, (1, 9), steps)[0]
    # 0 -> 4 samples 0, 0.5, 1, 1.5, 2 (halves to even): column 3 never seen
    assert bool(ok[0, 4]) and not bool(ok[0, 5]) and not bool(ok[4, 0]) and bool(ok[8, 4])
    prior = sfr_prior(labels, (1, 9), sigma=0.1)  # a 1-wide kernel: no smoothing
    row = torch.ones(9)
    row[3] = 0.0
    row[5:] = torch.exp(-torch.arange(5.0, 9.0) / 8)
    torch.testing.assert_close(prior[0, 0] / prior[0, 0, 0], row, atol=2e-3, rtol=2e-3)


def test_prior_follows_the_release_on_random_grids():
    g = torch.Generator().manual_seed(0)
    for grid, sigma in [((5, 7), 5.0), ((6, 4), 1.3), ((1, 11), 2.0)]:
        labels = torch.randint(0, 3, (2, grid[0] * grid[1]), generator=g)
        labels[1] = (torch.arange(grid[0] * grid[1]) % grid[1] >= grid[1] // 2).long()
        got = sfr_prior(labels, grid, sigma)
        for b in range(2):
            expected = ref.resclip_prior(labels[b].reshape(grid), grid, sigma)
            assert expected[0].abs().sum() == 0 and expected[:, 0].abs().sum() == 0
            torch.testing.assert_close(got[b], expected[1:, 1:], atol=1e-3, rtol=0)
            assert (got[b] == expected[1:, 1:]).float().mean() > 0.99  # float16 ties aside


def test_patch_labels_take_the_mode_and_the_smallest_label_on_a_tie():
    pixels = torch.tensor([[[2, 2, 0, 1],
                            [1, 1, 1, 1]]])  # two 2x2 cells
    assert patch_mode(pixels, (2, 2), 3).tolist() == [[1, 1]]
    pixels[0, 0, 2] = 3
    pixels[0, 1, 2:] = torch.tensor([3, 3])
    assert patch_mode(pixels, (2, 2), 4).tolist() == [[1, 3]]


def test_a_batch_equals_single_images_and_the_call_texts_label_the_first_pass(snapshot):
    model = deep_vit()
    snap = snapshot(model)
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    explainer = ResCLIPAttribution(clf, base="sclip")
    images = images_for(model, b=3, h=48, w=80, seed=7)
    batch = explainer.similarity(images)
    single = torch.cat([explainer.similarity(images[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-5)
    labels = explainer.patch_labels(images)
    for i in range(3):
        assert torch.equal(labels[i : i + 1], explainer.patch_labels(images[i : i + 1]))
    # the texts of the call label the SFR pass: as a classifier of those texts would
    sub = ["grass", "a red car"]
    own = ResCLIPAttribution(CLIPZeroShotClassifier(model, sub, templates=FEW_TEMPLATES),
                             base="sclip")
    torch.testing.assert_close(explainer.similarity(images, texts=sub), own.similarity(images),
                               atol=1e-6, rtol=1e-6)
    assert torch.equal(explainer.patch_labels(images, texts=sub), own.patch_labels(images))
    assert int(own.patch_labels(images).max()) < 2
    snap.assert_unchanged()


def test_resclip_errors_name_the_argument(snapshot):
    model = tiny_vit()
    snap = snapshot(model)
    kw = dict(texts=TEXTS, templates=FEW_TEMPLATES)
    with pytest.raises(TypeError, match="forward_func: ResCLIP .* no attention blocks"):
        ResCLIPAttribution(tiny_resnet(), **kw)
    with pytest.raises(ValueError, match="base: expected one of 'naclip', 'clearclip', 'sclip'"):
        ResCLIPAttribution(model, base="resclip", **kw)
    with pytest.raises(ValueError, match="dataset: expected one of 'voc20'"):
        ResCLIPAttribution(model, dataset="pascal", **kw)
    with pytest.raises(ValueError, match="rcs_weights: expected a finite number > 0"):
        ResCLIPAttribution(model, rcs_weights=(0.0, 0.5), **kw)
    with pytest.raises(ValueError, match=r"sfr_weights: expected a number in \[0, 1\]"):
        ResCLIPAttribution(model, sfr_weights=(2.0, 1.5), **kw)
    with pytest.raises(TypeError, match="rcs_weights: expected a pair"):
        ResCLIPAttribution(model, rcs_weights=2.0, **kw)
    with pytest.raises(ValueError, match=r"temp_thd: expected a number in \[0, 1\]"):
        ResCLIPAttribution(model, temp_thd=2.0, **kw)
    with pytest.raises(ValueError, match=r"rcs_layers: expected an int in \[1, 6\], got 7"):
        ResCLIPAttribution(model, rcs_layers=[3, 7], **kw)
    with pytest.raises(TypeError, match="use_sfr: expected True or False"):
        ResCLIPAttribution(model, use_sfr=(True,), **kw)  # the release's 1-tuple pitfall
    with pytest.raises(TypeError, match="pamr_dilations: expected a non-empty sequence"):
        ResCLIPAttribution(model, pamr_dilations=[], **kw)
    with pytest.raises(ValueError, match="use_rcs: RCS averages blocks before the last"):
        ResCLIPAttribution(tiny_vit(layers=1), **kw)
    ResCLIPAttribution(tiny_vit(layers=1), use_rcs=False, **kw)  # defined without RCS
    explainer = ResCLIPAttribution(model, **kw)
    with pytest.raises(ValueError, match="target: unknown text"):
        explainer.attribute(images_for(model), target="zebra")
    snap.assert_unchanged()
