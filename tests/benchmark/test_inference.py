r"""The protocol's inference against a plain re-implementation of the releases' slide
inference and post-processing (one window per forward, as SCLIP's ``forward_slide`` /
``postprocess_result`` are written), the windows of several images in one forward, and an
image's prediction alone equal to its prediction inside a batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from captum_clip_surgery import CLIPZeroShotClassifier, build_method, pamr
from captum_clip_surgery.benchmark import ProtocolSegmenter, get_preset
from captum_clip_surgery.benchmark.inference import plan_windows, postprocess
from captum_clip_surgery.benchmark.inputs import normalize_image, rescale_image
from tests.helpers import FEW_TEMPLATES, ModelSnapshot
from tests.models import tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = [["grass", "lawn"], ["dog"], ["cat", "kitten", "a cat"], ["sky"]]
QUERIES = [q for line in CLASSES for q in line]
QUERY_CLASS = [c for c, line in enumerate(CLASSES) for _ in line]
PATCH = 8


@pytest.fixture(scope="module")
def model():
    return tiny_vit()


@pytest.fixture(scope="module")
def clf(model):
    return CLIPZeroShotClassifier(model, QUERIES, templates=FEW_TEMPLATES)


def _images(sizes, short, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for h, w in sizes:
        bgr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        bgr[: h // 2] //= 3  # some structure: a darker top half
        out.append(normalize_image(rescale_image(bgr, short), (122.771, 116.746, 104.094),
                                   (68.501, 66.632, 70.323)))
    return out


def release_predict(explainer, image, ori, s):
    r"""The releases' procedure for one image, written plainly: each window alone, the
    crop zero-padded as ClearCLIP / ProxyCLIP pad it, padded into place with ``F.pad``,
    the count matrix, the final resize, PAMR, and SCLIP's ``postprocess_result``."""
    image = image[None]
    q, c = len(QUERIES), len(CLASSES)

    def forward_feature(img, size=None):
        h, w = img.shape[-2:]
        x = img[..., : h // PATCH * PATCH, : w // PATCH * PATCH]  # the conv drops the tail
        logits = explainer.similarity(x, QUERIES)
        return F.interpolate(logits, size=size or (h, w), mode="bilinear", align_corners=False)

    if s.crop > 0:
        h_img, w_img = image.shape[-2:]
        preds = torch.zeros(1, q, h_img, w_img)
        count = torch.zeros(1, 1, h_img, w_img)
        for hi in range(max(h_img - s.crop + s.stride - 1, 0) // s.stride + 1):
            for wi in range(max(w_img - s.crop + s.stride - 1, 0) // s.stride + 1):
                y1, x1 = hi * s.stride, wi * s.stride
                y2, x2 = min(y1 + s.crop, h_img), min(x1 + s.crop, w_img)
                y1, x1 = max(y2 - s.crop, 0), max(x2 - s.crop, 0)
                crop = image[:, :, y1:y2, x1:x2]
                H, W = crop.shape[2:]
                pad = (0, 0, 0, 0)
                if s.padding is not None:
                    m = PATCH if s.padding == "patch" else s.padding
                    lr = (m - W % m) if W % m else 0
                    tb = (m - H % m) if H % m else 0
                    pad = (lr // 2, lr - lr // 2, tb // 2, tb - tb // 2)
                    crop = F.pad(crop, pad)
                logit = forward_feature(crop)
                if any(pad):
                    logit = logit[:, :, pad[2] : pad[2] + H, pad[0] : pad[0] + W]
                preds += F.pad(logit, (x1, w_img - x2, y1, h_img - y2))
                count[:, :, y1:y2, x1:x2] += 1
        logits = F.interpolate(preds / count, size=ori, mode="bilinear", align_corners=False)
        refine = s.pamr_steps > 0
    else:
        if s.whole_image_resize == "direct":
            logits = forward_feature(image, ori)
        else:
            logits = F.interpolate(forward_feature(image), size=ori, mode="bilinear",
                                   align_corners=False)
        refine = s.pamr_steps > 0 and s.pamr_without_window
    if refine:
        guide = F.interpolate(image, size=ori, mode="bilinear", align_corners=False)
        logits = pamr(guide, logits, s.pamr_steps, s.pamr_dilations)
    seg = (logits[0] * s.logit_scale).softmax(0)
    index = torch.tensor(QUERY_CLASS)
    one_hot = F.one_hot(index).T.view(c, q, 1, 1)
    seg = (seg[None] * one_hot).max(1)[0]
    if s.area_thd is not None:
        predictions = F.one_hot(seg.argmax(0), c).to(seg.dtype)
        area = predictions[:, :, 1:].sum((0, 1), keepdim=True)
        area = (area > s.area_thd * area.sum()).to(seg.dtype)
        seg[1:] *= area.transpose(0, -1)
    pred = seg.argmax(0)
    pred[seg.max(0)[0] < s.prob_thd] = 0
    return pred


# (preset, overrides): every path of the four releases, scaled to the tiny model
CASES = [
    ("sclip", dict(short_side=40, crop=36, stride=16, area_thd=0.1, prob_thd=0.3)),
    ("sclip", dict(short_side=36, crop=0, prob_thd=0.3)),
    ("naclip", dict(short_side=37, crop=0, pamr_steps=3, pamr_dilations=(1, 2))),
    ("naclip", dict(short_side=40, crop=32, stride=16, pamr_steps=2, pamr_dilations=(2, 4),
                    prob_thd=0.3)),
    ("clearclip", dict(short_side=45, crop=36, stride=18, prob_thd=0.35)),
    ("proxyclip", dict(short_side=40, crop=36, stride=12, prob_thd=0.3)),
]


@pytest.mark.slow
@pytest.mark.parametrize("preset,changes", CASES)
def test_equals_the_releases_procedure(clf, model, preset, changes):
    s = get_preset(preset).settings("custom").replace(logit_scale=40, **changes)
    method = build_method(preset if preset != "proxyclip" else "sclip", clf)
    sizes = [(30, 44), (52, 37), (12, 90)]  # the last one: windows smaller than the crop
    images = _images(sizes, s.short_side)
    snapshot = ModelSnapshot(model)
    ours = ProtocolSegmenter(method, CLASSES, s).predict(images, sizes)
    snapshot.assert_unchanged()
    for image, size, labels in zip(images, sizes, ours):
        expected = release_predict(method, image, size, s)
        assert labels.shape == size
        assert torch.equal(labels, expected)
    assert len({int(v) for lab in ours for v in lab.unique()}) > 1  # not a constant map


def test_a_prediction_alone_equals_it_in_a_batch(clf):
    s = get_preset("clearclip").settings("custom").replace(short_side=40, crop=32, stride=16)
    seg = ProtocolSegmenter(build_method("clearclip", clf), CLASSES, s, window_batch=5)
    sizes = [(30, 44), (30, 44), (52, 37), (30, 44)]
    images = _images(sizes, 40, seed=3)
    together = seg.predict(images, sizes, return_probs=True)
    for image, size, (labels, probs) in zip(images, sizes, together):
        alone_labels, alone_probs = seg.predict([image], [size], return_probs=True)[0]
        assert torch.equal(alone_labels, labels)
        torch.testing.assert_close(alone_probs, probs, rtol=0, atol=1e-6)


def test_windows_of_several_images_share_a_forward(clf, monkeypatch):
    # a 48-pixel window on a 40-pixel short side: 40x48 windows for landscape images,
    # 48x40 for portrait ones
    s = get_preset("sclip").settings("custom").replace(short_side=40, crop=48, stride=16)
    method = build_method("sclip", clf)
    batches = []
    original = method.similarity
    monkeypatch.setattr(method, "similarity",
                        lambda x, *a, **k: batches.append(tuple(x.shape)) or original(x, *a, **k))
    sizes = [(40, 58)] * 3 + [(58, 40)]
    images = _images(sizes, 40)
    together = ProtocolSegmenter(method, CLASSES, s).predict(images, sizes)
    # 2 windows per image: one forward for the 6 landscape windows, one for the portrait
    # ones (the conv drops the tail: 40x48 -> 40x48, 48x40 -> 48x40)
    assert batches == [(6, 3, 40, 48), (2, 3, 48, 40)]
    batches.clear()
    split = ProtocolSegmenter(method, CLASSES, s, window_batch=4).predict(images, sizes)
    assert [b[0] for b in batches] == [4, 2, 2]
    assert all(torch.equal(a, b) for a, b in zip(together, split))


def test_a_method_reading_the_whole_image_gets_it_for_each_window(clf):
    # CASS with global weight 1: a window's scores are the cosines of its image's whole
    # embedding with the texts (its ``sliding_windows`` context), the same over the
    # image; windows of several images in one call still each get their own image's
    pytest.importorskip("scipy")
    from captum_clip_surgery._validation import prepare_images
    from captum_clip_surgery.methods.cass import CASSAttribution

    method = CASSAttribution(clf, global_semantics_weight=1.0)
    s = get_preset("sclip").settings("custom").replace(short_side=40, crop=32, stride=16)
    sizes = [(30, 44), (52, 37), (30, 44)]
    images = _images(sizes, 40, seed=5)
    seg = ProtocolSegmenter(method, CLASSES, s)
    assert seg.reads_whole_image
    cosines = seg.cosines(images, sizes)
    texts = clf.encode_texts(QUERIES)
    for image, size, cos in zip(images, sizes, cosines):
        with torch.no_grad():
            own = method.token_features(prepare_images(method.adapter, image[None]))[0]
        g = F.normalize(own[0, 0].float(), dim=-1) @ texts.t()
        assert cos.shape == (len(QUERIES),) + size
        torch.testing.assert_close(cos, g[:, None, None].expand_as(cos), atol=1e-5, rtol=1e-5)


def test_plan_windows_hand_cases():
    assert [(w.y0, w.y1, w.x0, w.x1) for w in plan_windows((40, 58), 32, 16, None, 8)] == [
        (0, 32, 0, 32), (0, 32, 16, 48), (0, 32, 26, 58),
        (8, 40, 0, 32), (8, 40, 16, 48), (8, 40, 26, 58)]
    # smaller than the window: one window, padded symmetrically (the smaller half first)
    (w,) = plan_windows((20, 27), 32, 16, "patch", 8)
    assert (w.y0, w.y1, w.x0, w.x1, w.pad) == (0, 20, 0, 27, (2, 3, 2, 2))
    assert w.input_size == (24, 32)
    (w,) = plan_windows((20, 27), 32, 16, 56, 8)
    assert w.pad == (14, 15, 18, 18)
    assert plan_windows((20, 27), 0, 16, 56, 8)[0].pad == (0, 0, 0, 0)  # whole image: no padding


def test_postprocess_hand_case():
    # two classes: class 0 has queries 0 and 1, class 1 has query 2; one pixel per column
    cos = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.05, 0.02]])[:, None, :]  # [3, 1, 2]
    labels, probs = postprocess(cos, torch.tensor([0, 0, 1]), 2, logit_scale=10.0)
    p = torch.softmax(cos[:, 0] * 10, dim=0)
    torch.testing.assert_close(probs[:, 0], torch.stack([torch.maximum(p[0], p[1]), p[2]]))
    assert labels.tolist() == [[0, 1]]  # column 1: p2 = e^.2/(2 + e^.2) > 1/(2 + e^.2)
    # the background threshold sends low-confidence pixels to class 0
    labels, _ = postprocess(cos, torch.tensor([0, 0, 1]), 2, 10.0, prob_thd=0.4)
    assert labels.tolist() == [[0, 0]]


def test_area_rule_drops_small_classes_before_the_argmax():
    # class 1 wins 1 pixel of 10, class 2 wins 9: with area_thd 0.2, class 1 (1 <= 0.2 * 10)
    # is dropped and its pixel goes to the next best class
    cos = torch.zeros(3, 1, 10)
    cos[2, 0, 1:] = 1.0
    cos[1, 0, 0] = 1.0
    cos[0, 0, 0] = 0.5
    labels, _ = postprocess(cos, torch.arange(3), 3, 10.0)
    assert labels[0, 0] == 1
    labels, probs = postprocess(cos, torch.arange(3), 3, 10.0, area_thd=0.2)
    assert labels[0, 0] == 0 and (probs[1] == 0).all() and (labels[0, 1:] == 2).all()


def _release_postprocess(cos, query_class, num_classes, logit_scale, prob_thd, area_thd):
    r"""SCLIP's ``postprocess_result`` written out: softmax, max over synonyms, the one-hot
    area rule, ``argmax`` and the threshold on ``max``."""
    probs = (cos * logit_scale).softmax(0)
    probs = torch.stack([probs[query_class == c].amax(0) for c in range(num_classes)])
    if area_thd is not None:
        onehot = F.one_hot(probs.argmax(0), num_classes).to(probs.dtype)
        area = onehot[:, :, 1:].sum((0, 1))
        probs[1:] *= (area > area_thd * area.sum()).to(probs.dtype)[:, None, None]
    labels = probs.argmax(0)
    labels[probs.max(0)[0] < prob_thd] = 0
    return labels, probs


@pytest.mark.parametrize("area_thd", [None, 0.0, 0.1, 0.3])
def test_postprocess_equals_the_release_formula(area_thd):
    # coarse values make ties between classes; the first class wins them in both. Some
    # classes win no pixel (area 0), some a small area that the rule drops
    g = torch.Generator().manual_seed(3)
    query_class = torch.tensor([0, 1, 1, 2, 3, 3, 3, 4, 5])
    cos = (torch.randint(0, 4, (9, 12, 13), generator=g) / 4.0)
    cos[5:] -= 0.5  # classes 3..5 win fewer pixels
    cos[3, :2, :2] = 2.0  # class 2 wins a small corner
    for prob_thd in (0.0, 0.35):
        got = postprocess(cos, query_class, 6, 10.0, prob_thd, area_thd)
        want = _release_postprocess(cos, query_class, 6, 10.0, prob_thd, area_thd)
        assert torch.equal(got[0], want[0])
        torch.testing.assert_close(got[1], want[1], rtol=0, atol=0)


def test_postprocess_nan_cosines_are_the_releases_label_0():
    r"""ProxyCLIP's release with an empty attention window: NaN cosines over a region (all
    queries) give NaN probabilities and label 0 there (its ``(probs * one_hot).max(1)`` and
    ``argmax``, proxyclip_segmentor.py:271-281), whatever the threshold; elsewhere the
    labels are the finite formula's."""
    g = torch.Generator().manual_seed(4)
    query_class = torch.tensor([0, 1, 1, 2, 3])
    cos = torch.randn(5, 9, 11, generator=g) / 4
    cos[:, 2:6, 3:9] = float("nan")
    for prob_thd in (0.0, 0.4):
        labels, probs = postprocess(cos, query_class, 4, 40.0, prob_thd)
        p = (cos * 40.0).softmax(0)
        one_hot = F.one_hot(query_class).T.view(4, 5, 1, 1).to(p.dtype)
        release = (p[None] * one_hot).max(1)[0]
        want = release.argmax(0)
        want[release.max(0)[0] < prob_thd] = 0
        assert torch.equal(labels, want)
        bad = torch.zeros(9, 11, dtype=torch.bool)
        bad[2:6, 3:9] = True
        assert (labels[bad] == 0).all() and torch.equal(probs.isnan().all(0), bad)
        assert not probs[:, ~bad].isnan().any() and (labels[~bad] != 0).any()


def test_errors(clf):
    s = get_preset("sclip").settings("custom")
    with pytest.raises(TypeError, match="method: expected a token-map attribution"):
        ProtocolSegmenter(build_method("chefer", clf), CLASSES, s)
    with pytest.raises(ValueError, match="window_batch: expected a positive int"):
        ProtocolSegmenter(build_method("sclip", clf), CLASSES, s, window_batch=0)
    seg = ProtocolSegmenter(build_method("sclip", clf), CLASSES, s.replace(short_side=5, crop=0))
    with pytest.raises(ValueError, match="smaller than one patch"):
        seg.predict([torch.zeros(3, 5, 7)], [(5, 7)])
    with pytest.raises(ValueError, match="sizes: expected one size per image"):
        seg.predict([torch.zeros(3, 5, 7)], [])


@pytest.mark.parametrize("refine", ["lposs", "lposs+"])
def test_lposs_refinement_is_lposs_on_the_resized_image(clf, refine):
    r"""``refine`` in the settings: the image's scores are LPOSS's over all its windows
    (and LPOSS+'s pixel graph on its colours, un-normalised with the preset's statistics),
    resized to the original size; PAMR is not applied."""
    from captum_clip_surgery.apps.label_propagation import lposs_plus, lposs_scores

    settings = get_preset("sclip").settings("voc20").replace(
        short_side=40, crop=24, stride=16, refine=refine, pamr_steps=10)
    explainer = build_method("sclip", clf)
    image = _images([(30, 45)], 40)[0]
    seg = ProtocolSegmenter(explainer, CLASSES, settings)
    got = seg.cosines([image], [(30, 45)])[0]
    with torch.no_grad():
        expected = lposs_scores(explainer, image[None], QUERIES, None, (24, 16),
                                explainer.default_feature_surgery)
        if refine == "lposs+":
            mean = torch.tensor(settings.mean).view(1, 3, 1, 1) / 255
            std = torch.tensor(settings.std).view(1, 3, 1, 1) / 255
            expected = lposs_plus((image[None] * std + mean).clamp(0, 1), expected)
    expected = F.interpolate(expected, size=(30, 45), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(got, expected)
    unrefined = ProtocolSegmenter(explainer, CLASSES, settings.replace(refine=None, pamr_steps=0))
    assert not torch.allclose(unrefined.cosines([image], [(30, 45)])[0], got, atol=1e-3)
    with pytest.raises(ValueError, match="refine_backbone: only the LPOSS refinement"):
        ProtocolSegmenter(explainer, CLASSES, settings.replace(refine=None), refine_backbone=clf)
    with pytest.raises(ValueError, match="refine: expected none, lposs or lposs\\+, got 'pamr'"):
        settings.replace(refine="pamr")
