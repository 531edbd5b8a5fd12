r"""Explaining many images: the streaming API equals per-image attributions resized to each
image, the folder writer resumes and survives bad files, two torchrun ranks write every image
once, the generator holds nothing it has yielded, and ``clip-surgery explain --images``
writes what the API returns and ends every user mistake in one line."""

from __future__ import annotations

import inspect
import os
import socket
import subprocess
import sys
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from captum_clip_surgery import (
    CLIPSimilarityMap,
    CLIPSurgeryAttribution,
    CLIPZeroShotClassifier,
    compare,
    explain_images,
    explain_to_folder,
)
from captum_clip_surgery.cli import main
from captum_clip_surgery.evaluation import square_preprocess
from captum_clip_surgery.explain.folder import _ShardSampler, find_images
from captum_clip_surgery.scenes import ScenesWorld
from captum_clip_surgery.scenes.world import HELD_OUT_START

TEXTS = ["tomato", "grass", "lemon"]
#: (width, height) of the 12 test images: square, wide, tall, smaller and larger than 64.
SIZES = [(64, 64), (80, 48), (100, 130), (33, 47), (64, 90), (120, 72),
         (48, 48), (70, 35), (96, 96), (40, 100), (150, 60), (57, 83)]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    world = ScenesWorld(seed=0)
    for i, size in enumerate(SIZES):
        image = world.sample(HELD_OUT_START + 40 + i)["image"].resize(size, Image.BICUBIC)
        image.save(folder / (f"scene{i:02d}." + ("png" if i % 2 == 0 else "jpg")))
    return folder


@pytest.fixture(scope="module")
def clf(scenes_clip):
    model, _, tokenizer = scenes_clip
    return CLIPZeroShotClassifier(model, TEXTS, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def transform(scenes_clip):
    normalize = scenes_clip[1].transforms[-1]
    return square_preprocess(int(scenes_clip[0].visual.image_size[0]), normalize.mean, normalize.std)


def _outputs(folder):
    r"""The outputs in a folder: its files but the records folder (``.clip-surgery``)."""
    return sorted(n for n in os.listdir(folder) if n != ".clip-surgery")


def _reference(explainer, path, transform, texts):
    r"""Per image and per text: the attribution's token map, resized to the file's size."""
    with Image.open(path) as im:
        image = im.convert("RGB")
    x = transform(image)[None]
    maps = []
    for t in range(len(texts)):
        grid = explainer.attribute(x, target=t, texts=texts, upsample_to_input=False)
        maps.append(F.interpolate(grid.float(), size=(image.height, image.width),
                                  mode="bilinear", align_corners=False)[0, 0])
    return torch.stack(maps)


def test_maps_equal_per_image_attributions_resized_to_each_image(clf, image_dir, transform,
                                                                 snapshot, one_thread):
    model_state = snapshot(clf.model)
    paths = find_images(str(image_dir))
    assert len(paths) == 12
    stream = explain_images(paths, clf, batch_size=5)  # batches of 5, 5 and 2
    assert inspect.isgenerator(stream)
    results = list(stream)
    assert [p for p, _ in results] == paths
    surgery = CLIPSurgeryAttribution(clf)
    for (path, maps), (w, h) in zip(results, SIZES):
        assert maps.dtype == torch.float32 and maps.shape == (len(TEXTS), h, w)
        assert float(maps.min()) >= 0 and float(maps.max()) <= 1
        torch.testing.assert_close(maps, _reference(surgery, path, transform, TEXTS),
                                   atol=1e-5, rtol=0)
    model_state.assert_unchanged()


def test_batching_and_workers_do_not_change_the_maps(clf, image_dir):
    paths = find_images(str(image_dir / "*.jpg"))
    assert len(paths) == 6
    one = dict(explain_images(paths, clf, batch_size=1))
    many = dict(explain_images(paths, clf, batch_size=4, num_workers=2))
    assert list(one) == list(many) == paths
    for p in paths:
        torch.testing.assert_close(many[p], one[p], atol=1e-5, rtol=0)


def test_other_methods_and_a_subset_of_texts(clf, image_dir, transform):
    paths = find_images(str(image_dir))[:3]
    raw = dict(explain_images(paths, clf, texts=["lemon", "tomato"], method="raw"))
    reference = CLIPSimilarityMap(clf)
    for p in paths:
        torch.testing.assert_close(raw[p], _reference(reference, p, transform, ["lemon", "tomato"]),
                                   atol=1e-5, rtol=0)
    # a gradient method goes through `compare` per (image, text) pair, at the input size
    grad = dict(explain_images(paths, clf, texts=["grass"], method="gradcam", batch_size=2))
    for p in paths:
        with Image.open(p) as im:
            image = im.convert("RGB")
        x = transform(image)[None]
        expected = compare(clf, x, ["grass"], methods=["gradcam"])["gradcam"]
        expected = F.interpolate(expected, size=(image.height, image.width), mode="bilinear",
                                 align_corners=False)[0]
        torch.testing.assert_close(grad[p], expected, atol=1e-5, rtol=0)


def test_generator_is_lazy_and_holds_no_maps(clf, image_dir, transform):
    calls = []

    def counting(image):
        calls.append(1)
        return transform(image)

    paths = find_images(str(image_dir))
    stream = explain_images(paths, clf, batch_size=2, preprocess=counting)
    assert not calls  # nothing is read before the first item is asked for
    refs = []
    for item in stream:  # (no enumerate: it keeps its last tuple alive)
        # only the current batch has been read
        assert len(calls) <= 2 * (len(refs) // 2 + 1)
        refs.append(weakref.ref(item[1]))
        del item
        # every map yielded before is gone: the generator keeps none of them
        assert all(r() is None for r in refs)
    assert len(calls) == len(paths)


def test_folder_writes_maps_resumes_and_counts(clf, image_dir, tmp_path):
    out = tmp_path / "maps"
    summary = explain_to_folder(str(image_dir), clf, str(out), figures=False, batch_size=5)
    assert (summary.done, summary.skipped, summary.failed) == (12, 0, 0)
    expected = dict(explain_images(str(image_dir), clf, batch_size=3))
    written = _outputs(out)
    assert written == sorted(os.path.splitext(os.path.basename(p))[0] + ".npy" for p in expected)
    for path, maps in expected.items():
        array = np.load(out / (os.path.splitext(os.path.basename(path))[0] + ".npy"))
        assert array.dtype == np.float32
        np.testing.assert_allclose(array, maps.numpy(), atol=1e-5, rtol=0)

    # a second run skips everything and touches nothing
    stamps = {n: os.stat(out / n).st_mtime_ns for n in written}
    again = explain_to_folder(str(image_dir), clf, str(out), figures=False)
    assert (again.done, again.skipped, again.failed) == (0, 12, 0)
    assert {n: os.stat(out / n).st_mtime_ns for n in written} == stamps
    # an interrupted run: the missing image is done, the others skipped
    os.remove(out / "scene03.npy")
    resumed = explain_to_folder(str(image_dir), clf, str(out), figures=False)
    assert (resumed.done, resumed.skipped, resumed.failed) == (1, 11, 0)
    assert {n: os.stat(out / n).st_mtime_ns for n in written if n != "scene03.npy"} == {
        n: s for n, s in stamps.items() if n != "scene03.npy"}
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


def test_unreadable_images_are_reported_skipped_and_counted(clf, image_dir, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("scene00.png", "scene01.jpg", "scene02.png"):
        (folder / name).write_bytes((image_dir / name).read_bytes())
    (folder / "broken.png").write_bytes(b"this is not a png")
    (folder / "cut.jpg").write_bytes((image_dir / "scene03.jpg").read_bytes()[:300])
    seen = []
    out = tmp_path / "out"
    summary = explain_to_folder(str(folder), clf, str(out), figures=False, batch_size=2,
                                on_error=lambda path, message: seen.append((path, message)))
    assert (summary.done, summary.skipped, summary.failed) == (3, 0, 2)
    assert sorted(os.path.basename(p) for p, _ in seen) == ["broken.png", "cut.jpg"]
    assert all(message for _, message in seen)
    assert _outputs(out) == ["scene00.npy", "scene01.npy", "scene02.npy"]
    with pytest.warns(RuntimeWarning, match="skipped .*broken.png"):
        assert len(list(explain_images([str(folder / "broken.png")], clf))) == 0


def test_figures_are_written_and_count_as_outputs(clf, image_dir, tmp_path):
    paths = find_images(str(image_dir))[:2]
    out = tmp_path / "figs"
    summary = explain_to_folder(paths, clf, str(out), texts=["tomato"], save_maps=False)
    assert summary.done == 2
    for p in paths:
        with open(out / (os.path.splitext(os.path.basename(p))[0] + ".png"), "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert explain_to_folder(paths, clf, str(out), texts=["tomato"], save_maps=False).skipped == 2


def test_shards_cover_every_item_once():
    data = list(range(7))
    for world in (1, 2, 3, 8):
        shards = [list(_ShardSampler(data, num_replicas=world, rank=r)) for r in range(world)]
        assert sorted(i for s in shards for i in s) == data
        assert [len(_ShardSampler(data, num_replicas=world, rank=r)) for r in range(world)] == [
            len(s) for s in shards]


def test_bad_arguments(clf, image_dir, tmp_path):
    paths = find_images(str(image_dir))
    with pytest.raises(ValueError, match="^batch_size: expected an int >= 1, got 0"):
        explain_images(paths, clf, batch_size=0)
    with pytest.raises(ValueError, match="^num_workers: expected an int >= 0, got -1"):
        explain_images(paths, clf, num_workers=-1)
    with pytest.raises(ValueError, match="^method: expected one of .*, got 'nope'"):
        explain_images(paths, clf, method="nope")
    with pytest.raises(ValueError, match="^texts: method 'gradcam' explains the classifier's"):
        explain_images(paths, clf, texts=["kiwi"], method="gradcam")
    with pytest.raises(ValueError, match="^method: give a method name only with a"):
        explain_images(paths, CLIPSurgeryAttribution(clf), method="raw")
    with pytest.raises(TypeError, match="^explainer: expected a CLIPZeroShotClassifier"):
        explain_images(paths, clf.model)
    with pytest.raises(TypeError, match="^texts: expected a list of strings"):
        explain_images(paths, clf, texts="tomato")
    with pytest.raises(ValueError, match="^surgery_blocks: expected an int in"):
        explain_images(paths, clf, method_options={"surgery_blocks": 99})
    with pytest.raises(ValueError, match="^images: no image files match '.*nothing'"):
        explain_images(str(tmp_path / "nothing"), clf)
    with pytest.raises(TypeError, match="^images: expected a folder, a glob pattern or a list"):
        explain_images(3, clf)
    assert list(explain_images([], clf)) == []
    with pytest.raises(ValueError, match="^save_maps, figures: nothing to write"):
        explain_to_folder(paths, clf, str(tmp_path), save_maps=False, figures=False)
    twin = tmp_path / "twin"
    twin.mkdir()
    (twin / "scene00.jpg").write_bytes((image_dir / "scene01.jpg").read_bytes())
    with pytest.raises(ValueError, match="^images: .*scene00.png and .*scene00.jpg would both"):
        explain_to_folder(paths + [str(twin / "scene00.jpg")], clf, str(tmp_path / "o"))


def test_find_images(image_dir, tmp_path):
    assert len(find_images(str(image_dir))) == 12
    assert [os.path.basename(p) for p in find_images(str(image_dir / "scene0[01].*"))] == [
        "scene00.png", "scene01.jpg"]
    assert find_images(str(image_dir / "scene00.png")) == [str(image_dir / "scene00.png")]
    assert find_images(str(tmp_path / "nothing*.png")) == []
    (tmp_path / "notes.txt").write_text("x")
    assert find_images(str(tmp_path)) == []  # a folder: image extensions only


# ------------------------------------------------------------------ command line


def test_cli_writes_the_maps_of_the_api_and_resumes(clf, image_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["explain", "--images", str(image_dir), "--text", "tomato", "--text", "grass",
            "--text", "lemon", "--out", str(out), "--save-maps", "--no-figures",
            "--workers", "0", "--batch-size", "5"]
    assert main(argv) == 0
    assert "done 12, skipped 0 (already written), failed 0" in capsys.readouterr().out
    for path, maps in explain_images(str(image_dir), clf):
        array = np.load(out / (os.path.splitext(os.path.basename(path))[0] + ".npy"))
        np.testing.assert_allclose(array, maps.numpy(), atol=1e-5, rtol=0)
    assert main(argv) == 0
    assert "done 0, skipped 12 (already written), failed 0" in capsys.readouterr().out


def test_cli_figures_precision_and_a_bad_file(image_dir, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes((image_dir / "scene00.png").read_bytes())
    (folder / "b.png").write_bytes(b"garbage")
    out = tmp_path / "out"
    assert main(["explain", "--images", str(folder / "*.png"), "--text", "tomato",
                 "--out", str(out), "--save-maps", "--precision", "bf16", "--workers", "0"]) == 0
    captured = capsys.readouterr()
    assert "done 1, skipped 0 (already written), failed 1" in captured.out
    assert f"clip-surgery explain: skipped {folder / 'b.png'}: UnidentifiedImageError" in (
        captured.err)
    assert _outputs(out) == ["a.npy", "a.png"]
    maps = np.load(out / "a.npy")
    assert maps.shape == (1, 64, 64) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1


@pytest.mark.parametrize("extra, message", [
    (["--images", "{empty}"], "--images: folder holds no image files"),
    (["--images", "{dir}/*.gif"], "--images: no files match"),
    (["--images", "{dir}", "--out", "{file}"], "--out: cannot write into folder"),
    (["--images", "{dir}", "--precision", "fp64"],
     "--precision: expected one of fp32, fp16, bf16, got 'fp64'"),
    (["--images", "{dir}", "--batch-size", "0"], "--batch-size: expected a positive number"),
    (["--images", "{dir}", "--workers", "-1"], "--workers: expected 0 or more"),
    (["--images", "{dir}", "--method", "magic"], "--method: unknown method 'magic'"),
    (["--images", "{dir}", "--no-figures"], "--no-figures: nothing left to write"),
    (["--images", "{dir}", "--image", "{dir}/scene00.png"], "--images: give either --image"),
    (["--images", "{dir}", "--device", "nodevice"], "--device: cannot use device 'nodevice'"),
    (["--images", "{dir}", "--surgery-blocks", "99"], "--surgery-blocks: surgery_blocks:"),
    (["--save-maps"], "--save-maps: only with --images"),
    (["--precision", "bf16"], "--precision: only with --images"),
])
def test_cli_user_errors_are_one_line(extra, message, image_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    fill = {"dir": str(image_dir), "empty": str(tmp_path / "empty"),
            "file": str(tmp_path / "file")}
    argv = ["explain", "--text", "tomato"] + [a.format(**fill) for a in extra]
    if "--out" not in extra:
        argv += ["--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"clip-surgery explain: error: {message}"), err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_needs_a_text_with_images(image_dir, tmp_path, capsys):
    assert main(["explain", "--images", str(image_dir), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        "clip-surgery explain: error: --text: give at least one text to explain with --images\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_ranks_write_every_image_once(clf, image_dir, tmp_path):
    # 7 images on 2 ranks: a padding DistributedSampler would explain one of them twice
    folder = tmp_path / "seven"
    folder.mkdir()
    for p in find_images(str(image_dir))[:7]:
        (folder / os.path.basename(p)).write_bytes(open(p, "rb").read())
    out = tmp_path / "two"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", str(_free_port()), "-m", "captum_clip_surgery", "explain",
         "--images", str(folder), "--text", "tomato", "--text", "grass", "--text", "lemon",
         "--out", str(out), "--save-maps", "--no-figures", "--workers", "0",
         "--batch-size", "2"],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    # the totals add up every rank's writes: 7 means no image was written twice
    assert res.stdout.count("done 7, skipped 0 (already written), failed 0") == 1, res.stdout
    expected = dict(explain_images(str(folder), clf))
    assert _outputs(out) == sorted(
        os.path.splitext(os.path.basename(p))[0] + ".npy" for p in expected)
    for path, maps in expected.items():
        array = np.load(out / (os.path.splitext(os.path.basename(path))[0] + ".npy"))
        np.testing.assert_allclose(array, maps.numpy(), atol=1e-5, rtol=0)
