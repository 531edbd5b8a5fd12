r"""The two recipes of ``docs/architecture.md``, exercised: a method and an adapter
written outside the package (``tests/toy_plugin.py``, public API only) join
``compare``, ``evaluate``, folder explain and the command line through the public
registration functions, and through entry points of an installed distribution."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from captum_clip_surgery import (
    CLIPZeroShotClassifier,
    compare,
    explain_images,
    method_names,
    method_title,
    plot_comparison,
    supported_methods,
)
from captum_clip_surgery.adapters import get_adapter, load_clip, registered_adapters
from captum_clip_surgery.cli import main
from captum_clip_surgery.evaluation import ScenesSegmentation, evaluate
from tests import toy_plugin
from tests.models import tiny_vit

TEXTS = ["tomato", "grass", "sky"]


@pytest.fixture(scope="module")
def toy() -> toy_plugin.ToyCLIP:
    return toy_plugin.ToyCLIP(seed=0).eval()


def test_toy_adapter_is_found_and_reproduces_its_model(toy, snapshot):
    snap = snapshot(toy)
    assert type(get_adapter(toy)) is toy_plugin.ToyAdapter
    assert registered_adapters()[0] is toy_plugin.ToyAdapter  # registered adapters first
    clf = CLIPZeroShotClassifier(toy, TEXTS, templates=["{}"])
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        image = F.normalize(toy.encode_image(images), dim=-1)
        text = F.normalize(toy.encode_text(toy_plugin.toy_tokenizer(TEXTS)), dim=-1)
        expected = toy.logit_scale.exp() * image @ text.t()
        torch.testing.assert_close(clf(images), expected, atol=1e-5, rtol=1e-5)
    snap.assert_unchanged()


def _toy_kk_reference(model, clf, images, target):
    r"""The toy method written out: blocks as the model runs them, then the last block
    with ``softmax(k kᵀ/√d)`` attention, residual and MLP kept; norm and projection per
    patch; cosine with the target text; min-max; bilinear to the input; min-max again
    (``compare``'s footing)."""
    visual = model.visual
    with torch.no_grad():
        x = visual.conv1(images).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.expand(x.shape[0], 1, -1)
        x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding)
        blocks = visual.transformer.resblocks
        for block in blocks[:-1]:
            x = block(x)
        last = blocks[-1]
        heads = last.attn.num_heads
        y = last.ln_1(x)
        _, k, v = F.linear(y, last.attn.in_proj_weight, last.attn.in_proj_bias).chunk(3, dim=-1)
        b, n, c = k.shape
        k = k.reshape(b, n, heads, c // heads).transpose(1, 2)
        v = v.reshape(b, n, heads, c // heads).transpose(1, 2)
        probs = torch.softmax(k @ k.transpose(-2, -1) / (c // heads) ** 0.5, dim=-1)
        o = (probs @ v).transpose(1, 2).reshape(b, n, c)
        x = x + last.attn.out_proj(o)
        x = x + last.mlp(last.ln_2(x))
        feats = F.normalize(visual.ln_post(x[:, 1:]) @ visual.proj, dim=-1)
        sims = feats @ clf.text_features[target].t()
        lo, hi = sims.amin(1, keepdim=True), sims.amax(1, keepdim=True)
        grid = ((sims - lo) / (hi - lo)).reshape(b, 1, 4, 4)
        up = F.interpolate(grid, size=images.shape[-2:], mode="bilinear", align_corners=False)
        lo, hi = up.amin(dim=(2, 3), keepdim=True), up.amax(dim=(2, 3), keepdim=True)
        return (up - lo) / (hi - lo)


@pytest.mark.slow
def test_toy_method_equals_its_formula_through_compare(snapshot):
    model = tiny_vit()
    snap = snapshot(model)
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=["{}"])
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    maps = compare(clf, images, target=1, methods=["surgery", "toy_kk"])
    torch.testing.assert_close(maps["toy_kk"], _toy_kk_reference(model, clf, images, 1),
                               atol=1e-5, rtol=1e-5)
    assert "toy_kk" in supported_methods(clf) and method_title("toy_kk") == "Toy k-k"
    fig = plot_comparison(images[0], maps)
    assert [ax.get_title() for ax in fig.axes[1:]] == ["CLIP Surgery", "Toy k-k"]
    snap.assert_unchanged()


def _image_folder(tmp_path, n=3):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        pixels = rng.integers(0, 255, size=(40 + 8 * i, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    return folder


@pytest.mark.slow
def test_toy_method_and_adapter_through_evaluate_folder_explain_and_the_cli(
    toy, tmp_path, capsys
):
    data = ScenesSegmentation(size=2)
    clf = CLIPZeroShotClassifier(toy, list(data.class_names))
    result = evaluate(["surgery", "toy_kk"], data, clf, faithfulness=False, progress=False)
    assert result.methods == ["surgery", "toy_kk"]
    assert "| Toy k-k |" in result.to_markdown()

    # the command line loads the toy family by name and runs the toy method
    folder = _image_folder(tmp_path)
    out = tmp_path / "maps"
    argv = ["explain", "--model", "toy:0", "--images", str(folder), "--text", "tomato",
            "--text", "sky", "--method", "toy_kk", "--save-maps", "--no-figures",
            "--workers", "0", "--out", str(out)]
    assert main(argv) == 0
    model, preprocess, tokenizer = load_clip("toy:0")
    api_clf = CLIPZeroShotClassifier(model, ["tomato", "sky"], tokenizer=tokenizer)
    for path, maps in explain_images(str(folder), api_clf, method="toy_kk", preprocess=preprocess):
        saved = np.load(out / (os.path.splitext(os.path.basename(path))[0] + ".npy"))
        np.testing.assert_array_equal(saved, maps.numpy())
    assert main(["evaluate", "--model", "toy:0", "--methods", "surgery,toy_kk", "--limit", "2",
                 "--no-faithfulness", "--out", str(tmp_path / "ev")]) == 0
    assert "| Toy k-k |" in (tmp_path / "ev" / "results.md").read_text()
    capsys.readouterr()


def test_help_lists_registered_methods(capsys):
    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    assert "toy_kk" in capsys.readouterr().out.replace("\n", " ")


_ENTRY_POINT_METHOD = textwrap.dedent('''
    from captum_clip_surgery import LastBlockAttribution
    from captum_clip_surgery.adapters import attention

    class EPAttribution(LastBlockAttribution):
        method_name = "entry-point q-q"
        method_title = "Entry-point q-q"

        def last_block_tokens(self, block, x, q, k, v, grid):
            return block.branch(attention(q, q, v, block.scale))
''')


def test_a_method_of_an_installed_distribution_joins_by_entry_point(tmp_path, monkeypatch):
    from captum_clip_surgery.methods import registry

    (tmp_path / "ep_toy_method.py").write_text(_ENTRY_POINT_METHOD)
    info = tmp_path / "ep_toy-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-toy\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[captum_clip_surgery.methods]\nep_qq = ep_toy_method:EPAttribution\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry._forget_entry_points()
    try:
        assert "ep_qq" in method_names()
        assert "ep_toy_method" not in sys.modules  # listed without being imported
        clf = CLIPZeroShotClassifier(tiny_vit(), TEXTS, templates=["{}"])
        images = torch.randn(1, 3, 32, 32)
        maps = compare(clf, images, target=0, methods=["ep_qq", "clearclip"])
        # the plug-in computes ClearCLIP's q-q attention: the same map
        torch.testing.assert_close(maps["ep_qq"], maps["clearclip"], atol=0, rtol=0)
        assert method_title("ep_qq") == "Entry-point q-q"
    finally:
        monkeypatch.undo()
        registry._forget_entry_points()
        sys.modules.pop("ep_toy_method", None)
    assert "ep_qq" not in method_names()


def test_registry_entry_points_of_a_broken_plug_in_name_it(tmp_path, monkeypatch):
    from captum_clip_surgery.methods import registry

    info = tmp_path / "broken-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[captum_clip_surgery.methods]\nbroken = no_such_module_here:Thing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry._forget_entry_points()
    try:
        clf = CLIPZeroShotClassifier(tiny_vit(), TEXTS, templates=["{}"])
        with pytest.raises(ImportError, match="entry point 'broken'.*cannot be loaded"):
            compare(clf, torch.randn(1, 3, 32, 32), target=0, methods=["broken"])
    finally:
        monkeypatch.undo()
        registry._forget_entry_points()


@pytest.mark.slow
def test_installed_distribution_plugs_in_method_and_adapter_without_imports(tmp_path):
    r"""A real ``pip install`` of a throwaway distribution holding ``toy_plugin.py`` with
    both entry points; a fresh ``clip-surgery`` process finds the adapter (``--model
    toy:0``) and the method (``--method toy_kk``) without the test importing anything."""
    source = tmp_path / "toydist"
    source.mkdir()
    shutil.copy(toy_plugin.__file__, source / "toy_plugin.py")
    (source / "pyproject.toml").write_text(textwrap.dedent('''
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "captum-clip-surgery-toy-plugin"
        version = "0.1"

        [tool.setuptools]
        py-modules = ["toy_plugin"]

        [project.entry-points."captum_clip_surgery.methods"]
        toy_kk = "toy_plugin:ToyKKAttribution"

        [project.entry-points."captum_clip_surgery.adapters"]
        toy = "toy_plugin:ToyAdapter"
    '''))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(site), str(source)],
                   check=True, capture_output=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    folder = _image_folder(tmp_path, n=2)
    run = subprocess.run(
        [sys.executable, "-m", "captum_clip_surgery", "explain", "--model", "toy:0", "--images",
         str(folder), "--text", "tomato", "--method", "toy_kk", "--save-maps", "--no-figures",
         "--workers", "0", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, cwd=str(tmp_path),
    )
    assert run.returncode == 0, run.stderr
    assert sorted(os.listdir(tmp_path / "out")) == [".clip-surgery", "img0.npy", "img1.npy"]
    help_text = subprocess.run([sys.executable, "-m", "captum_clip_surgery", "explain", "--help"],
                               capture_output=True, text=True, env=env, check=True).stdout
    assert "toy_kk" in help_text


def test_toy_plugin_is_one_file_of_public_api_only():
    r"""The recipe's claim: the plug-in imports nothing private of the package."""
    source = open(toy_plugin.__file__, encoding="utf-8").read()
    assert "captum_clip_surgery._" not in source and "import _" not in source
