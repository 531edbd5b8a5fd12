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
from captum_clip_surgery.methods.registry import build_method
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


@pytest.mark.slow
@pytest.mark.parametrize("method", ["scclip", "resclip", "proxyclip", "cass", "corrclip"])
def test_the_2024_25_methods_explain_folders_from_the_api_and_the_cli(method, clf, image_dir,
                                                                       transform, tmp_path,
                                                                       capsys):
    r"""SC-CLIP, ResCLIP, ProxyCLIP, CASS and CorrCLIP (issue 20) in the streaming API and in
    ``clip-surgery explain --images DIR --method NAME``: the maps are the method's own
    token maps resized to each image, at a square and a non-square size."""
    if method == "cass":
        pytest.importorskip("scipy")
    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("scene00.png", "scene01.jpg"):  # 64×64 and 80×48
        (folder / name).write_bytes((image_dir / name).read_bytes())
    paths = find_images(str(folder))
    explainer = build_method(method, clf)
    api = dict(explain_images(paths, clf, method=method, batch_size=2))
    for p in paths:
        torch.testing.assert_close(api[p], _reference(explainer, p, transform, TEXTS),
                                   atol=1e-5, rtol=0)
    out = tmp_path / "maps"
    argv = ["explain", "--images", str(folder), "--out", str(out), "--method", method,
            "--save-maps", "--no-figures", "--workers", "0"]
    for text in TEXTS:
        argv += ["--text", text]
    assert main(argv) == 0
    assert "done 2, skipped 0 (already written), failed 0" in capsys.readouterr().out
    for p in paths:
        array = np.load(out / (os.path.splitext(os.path.basename(p))[0] + ".npy"))
        np.testing.assert_allclose(array, api[p].numpy(), atol=1e-5, rtol=0)


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_cli_figures_precision_and_a_bad_file(image_dir, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes((image_dir / "scene00.png").read_bytes())
    (folder / "b.png").write_bytes(b"garbage")
    out = tmp_path / "out"
    argv = ["explain", "--images", str(folder / "*.png"), "--text", "tomato",
            "--out", str(out), "--save-maps", "--precision", "bf16", "--workers", "0"]
    assert main(argv) == 3  # an image failed: a distinct exit status
    captured = capsys.readouterr()
    assert "done 1, skipped 0 (already written), failed 1" in captured.out
    assert f"clip-surgery explain: skipped {folder / 'b.png'}: UnidentifiedImageError" in (
        captured.err)
    assert _outputs(out) == ["a.npy", "a.png"]
    maps = np.load(out / "a.npy")
    assert maps.shape == (1, 64, 64) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1
    # with --allow-failures the same run exits 0 (a.png is skipped, b.png fails again)
    assert main(argv + ["--allow-failures"]) == 0
    assert "done 0, skipped 1 (already written), failed 1" in capsys.readouterr().out


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


# ------------------------------------------------------------------ nothing lost, nothing silent


def _copy(paths, folder):
    folder.mkdir(exist_ok=True)
    for p in paths:
        (folder / os.path.basename(p)).write_bytes(open(p, "rb").read())
    return find_images(str(folder))


def _contents(folder):
    return {n: (folder / n).read_bytes() for n in sorted(os.listdir(folder))}


def test_out_dir_holding_the_inputs_is_refused_before_anything(clf, image_dir, tmp_path, capsys,
                                                               monkeypatch):
    same = tmp_path / "same"
    paths = _copy(find_images(str(image_dir))[:2], same)  # scene00.png, scene01.jpg
    before = _contents(same)
    for images in (str(same), str(same / "*.png"), [paths[1]], paths):
        for kwargs in ({}, {"save_maps": False}):  # figures only: not "already written" either
            with pytest.raises(ValueError, match=r"^out_dir: .*same' is the folder of the input "
                                                 r"image .*; explaining into it would write over"):
                explain_to_folder(images, clf, str(same), **kwargs)
    assert _contents(same) == before  # not a byte written, not a file added
    # an output that is an input under another name (a hard link) in another folder
    other = tmp_path / "other"
    other.mkdir()
    os.link(paths[0], other / "scene00.png")
    with pytest.raises(ValueError, match=r"^out_dir: .*other/scene00.png' would be written over "
                                         r"the input image .*same/scene00.png'"):
        explain_to_folder([paths[0]], clf, str(other))
    assert _contents(same) == before
    # the command line: one line, exit 2, before the model is even loaded
    import captum_clip_surgery.cli.explain as cli_explain

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cli_explain, "load_named_or_shipped", no_model)
    for images in (str(same), str(same / "*.png")):
        assert main(["explain", "--images", images, "--text", "tomato", "--out", str(same),
                     "--save-maps"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("clip-surgery explain: error: --out: ") and "is the folder of the " \
            "input image" in err and err.count("\n") == 1, err
    assert _contents(same) == before
    with pytest.raises(ValueError, match="^out_dir: "):
        explain_to_folder(paths, clf, str(same), figures=False)


def _record(out, stem):
    import json

    with open(out / ".clip-surgery" / "images" / (stem + ".json")) as fh:
        return json.load(fh)


def _stamps(out):
    return {n: os.stat(out / n).st_mtime_ns for n in _outputs(out)}


def test_resume_redoes_or_refuses_when_what_made_an_output_differs(clf, scenes_clip, image_dir,
                                                                   tmp_path, capsys):
    import json

    paths = _copy(find_images(str(image_dir))[:3], tmp_path / "in")
    out = tmp_path / "maps"
    first = explain_to_folder(paths, clf, str(out), texts=["tomato"], figures=False)
    assert (first.done, first.skipped) == (3, 0)
    record = _record(out, "scene00")
    assert record["status"] == "complete" and record["outputs"] == {
        "scene00.npy": os.path.getsize(out / "scene00.npy")}
    assert record["size"] == record["map_size"] == [64, 64]
    with open(out / ".clip-surgery" / "runs" / (record["run"] + ".json")) as fh:
        settings = json.load(fh)["settings"]
    assert settings["texts"] == ["tomato"] and settings["method"] == "surgery"
    assert settings["model"]["digest"] and settings["package"]
    stamps = _stamps(out)
    # the same settings: skipped, untouched
    assert explain_to_folder(paths, clf, str(out), texts=["tomato"], figures=False).skipped == 3
    assert _stamps(out) == stamps
    # other texts, another method, another model: refused, naming out_dir, nothing written
    other_model = CLIPZeroShotClassifier(scenes_clip[0], TEXTS, tokenizer=scenes_clip[2],
                                         templates=["a photo of a {}."])
    for kwargs, differs in [({"texts": ["grass"]}, "texts"), ({"method": "raw"}, "method"),
                            ({"explainer": other_model}, "templates")]:
        call = dict({"texts": ["tomato"], "explainer": clf}, **kwargs)
        with pytest.raises(ValueError, match=rf"^out_dir: .*maps' holds outputs this run would "
                                             rf"replace \(images: 3 made with other settings "
                                             rf"\(.*{differs}.* differ\).*pass overwrite=True"):
            explain_to_folder(paths, call.pop("explainer"), str(out), figures=False, **call)
    assert _stamps(out) == stamps
    # overwrite=True redoes them with the new settings
    redo = explain_to_folder(paths, clf, str(out), texts=["grass", "lemon"], figures=False,
                             overwrite=True)
    assert (redo.done, redo.skipped) == (3, 0)
    expected = dict(explain_images(paths, clf, texts=["grass", "lemon"]))
    for p in paths:
        np.testing.assert_allclose(np.load(out / (os.path.basename(p)[:-4] + ".npy")),
                                   expected[p].numpy(), atol=1e-5, rtol=0)
    # an image file that changed is done again, alone
    stamps = _stamps(out)
    Image.open(image_dir / "scene05.jpg").convert("RGB").resize((64, 64)).save(paths[0])
    again = explain_to_folder(paths, clf, str(out), texts=["grass", "lemon"], figures=False)
    assert (again.done, again.skipped) == (1, 2)
    (_, new), = explain_images([paths[0]], clf, texts=["grass", "lemon"])
    np.testing.assert_allclose(np.load(out / "scene00.npy"), new.numpy(), atol=1e-5, rtol=0)
    assert {n: s for n, s in _stamps(out).items() if n != "scene00.npy"} == {
        n: s for n, s in stamps.items() if n != "scene00.npy"}
    # an output changed since it was written, or a file this function did not write
    np.save(out / "scene01.npy", np.zeros(3, dtype=np.float32))
    (out / "scene02.png").write_bytes(b"my own drawing")
    with pytest.raises(ValueError, match=r"\(images: 1 changed since written, 1 not written "
                                         r"here; e\.g\. 'scene01.npy'\)") as info:
        explain_to_folder(paths, clf, str(out), texts=["grass", "lemon"])
    assert type(info.value).__name__ == "OutputsExist"
    assert (out / "scene02.png").read_bytes() == b"my own drawing"


@pytest.mark.slow
def test_cli_resume_refuses_other_settings_in_one_line(image_dir, tmp_path, capsys):
    paths = _copy(find_images(str(image_dir))[:3], tmp_path / "in")
    out = tmp_path / "maps"
    argv = ["explain", "--images", str(tmp_path / "in"), "--text", "grass", "--out", str(out),
            "--save-maps", "--no-figures", "--workers", "0"]
    assert main(argv) == 0
    assert "done 3, skipped 0" in capsys.readouterr().out
    stamps = _stamps(out)
    # the command line: one line naming --out and --overwrite, exit 2; then --overwrite
    argv[4] = "tomato"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("clip-surgery explain: error: --out: ") and "add --overwrite" in err
    assert "(images: 3 made with other settings (classifier_texts, texts differ)" in err
    assert err.count("\n") == 1 and _stamps(out) == stamps
    assert main(argv + ["--overwrite"]) == 0
    assert "done 3, skipped 0" in capsys.readouterr().out
    assert main(argv) == 0
    assert "done 0, skipped 3" in capsys.readouterr().out
    assert main(argv + ["--precision", "bf16"]) == 2  # another precision: refused too
    assert "(info, model differ)" in capsys.readouterr().err
    assert len(paths) == 3


def test_an_interrupted_write_is_never_recorded_as_complete(clf, image_dir, tmp_path, monkeypatch):
    from captum_clip_surgery.explain import folder

    paths = find_images(str(image_dir))[:3]
    out = tmp_path / "out"
    real = folder._save_figure
    calls = []

    def interrupted(path, *args):
        calls.append(path)
        if len(calls) == 2:  # Ctrl-C while the second figure is drawn, its maps written
            raise KeyboardInterrupt
        return real(path, *args)

    monkeypatch.setattr(folder, "_save_figure", interrupted)
    with pytest.raises(KeyboardInterrupt) as info:
        explain_to_folder(paths, clf, str(out), texts=["tomato"], batch_size=1)
    assert _outputs(out) == ["scene00.npy", "scene00.png", "scene01.npy"]
    assert _record(out, "scene00")["status"] == "complete"
    assert _record(out, "scene01")["status"] == "pending"  # its .npy is there, its .png not
    assert type(info.value).__name__ == "ExplainInterrupted" and info.value.summary.done == 1
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
    monkeypatch.setattr(folder, "_save_figure", real)
    resumed = explain_to_folder(paths, clf, str(out), texts=["tomato"])
    assert (resumed.done, resumed.skipped, resumed.failed) == (2, 1, 0)
    assert all(_record(out, s)["status"] == "complete" for s in ("scene00", "scene01", "scene02"))


def test_large_images_are_explained_and_drawn_at_a_bounded_size(clf, image_dir, tmp_path,
                                                                 monkeypatch):
    from captum_clip_surgery.explain import folder

    src = Image.open(image_dir / "scene00.png").convert("RGB")
    big = tmp_path / "big.png"
    src.resize((300, 200), Image.BICUBIC).save(big)
    # the image reduced by hand to the working size of 6000 pixels (s = sqrt(6000 / 60000))
    small = tmp_path / "small" / "big.png"
    small.parent.mkdir()
    Image.open(big).resize((94, 63), Image.BICUBIC).save(small)
    (_, maps), = explain_images([str(big)], clf, max_pixels=6000)
    (_, want), = explain_images([str(small)], clf)
    assert maps.shape == (3, 63, 94)
    torch.testing.assert_close(maps, want, atol=1e-6, rtol=0)
    # the folder writer says so: in the summary and in the image's record
    drawn = []
    real = folder.plot_text_grid

    def spy(image, maps, texts, **kwargs):
        drawn.append((image.size, tuple(next(iter(maps.values())).shape)))
        return real(image, maps, texts, **kwargs)

    monkeypatch.setattr(folder, "plot_text_grid", spy)
    out = tmp_path / "out"
    summary = explain_to_folder([str(big)], clf, str(out), texts=["tomato"], max_pixels=6000)
    assert (summary.done, summary.reduced) == (1, 1)
    assert "1 above the pixel limit written at a reduced size" in str(summary)
    record = _record(out, "big")
    assert record["size"] == [200, 300] and record["map_size"] == [63, 94]
    assert np.load(out / "big.npy").shape == (1, 63, 94)
    # figures draw at most FIGURE_MAX_SIDE pixels on a side, the maps resized with the image
    wide = tmp_path / "wide.png"
    src.resize((2000, 250), Image.BICUBIC).save(wide)
    drawn.clear()
    summary = explain_to_folder([str(wide)], clf, str(out), texts=["tomato"], save_maps=False)
    assert (summary.done, summary.reduced) == (1, 0)
    assert drawn == [((1024, 128), (1, 1, 128, 1024))]
    # the pixel limit from the command line (0: none)
    with pytest.raises(ValueError, match="^max_pixels: expected an int >= 1, got 0"):
        explain_images([str(big)], clf, max_pixels=0)


def test_a_failure_on_one_image_is_counted_and_the_run_goes_on(clf, image_dir, tmp_path,
                                                               monkeypatch, capsys):
    from captum_clip_surgery.explain import folder

    paths = find_images(str(image_dir))[:4]
    bad = (130, 100)  # scene02's size: its figure runs out of memory, as Captum's did at 12000²
    real_plot = folder.plot_text_grid

    def plot(image, maps, texts, **kwargs):
        if image.size == (bad[1], bad[0]):
            raise MemoryError("cannot allocate 11 GiB")
        return real_plot(image, maps, texts, **kwargs)

    monkeypatch.setattr(folder, "plot_text_grid", plot)
    out = tmp_path / "figs"
    summary = explain_to_folder(paths, clf, str(out), texts=["tomato"], batch_size=4,
                                on_error=lambda p, m: None)
    assert (summary.done, summary.failed) == (3, 1)
    assert summary.failures == [(paths[2], "MemoryError: cannot allocate 11 GiB")]
    # a batch whose forward fails is tried image by image: only the culprit fails
    monkeypatch.setattr(folder, "plot_text_grid", real_plot)
    real_maps = folder._batch_maps
    culprit = []

    def maps(classifier, name, method, images, texts):
        if images.shape[0] > 1 or (culprit and torch.equal(images[0], culprit[0])):
            raise RuntimeError("CUDA out of memory")
        return real_maps(classifier, name, method, images, texts)

    transform = folder._default_preprocess(clf)
    culprit.append(transform(Image.open(paths[1]).convert("RGB")))
    monkeypatch.setattr(folder, "_batch_maps", maps)
    out = tmp_path / "maps"
    summary = explain_to_folder(paths, clf, str(out), figures=False, batch_size=4,
                                on_error=lambda p, m: None)
    assert (summary.done, summary.failed) == (3, 1)
    assert summary.failures == [(paths[1], "RuntimeError: CUDA out of memory")]
    expected = dict(explain_images(paths, clf, batch_size=1))
    for p in paths[:1] + paths[2:]:
        np.testing.assert_allclose(np.load(out / (os.path.basename(p)[:-4] + ".npy")),
                                   expected[p].numpy(), atol=1e-5, rtol=0)


def test_a_directory_named_like_an_output_is_a_failed_image(clf, image_dir, tmp_path, capsys):
    paths = find_images(str(image_dir))[:3]
    out = tmp_path / "out"
    (out / "scene01.npy").mkdir(parents=True)
    seen = []
    summary = explain_to_folder(paths, clf, str(out), figures=False,
                                on_error=lambda p, m: seen.append((p, m)))
    assert (summary.done, summary.failed) == (2, 1)
    assert seen == [(paths[1], f"IsADirectoryError: {out / 'scene01.npy'} exists and is not a "
                               "file; remove or rename it to write this output")]
    assert os.path.isdir(out / "scene01.npy")
    out = tmp_path / "cli"
    (out / "scene01.npy").mkdir(parents=True)
    argv = ["explain", "--images", str(image_dir / "scene0[012].*"), "--text", "tomato",
            "--out", str(out), "--save-maps", "--no-figures", "--workers", "0"]
    assert main(argv) == 3
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "scene01.npy exists and is not a file" in captured.err


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_are_removed_and_only_ours(clf, image_dir, tmp_path):
    paths = find_images(str(image_dir))[:2]
    out = tmp_path / "out"
    records = out / ".clip-surgery" / "images"
    records.mkdir(parents=True)
    dead, alive = _dead_pid(), os.getppid()
    stale = [out / f".scene00.npy.{dead}.tmp", out / f".other.png.{dead}.tmp",
             records / f".scene00.json.{dead}.tmp"]
    kept = [out / f".scene01.npy.{alive}.tmp",  # a live process is writing it
            out / ".notes.tmp", out / f"scene00.npy.{dead}.tmp", out / f".scene00.txt.{dead}.tmp",
            out / f".scene00.npy.{dead}.tmp.bak", out / "mine.tmp"]
    for path in stale + kept:
        path.write_bytes(b"")
    summary = explain_to_folder(paths, clf, str(out), figures=False)
    assert summary.done == 2
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)


def test_cli_prints_file_names_escaped(image_dir, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "ok.png").write_bytes((image_dir / "scene00.png").read_bytes())
    name = "evil\x1b]0;pwned\x07\x1b[2J.png"
    (folder / name).write_bytes(b"not an image")
    out = tmp_path / "out\x1b[31m"
    code = main(["explain", "--images", str(folder), "--text", "tomato", "--out", str(out),
                 "--save-maps", "--no-figures", "--workers", "0"])
    captured = capsys.readouterr()
    for stream in (captured.out, captured.err):
        assert "\x1b" not in stream.replace("\x1b[A", "") and "\x07" not in stream
    assert "skipped " + str(folder) + "/evil\\x1b]0;pwned\\x07\\x1b[2J.png: " in captured.err
    assert "out\\x1b[31m: done 1" in captured.out
    assert code == 3
    from captum_clip_surgery.cli.common import printable

    assert printable("a\x1b[31mred\n.png") == "a\\x1b[31mred\\n.png"
    assert printable("caf\u00e9 \u2028 \udcff") == "caf\u00e9 \\u2028 \\xff"


#: A driver of the command line whose writes of maps are slow (``slow``) or hang half-way
#: (``hang``), so that a signal reliably lands in the middle of a run.
_DRIVER = r'''
import signal, sys, time
import numpy as np
# as in a terminal: a shell that starts the tests in the background (nohup, CI runners)
# leaves SIGINT ignored, and Python then never raises KeyboardInterrupt
signal.signal(signal.SIGINT, signal.default_int_handler)
mode = sys.argv[1]
real = np.save
def save(fh, array):
    if mode == "hang":
        fh.write(b"\x93NUMPY half-written")
        fh.flush()
        time.sleep(600)
    time.sleep(1.0)  # room for the test to interrupt, even on a loaded machine
    real(fh, array)
np.save = save
from captum_clip_surgery.cli import main
sys.exit(main(sys.argv[2:]))
'''


def _start(tmp_path, mode, argv):
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.Popen([sys.executable, str(driver), mode] + argv, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path)


def _wait_for(condition, proc, seconds=120.0):
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.slow
def test_ctrl_c_prints_one_line_and_exits_130_then_resumes(image_dir, tmp_path, capsys):
    import signal

    out = tmp_path / "out"
    argv = ["explain", "--images", str(image_dir), "--text", "tomato", "--out", str(out),
            "--save-maps", "--no-figures", "--workers", "0", "--batch-size", "1"]
    proc = _start(tmp_path, "slow", argv)
    _wait_for(lambda: out.is_dir() and any(n.endswith(".npy") for n in os.listdir(out)), proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    lines = [line for line in stderr.replace("\r", "\n").splitlines()
             if line.strip() and not line.startswith("explain:")]  # (the progress bar)
    assert len(lines) == 1, stderr
    written = len([n for n in _outputs(out) if n.endswith(".npy")])
    assert 1 <= written < 12
    assert lines[0] == (f"clip-surgery explain: interrupted after writing {written} image"
                        f"{'s' if written > 1 else ''} this run (every output written is "
                        "complete); run the same command again to resume")
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
    # the same command resumes: the written images are skipped, the others done
    assert main(argv) == 0
    assert f"done {12 - written}, skipped {written} (already written), failed 0" in (
        capsys.readouterr().out)


@pytest.mark.slow
def test_sigkill_leftovers_are_cleaned_and_the_image_redone(image_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["explain", "--images", str(image_dir), "--text", "tomato", "--out", str(out),
            "--save-maps", "--no-figures", "--workers", "0", "--batch-size", "1"]
    proc = _start(tmp_path, "hang", argv)
    temporaries = lambda: [n for n in os.listdir(out) if n.endswith(".tmp")] if out.is_dir() else []  # noqa: E731
    _wait_for(lambda: bool(temporaries()), proc)
    proc.kill()
    proc.communicate(timeout=60)
    left = temporaries()
    assert left == [f".scene00.npy.{proc.pid}.tmp"]  # what SIGKILL leaves behind
    record = out / ".clip-surgery" / "images" / "scene00.json"
    status = _record(out, "scene00")["status"] if record.exists() else None
    assert not (out / "scene00.npy").exists()
    assert main(argv) == 0
    assert "done 12, skipped 0 (already written), failed 0" in capsys.readouterr().out
    assert temporaries() == []
    assert status == "pending"  # the killed image was never claimed as complete
    for p in find_images(str(image_dir)):
        stem = os.path.splitext(os.path.basename(p))[0]
        assert np.load(out / (stem + ".npy")).shape[0] == 1
        assert _record(out, stem)["status"] == "complete"
