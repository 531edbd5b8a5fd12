r"""Positional-embedding resizing as each method's release does it: the four rules against
the releases' own formulas, every method's default at a non-native, non-square size
against a plain implementation with its release's rule, and the rule's scope."""

from __future__ import annotations

import math
import threading
from typing import Callable, Dict, Tuple

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import tests.reference as ref
from captum_clip_surgery import (
    ClearCLIPAttribution,
    CLIPSurgeryAttribution,
    CLIPZeroShotClassifier,
    GEMAttribution,
    MaskCLIPAttribution,
    NACLIPAttribution,
    ResCLIPAttribution,
    SCCLIPAttribution,
    SCLIPAttribution,
)
from captum_clip_surgery.adapters import (
    POSITIONAL_RESIZE_MODES,
    positional_resize,
    resize_positional_embedding,
)
from captum_clip_surgery.adapters.base import current_positional_resize
from tests.helpers import FEW_TEMPLATES, TEXTS, images_for
from tests.models import tiny_vit


def _table(native: Tuple[int, int], channels: int = 6, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1 + native[0] * native[1], channels, generator=g)


def _sclip_release(table: Tensor, image_hw: Tuple[int, int], patch: int) -> Tensor:
    r"""SCLIP's ``interpolate_pos_encoding`` (clip/model.py), written out as it reads: the
    image shape unpacked as ``B, nc, w, h`` (so ``w`` is the height), sides floored to
    patches plus 0.1, ``scale_factor`` over the square pretrained grid."""
    w, h = image_hw
    n = table.shape[0] - 1
    if (w // patch) * (h // patch) == n and w == h:
        return table
    dim = table.shape[-1]
    w0, h0 = w // patch + 0.1, h // patch + 0.1
    side = int(math.sqrt(n))
    grid = F.interpolate(table[1:].reshape(1, side, side, dim).permute(0, 3, 1, 2),
                         scale_factor=(w0 / math.sqrt(n), h0 / math.sqrt(n)), mode="bicubic")
    assert int(w0) == grid.shape[-2] and int(h0) == grid.shape[-1]
    return torch.cat([table[:1], grid.permute(0, 2, 3, 1).reshape(-1, dim)], dim=0)


def _timm_release(table: Tensor, new: Tuple[int, int]) -> Tensor:
    r"""GEM's / LeGrad's ``resample_abs_pos_embed``: ``size=``, bicubic, antialias."""
    side = int(math.sqrt(table.shape[0] - 1))
    if tuple(new) == (side, side):
        return table
    grid = table[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new, mode="bicubic", antialias=True)
    return torch.cat([table[:1], grid.permute(0, 2, 3, 1).reshape(new[0] * new[1], -1)], dim=0)


def _mmseg_release(table: Tensor, new: Tuple[int, int]) -> Tensor:
    r"""MaskCLIP's mmsegmentation ``resize_pos_embed`` (and Grad-ECLIP): ``size=``, bicubic."""
    side = int(math.sqrt(table.shape[0] - 1))
    grid = table[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new, mode="bicubic", align_corners=False)
    return torch.cat([table[:1], grid.permute(0, 2, 3, 1).reshape(new[0] * new[1], -1)], dim=0)


@pytest.mark.parametrize("image_hw", [(336, 336), (224, 336), (336, 224), (448, 560)])
def test_each_rule_equals_its_release(image_hw):
    native, patch = (14, 14), 16
    table = _table(native)
    grid = (image_hw[0] // patch, image_hw[1] // patch)
    got = {m: resize_positional_embedding(table, native, grid, mode=m) for m in POSITIONAL_RESIZE_MODES}
    torch.testing.assert_close(got["bicubic_offset"], _sclip_release(table, image_hw, patch),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(got["bicubic_antialias"], _timm_release(table, grid), atol=1e-6, rtol=0)
    torch.testing.assert_close(got["bicubic"], _mmseg_release(table, grid), atol=1e-6, rtol=0)
    torch.testing.assert_close(got["bilinear"], ref._resize_pos(table, native, grid), atol=0, rtol=0)
    # the rules are different rules
    assert (got["bicubic_offset"] - got["bicubic"]).abs().max() > 1e-3
    assert (got["bilinear"] - got["bicubic"]).abs().max() > 1e-3


def test_native_grid_is_the_table_itself_and_a_native_side_is_resampled_by_the_offset_rule():
    native = (14, 14)
    table = _table(native)
    for mode in POSITIONAL_RESIZE_MODES:
        assert resize_positional_embedding(table, native, native, mode=mode) is table
    # 224 x 336: the rows are native, yet the release samples them at (14 + 0.1) / 14
    wide = resize_positional_embedding(table, native, (14, 21), mode="bicubic_offset")
    rows = wide[1:].reshape(14, 21, -1)
    plain = resize_positional_embedding(table, native, (14, 21), mode="bicubic")[1:].reshape(14, 21, -1)
    assert (rows - plain).abs().max() > 1e-3
    assert wide.shape == (1 + 14 * 21, table.shape[1]) and wide.dtype == table.dtype
    with pytest.raises(ValueError, match="^mode: expected one of 'bilinear'"):
        resize_positional_embedding(table, native, (3, 3), mode="nearest")


def test_the_rule_is_per_thread_and_restored_after_errors():
    seen: Dict[str, str] = {}

    def other() -> None:
        seen["other"] = current_positional_resize()

    with positional_resize("bicubic"):
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        seen["here"] = current_positional_resize()
    assert seen == {"other": "bilinear", "here": "bicubic"}
    with pytest.raises(RuntimeError):
        with positional_resize("bicubic_offset"):
            raise RuntimeError("boom")
    assert current_positional_resize() == "bilinear"


Method = Callable[..., object]
#: method -> (its default rule, the plain reference of its tokens with that rule)
CASES: Dict[str, Tuple[type, str, Callable[..., Tensor]]] = {
    "surgery": (CLIPSurgeryAttribution, "bilinear", lambda m, x: ref.vit_tokens(m, x, 6)),
    "maskclip": (MaskCLIPAttribution, "bicubic", ref.maskclip_tokens),
    "sclip": (SCLIPAttribution, "bicubic_offset", ref.sclip_tokens),
    "clearclip": (ClearCLIPAttribution, "bicubic_offset", ref.clearclip_tokens),
    "naclip": (NACLIPAttribution, "bicubic_offset", ref.naclip_tokens),
    "gem": (GEMAttribution, "bicubic_antialias", ref.gem_tokens),
    # 7 blocks: the proportional layers (SC-CLIP 5, 2, 2..5; ResCLIP's RCS blocks 4, 5)
    "scclip": (SCCLIPAttribution, "bicubic_offset",
               lambda m, x: ref.scclip_tokens(m, x, 5, 2, (2, 5))[0]),
    "resclip": (ResCLIPAttribution, "bicubic_offset",
                lambda m, x: ref.resclip_tokens(m, x, CLIPZeroShotClassifier(
                    m, TEXTS, templates=FEW_TEMPLATES).text_features, rcs_layers=(4, 5))[0]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_method_follows_its_release_at_a_non_native_non_square_size(name, snapshot):
    cls, rule, reference = CASES[name]
    model = tiny_vit()
    snap = snapshot(model)
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    images = images_for(model, b=2, h=40, w=56, seed=5)  # native 32 x 32, patch 8
    explainer = cls(clf)
    assert explainer.positional_resize == rule == cls.default_positional_resize
    with torch.no_grad():
        got, _ = explainer.token_features(images)
        expected = reference(model, images)
    if name == "gem":  # GEM keeps its own class token: compare the grid rows
        got, expected = got[:, 1:], expected[:, 1:]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # the option chooses another rule, and the rule matters at this size
    other = "bilinear" if rule != "bilinear" else "bicubic"
    with torch.no_grad():
        changed, _ = cls(clf, positional_resize=other).token_features(images)
    if name == "gem":
        changed = changed[:, 1:]
    assert (changed - got).abs().max() > 1e-4
    snap.assert_unchanged()


def test_relevance_methods_follow_their_release():
    model = tiny_vit()
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    image = images_for(model, b=1, h=40, w=56, seed=6)
    text = clf.text_features[1]
    from captum_clip_surgery import GradECLIPAttribution, LeGradAttribution

    legrad = LeGradAttribution(clf).relevance(image, target=1)
    torch.testing.assert_close(legrad[0, 0], ref.legrad_map(model, image, text), atol=1e-5, rtol=1e-4)
    gradeclip = GradECLIPAttribution(clf).relevance(image, target=1)
    torch.testing.assert_close(gradeclip[0, 0], ref.gradeclip_map(model, image, text),
                               atol=1e-5, rtol=1e-4)
    assert LeGradAttribution.default_positional_resize == "bicubic_antialias"
    assert GradECLIPAttribution.default_positional_resize == "bicubic"


def test_bad_rule_names_the_argument():
    clf = CLIPZeroShotClassifier(tiny_vit(), TEXTS, templates=FEW_TEMPLATES)
    with pytest.raises(ValueError, match="^positional_resize: expected one of"):
        SCLIPAttribution(clf, positional_resize="area")
