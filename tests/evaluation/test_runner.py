r"""The evaluation runner: records equal the metrics computed by hand, batching does not
change them, the writers agree with the summary, and the CLI — single process and under
torchrun with two gloo ranks — prints the numbers of the Python API."""

from __future__ import annotations

import csv
import math
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from captum_clip_surgery import CLIPSurgeryAttribution, CLIPZeroShotClassifier
from captum_clip_surgery.evaluation import (
    ScenesSegmentation,
    ThresholdIoU,
    evaluate,
    square_preprocess,
)

METRIC_KEYS = ("msc", "pointing", "energy", "deletion_auc", "insertion_auc")


@pytest.fixture(scope="module")
def scenes(scenes_clip):
    model, preprocess, tokenizer = scenes_clip
    data = ScenesSegmentation(size=7)
    clf = CLIPZeroShotClassifier(model, data.class_names, tokenizer=tokenizer)
    normalize = preprocess.transforms[-1]
    transform = square_preprocess(int(model.visual.image_size[0]), normalize.mean, normalize.std)
    return data, clf, transform


def _key(r):
    return (r["method"], r["index"], r["class"])


def _assert_same_records(a, b, tol=1e-5):
    assert [_key(r) for r in a] == [_key(r) for r in b]
    for ra, rb in zip(a, b):
        for k in METRIC_KEYS:
            va, vb = float(ra[k]), float(rb[k])
            assert (math.isnan(va) and math.isnan(vb)) or abs(va - vb) <= tol, (k, ra, rb)
        assert torch.allclose(torch.tensor(ra["iou"]), torch.tensor(rb["iou"]), atol=tol)


def test_records_equal_the_metrics_computed_by_hand(scenes):
    data, clf, transform = scenes
    result = evaluate(["surgery"], data, clf, transform, batch_size=3, limit=4,
                      tolerance=0, faithfulness=False, progress=False)
    explainer = CLIPSurgeryAttribution(clf)
    expected = []
    for i in range(4):
        item = data[i]
        for c in torch.nonzero(item["present"]).flatten().tolist():
            image = transform(item["image"])[None]
            m = explainer.attribute(image, target=c)
            m = (m - m.min()) / (m.max() - m.min())  # compare(): min-max at the input size
            mask = item["masks"][c]
            m = F.interpolate(m, size=mask.shape, mode="bilinear", align_corners=False)[0, 0]
            m = m.clamp(0, 1).double()
            inside, outside = m[mask], m[~mask]
            msc = inside.mean() - outside.mean()
            peak = torch.nonzero(m == m.max())
            hit = bool(mask[peak[:, 0], peak[:, 1]].any())
            energy = inside.sum() / m.sum()
            expected.append((i, data.class_names[c], float(msc), float(hit), float(energy)))
    got = [(r["index"], r["class"], r["msc"], r["pointing"], r["energy"]) for r in result.records]
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    for g, e in zip(got, expected):
        assert g[2] == pytest.approx(e[2], abs=1e-5)
        assert g[3] == e[3]
        assert g[4] == pytest.approx(e[4], abs=1e-5)
    assert all(math.isnan(r["deletion_auc"]) for r in result.records)
    assert result.num_images == 4


@pytest.mark.slow
def test_batch_size_does_not_change_the_records(scenes):
    data, clf, transform = scenes
    one = evaluate(["raw", "surgery"], data, clf, transform, batch_size=1, limit=3,
                   deletion_steps=3, progress=False)
    four = evaluate(["raw", "surgery"], data, clf, transform, batch_size=3, limit=3,
                    deletion_steps=3, progress=False)
    _assert_same_records(one.records, four.records, tol=1e-4)


def test_summary_reaggregates_per_image_records(scenes):
    data, clf, transform = scenes
    result = evaluate(["surgery", "raw"], data, clf, transform, batch_size=4, limit=5,
                      faithfulness=False, progress=False)
    summary = result.summary()
    for method in ("surgery", "raw"):
        rows = [r for r in result.records if r["method"] == method]
        assert summary[method]["pairs"] == len(rows)
        assert summary[method]["msc"] == pytest.approx(sum(r["msc"] for r in rows) / len(rows))
        assert summary[method]["pointing"] == pytest.approx(
            sum(r["pointing"] for r in rows) / len(rows))
        curve = torch.tensor([r["iou"] for r in rows], dtype=torch.float64).mean(0)
        best = int(curve.argmax())
        assert summary[method]["miou"] == pytest.approx(float(curve[best]))
        assert summary[method]["threshold"] == pytest.approx(float(result.thresholds[best]))
        acc = ThresholdIoU(result.thresholds)
        acc.add_per_example(torch.tensor([r["iou"] for r in rows], dtype=torch.float64))
        assert torch.allclose(acc.compute()["curve"].double(), curve.double())


@pytest.mark.slow
def test_write_files_agree_with_the_summary(scenes, tmp_path):
    data, clf, transform = scenes
    result = evaluate(["surgery", "raw"], data, clf, transform, batch_size=4, limit=3,
                      deletion_steps=4, progress=False)
    paths = result.write(str(tmp_path))
    for key in ("markdown", "csv", "records", "metrics_figure", "iou_figure",
                "faithfulness_figure"):
        assert os.path.getsize(paths[key]) > 0, key
    with open(paths["csv"], newline="") as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    summary = result.summary()
    for method in ("surgery", "raw"):
        for key, value in summary[method].items():
            assert float(rows[method][key]) == pytest.approx(value, nan_ok=True), key
    with open(paths["records"], newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(result.records)
    table = open(paths["markdown"], encoding="utf-8").read()
    assert "CLIP Surgery" in table and f"{summary['surgery']['msc']:.3f}" in table


def test_mismatched_classifier_and_bad_arguments(scenes):
    data, clf, transform = scenes
    other = CLIPZeroShotClassifier(clf.model, ["a", "b"])
    with pytest.raises(ValueError, match="classifier: its texts must be the dataset's"):
        evaluate(["surgery"], data, other, transform)
    with pytest.raises(TypeError, match="classifier: expected a CLIPZeroShotClassifier"):
        evaluate(["surgery"], data, clf.model, transform)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(["surgery"], data, clf, transform, batch_size=0)
    with pytest.raises(ValueError, match="limit"):
        evaluate(["surgery"], data, clf, transform, limit=0)


def _read_records(path):
    with open(os.path.join(path, "records.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r.pop("seconds")
    return rows


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_cli_single_and_torchrun_equal_the_python_api(scenes, tmp_path):
    data, clf, transform = scenes
    args = ["evaluate", "--dataset", "scenes", "--limit", "5", "--methods", "surgery,raw",
            "--batch-size", "2", "--tolerance", "0", "--no-faithfulness"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    single = subprocess.run(
        [sys.executable, "-m", "captum_clip_surgery", *args, "--out", str(tmp_path / "one")],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    # 5 images over 2 ranks: the sampler pads rank 1 with a repeated image.
    torchrun = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
         "-m", "captum_clip_surgery", *args,
         "--out", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert torchrun.returncode == 0, torchrun.stderr

    one, two = _read_records(tmp_path / "one"), _read_records(tmp_path / "two")
    assert len(one) == len(two) > 0
    for a, b in zip(one, two):
        assert (a["method"], a["index"], a["class"], a["kind"]) == (
            b["method"], b["index"], b["class"], b["kind"])
        for k in a:
            if k not in ("method", "class", "kind"):
                assert float(a[k]) == pytest.approx(float(b[k]), abs=1e-5, nan_ok=True), k

    api = evaluate(["surgery", "raw"], ScenesSegmentation(size=5), clf, transform, batch_size=2,
                   tolerance=0, faithfulness=False, progress=False).summary()
    with open(tmp_path / "one" / "results.csv", newline="") as fh:
        cli = {r["method"]: r for r in csv.DictReader(fh)}
    for method in ("surgery", "raw"):
        for key in ("msc", "miou", "threshold", "pointing", "energy", "pairs"):
            assert float(cli[method][key]) == pytest.approx(api[method][key], abs=1e-6), key
    table = open(tmp_path / "one" / "results.md", encoding="utf-8").read()
    assert table in single.stdout  # the CLI prints the table it writes ...
    breakdown = open(tmp_path / "one" / "breakdown.md", encoding="utf-8").read()
    by_kind = breakdown.split("## By kind\n\n")[1].split("\n## By class")[0]
    assert by_kind in single.stdout  # ... and the breakdown by kind


def test_seconds_per_image_is_the_time_per_image(scenes, monkeypatch):
    # A clock that advances one second per reading: each method's call on a batch takes
    # exactly 1 s, so 6 images in batches of 3 cost 2 s per method, 1/3 s per image.
    import captum_clip_surgery.evaluation.runner as runner

    ticks = iter(range(10_000))
    monkeypatch.setattr(runner.time, "perf_counter", lambda: float(next(ticks)))
    data, clf, transform = scenes
    result = evaluate(["raw", "surgery"], data, clf, transform, batch_size=3, limit=6,
                      faithfulness=False, progress=False)
    for method in ("raw", "surgery"):
        assert result.summary()[method]["seconds_per_image"] == pytest.approx(2 / 6)


@pytest.mark.slow
def test_one_forward_per_image_equals_the_per_pair_path(scenes, monkeypatch):
    # token-map methods score every class of an image from one forward; the records equal
    # those of one batch row per (image, class) pair, as before
    data, clf, transform = scenes
    methods = ["surgery", "surgery_empty", "raw", "maskclip", "gradcam"]
    kwargs = dict(batch_size=3, limit=5, deletion_steps=3, progress=False)
    old = evaluate(methods, data, clf, transform, per_pair=True, **kwargs)
    rows = []
    original = CLIPSurgeryAttribution.token_features
    monkeypatch.setattr(CLIPSurgeryAttribution, "token_features",
                        lambda self, x: rows.append(x.shape[0]) or original(self, x))
    new = evaluate(methods, data, clf, transform, **kwargs)
    _assert_same_records(old.records, new.records, tol=1e-4)
    # surgery and surgery_empty: one row per image (5 images in batches of 3 and 2)
    assert rows == [3, 3, 2, 2]
    pairs = sum(int(data[i]["present"].sum()) for i in range(5))
    assert pairs > 5 and len(new.records) == len(methods) * pairs


@pytest.mark.slow
def test_the_2024_25_methods_evaluate_in_the_api_and_the_cli(scenes, tmp_path, capsys):
    r"""SC-CLIP, ResCLIP, ProxyCLIP, CASS and CorrCLIP (issue 20) are scored like the other token-map
    methods: one forward per image equals one batch row per (image, class) pair, and
    ``clip-surgery evaluate --methods`` prints the Python API's numbers."""
    pytest.importorskip("scipy")
    from captum_clip_surgery.cli import main

    data, clf, transform = scenes
    methods = ["scclip", "resclip", "proxyclip", "cass", "corrclip"]
    kwargs = dict(batch_size=2, limit=3, deletion_steps=2, tolerance=0, progress=False)
    new = evaluate(methods, data, clf, transform, **kwargs)
    old = evaluate(methods, data, clf, transform, per_pair=True, **kwargs)
    _assert_same_records(old.records, new.records, tol=1e-4)
    assert {r["method"] for r in new.records} == set(methods)
    out = tmp_path / "eval"
    assert main(["evaluate", "--dataset", "scenes", "--limit", "3", "--methods", ",".join(methods),
                 "--batch-size", "2", "--tolerance", "0", "--deletion-steps", "2",
                 "--out", str(out)]) == 0
    assert "SC-CLIP" in capsys.readouterr().out
    with open(out / "results.csv", newline="") as fh:
        cli = {r["method"]: r for r in csv.DictReader(fh)}
    api = new.summary()
    for method in methods:
        for key in ("msc", "miou", "pointing", "energy", "deletion_auc", "insertion_auc"):
            assert float(cli[method][key]) == pytest.approx(api[method][key], abs=1e-5), key


def test_breakdown_by_kind_and_class_reaggregates_the_records(scenes, tmp_path):
    data, clf, transform = scenes
    result = evaluate(["surgery", "raw"], data, clf, transform, batch_size=4, limit=6,
                      tolerance=0, faithfulness=False, progress=False)
    assert {r["kind"] for r in result.records} == {"object", "background"}
    for r in result.records:
        assert r["kind"] == data.class_kinds[r["class"]]
    summary = result.summary()
    for by in ("kind", "class"):
        table = result.breakdown(by)
        for method in ("surgery", "raw"):
            best = int((result.thresholds - summary[method]["threshold"]).abs().argmin())
            total = 0
            for group, row in table[method].items():
                rows = [r for r in result.records if r["method"] == method and r[by] == group]
                total += len(rows)
                assert row["pairs"] == len(rows)
                assert row["msc"] == pytest.approx(sum(r["msc"] for r in rows) / len(rows))
                assert row["negative_share"] == pytest.approx(
                    sum(r["msc"] < 0 for r in rows) / len(rows))
                assert row["pointing"] == pytest.approx(
                    sum(r["pointing"] for r in rows) / len(rows))
                assert row["iou"] == pytest.approx(sum(r["iou"][best] for r in rows) / len(rows))
            assert total == summary[method]["pairs"]
    assert list(result.breakdown("class")["raw"]) == [
        c for c in data.class_names if c in {r["class"] for r in result.records}]
    assert summary["raw"]["negative_share"] == pytest.approx(
        sum(r["msc"] < 0 for r in result.records if r["method"] == "raw")
        / summary["raw"]["pairs"])
    paths = result.write(str(tmp_path))
    with open(paths["breakdown_csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["by"], r["method"], r["group"]) for r in rows} == {
        (by, m, g) for by in ("kind", "class") for m, groups in
        ((m, result.breakdown(by)[m]) for m in ("surgery", "raw")) for g in groups}
    text = open(paths["breakdown"], encoding="utf-8").read()
    assert result.breakdown_markdown("kind") in text and result.breakdown_markdown("class") in text
    with pytest.raises(ValueError, match="by: expected 'kind' or 'class'"):
        result.breakdown("image")


def test_line_styles_stay_distinct_past_ten_methods():
    from captum_clip_surgery.evaluation.runner import _line_styles

    styles = _line_styles(14)  # the README's 14 methods
    pairs = [(s["color"], s["linestyle"]) for s in styles]
    assert len(set(pairs)) == 14
    assert styles[0] == {"color": "C0", "linestyle": "-"}
    assert styles[10] == {"color": "C0", "linestyle": "--"}  # the colour comes back, dashed


@pytest.mark.slow
def test_deletion_baseline_is_the_datasets_own_and_is_named(scenes, tmp_path):
    r"""Issue 18, item 17: the scenes world deletes to its mean colour by default (a blur
    keeps every object's colour, which the scenes model reads), natural-image datasets to a
    blur; the result and its tables say which."""
    from captum_clip_surgery.evaluation import FolderSegmentation, VOCSegmentationMasks
    from captum_clip_surgery.evaluation.faithfulness import deletion_insertion

    data, clf, transform = scenes
    assert ScenesSegmentation.default_baseline == "mean"
    assert FolderSegmentation.default_baseline == VOCSegmentationMasks.default_baseline == "blur"
    kwargs = dict(limit=2, deletion_steps=3, progress=False, batch_size=2)
    default = evaluate(["surgery"], data, clf, transform, **kwargs)
    assert default.baseline == "mean"
    # the records are the curves of deletion_insertion with the mean-colour baseline
    explicit = evaluate(["surgery"], data, clf, transform, baseline="mean", **kwargs)
    _assert_same_records(default.records, explicit.records, tol=0)
    blur = evaluate(["surgery"], data, clf, transform, baseline="blur", **kwargs)
    assert blur.baseline == "blur"
    assert [r["deletion_curve"] for r in blur.records] != [r["deletion_curve"] for r in default.records]
    item = data[0]
    image = transform(item["image"])[None]
    c = int(torch.nonzero(item["present"]).flatten()[0])
    maps = CLIPSurgeryAttribution(clf).attribute(image, target=c)
    from captum_clip_surgery.apps.comparison import footing

    maps = footing(maps, clf, image.shape[-2:])
    by_hand = deletion_insertion(clf, image, maps, c, steps=3, baseline="mean")
    assert default.records[0]["deletion_curve"] == pytest.approx(
        by_hand["deletion_curve"][0].tolist(), abs=1e-5)
    # the tables say it, under the table; without faithfulness there is nothing to say
    note = "Deletion / insertion baseline: mean (removed pixels become the image's mean colour)."
    assert default.to_markdown().rstrip().endswith(note)
    assert note in default.breakdown_markdown("kind")
    assert "baseline" not in evaluate(["surgery"], data, clf, transform, faithfulness=False,
                                      **kwargs).to_markdown()
    paths = default.write(str(tmp_path / "out"))
    with open(paths["csv"], newline="") as fh:
        assert [r["baseline"] for r in csv.DictReader(fh)] == ["mean"]
    with pytest.raises(ValueError, match="baseline: expected 'blur', 'mean', 'zero' or a tensor"):
        evaluate(["surgery"], data, clf, transform, baseline="gray", **kwargs)


@pytest.mark.slow
def test_cli_evaluate_names_the_baseline(tmp_path, capsys):
    from captum_clip_surgery.cli import main

    common = ["evaluate", "--limit", "1", "--methods", "raw", "--deletion-steps", "2"]
    assert main(common + ["--out", str(tmp_path / "a")]) == 0
    assert "Deletion / insertion baseline: mean" in capsys.readouterr().out
    assert "baseline: mean" in (tmp_path / "a" / "results.md").read_text()
    assert main(common + ["--baseline", "blur", "--out", str(tmp_path / "b")]) == 0
    assert "Deletion / insertion baseline: blur" in capsys.readouterr().out
