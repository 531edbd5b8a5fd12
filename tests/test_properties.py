r"""Property-based tests of the public attributions and applications.

Random batch sizes, image sizes (non-square, not multiples of the patch or stride, and
too small), input dtypes, target forms, per-call texts, feature-surgery modes and the
applications' options. Every call either returns the right shape — finite, maps in
``[0, 1]``, on the inputs' dtype — or raises a ``ValueError`` / ``TypeError`` whose
message starts with the name of an argument that was invalid; a valid call never
raises and an invalid one always does. The model stays bit-identical and hook-free.

Bounded: tiny seeded models, a fixed number of derandomised examples per test (no
example database is written), no deadline.
"""

from __future__ import annotations

import functools
from typing import Any, List, Optional, Set, Tuple

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from captum_clip_surgery import (  # noqa: E402
    CLIPAttentionRelevance,
    CLIPSimilarityMap,
    CLIPSurgeryAttribution,
    CLIPZeroShotClassifier,
    MaskCLIPAttribution,
    multilabel_scores,
    segment,
    text_to_points,
)
from tests.helpers import FEW_TEMPLATES, TEXTS, ModelSnapshot  # noqa: E402
from tests.models import tiny_resnet, tiny_vit  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

#: examples per property test (the module's total is reported by the summary test)
EXAMPLES = 20
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
POOL = ["dog", "cat", "grass", "a red car", "sky", "a tree"]
EMBED_DIM = 24
MODEL_KINDS = ("vit", "vit_bf16", "resnet")


@functools.cache
def _setup(kind: str) -> Tuple[CLIPZeroShotClassifier, ModelSnapshot, int]:
    r"""A classifier on a tiny model, the model's snapshot and the grid cell (cached)."""
    if kind == "resnet":
        model, cell = tiny_resnet(), 32
    else:
        model, cell = tiny_vit(), 8
        if kind == "vit_bf16":
            model = model.to(torch.bfloat16)
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    return clf, ModelSnapshot(model), cell


@st.composite
def images_case(draw: Any, cell: int) -> Tuple[Any, Set[str]]:
    r"""Images of a random batch, size and dtype; the invalid argument names."""
    b = draw(st.integers(1, 3))
    too_small = draw(st.integers(0, 11)) == 5  # (hypothesis favours the bounds: use a middle value)
    h = draw(st.integers(1, cell - 1)) if too_small else draw(st.integers(cell, 3 * cell + 5))
    w = draw(st.integers(cell, 2 * cell + 7))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
    if draw(st.integers(0, 11)) == 5:
        dtype = torch.uint8
    seed = draw(st.integers(0, 2**16))
    x = torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))
    bad = set()
    if dtype == torch.uint8:
        x, bad = (x.clamp(-1, 1) * 100 + 120).to(torch.uint8), {"inputs", "images"}
    else:
        x = x.to(dtype)
    if too_small:
        bad |= {"inputs", "images"}
    return x, bad


@st.composite
def texts_case(draw: Any) -> Optional[List[str]]:
    return draw(st.one_of(st.none(), st.lists(st.sampled_from(POOL), min_size=1, max_size=4,
                                             unique=True)))


@st.composite
def target_case(draw: Any, texts: List[str], b: int) -> Tuple[Any, bool]:
    r"""A target in one of the accepted forms, or a malformed one (``valid=False``)."""
    t = len(texts)
    if draw(st.integers(0, 5)) == 3:  # about one draw in six is malformed
        form = draw(st.sampled_from(["bad_index", "bad_text", "bad_length", "float_tensor"]
                                    + (["none"] if t > 1 else [])))
    else:
        form = draw(st.sampled_from(["int", "str", "list_int", "list_str", "tensor0", "tensor1"]
                                    + (["none"] if t == 1 else [])))
    if form == "int":
        return draw(st.integers(0, t - 1)), True
    if form == "str":
        return draw(st.sampled_from(texts)), True
    if form == "list_int":
        return draw(st.lists(st.integers(0, t - 1), min_size=b, max_size=b)), True
    if form == "list_str":
        return tuple(draw(st.lists(st.sampled_from(texts), min_size=b, max_size=b))), True
    if form == "tensor0":
        return torch.tensor(draw(st.integers(0, t - 1))), True
    if form == "tensor1":
        return torch.tensor(draw(st.lists(st.integers(0, t - 1), min_size=b, max_size=b))), True
    if form == "none":
        return None, t == 1
    if form == "bad_index":
        return draw(st.sampled_from([t, t + 3, -1])), False
    if form == "bad_text":
        return "a unicorn", False
    if form == "bad_length":
        return [0] * (b + 1), False
    return torch.zeros(b), False


@st.composite
def surgery_case(draw: Any, n_texts: int) -> Tuple[Any, bool]:
    r"""A feature-surgery mode: a name, a tensor of redundant features, or a bad one."""
    if draw(st.integers(0, 5)) == 3:
        form = draw(st.sampled_from(["bad_tensor", "bogus"]))
    else:
        form = draw(st.sampled_from([None, "auto", "classes", "empty", "none", "vector",
                                     "matrix"]))
    if form == "vector":
        return torch.randn(EMBED_DIM), True
    if form == "matrix":
        return torch.randn(n_texts, EMBED_DIM), True
    if form == "bad_tensor":
        return torch.randn(EMBED_DIM + 1), False
    if form == "bogus":
        return "redundant", False
    return form, True


def _check_error(exc: BaseException, bad: Set[str]) -> None:
    event(f"error: {type(exc).__name__} {str(exc).split(':', 1)[0]}")
    assert isinstance(exc, (ValueError, TypeError)), repr(exc)
    name = str(exc).split(":", 1)[0]
    assert name in bad, f"error names {name!r}, expected one of {sorted(bad)}: {exc}"


def _check_map(maps: torch.Tensor, images: torch.Tensor, size: Tuple[int, int]) -> None:
    assert maps.shape == (images.shape[0], 1, *size)
    assert maps.dtype == images.dtype and maps.device == images.device
    m = maps.float()
    assert bool(torch.isfinite(m).all())
    assert float(m.min()) >= 0.0 and float(m.max()) <= 1.0


def _grid(size: Tuple[int, int], cell: int) -> Tuple[int, int]:
    return (-(-size[0] // cell), -(-size[1] // cell))


METHODS = {"surgery": CLIPSurgeryAttribution, "raw": CLIPSimilarityMap,
           "maskclip": MaskCLIPAttribution}


@pytest.mark.slow
@pytest.mark.parametrize("kind", MODEL_KINDS)
@pytest.mark.parametrize("method", sorted(METHODS))
@SETTINGS
@given(data=st.data())
def test_token_map_attributions(kind: str, method: str, data: Any) -> None:
    clf, snap, cell = _setup(kind)
    explainer = METHODS[method](clf)
    images, bad = data.draw(images_case(cell))
    texts = data.draw(texts_case())
    call_texts = texts if texts is not None else list(clf.texts)
    target, target_ok = data.draw(target_case(call_texts, images.shape[0]))
    mode, mode_ok = data.draw(surgery_case(len(call_texts)))
    upsample = data.draw(st.booleans())
    if not target_ok:
        bad = bad | {"target"}
    if not mode_ok:
        bad = bad | {"feature_surgery", "redundant_features"}
    try:
        maps = explainer.attribute(images, target=target, texts=texts, feature_surgery=mode,
                                   upsample_to_input=upsample)
    except Exception as exc:  # noqa: BLE001 - the property: only named argument errors
        assert bad, f"a valid call raised {exc!r}"
        _check_error(exc, bad)
    else:
        event("valid call")
        assert not bad, f"an invalid call ({sorted(bad)}) returned"
        size = tuple(images.shape[-2:]) if upsample else _grid(tuple(images.shape[-2:]), cell)
        _check_map(maps, images, size)
    snap.assert_unchanged()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vit", "vit_bf16"])
@SETTINGS
@given(data=st.data())
def test_attention_relevance(kind: str, data: Any) -> None:
    clf, snap, cell = _setup(kind)
    start = data.draw(st.integers(-1, 7))
    images, bad = data.draw(images_case(cell))
    texts = data.draw(texts_case())
    call_texts = texts if texts is not None else list(clf.texts)
    target, target_ok = data.draw(target_case(call_texts, images.shape[0]))
    if not target_ok:
        bad = bad | {"target"}
    try:
        explainer = CLIPAttentionRelevance(clf, start_block=start)
    except Exception as exc:  # noqa: BLE001
        assert not 0 <= start <= 6
        _check_error(exc, {"start_block"})
        return
    assert 0 <= start <= 6
    try:
        maps = explainer.attribute(images, target=target, texts=texts)
    except Exception as exc:  # noqa: BLE001
        assert bad, f"a valid call raised {exc!r}"
        _check_error(exc, bad)
    else:
        event("valid call")
        assert not bad, f"an invalid call ({sorted(bad)}) returned"
        _check_map(maps, images, tuple(images.shape[-2:]))
    snap.assert_unchanged()


@pytest.mark.parametrize("kind", ["vit", "resnet"])
@SETTINGS
@given(data=st.data())
def test_segment(kind: str, data: Any) -> None:
    clf, snap, cell = _setup(kind)
    explainer = data.draw(st.sampled_from([CLIPSurgeryAttribution, CLIPSimilarityMap]))(clf)
    images, bad = data.draw(images_case(cell))
    names = data.draw(texts_case())
    k = len(names) if names is not None else len(clf.texts)
    mode, mode_ok = data.draw(surgery_case(k))
    threshold = data.draw(st.sampled_from([None, None, 0.0, 0.3, 0.9, 1.0, 1.5]))
    out = data.draw(st.sampled_from([None, None, (5, 7), 9, 0]))
    if not mode_ok:
        bad = bad | {"feature_surgery", "redundant_features"}
    if threshold == 1.5:
        bad = bad | {"background_threshold"}
    if out == 0:
        bad = bad | {"output_size"}
    try:
        labels = segment(explainer, images, names, feature_surgery=mode,
                         background_threshold=threshold, output_size=out)
    except Exception as exc:  # noqa: BLE001
        assert bad, f"a valid call raised {exc!r}"
        _check_error(exc, bad)
    else:
        event("valid call")
        assert not bad, f"an invalid call ({sorted(bad)}) returned"
        size = tuple(images.shape[-2:]) if out is None else (
            (out, out) if isinstance(out, int) else out)
        assert labels.shape == (images.shape[0], *size) and labels.dtype == torch.long
        assert int(labels.min()) >= 0 and int(labels.max()) <= k
        if threshold is None or threshold == 0.0:
            assert int(labels.max()) < k  # no pixel is background without a threshold
    snap.assert_unchanged()


@pytest.mark.parametrize("kind", ["vit", "resnet"])
@SETTINGS
@given(data=st.data())
def test_multilabel_scores(kind: str, data: Any) -> None:
    clf, snap, cell = _setup(kind)
    images, bad = data.draw(images_case(cell))
    texts = data.draw(texts_case())
    t = len(texts) if texts is not None else len(clf.texts)
    mode = data.draw(st.sampled_from(["classes", "empty", "none", "auto"]))
    temperature = data.draw(st.sampled_from([2.0, 0.5, 10, 2.0, 0.0, -1.0]))
    if mode == "auto":
        bad = bad | {"feature_surgery"}
    elif mode == "classes" and t < 2:
        bad = bad | {"texts"}
    if temperature <= 0:
        bad = bad | {"temperature"}
    try:
        scores = multilabel_scores(clf, images, texts, feature_surgery=mode,
                                   temperature=temperature)
    except Exception as exc:  # noqa: BLE001
        assert bad, f"a valid call raised {exc!r}"
        _check_error(exc, bad)
    else:
        event("valid call")
        assert not bad, f"an invalid call ({sorted(bad)}) returned"
        assert scores.shape == (images.shape[0], t) and scores.dtype == torch.float32
        assert bool(torch.isfinite(scores).all())
        if mode == "classes":  # the class-set scores of one image sum to zero
            torch.testing.assert_close(scores.sum(dim=1), torch.zeros(images.shape[0]),
                                       atol=1e-5, rtol=0)
    snap.assert_unchanged()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vit", "resnet"])
@SETTINGS
@given(data=st.data())
def test_text_to_points(kind: str, data: Any) -> None:
    clf, snap, cell = _setup(kind)
    explainer = CLIPSurgeryAttribution(clf)
    images, bad = data.draw(images_case(cell))
    parts = data.draw(st.lists(st.sampled_from(POOL), min_size=1, max_size=2, unique=True))
    texts = data.draw(st.lists(st.sampled_from(parts + ["+".join(parts)]), min_size=1,
                               max_size=3, unique=True))
    class_set = data.draw(st.sampled_from([None, ["dog"], TEXTS]))
    downsample = data.draw(st.sampled_from([2, 1, 2, 3, 0]))
    threshold = data.draw(st.sampled_from([0.8, 0.5, 1.0, 0.8, -0.1]))
    gate = data.draw(st.sampled_from([False, True, 0.2]))
    image_size = data.draw(st.sampled_from([None, (30, 41), "per_image", (0, 5)]))
    b = images.shape[0]
    if image_size == "per_image":
        image_size = [(20 + i, 33 - i) for i in range(b)]
    if downsample == 0:
        bad = bad | {"downsample"}
    if threshold < 0:
        bad = bad | {"threshold"}
    if image_size == (0, 5):
        bad = bad | {"image_size"}
    all_texts = set(class_set if class_set is not None else clf.texts) | set(parts)
    if gate is not False and len(all_texts) < 2:
        bad = bad | {"gate"}
    try:
        prompts = text_to_points(explainer, images, texts, class_set=class_set,
                                 downsample=downsample, threshold=threshold, gate=gate,
                                 image_size=image_size)
    except Exception as exc:  # noqa: BLE001
        assert bad, f"a valid call raised {exc!r}"
        _check_error(exc, bad)
    else:
        event("valid call")
        assert not bad, f"an invalid call ({sorted(bad)}) returned"
        assert len(prompts) == b and all(len(row) == len(texts) for row in prompts)
        for i, row in enumerate(prompts):
            if image_size is None:
                height, width = images.shape[-2:]
            elif isinstance(image_size, list):
                height, width = image_size[i]
            else:
                height, width = image_size
            for text, p in zip(texts, row):
                assert p.text == text and p.points.shape == (len(p.labels), 2)
                assert bool(torch.isfinite(p.points).all())
                if len(p):
                    assert float(p.points[:, 0].min()) >= 0 and float(p.points[:, 0].max()) <= width
                    assert float(p.points[:, 1].min()) >= 0 and float(p.points[:, 1].max()) <= height
                labels = p.labels.tolist()
                assert labels == sorted(labels, reverse=True)  # positives first
                assert set(labels) <= {0, 1}
                if not p.present:
                    assert len(p) == 0
    snap.assert_unchanged()
