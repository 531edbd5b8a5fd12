r"""The web explorer's logic without a browser: the page's inputs are parsed and checked
with one-line messages naming the field, the maps offered for download are bit for bit
what ``clip-surgery explain --images ... --save-maps`` writes, the scores are the model's
probabilities, segmentation and point prompts follow the documented protocol (SAM called
once per image), the model is left unchanged, and the gallery holds held-out scenes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from captum_clip_surgery import CLIPZeroShotClassifier, build_method, segment, text_to_points
from captum_clip_surgery.adapters.loading import square_preprocess
from captum_clip_surgery.cli import main
from captum_clip_surgery.cli.common import square_transform
from captum_clip_surgery.explain.folder import explain_images
from captum_clip_surgery.scenes import ScenesWorld
from captum_clip_surgery.scenes.world import HELD_OUT_START
from captum_clip_surgery.web.explorer import (
    MAX_TEXTS,
    Explorer,
    InputError,
    check_methods,
    pamr_dilations,
    parse_texts,
    read_image,
    scene_gallery,
)
from captum_clip_surgery.web.figures import plot_explanation
from captum_clip_surgery.web.ui import message_of
from tests.models import tiny_resnet, tiny_vit


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    r"""A held-out scene, resized to a non-square size and saved as JPEG."""
    folder = tmp_path_factory.mktemp("web")
    image = ScenesWorld(seed=0).sample(HELD_OUT_START + 7)["image"].resize((120, 80))
    path = folder / "photo.jpg"
    image.save(path)
    return str(path)


@pytest.fixture(scope="module")
def explorer(scenes_clip):
    model, _, tokenizer = scenes_clip
    return Explorer(model, tokenizer, name="scenes")


@pytest.mark.parametrize("typed, texts", [
    ("dog, grass", ["dog", "grass"]),
    (" dog ,, grass ,dog", ["dog", "grass"]),
    ("a dog, lying\ngrass\n\n", ["a dog, lying", "grass"]),
    ("one text", ["one text"]),
    ("dog+grass, sky", ["dog+grass", "sky"]),
])
def test_texts_are_split_by_lines_else_commas(typed, texts):
    assert parse_texts(typed) == texts


@pytest.mark.parametrize("typed, words", [
    ("", "type at least one text"),
    (" , \n ,", "type at least one text"),
    (None, "type at least one text"),
    (3, "expected text, got int"),
    (",".join(str(i) for i in range(MAX_TEXTS + 1)), f"at most {MAX_TEXTS} texts"),
])
def test_bad_texts_name_the_field(typed, words):
    with pytest.raises(InputError, match=words) as info:
        parse_texts(typed)
    assert str(info.value).startswith("texts: ") and "\n" not in str(info.value)


def test_methods_are_checked_against_the_model():
    supported = ("surgery", "raw", "gradcam")
    assert check_methods(["gradcam", "surgery", "gradcam"], supported) == ["gradcam", "surgery"]
    assert check_methods("raw", supported) == ["raw"]
    with pytest.raises(InputError, match="methods: pick at least one method"):
        check_methods([], supported)
    with pytest.raises(InputError, match="methods: unknown method 'nope'"):
        check_methods(["nope"], supported)
    with pytest.raises(InputError, match="'chefer' is not defined for this model"):
        check_methods(["chefer"], supported)


def test_unsupported_methods_are_not_offered_and_are_refused():
    explorer = Explorer(tiny_resnet())
    assert "chefer" not in explorer.methods and "surgery" in explorer.methods
    assert explorer.default_methods == ["surgery", "raw"]
    with pytest.raises(InputError, match="'chefer' is not defined for this model's image tower"):
        explorer.explain("unused.png", "dog", ["chefer"])


def test_unreadable_images_are_one_line_messages(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(InputError, match=r"^image: cannot read broken.png as an image"):
        read_image(str(broken))
    with pytest.raises(InputError, match="image: file not found: gone.png"):
        read_image(str(tmp_path / "gone.png"))
    with pytest.raises(InputError, match="upload an image or pick a scene"):
        read_image(None)
    image = Image.new("L", (5, 3), 7)
    image.save(tmp_path / "grey.png")
    assert read_image(str(tmp_path / "grey.png")).mode == "RGB"


def test_messages_shown_in_the_page_are_one_line():
    assert message_of(ValueError("texts: none\nmore")) == "texts: none"
    line = message_of(RuntimeError("boom\ntraceback"))
    assert line.startswith("internal error (RuntimeError): boom") and "\n" not in line


@pytest.mark.slow
def test_maps_and_scores_are_the_api_s_for_the_cli_s_transform(explorer, photo, snapshot):
    guard = snapshot(explorer.model)
    steps = []
    result = explorer.explain(photo, "lemon, grass", ["surgery", "raw"],
                              progress=lambda f, desc="": steps.append(f))
    assert steps == [0.0, 0.5, 1.0]
    texts = ["lemon", "grass"]
    clf = CLIPZeroShotClassifier(explorer.model, texts, tokenizer=explorer.tokenizer)
    transform = square_transform(explorer.model, None)  # clip-surgery explain's
    for method in ("surgery", "raw"):
        (path, maps), = explain_images([photo], clf, texts, method, preprocess=transform)
        assert result.maps[method].dtype == np.float32
        assert result.maps[method].shape == (2, 80, 120)
        np.testing.assert_array_equal(result.maps[method], maps.numpy())
    # the score is the unmodified model's softmax over the texts
    with torch.no_grad():
        expected = torch.softmax(clf(transform(Image.open(photo).convert("RGB"))[None]), -1)
    np.testing.assert_allclose(result.scores, expected[0].numpy(), rtol=1e-5, atol=1e-6)
    guard.assert_unchanged()


@pytest.mark.slow
def test_downloaded_maps_are_what_explain_save_maps_writes(explorer, photo, tmp_path):
    result = explorer.explain(photo, "lemon, grass", ["surgery", "gradcam"])
    files = result.save(str(tmp_path / "page"))
    assert [os.path.basename(f) for f in files] == [
        "photo.surgery.npy", "photo.gradcam.npy", "photo.png"]
    assert Image.open(files[-1]).size[0] > 300
    for method in ("surgery", "gradcam"):
        out = tmp_path / f"cli-{method}"
        assert main(["explain", "--images", photo, "--text", "lemon", "--text", "grass",
                     "--method", method, "--save-maps", "--no-figures", "--workers", "0",
                     "--out", str(out)]) == 0
        written = np.load(out / "photo.npy")
        downloaded = np.load(tmp_path / "page" / f"photo.{method}.npy")
        assert downloaded.dtype == np.float32 and downloaded.shape == (2, 80, 120)
        np.testing.assert_array_equal(downloaded, written)


@pytest.mark.slow
def test_segmentation_follows_the_benchmark_protocol(explorer, photo):
    texts = ["lemon", "grass", "sky"]
    image = Image.open(photo).convert("RGB")
    size = int(explorer.adapter.input_size()[0])
    mean, std = explorer.adapter.image_mean, explorer.adapter.image_std
    explainer = build_method("surgery", CLIPZeroShotClassifier(explorer.model, texts,
                                                               tokenizer=explorer.tokenizer))
    plain = explorer.segment(photo, ", ".join(texts), "surgery")
    expected = segment(explainer, square_preprocess(size, mean, std)(image)[None],
                       output_size=(80, 120))[0].numpy()
    assert plain.labels.shape == (80, 120)
    np.testing.assert_array_equal(plain.labels, expected)
    both = explorer.segment(photo, texts, "surgery", pamr=True, sliding_window=True)
    expected = segment(explainer, square_preprocess(144, mean, std)(image)[None],
                       output_size=(80, 120), sliding_window=(96, 48), pamr=True,
                       pamr_dilations=(2, 3))[0].numpy()
    np.testing.assert_array_equal(both.labels, expected)
    assert pamr_dilations(80, 120) == (2, 3) and pamr_dilations(96, 96) == (2, 4)
    assert pamr_dilations(10, 10) == (1, 1) and pamr_dilations(400, 800) == (8, 16)
    with pytest.raises(InputError, match="'gradcam' gives no token maps"):
        explorer.segment(photo, texts, "gradcam")


class FakeSAM:
    r"""A stand-in for ``SamPredictor``: records its calls, answers a mask per point set."""

    def __init__(self) -> None:
        self.images = []
        self.calls = 0

    def set_image(self, image):
        self.images.append(image.copy())
        self.original_size = image.shape[:2]
        self.is_image_set = True

    def predict(self, point_coords, point_labels, multimask_output=True):
        self.calls += 1
        h, w = self.original_size
        masks = np.zeros((3, h, w), dtype=bool)
        x, y = point_coords[0].astype(int)
        masks[1, : y + 1, : x + 1] = True
        return masks, np.array([0.1, 0.9, 0.2]), None


@pytest.mark.slow
def test_points_and_sam_masks(scenes_clip, photo):
    model, _, tokenizer = scenes_clip
    sam = FakeSAM()
    explorer = Explorer(model, tokenizer, sam_predictor=sam)
    result = explorer.points(photo, "lemon, lemon+grass", "surgery")
    image = Image.open(photo).convert("RGB")
    explainer = build_method("surgery", CLIPZeroShotClassifier(model, ["lemon", "grass"],
                                                               tokenizer=tokenizer))
    size = int(explorer.adapter.input_size()[0])
    images = square_preprocess(size, explorer.adapter.image_mean,
                               explorer.adapter.image_std)(image)[None]
    expected = text_to_points(explainer, images, ["lemon", "lemon+grass"],
                              image_size=(80, 120))[0]
    assert [p.text for p in result.prompts] == ["lemon", "lemon+grass"]
    for got, want in zip(result.prompts, expected):
        torch.testing.assert_close(got.points, want.points)
        assert torch.equal(got.labels, want.labels)
    assert len(sam.images) == 1 and np.array_equal(sam.images[0], np.asarray(image))
    assert sam.calls == 2 and len(result.masks) == 2
    x, y = result.prompts[0].points[0].int().tolist()
    assert result.masks[0].shape == (80, 120) and result.masks[0][: y + 1, : x + 1].all()
    assert result.masks[0].sum() == (y + 1) * (x + 1)
    fig = result.figure()
    assert len(fig.axes) == 2
    with pytest.raises(InputError, match="texts: a combined text"):
        explorer.points(photo, "lemon+", "surgery")


def test_figure_has_one_row_per_text_and_a_colour_bar():
    maps = {"surgery": np.random.rand(2, 6, 8).astype(np.float32),
            "raw": np.zeros((2, 6, 8), np.float32)}
    image = np.zeros((6, 8, 3), np.uint8)
    fig = plot_explanation(image, maps, ["a", "b"], [0.25, 0.75])
    assert len(fig.axes) == 2 * 3 + 1  # the images and maps, and the colour bar
    assert fig.axes[0].get_title() == "a\np = 0.250"
    with pytest.raises(ValueError, match=r"maps\['surgery'\]: expected \[3, H, W\]"):
        plot_explanation(image, maps, ["a", "b", "c"])


def test_tiny_model_explains_every_token_method_once(tmp_path, one_thread):
    model = tiny_vit()
    path = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)).save(path)
    explorer = Explorer(model)
    result = explorer.explain(str(path), ["a dog", "a cat"], ["surgery", "maskclip"])
    assert set(result.maps) == {"surgery", "maskclip"}
    assert all(m.shape == (2, 40, 50) and m.min() >= 0 and m.max() <= 1
               for m in result.maps.values())
    assert abs(float(result.scores.sum()) - 1.0) < 1e-5
    again = explorer.explain(str(path), "a dog, a cat", ["surgery"])  # cached classifier
    np.testing.assert_array_equal(again.maps["surgery"], result.maps["surgery"])


def test_gallery_holds_held_out_scenes_from_the_default_one(tmp_path):
    scenes = scene_gallery(str(tmp_path), count=3)
    world = ScenesWorld(seed=0)
    assert [s.index for s in scenes] == [world.default_scene() + k for k in range(3)]
    assert all(s.index >= HELD_OUT_START for s in scenes)
    first = world.sample(scenes[0].index)
    assert scenes[0].texts == first["objects"] + [first["background"]]
    assert np.array_equal(np.asarray(Image.open(scenes[0].path)), np.asarray(first["image"]))
