r"""Feature surgery refuses what it cannot use: duplicate texts and non-finite redundant
features (issue 18, item 7), on every model family and every path that reaches it."""

from __future__ import annotations

from typing import Any, Tuple

import pytest
import torch
import torch.nn.functional as F

from captum_clip_surgery import (
    CLIPSurgeryAttribution,
    CLIPZeroShotClassifier,
    GEMAttribution,
    RawCLIPAttribution,
    feature_surgery_scores,
    multilabel_scores,
    segment,
    text_to_points,
)
from captum_clip_surgery.core.feature_surgery import check_distinct_texts, duplicate_rows
from tests.helpers import FEW_TEMPLATES
from tests.models import tiny_resnet, tiny_vit

DUPLICATE = "texts: class-set feature surgery needs distinct texts, got duplicates"


def _family(name: str) -> Tuple[torch.nn.Module, Any, int]:
    r"""A tiny model of a family, its tokenizer (None: the family's own) and image side."""
    if name == "open_clip-vit":
        return tiny_vit(), None, 32
    if name == "open_clip-resnet":
        return tiny_resnet(), None, 64
    if name == "timm-siglip":
        timm_models = pytest.importorskip("tests.adapters.timm_models")
        model = timm_models.tiny_timm_clip("siglip")
        return model, None, timm_models.native_size(model)
    hosts = pytest.importorskip("tests.adapters.hosts")
    if name == "openai-clip":
        return hosts.to_openai(hosts.openclip_vit()), None, 32
    if name == "hf-clip":
        return hosts.to_hf(hosts.openclip_vit()), hosts.clip_tokenizer(), 32
    return hosts.siglip(), hosts.siglip_tokenizer(), 32  # hf-siglip


FAMILIES = ["open_clip-vit", "open_clip-resnet", "timm-siglip", "openai-clip", "hf-clip",
            "hf-siglip"]


def test_duplicate_rows_are_grouped():
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [1.0, 0.0]])
    assert duplicate_rows(e) == [[0, 2, 5], [1, 4]]
    assert duplicate_rows(torch.eye(3)) == []


def test_class_set_surgery_of_equal_texts_is_refused_not_zero():
    f = F.normalize(torch.randn(2, 5, 8), dim=-1)
    e = F.normalize(torch.randn(1, 8), dim=-1).expand(2, 8)
    # what the closed form gives for two equal texts: nothing but zeros
    s = f @ e.t()
    assert torch.equal(s - s.mean(-1, keepdim=True), torch.zeros_like(s))
    with pytest.raises(ValueError, match="text_features: mode 'classes' needs distinct text "
                                         "features, rows 0 = 1 are equal"):
        feature_surgery_scores(f, e, "classes")
    three = torch.cat([e, F.normalize(torch.randn(1, 8), dim=-1)])
    with pytest.raises(ValueError, match="rows 0 = 1 are equal"):
        feature_surgery_scores(f, three, "classes")
    # the other modes are defined for any texts
    torch.testing.assert_close(feature_surgery_scores(f, e, "none"), s)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_redundant_features_are_refused(bad):
    f = F.normalize(torch.randn(1, 5, 8), dim=-1)
    e = F.normalize(torch.randn(3, 8), dim=-1)
    r = torch.zeros(8)
    r[3] = bad
    with pytest.raises(ValueError, match="redundant_features: expected finite values"):
        feature_surgery_scores(f, e, "redundant", r)


def test_check_distinct_texts_names_equal_texts_and_equal_features():
    e = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match=DUPLICATE + r" \('dog' 2 times\)"):
        check_distinct_texts(["dog", "dog", "cat"], e)
    with pytest.raises(ValueError, match=r"'Dog' and 'dog' have identical text features"):
        check_distinct_texts(["Dog", "dog", "cat"], e)
    check_distinct_texts(["dog", "cat"], e[1:])  # distinct: nothing raised


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_duplicate_texts_are_refused_on_every_family_and_path(family, snapshot):
    model, tokenizer, side = _family(family)
    snap = snapshot(model)
    images = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    clf = CLIPZeroShotClassifier(model, ["dog", "dog", "cat"], templates=FEW_TEMPLATES,
                                 tokenizer=tokenizer)
    surgery = CLIPSurgeryAttribution(clf)  # default "auto": class-set surgery for >= 2 texts
    with pytest.raises(ValueError, match=DUPLICATE + r" \('dog' 2 times\)"):
        surgery.attribute(images, target=0)
    with pytest.raises(ValueError, match=DUPLICATE):
        surgery.similarity(images)
    with pytest.raises(ValueError, match=DUPLICATE):  # texts given per call
        surgery.attribute(images, target=1, texts=["cat", "cat"])
    with pytest.raises(ValueError, match=DUPLICATE):
        RawCLIPAttribution(clf).attribute(images, target=0, feature_surgery="classes")
    with pytest.raises(ValueError, match=DUPLICATE):
        segment(surgery, images, feature_surgery="classes")
    # text_to_points scores the set without repeats (dict.fromkeys): no duplicates reach it
    assert len(text_to_points(surgery, images, ["dog", "cat"])[0]) == 2
    with pytest.raises(ValueError, match=DUPLICATE):
        multilabel_scores(clf, images)
    if family not in ("open_clip-resnet",):  # GEM needs attention blocks
        with pytest.raises(ValueError, match=DUPLICATE):
            GEMAttribution(clf).attribute(images, target=0, feature_surgery="classes")
    # modes that do not compare the texts with each other still explain duplicates
    grid = surgery.attribute(images, target=[0], feature_surgery="empty", upsample_to_input=False)
    again = surgery.attribute(images, target=[1], feature_surgery="empty", upsample_to_input=False)
    torch.testing.assert_close(grid, again)
    assert float(grid.amax()) == 1.0 and float(grid.amin()) == 0.0
    snap.assert_unchanged()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_feature_surgery_tensor_is_refused_on_every_path(bad, snapshot):
    model = tiny_vit()
    snap = snapshot(model)
    surgery = CLIPSurgeryAttribution(model, texts=["dog", "cat"], templates=FEW_TEMPLATES)
    images = torch.randn(1, 3, 32, 32)
    redundant = surgery.classifier.empty_text_features().clone()
    redundant[0] = bad
    message = "feature_surgery: the tensor of redundant features holds NaN or infinite values"
    for call in (
        lambda: surgery.attribute(images, target=0, feature_surgery=redundant),
        lambda: surgery.similarity(images, feature_surgery=redundant),
        lambda: segment(surgery, images, feature_surgery=redundant),
        lambda: text_to_points(surgery, images, ["dog"], feature_surgery=redundant),
    ):
        with pytest.raises(ValueError, match=message):
            call()
    with pytest.raises(TypeError, match="feature_surgery: expected a floating-point tensor"):
        surgery.attribute(images, target=0, feature_surgery=torch.zeros(24, dtype=torch.long))
    snap.assert_unchanged()
