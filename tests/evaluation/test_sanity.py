r"""Model-randomisation sanity checks: Spearman and SSIM against hand-computed and plain
formulas, the randomised copy (never the user's model), and the checks' invariants."""

from __future__ import annotations

import csv
import math

import pytest
import torch
import torch.nn.functional as F

from captum_clip_surgery import (
    ClassifierAttribution,
    CLIPZeroShotClassifier,
    compare,
    register_method,
)
from captum_clip_surgery.evaluation.sanity import (
    SANITY_MODES,
    randomized_copy,
    sanity_checks,
    spearman,
    ssim,
)
from captum_clip_surgery.methods.registry import unregister_method
from tests.helpers import FEW_TEMPLATES, TEXTS, ModelSnapshot, images_for
from tests.models import tiny_resnet, tiny_vit


class FixedPatternAttribution(ClassifierAttribution):
    r"""A toy method whose map ignores the model: a fixed diagonal pattern."""

    map_kind = "gradient"

    def attribute(self, inputs: torch.Tensor, target: object = None) -> torch.Tensor:
        b, _, h, w = inputs.shape
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        pattern = ((xx + 2 * yy) % 7).float()
        return pattern[None, None].expand(b, 1, h, w).to(inputs.device)


@pytest.fixture
def fixed_method():
    register_method("fixed_test", FixedPatternAttribution, title="Fixed pattern")
    try:
        yield "fixed_test"
    finally:
        unregister_method("fixed_test")


# --------------------------------------------------------------------------------------
# Spearman and SSIM


def test_spearman_hand_computed_cases():
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 2.0, 4.0]])
    b = torch.tensor([[10.0, 20.0, 30.0, 40.0], [4.0, 3.0, 2.0, 1.0], [1.0, 3.0, 2.0, 4.0]])
    # row 3 by hand: ranks a = (1, 2.5, 2.5, 4), b = (1, 3, 2, 4); centred by 2.5:
    # (-1.5, 0, 0, 1.5) . (-1.5, 0.5, -0.5, 1.5) = 4.5; norms² 4.5 and 5
    expected = torch.tensor([1.0, -1.0, 4.5 / math.sqrt(4.5 * 5.0)], dtype=torch.float64)
    torch.testing.assert_close(spearman(a, b), expected)
    # a monotone transform of a map does not change its ranks
    x = torch.rand(3, 1, 5, 6)
    torch.testing.assert_close(spearman(x, x.pow(3) * 7 + 1), torch.ones(3, dtype=torch.float64))


def test_spearman_of_a_constant_map_is_nan_and_rows_are_independent():
    a = torch.stack([torch.zeros(9), torch.arange(9.0)])
    b = torch.stack([torch.arange(9.0), torch.arange(9.0).flip(0)])
    out = spearman(a, b)
    assert math.isnan(out[0]) and out[1] == -1
    with pytest.raises(ValueError, match="^a, b: expected maps of one shape"):
        spearman(torch.zeros(2, 4), torch.zeros(2, 5))


def _plain_ssim(x: torch.Tensor, y: torch.Tensor, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    r"""SSIM written out (Wang et al. 2004): Gaussian-weighted local statistics at every
    pixel (the maps mirrored at the borders), ``C1 = (0.01 L)²``, ``C2 = (0.03 L)²`` with
    ``L = 1``, averaged over the pixels."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-coords.square() / (2 * sigma**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :])[None, None]
    x, y = x.double(), y.double()

    def local(z: torch.Tensor) -> torch.Tensor:
        pad = size // 2
        return F.conv2d(F.pad(z, (pad, pad, pad, pad), mode="reflect"), window)

    mx, my = local(x), local(y)
    vx = local(x * x) - mx * mx
    vy = local(y * y) - my * my
    cxy = local(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    value = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return value.flatten(1).mean(dim=1)


def test_ssim_equals_the_plain_formula_and_hand_computed_constants():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 1, 24, 30, generator=g)
    b = (a + 0.3 * torch.rand(3, 1, 24, 30, generator=g)).clamp(0, 1)
    torch.testing.assert_close(ssim(a, b), _plain_ssim(a, b), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ssim(a, a), torch.ones(3, dtype=torch.float64))
    # two constant maps: no variance, so SSIM = (2 a b + C1) / (a² + b² + C1)
    c1 = 0.01**2
    expected = (2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1)
    value = ssim(torch.full((1, 1, 16, 16), 0.2), torch.full((1, 16, 16), 0.6))
    torch.testing.assert_close(value, torch.tensor([expected], dtype=torch.float64))
    with pytest.raises(ValueError, match="^a: expected maps"):
        ssim(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16))


# --------------------------------------------------------------------------------------
# the randomised copy


def _classifier(model: torch.nn.Module) -> CLIPZeroShotClassifier:
    return CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)


def test_randomized_copy_changes_only_the_chosen_blocks_of_a_copy():
    model = tiny_vit()
    snap = ModelSnapshot(model)
    clf = _classifier(model)
    copied = randomized_copy(clf, [-1, 2], seed=3)
    snap.assert_unchanged()
    assert copied.model is not model
    for i, (mine, theirs) in enumerate(zip(clf.adapter.image.blocks, copied.adapter.image.blocks)):
        for (name, p), (_, q) in zip(mine.named_parameters(), theirs.named_parameters()):
            assert p is not q
            if i in (2, 6):
                assert not torch.equal(p, q), (i, name)
                if p.numel() > 1:  # drawn with the trained tensor's own mean and std
                    assert abs(float(q.mean() - p.mean())) < 0.5 * float(p.std()) + 1e-6
                    assert abs(float(q.std() / p.std()) - 1) < 0.5
            else:
                assert torch.equal(p, q), (i, name)
    # everything outside the blocks (embedding, head, text tower) is the trained model's
    trained = dict(model.named_parameters())
    blocks = {id(p) for b in copied.adapter.image.blocks for _, p in b.named_parameters()}
    for name, q in copied.model.named_parameters():
        if id(q) not in blocks:
            assert torch.equal(q, trained[name]), name
    # the draw depends on the seed and the block index only
    again = randomized_copy(clf, [2], seed=3)
    for (_, p), (_, q) in zip(again.adapter.image.blocks[2].named_parameters(),
                              copied.adapter.image.blocks[2].named_parameters()):
        assert torch.equal(p, q)
    other = randomized_copy(clf, [2], seed=4)
    assert not torch.equal(next(other.adapter.image.blocks[2].named_parameters())[1],
                           next(copied.adapter.image.blocks[2].named_parameters())[1])
    # the copy's logits are its own; zero blocks randomised give the model's logits
    x = images_for(model, 2)
    torch.testing.assert_close(randomized_copy(clf, []).forward(x), clf(x), rtol=0, atol=0)
    assert not torch.allclose(copied(x), clf(x))


def test_randomized_copy_errors():
    clf = _classifier(tiny_vit())
    with pytest.raises(ValueError, match=r"^blocks: expected an int in \[-7, 6\], got 7"):
        randomized_copy(clf, [7])
    with pytest.raises(TypeError, match="^blocks: expected a list of block indices"):
        randomized_copy(clf, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no attention blocks to randomise"):
        randomized_copy(_classifier(tiny_resnet()), [0])


# --------------------------------------------------------------------------------------
# the checks


def test_sanity_checks_invariants(fixed_method, tmp_path):
    model = tiny_vit(layers=3)
    snap = ModelSnapshot(model)
    clf = _classifier(model)
    x = images_for(model, 2)
    methods = ["surgery", "gradcam", fixed_method]
    result = sanity_checks(clf, x, [0, 2], methods=methods)
    snap.assert_unchanged()
    assert result.methods == methods and result.depth == 3 and result.num_maps == 2
    assert result.modes == SANITY_MODES
    for method in methods:
        cascade = result.curve(method, "cascading", "spearman")
        assert len(cascade) == 4 and len(result.curve(method, "independent", "ssim")) == 3
        # zero blocks randomised: the copy gives the trained model's maps
        assert cascade[0] == pytest.approx(1.0, abs=1e-9)
        assert result.curve(method, "cascading", "ssim")[0] == pytest.approx(1.0, abs=1e-9)
        # the same block with the same seed: independent block 2 is cascading step 1
        for metric in ("spearman", "ssim"):
            assert result.curve(method, "independent", metric)[2] == pytest.approx(
                result.curve(method, "cascading", metric)[1], abs=1e-12)
    # a map that ignores the weights stays at 1 whatever is randomised
    for mode in SANITY_MODES:
        for metric in ("spearman", "ssim"):
            assert all(v == pytest.approx(1.0) for v in result.curve(fixed_method, mode, metric))
    # the methods' maps do depend on the blocks' weights
    for method in ("surgery", "gradcam"):
        assert result.summary()[method]["spearman_all"] < 0.99, method

    # one step by hand: cascading step 2 is the maps of randomized_copy(clf, [1, 2])
    two = randomized_copy(clf, [1, 2], seed=0)
    trained = compare(clf, x, [0, 2], methods=["surgery"])["surgery"]
    maps = compare(two, x, [0, 2], methods=["surgery"])["surgery"]
    expected = spearman(maps, trained).mean()
    assert result.curve("surgery", "cascading", "spearman")[2] == pytest.approx(float(expected))

    paths = result.write(str(tmp_path))
    table = open(paths["sanity_markdown"], encoding="utf-8").read()
    assert "Fixed pattern" in table and "| CLIP Surgery |" in table
    with open(paths["sanity_csv"], newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(methods) * (4 + 3)
    first = [r for r in rows if r["method"] == "surgery" and r["mode"] == "cascading"]
    assert [r["blocks"] for r in first] == ["none", "2", "2-1", "2-0"]
    assert float(first[-1]["spearman"]) == pytest.approx(result.summary()["surgery"]["spearman_all"])
    with open(paths["sanity_figure"], "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.part"))


def test_sanity_checks_seed_random_methods_identically():
    # SmoothGrad draws noise: seeded per call, step 0 still reproduces the trained maps
    clf = _classifier(tiny_vit(layers=2))
    x = images_for(clf.model, 1)
    state = torch.random.get_rng_state()
    result = sanity_checks(clf, x, 1, methods=["smoothgrad"], modes=["cascading"],
                           method_kwargs={"smoothgrad": {"nt_samples": 2}})
    assert torch.equal(torch.random.get_rng_state(), state)  # the user's generator is restored
    assert result.modes == ("cascading",)
    assert result.curve("smoothgrad", "cascading", "spearman")[0] == pytest.approx(1.0)
    assert math.isnan(result.summary()["smoothgrad"]["spearman_independent"])
    with pytest.raises(ValueError, match="^mode: expected one of cascading"):
        result.curve("smoothgrad", "independent")


def test_sanity_checks_errors():
    clf = _classifier(tiny_vit())
    x = images_for(clf.model, 1)
    with pytest.raises(ValueError, match="^modes: expected some of"):
        sanity_checks(clf, x, 0, methods=["raw"], modes=["sideways"])
    with pytest.raises(ValueError, match="^methods: unknown method 'nope'"):
        sanity_checks(clf, x, 0, methods=["nope"])
    with pytest.raises(TypeError, match="^methods: expected a list of registered method names"):
        sanity_checks(clf, x, 0, methods="raw")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="^classifier: expected a CLIPZeroShotClassifier"):
        sanity_checks(clf.model, x, 0)  # type: ignore[arg-type]
    resnet = _classifier(tiny_resnet())
    with pytest.raises(ValueError, match="^methods: 'chefer' cannot run on this model"):
        sanity_checks(resnet, images_for(resnet.model, 1), 0, methods=["chefer"])
    with pytest.raises(ValueError, match="no attention blocks to randomise"):
        sanity_checks(resnet, images_for(resnet.model, 1), 0, methods=["raw"])


def test_sanity_checks_of_methods_that_read_the_tower_twice_randomise_only_the_copy():
    # SC-CLIP, ResCLIP, ProxyCLIP, CASS and CorrCLIP (the last three with the model's own
    # tower as their second backbone) read the image tower more than once: every read is
    # of the randomised copy, and the user's model is unchanged
    model = tiny_vit(layers=2)
    snap = ModelSnapshot(model)
    clf = _classifier(model)
    x = images_for(model, 1)
    methods = ["scclip", "resclip", "proxyclip", "cass", "corrclip"]
    result = sanity_checks(clf, x, [1], methods=methods, modes=["cascading"])
    snap.assert_unchanged()
    every = randomized_copy(clf, [0, 1], seed=0)
    snap.assert_unchanged()
    trained = compare(clf, x, [1], methods=methods)
    randomised = compare(every, x, [1], methods=methods)
    snap.assert_unchanged()
    for method in methods:
        curve = result.curve(method, "cascading", "spearman")
        assert curve[0] == pytest.approx(1.0, abs=1e-9), method
        expected = float(spearman(randomised[method], trained[method]).mean())
        assert curve[-1] == pytest.approx(expected), method
        assert curve[-1] < 0.99, method


def test_sanity_plot_shows_every_value():
    # a map that turns against its trained map (Spearman -0.6) stays inside the axes
    from captum_clip_surgery.evaluation.sanity import SanityResult

    records = [{"method": "raw", "mode": "cascading", "step": s, "blocks": str(s), "row": 0,
                "spearman": v, "ssim": w} for s, (v, w) in enumerate([(1.0, 1.0), (-0.6, -0.3)])]
    result = SanityResult(records=records, methods=["raw"], depth=1, num_maps=1, seed=0,
                          modes=("cascading",))
    spearman_axes, ssim_axes = result.plot().axes[:2]
    assert spearman_axes.get_ylim()[0] <= -0.6 and ssim_axes.get_ylim()[0] <= -0.3
    assert spearman_axes.get_ylim()[1] >= 1.0
