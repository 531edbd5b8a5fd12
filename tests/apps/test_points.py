r"""Text to point prompts (docs/method.md §8), the a+b rule, the gate, and the SAM call."""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pytest
import torch

from captum_clip_surgery import (
    CLIPSimilarityMap,
    CLIPSurgeryAttribution,
    CLIPZeroShotClassifier,
    PointPrompts,
    build_sam_predictor,
    segment_with_sam,
    text_to_points,
)
from tests.helpers import FEW_TEMPLATES, TEXTS, images_for, scene_batch
from tests.models import tiny_sam_predictor, tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")


class FixedMaps(CLIPSimilarityMap):
    r"""An explainer whose token-grid scores are given: ``maps[text]`` is ``[B, h, w]``."""

    def __init__(self, clf: CLIPZeroShotClassifier, maps: Dict[str, torch.Tensor]) -> None:
        super().__init__(clf)
        self.maps = maps

    def similarity(self, images, texts=None, feature_surgery=None):  # type: ignore[override]
        return torch.stack([self.maps[t] for t in self._texts(texts)], dim=1).float()


def _fixed(maps: Dict[str, torch.Tensor]) -> FixedMaps:
    clf = CLIPZeroShotClassifier(tiny_vit(), list(maps), templates=["{}"])
    return FixedMaps(clf, maps)


def _cells(grid: np.ndarray, downsample: int) -> np.ndarray:
    r"""Independent downsampling: bilinear by 2 on an even grid is the mean of 2×2 blocks."""
    if downsample == 1:
        return grid
    assert downsample == 2 and grid.shape[0] % 2 == 0 and grid.shape[1] % 2 == 0
    h, w = grid.shape
    return grid.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


def _norm(x: np.ndarray) -> np.ndarray:
    return (x - x.min()) / (x.max() - x.min())


def _centre(k: int, grid: Sequence[int], size: Sequence[int]) -> List[float]:
    gh, gw = grid
    return [(k % gw + 0.5) * size[1] / gw, (k // gw + 0.5) * size[0] / gh]


def _expected(grid_map: np.ndarray, size, downsample=2, threshold=0.8, negatives_from=None):
    r"""Hand-written ``docs/method.md`` §8: returns (points [n, 2], labels [n])."""
    cells = _norm(_cells(grid_map.astype(np.float64), downsample))
    flat = cells.ravel()
    n = min(int((flat >= threshold).sum()), flat.size // 2)
    order = np.argsort(flat, kind="stable")
    pos = [_centre(k, cells.shape, size) for k in order[flat.size - n :][::-1]]
    if negatives_from is not None:
        cells = _norm(_cells(negatives_from.astype(np.float64), downsample))
        flat = cells.ravel()
        n_neg = min(int((flat >= threshold).sum()), flat.size // 2)
        order = np.argsort(flat, kind="stable")
    else:
        n_neg = n
    neg = [_centre(k, cells.shape, size) for k in order[:n_neg]]
    points = np.array(pos + neg, dtype=np.float64).reshape(-1, 2)
    labels = np.array([1] * len(pos) + [0] * len(neg))
    return points, labels


def _assert_prompts(p: PointPrompts, points: np.ndarray, labels: np.ndarray) -> None:
    assert p.points.dtype == torch.float32 and p.labels.dtype == torch.long
    assert p.labels.tolist() == labels.tolist()
    np.testing.assert_allclose(p.points.numpy(), points, rtol=0, atol=1e-4)


def test_count_rule_and_cell_centres_by_hand():
    ramp = torch.arange(16.0).reshape(1, 4, 4)  # normalised k / 15
    explainer = _fixed({"ramp": ramp, "flat": torch.ones(1, 4, 4)})
    images = torch.zeros(1, 3, 32, 32)
    # #cells >= 0.8 is 4 (k = 12..15) < 16 // 2: n = 4
    p = text_to_points(explainer, images, ["ramp"], downsample=1, image_size=(100, 200))[0][0]
    assert p.present and len(p) == 8
    assert p.labels.tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    cells = [15, 14, 13, 12, 0, 1, 2, 3]
    expected = [[(k % 4 + 0.5) * 50.0, (k // 4 + 0.5) * 25.0] for k in cells]
    assert p.points.tolist() == expected
    torch.testing.assert_close(p.positive, p.points[:4])
    torch.testing.assert_close(p.negative, p.points[4:])
    # threshold 0: every cell counts, n is capped at half the cells
    p0 = text_to_points(explainer, images, ["ramp"], downsample=1, threshold=0.0)[0][0]
    assert p0.labels.tolist() == [1] * 8 + [0] * 8
    # threshold 1: only the maximum counts
    p1 = text_to_points(explainer, images, ["ramp"], downsample=1, threshold=1.0)[0][0]
    assert p1.labels.tolist() == [1, 0] and p1.points.tolist() == [[28.0, 28.0], [4.0, 4.0]]
    # downsampled by 2: 2x2 cells holding the block means 2.5, 4.5, 10.5, 12.5 -> 0, .2, .8, 1
    p2 = text_to_points(explainer, images, ["ramp"], threshold=0.8)[0][0]
    assert p2.labels.tolist() == [1, 1, 0, 0]
    assert p2.points.tolist() == [[24.0, 24.0], [8.0, 24.0], [8.0, 8.0], [24.0, 8.0]]
    # no contrast, or a single cell (a 2x2 grid downsampled by 2): no points
    single = _fixed({"tiny": torch.tensor([[[0.0, 1.0], [2.0, 3.0]]]), "flat": torch.ones(1, 2, 2)})
    for text, source in (("flat", explainer), ("tiny", single)):
        empty = text_to_points(source, images, [text])[0][0]
        assert len(empty) == 0 and empty.present and empty.points.shape == (0, 2)


def test_round_to_pixels_follows_the_release():
    ramp = torch.arange(16.0).reshape(1, 4, 4)
    explainer = _fixed({"ramp": ramp, "other": -ramp})
    p = text_to_points(explainer, torch.zeros(1, 3, 32, 32), ["ramp"], downsample=1,
                       image_size=(10, 10), round_to_pixels=True)[0][0]
    # (k % 4 + 0.5) * 2.5 clamped to 9 and truncated: 1.25 -> 1, 8.75 -> 8
    assert p.points.tolist() == [[8.0, 8.0], [6.0, 8.0], [3.0, 8.0], [1.0, 8.0],
                                 [1.0, 1.0], [3.0, 1.0], [6.0, 1.0], [8.0, 1.0]]


def test_combined_texts_positives_per_part_negatives_from_the_mean():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(1, 6, 6, generator=g), 3.0 * torch.rand(1, 6, 6, generator=g) - 1.0
    explainer = _fixed({"a": a, "b": b})
    images = torch.zeros(1, 3, 48, 48)
    for threshold in (0.8, 0.5):
        p = text_to_points(explainer, images, ["a+b"], downsample=2, threshold=threshold)[0][0]
        pa, la = _expected(a[0].numpy(), (48, 48), 2, threshold)
        pb, lb = _expected(b[0].numpy(), (48, 48), 2, threshold)
        mean = (_norm(a[0].double().numpy()) + _norm(b[0].double().numpy())) / 2
        pm, lm = _expected(mean, (48, 48), 2, threshold, negatives_from=mean)
        points = np.concatenate([pa[la == 1], pb[lb == 1], pm[lm == 0]])
        labels = np.concatenate([la[la == 1], lb[lb == 1], lm[lm == 0]])
        _assert_prompts(p, points, labels)
    # spaces around the separator and other separators
    spaced = text_to_points(explainer, images, [" a + b "], threshold=0.5)[0][0]
    assert spaced.points.tolist() == p.points.tolist()
    q = text_to_points(explainer, images, ["a|b"], separator="|", threshold=0.5)[0][0]
    assert q.points.tolist() == p.points.tolist()
    # one part alone is the single-text rule
    single = text_to_points(explainer, images, ["a", "a+a"])[0]
    assert single[0].points.tolist() == single[1].points.tolist()


@pytest.mark.parametrize("threshold", [0.8, 0.5, 0.0])
def test_points_are_the_highest_and_lowest_cells_of_the_surgery_maps(threshold):
    model = tiny_vit()
    images = images_for(model, b=2, h=64, w=64, seed=7)  # 8x8 grid -> 4x4 cells
    explainer = CLIPSurgeryAttribution(model, surgery_blocks=3, texts=TEXTS, templates=FEW_TEMPLATES)
    prompts = text_to_points(explainer, images, TEXTS, threshold=threshold, image_size=(480, 640))
    sim = explainer.similarity(images).detach().numpy()
    assert len(prompts) == 2 and all(len(row) == len(TEXTS) for row in prompts)
    for i in range(2):
        for t, text in enumerate(TEXTS):
            p = prompts[i][t]
            assert p.text == text and p.present
            _assert_prompts(p, *_expected(sim[i, t], (480, 640), 2, threshold))
            x, y = p.points[:, 0], p.points[:, 1]
            assert ((x >= 0) & (x < 640) & (y >= 0) & (y < 480)).all()


def test_batch_equals_per_image_calls_and_sizes_per_image():
    model = tiny_vit()
    images = images_for(model, b=3, h=48, w=64, seed=8)
    explainer = CLIPSurgeryAttribution(model, texts=TEXTS, templates=FEW_TEMPLATES)
    sizes = [(48, 64), (100, 50), (7, 9)]
    batch = text_to_points(explainer, images, ["dog", "cat+grass"], image_size=sizes)
    for i in range(3):
        single = text_to_points(explainer, images[i : i + 1], ["dog", "cat+grass"],
                                image_size=sizes[i])[0]
        for p, q in zip(batch[i], single):
            assert p.labels.tolist() == q.labels.tolist()
            torch.testing.assert_close(p.points, q.points)
            h, w = sizes[i]
            assert ((p.points[:, 0] < w) & (p.points[:, 1] < h)).all() and (p.points >= 0).all()


def test_class_set_and_feature_surgery_pass_through():
    model = tiny_vit()
    images = images_for(model, b=1, h=64, w=64)
    explainer = CLIPSurgeryAttribution(model, texts=TEXTS, templates=FEW_TEMPLATES)
    # maps come from the class set plus new parts ("tree"), surgery as asked
    sim = explainer.similarity(images, TEXTS + ["tree"], feature_surgery="classes").detach().numpy()
    p = text_to_points(explainer, images, ["tree"], feature_surgery="classes")[0][0]
    _assert_prompts(p, *_expected(sim[0, 4], (64, 64)))
    sim = explainer.similarity(images, ["tree"], feature_surgery="empty").detach().numpy()
    p = text_to_points(explainer, images, ["tree"], class_set=["tree"])[0][0]
    _assert_prompts(p, *_expected(sim[0, 0], (64, 64)))


def test_model_is_not_modified(snapshot):
    model = tiny_vit()
    snap = snapshot(model)
    explainer = CLIPSurgeryAttribution(model, texts=TEXTS, templates=FEW_TEMPLATES)
    text_to_points(explainer, images_for(model), ["dog", "cat+sky"], gate=0.2)
    snap.assert_unchanged()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(threshold=1.5), ValueError, r"threshold: expected a number in \[0, 1\], got 1.5"),
        (dict(threshold="high"), TypeError, "threshold"),
        (dict(downsample=0), ValueError, "downsample: expected an int >= 1, got 0"),
        (dict(downsample=2.0), TypeError, "downsample"),
        (dict(gate=2.0), ValueError, "gate: expected a number in"),
        (dict(texts=[]), ValueError, "texts: expected at least one text"),
        (dict(texts="dog"), TypeError, "texts: expected a list of strings"),
        (dict(texts=["dog+"]), ValueError, "texts: 'dog\\+' has an empty part"),
        (dict(separator=""), ValueError, "separator"),
        (dict(image_size=[(32, 32)] * 3), ValueError, "image_size: expected one"),
        (dict(image_size=(0, 32)), ValueError, "image_size"),
        (dict(class_set=[]), ValueError, "class_set: expected at least one text"),
        (dict(texts=["dog"], class_set=["dog"], gate=True), ValueError,
         "gate: the existence gate is a softmax over the class set"),
        (dict(feature_surgery="bogus"), ValueError, "feature_surgery"),
    ],
)
def test_errors_name_the_argument(kwargs, error, match):
    model = tiny_vit()
    explainer = CLIPSurgeryAttribution(model, texts=TEXTS, templates=FEW_TEMPLATES)
    args: Dict[str, Any] = dict(texts=["dog"])
    args.update(kwargs)
    with pytest.raises(error, match=match):
        text_to_points(explainer, images_for(model), **args)


def test_wrong_explainer():
    model = tiny_vit()
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    with pytest.raises(TypeError, match="explainer: expected a token-map attribution"):
        text_to_points(clf, images_for(model), ["dog"])  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- scenes model


@pytest.fixture(scope="module")
def scenes(scenes_clip: Any) -> Any:
    world, samples, images, clf = scene_batch(scenes_clip, 300, 8, n_objects=1)
    return world, samples, images, CLIPSurgeryAttribution(clf)


def test_scenes_positive_points_fall_on_the_object(scenes):
    world, samples, images, explainer = scenes
    with torch.no_grad():
        prompts = text_to_points(explainer, images, world.object_classes)
    inside = []
    for row, sample in zip(prompts, samples):
        p = row[world.object_classes.index(sample["objects"][0])]
        mask = sample["masks"][sample["objects"][0]]
        assert 0 < int((p.labels == 1).sum()) == int((p.labels == 0).sum())
        inside.append(np.mean([mask[int(y), int(x)] for x, y in p.positive.tolist()]))
    assert np.mean(inside) >= 0.75, inside


def test_scenes_gate_drops_absent_texts(scenes):
    world, samples, images, explainer = scenes
    sample = samples[0]
    obj = sample["objects"][0]
    absent_obj = next(o for o in world.object_classes if o != obj)
    absent_bg = next(b for b in world.background_classes if b != sample["background"])
    texts = [obj, absent_obj, absent_bg, f"{absent_obj}+{obj}"]
    with torch.no_grad():
        ungated = text_to_points(explainer, images[:1], texts)[0]
        gated = text_to_points(explainer, images[:1], texts, gate=True)[0]
    # without the gate, min-max maps give positives even for absent texts (docs/method.md §8)
    assert all(int((p.labels == 1).sum()) > 0 for p in ungated)
    assert gated[0].present and len(gated[0]) > 0
    torch.testing.assert_close(gated[0].points, ungated[0].points)
    for p in gated[1:3]:
        assert not p.present and len(p) == 0 and p.labels.shape == (0,)
    # the absent part of a combined text is dropped: what is left is the present object's prompts
    assert gated[3].present
    torch.testing.assert_close(gated[3].points, gated[0].points)
    assert gated[3].labels.tolist() == gated[0].labels.tolist()


# ----------------------------------------------------------------------------- SAM


def _rgb(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_segment_with_sam_returns_the_best_scored_mask(size):
    predictor = tiny_sam_predictor()
    image = _rgb(*size)
    points = np.array([[10.5, 12.0], [40.0, 30.0], [5.0, 40.0]], dtype=np.float32)
    labels = np.array([1, 1, 0])
    mask, score = segment_with_sam(predictor, image, points, labels)
    masks, scores, _ = predictor.predict(point_coords=points, point_labels=labels,
                                         multimask_output=True)
    assert masks.shape[0] == 3
    assert mask.shape == size and mask.dtype == torch.bool
    assert score == float(scores.max())
    assert torch.equal(mask, torch.from_numpy(masks[int(np.argmax(scores))]))
    # tensors work too, and the set image can be reused
    again, score2 = segment_with_sam(predictor, None, torch.from_numpy(points), torch.tensor(labels))
    assert torch.equal(again, mask) and score2 == score
    single, _ = segment_with_sam(predictor, None, points, labels, multimask_output=False)
    assert single.shape == size


def test_text_to_points_to_sam_end_to_end(scenes):
    world, samples, images, explainer = scenes
    predictor = tiny_sam_predictor(seed=1)
    absent = next(b for b in world.background_classes if b != samples[0]["background"])
    with torch.no_grad():
        prompts = text_to_points(explainer, images[:1], [samples[0]["objects"][0], absent],
                                 gate=True)[0]
    mask, score = segment_with_sam(predictor, samples[0]["image"], prompts[0])
    coords, labels = prompts[0].numpy()
    masks, scores, _ = predictor.predict(point_coords=coords, point_labels=labels)
    assert torch.equal(mask, torch.from_numpy(masks[int(np.argmax(scores))]))
    assert score == float(scores.max())
    # a text the gate dropped: no SAM call, an empty mask
    assert not prompts[1].present
    empty, zero = segment_with_sam(predictor, None, prompts[1])
    side = samples[0]["image"].size[0]
    assert not empty.any() and zero == 0.0 and empty.shape == (side, side)


class _NoPredict:
    def __init__(self) -> None:
        self.images: List[Any] = []

    def set_image(self, image: np.ndarray) -> None:
        self.images.append(image)

    def predict(self, **kwargs: Any) -> Any:
        raise AssertionError("predict must not be called without points")


def test_segment_with_sam_inputs_and_errors():
    fake = _NoPredict()
    empty = PointPrompts("x", torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), present=False)
    mask, score = segment_with_sam(fake, torch.zeros(3, 20, 30, dtype=torch.uint8), empty)
    assert mask.shape == (20, 30) and not mask.any() and score == 0.0
    assert fake.images[0].shape == (20, 30, 3)  # CHW tensors are accepted
    from PIL import Image

    segment_with_sam(fake, Image.new("RGB", (30, 20)), empty)
    assert fake.images[1].shape == (20, 30, 3)
    pts, lab = np.array([[1.0, 2.0]]), np.array([1])
    image = _rgb(20, 30)
    cases: List[Any] = [
        (dict(predictor=object()), TypeError, "predictor: expected a segment_anything.SamPredictor"),
        (dict(points=empty, labels=lab), ValueError, "labels: omit labels"),
        (dict(labels=None), ValueError, "labels: required"),
        (dict(points=np.zeros((2, 3))), ValueError, r"points: expected shape \[n, 2\]"),
        (dict(labels=np.array([1, 0])), ValueError, r"labels: expected shape \[1\]"),
        (dict(labels=np.array([2])), ValueError, "labels: expected 0"),
        (dict(points=np.array([[30.0, 2.0]])), ValueError, "points: 1 point\\(s\\) fall outside"),
        (dict(image=np.zeros((20, 30, 3), dtype=np.float32)), ValueError, "image: expected an H"),
        (dict(image="image.png"), TypeError, "image: expected an RGB image"),
    ]
    for kwargs, error, match in cases:
        args: Dict[str, Optional[Any]] = dict(predictor=fake, image=image, points=pts, labels=lab)
        args.update(kwargs)
        with pytest.raises(error, match=match):
            segment_with_sam(**args)  # type: ignore[arg-type]


def test_build_sam_predictor_needs_segment_anything(monkeypatch):
    monkeypatch.setitem(sys.modules, "segment_anything", None)
    with pytest.raises(ImportError, match=r"pip install captum-clip-surgery\[sam\]"):
        build_sam_predictor("sam_vit_b_01ec64.pth")


def test_build_sam_predictor_checks_the_model_type():
    with pytest.raises(ValueError, match="model_type: expected one of"):
        build_sam_predictor("sam_vit_b_01ec64.pth", model_type="vit_xxl")


class _Marker:
    r"""An object whose unpickling would run code (a weights-only load refuses it)."""

    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_sam_checkpoints_are_read_without_running_code(tmp_path, capsys):
    pytest.importorskip("segment_anything")
    path = tmp_path / "sam.pth"
    torch.save({"image_encoder.weight": torch.zeros(1), "x": _Marker()}, path)
    with pytest.raises(ValueError, match="checkpoint: could not read .* weights-only"):
        build_sam_predictor(str(path))
    assert "code ran" not in capsys.readouterr().out


def test_sam_model_loads_the_checkpoint_weights(monkeypatch, tmp_path):
    sa = pytest.importorskip("segment_anything")
    from captum_clip_surgery.apps.points import _sam_model

    def tiny(seed=None):
        if seed is not None:
            torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))

    monkeypatch.setitem(sa.sam_model_registry, "vit_b", tiny)
    saved = tiny(seed=3)
    path = tmp_path / "sam.pth"
    torch.save(saved.state_dict(), path)
    _, loaded = _sam_model(path, "vit_b")
    for (name, a), (_, b) in zip(saved.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
