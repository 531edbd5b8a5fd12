r"""Our benchmark's predictions against the authors' own slide inference, pixel for pixel.

For each release whose segmentor can run here, the script exports the release's source
from a bare git directory (the ``fetch`` mirrors, or any clone: ``--sclip`` / ``--naclip``
/ ``--clearclip`` / ``--proxyclip``) into a temporary folder at run time, replaces the few
mmsegmentation / mmengine names the segmentor file imports with minimal stand-ins (a
``BaseSegmentor`` that is an ``nn.Module``, a ``PixelData`` that keeps its data, a registry
decorator that returns the class), and runs the release's own ``clip.load`` / segmentor
``predict`` — its CLIP with the method's attention, its positional-embedding resize, text
encoding with the 80 templates, ``forward_slide``, PAMR and ``postprocess_result`` — on a
tiny open_clip ViT built in code with a fixed seed (weights rounded to fp16, as the
release's ``clip.load`` stores them), saved as an OpenAI-layout state dict for the
release's ``clip.load``.

ProxyCLIP's proxy backbone comes from ``torch.hub.load('facebookresearch/dino:main',
'dino_vitb8')``: inside its case only, ``torch.hub.load`` returns a tiny seeded ViT built
from DINO's own ``vision_transformer.py`` (exported from ``--dino``, a git directory of
facebookresearch/dino), and our side reads the same weights in timm's DINO architecture
through the package's timm backbone view.

The same model, the same resized and normalised images
(:func:`~captum_clip_surgery.benchmark.inputs.rescale_image` /
:func:`~captum_clip_surgery.benchmark.inputs.normalize_image`, which is what the release's
data pipeline hands its segmentor) and the same class file go through
:class:`~captum_clip_surgery.benchmark.ProtocolSegmenter` under the preset, with the
release's windows, logit scale, thresholds and PAMR, and the preset's method options
(``proxyclip``: ``empty_rows="nan"``, the release's attention). The script prints, per
case, the number of pixels whose labels differ (out of all pixels), the largest difference
of the class probabilities where both are finite, and where the release's probabilities
are NaN (ProxyCLIP's attention over a window whose mean patch similarity exceeds
``1 / beta``), at how many pixels, whether ours are NaN at the same ones, and how many of
them differ::

    python benchmarks/release_slide_check.py \
        --sclip /work/.mirror/wangf3014+SCLIP/repo --naclip /work/.mirror/sinahmr+NACLIP/repo \
        --clearclip /work/.mirror/mc-lan+ClearCLIP/repo \
        --proxyclip /work/.mirror/mc-lan+ProxyCLIP/repo \
        --dino /work/.mirror/facebookresearch+dino/repo

Nothing of the releases is copied into this repository: their files are read from the git
directory when the script runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import types
import warnings
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Module names the releases' source defines (purged between releases).
_RELEASE_MODULES = ("clip", "pamr", "prompts", "clip_segmentor", "naclip", "open_clip",
                    "clearclip_segmentor", "BLIP", "gem", "proxyclip_segmentor", "myutils",
                    "segment_anything", "mae", "einops", "openpyxl", "vision_transformer",
                    "utils")

CLASS_LINES = [
    "sky, clouds",
    "grass",
    "dog, puppy, a dog",
    "cat",
    "person, person in shirt, person in jeans",
    "car",
]

#: (original height, original width) of the synthetic images.
SIZES = [(90, 140), (130, 85), (70, 70), (56, 200)]


def tiny_model() -> nn.Module:
    r"""A seeded open_clip ViT in OpenAI's layout (QuickGELU, 64-wide heads), native 64×64
    (a 4×4 grid of 16-pixel patches), its weights rounded to fp16 as ``clip.load`` keeps
    them."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=64,
        vision_cfg=open_clip.CLIPVisionCfg(layers=3, width=128, head_width=64, patch_size=16,
                                           image_size=64),
        text_cfg=open_clip.CLIPTextCfg(context_length=77, vocab_size=49408, width=64,
                                       heads=1, layers=2),
        quick_gelu=True,
    )
    with torch.no_grad():  # more structure than the initialisation's small values
        for name, p in model.named_parameters():
            if name.startswith("visual.") and p.ndim >= 1 and "ln" not in name:
                p.mul_(3.0)
            p.copy_(p.half().float())
    return model.eval()


def _stub_mm() -> None:
    r"""The mmsegmentation / mmengine names the segmentor files import."""

    class BaseSegmentor(nn.Module):
        def __init__(self, data_preprocessor: Any = None, **_: Any) -> None:
            super().__init__()
            self.data_preprocessor = data_preprocessor

    class PixelData:
        def __init__(self, **kwargs: Any) -> None:
            self.__dict__.update(kwargs)

    class Registry:
        def register_module(self, *_: Any, **__: Any) -> Any:
            return lambda cls: cls

    mods: Dict[str, types.ModuleType] = {}
    for name in ("mmseg", "mmseg.models", "mmseg.models.segmentors",
                 "mmseg.models.data_preprocessor", "mmseg.registry", "mmengine",
                 "mmengine.structures"):
        mods[name] = types.ModuleType(name)
    mods["mmseg.models.segmentors"].BaseSegmentor = BaseSegmentor  # type: ignore[attr-defined]
    mods["mmseg.models.data_preprocessor"].SegDataPreProcessor = (  # type: ignore[attr-defined]
        lambda **kwargs: None)
    mods["mmseg.registry"].MODELS = Registry()  # type: ignore[attr-defined]
    mods["mmengine.structures"].PixelData = PixelData  # type: ignore[attr-defined]
    sys.modules.update(mods)


class _Sample:
    r"""A ``SegDataSample``: ``metainfo`` in, ``set_data`` out."""

    def __init__(self, ori_shape: Tuple[int, int]) -> None:
        self.metainfo = {"ori_shape": ori_shape, "img_path": "synthetic.png"}
        self.out: Dict[str, Any] = {}

    def set_data(self, data: Dict[str, Any]) -> None:
        self.out.update(data)


@contextlib.contextmanager
def release_source(git_dir: str, paths: Sequence[str]) -> Iterator[str]:
    r"""``paths`` of the release's HEAD exported to a temporary folder, first on
    ``sys.path``."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "--git-dir", git_dir, "archive", "HEAD", *paths],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        saved = {name: mod for name, mod in sys.modules.items()
                 if name.split(".")[0] in _RELEASE_MODULES}
        for name in saved:
            del sys.modules[name]
        sys.path.insert(0, tmp)
        try:
            yield tmp
        finally:
            sys.path.remove(tmp)
            for name in list(sys.modules):
                if name.split(".")[0] in _RELEASE_MODULES:
                    del sys.modules[name]
            sys.modules.update(saved)  # the installed open_clip (or clip) again


def _images(short_side: int, sizes: Sequence[Tuple[int, int]] = SIZES) -> List[torch.Tensor]:
    from captum_clip_surgery.benchmark.inputs import normalize_image, rescale_image

    rng = np.random.default_rng(0)
    out = []
    for h, w in SIZES:  # smooth colour blobs: regions for the classes to compete over
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        bgr = np.stack([np.sin(6 * xx + c) * np.cos(5 * yy - 2 * c) for c in range(3)], -1)
        bgr = 127 + 100 * bgr + rng.normal(0, 10, bgr.shape)
        image = rescale_image(np.clip(bgr, 0, 255).astype(np.uint8), short_side)
        if (h, w) in sizes:
            out.append(normalize_image(image, (122.771, 116.746, 104.094),
                                       (68.501, 66.632, 70.323)))
    return out


def _ours(model: nn.Module, preset: str, changes: Dict[str, Any],
          images: Sequence[torch.Tensor], sizes: Sequence[Tuple[int, int]] = SIZES,
          class_lines: Sequence[str] = CLASS_LINES,
          options: Optional[Dict[str, Any]] = None) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    from captum_clip_surgery import CLIPZeroShotClassifier, build_method
    from captum_clip_surgery.benchmark import ProtocolSegmenter, get_preset
    from captum_clip_surgery.benchmark.datasets import parse_class_lines
    from captum_clip_surgery.benchmark.runner import protocol_templates
    from captum_clip_surgery.methods.registry import method_defaults

    p = get_preset(preset)
    # the preset's method options (proxyclip: the release's empty_rows="nan"), ours over them
    s = p.settings("custom").replace(**changes)
    s = s.with_method_options({s.method: options or {}})
    lines = parse_class_lines("\n".join(class_lines) + "\n", s.synonym_separator)
    queries = [q for line in lines for q in line]
    clf = CLIPZeroShotClassifier(model, queries, templates=protocol_templates(s.templates),
                                 truncate_text=False)
    method = build_method(s.method, clf, **s.options_for(s.method))
    mode = method_defaults(s.method, clf, torch.zeros(1, 3, 16, 16)).get("feature_surgery")
    seg = ProtocolSegmenter(method, lines, s, mode)
    return seg.predict(list(images), list(sizes), return_probs=True)


def _theirs(segmentor: nn.Module, images: Sequence[torch.Tensor],
            sizes: Sequence[Tuple[int, int]] = SIZES) -> List[Tuple[Any, Any]]:
    out = []
    with torch.no_grad():
        for image, size in zip(images, sizes):
            sample = _Sample(size)
            segmentor.predict(image[None], [sample])
            out.append((sample.out["pred_sem_seg"].data[0], sample.out["seg_logits"].data))
    return out


def _compare(name: str, ours: Sequence[Any], theirs: Sequence[Any],
             renormalised: bool) -> Tuple[int, int]:
    r"""Prints the case's line; returns the differing pixels and, of those, the ones where
    the release's probabilities are NaN (there its label is 0; the largest probability
    difference is taken where both sides' are finite)."""
    differ = total = nan = our_nan = one_side = nan_differ = 0
    prob = 0.0
    classes = set()
    for (lab, probs), (their_lab, their_probs) in zip(ours, theirs):
        their_probs = their_probs.float()
        bad = torch.isnan(their_probs).any(0)
        ours_bad = torch.isnan(probs).any(0)
        differ += int((lab != their_lab).sum())
        nan += int(bad.sum())
        our_nan += int(ours_bad.sum())
        one_side += int((bad ^ ours_bad).sum())
        nan_differ += int(((lab != their_lab) & bad).sum())
        total += lab.numel()
        if renormalised:  # NACLIP returns its class probabilities divided by their sum
            probs = probs / probs.sum(0, keepdim=True)
        finite = ~(bad | ours_bad)
        if bool(finite.any()):
            prob = max(prob, float((probs - their_probs).abs()[:, finite].max()))
        classes |= {int(v) for v in lab.unique()}
    print(f"{name:<58} {differ:>6} of {total} pixels differ; classes predicted "
          f"{len(classes)}; max |prob difference| {prob:.1e}"
          + (f"; the release's probabilities are NaN at {nan} pixels, ours "
             + (f"at the same {our_nan}" if not one_side else
                f"at {our_nan} ({one_side} NaN on one side only)")
             + f" ({nan_differ} of the differing ones)" if nan or our_nan else ""))
    return differ, nan_differ


def _state_file(model: nn.Module, folder: str) -> str:
    r"""The model as an OpenAI-layout state dict (open_clip keeps OpenAI's key names)."""
    state = {k: v.clone() for k, v in model.state_dict().items() if k != "attn_mask"}
    path = os.path.join(folder, "tiny_openai_layout.pt")
    torch.save(state, path)
    return path


# (label, release constructor arguments, our preset overrides): every path of the release
# scaled to the tiny model (a 64-pixel native input; 96-pixel windows are non-native)
SCLIP_CASES = [
    ("windows 96/48 (VOC20-like)", dict(slide_crop=96, slide_stride=48),
     dict(short_side=112, crop=96, stride=48)),
    ("windows 80/32, scale 65, prob_thd 0.1, area_thd 0.1 (VOC21)",
     dict(slide_crop=80, slide_stride=32, logit_scale=65, prob_thd=0.1, area_thd=0.1),
     dict(short_side=100, crop=80, stride=32, logit_scale=65, prob_thd=0.1, area_thd=0.1)),
    ("whole image (slide_crop=0), scale 50, prob_thd 0.1", dict(slide_crop=0, logit_scale=50,
                                                                prob_thd=0.1),
     dict(short_side=80, crop=0, logit_scale=50, prob_thd=0.1)),
]
NACLIP_CASES = [
    ("windows 96/48, PAMR 10 (8, 16)", dict(slide_crop=96, slide_stride=48),
     dict(short_side=112, crop=96, stride=48)),
    ("whole image, prob_thd 0.1, PAMR 10 (VOC21)", dict(slide_crop=0, prob_thd=0.1),
     dict(short_side=112, crop=0, prob_thd=0.1)),
    ("windows 80/32, no PAMR", dict(slide_crop=80, slide_stride=32, pamr_steps=0),
     dict(short_side=100, crop=80, stride=32, pamr_steps=0)),
]


CLEARCLIP_CASES = [
    ("windows 90/45, padded to x16 (VOC20-like)", dict(slide_crop=90, slide_stride=45),
     dict(short_side=100, crop=90, stride=45)),
    ("windows 96/48, prob_thd 0.5 (VOC21)", dict(slide_crop=96, slide_stride=48, prob_thd=0.5),
     dict(short_side=112, crop=96, stride=48, prob_thd=0.5)),
    ("whole image (slide_crop=0), prob_thd 0.15", dict(slide_crop=0, prob_thd=0.15),
     dict(short_side=88, crop=0, prob_thd=0.15)),
]


class _KeepsFloat32(torch.Tensor):
    r"""An input whose ``.half()`` stays float32: ClearCLIP's ``predict`` casts its input to
    fp16 for its fp16 model; this runs its code path in float32, as ours runs here."""

    def half(self, *args: Any, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        return self.as_subclass(torch.Tensor)


def _fork_create_model(state: Dict[str, torch.Tensor]) -> Any:
    r"""A stand-in for the ClearCLIP / ProxyCLIP open_clip fork's
    ``create_model(name, pretrained=..., precision=...)`` (which downloads): the fork's own
    ``CLIP`` class, configured as :func:`tiny_model`, with the tiny model's weights, in
    float32."""

    def create_model(name: str, pretrained: Any = None, precision: str = "fp32", **_: Any) -> Any:
        import open_clip  # the fork, first on sys.path

        net = open_clip.model.CLIP(
            embed_dim=64,
            vision_cfg=dict(layers=3, width=128, head_width=64, patch_size=16, image_size=64),
            text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=2),
            quick_gelu=True,
        )
        missing, unexpected = net.load_state_dict(state, strict=False)
        if [k for k in missing if k != "attn_mask"] or unexpected:
            raise RuntimeError(f"weights do not fit: missing {missing}, unexpected {unexpected}")
        return net.eval()

    return create_model


def _theirs_clearclip(segmentor: nn.Module, images: Sequence[torch.Tensor]) -> List[Any]:
    return _theirs(segmentor, [im.as_subclass(_KeepsFloat32) for im in images])


# ---------------------------------------------------------------------------------------
# ProxyCLIP: its segmentor (proxyclip_segmentor.py:49-53) takes its proxy backbone from
# torch.hub.load('facebookresearch/dino:main', 'dino_vitb8'), which downloads. The stand-in
# is DINO's own VisionTransformer (vision_transformer.py of the DINO repository, read from
# --dino at run time), built as hubconf.py's dino_vitb8 builds vit_base (patch 8, qkv bias,
# LayerNorm eps 1e-6, no head) but small; our side loads the same state dict into timm's
# DINO architecture (vit_base_patch8_224.dino, the same key names) through the package's
# timm backbone view.

#: The tiny DINO: patch 8 as dino_vitb8, 64-px native (an 8×8 grid, as the tiny CLIP's
#: 4×4 grid of 16-px patches), so the 112-px windows are non-native for both.
DINO_CFG = dict(img_size=64, patch_size=8, embed_dim=96, depth=3, num_heads=3)

#: ProxyCLIP's class files split synonyms at '; ' (proxyclip_segmentor.py:336).
PROXYCLIP_CLASS_LINES = [line.replace(", ", "; ") for line in CLASS_LINES]

# (label, release arguments, our preset overrides, images): the release pads every window
# symmetrically to a multiple of 56 (proxyclip_segmentor.py:220); its configs use 336/112
# windows (224/112 for Cityscapes), multiples of 56 and of CLIP's 16-px patch, here 112.
# Its whole-image path needs a square input (its DINO grid is (H/p, H/p), :149), so that
# case runs on the square image only.
PROXYCLIP_CASES = [
    ("windows 112/56, crop a multiple of 56 (VOC20-like)", dict(slide_crop=112, slide_stride=56),
     dict(short_side=140, crop=112, stride=56), SIZES),
    ("windows 96/48, padded to 112", dict(slide_crop=96, slide_stride=48),
     dict(short_side=112, crop=96, stride=48), SIZES),
    ("windows 84/28, padded to 112, prob_thd 0.2 (VOC21)",
     dict(slide_crop=84, slide_stride=28, prob_thd=0.2),
     dict(short_side=100, crop=84, stride=28, prob_thd=0.2), SIZES),
    ("whole image (slide_crop=0), square image only", dict(slide_crop=0),
     dict(short_side=112, crop=0), [(70, 70)]),
]


def tiny_dino(vits: types.ModuleType) -> nn.Module:
    r"""DINO's ``VisionTransformer`` (``vits``: DINO's ``vision_transformer`` module) as
    ``vit_base`` builds it, shrunk to :data:`DINO_CFG`, seeded, its weights spread out
    (DINO's initialisation is near zero) and rounded to fp16 (ProxyCLIP halves its
    backbone, proxyclip_segmentor.py:74), in eval mode."""
    from functools import partial

    torch.manual_seed(1)
    cfg = dict(DINO_CFG)
    model = vits.VisionTransformer(
        img_size=[cfg.pop("img_size")], num_classes=0, mlp_ratio=4, qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), **cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # LayerNorm weights around 1, biases around 0
                p.add_(0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.normal_(0.0, 0.05)
            else:
                p.normal_(0.0, 0.1 if p.ndim < 3 else 0.2)
            p.copy_(p.half().float())
    return model.eval()


def _timm_dino(state: Dict[str, torch.Tensor]) -> nn.Module:
    r"""The same network in timm's DINO architecture (``vit_base_patch8_224.dino`` shrunk to
    :data:`DINO_CFG`), the DINO state dict loaded strictly."""
    import timm

    model = timm.create_model("vit_base_patch8_224.dino", pretrained=False, num_classes=0,
                              **DINO_CFG)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _hub_dino(dino: nn.Module) -> Any:
    r"""A stand-in for ``torch.hub.load`` answering ProxyCLIP's one call
    (``'facebookresearch/dino:main', 'dino_vitb8'``) with a copy of the tiny DINO whose
    ``half()`` keeps float32: the segmentor halves its backbone and its input for an fp16
    run (:74, :116); this runs its code path in float32, as ours runs here."""
    import copy

    class KeepsFloat32(type(dino)):  # type: ignore[misc]
        def half(self) -> nn.Module:  # type: ignore[override]
            return self

    def load(repo: str, entry: str, *args: Any, **kwargs: Any) -> nn.Module:
        if (repo, entry) != ("facebookresearch/dino:main", "dino_vitb8"):
            raise RuntimeError(f"unexpected torch.hub.load({repo!r}, {entry!r})")
        model = copy.deepcopy(dino)
        model.__class__ = KeepsFloat32
        return model

    return load


def check_proxyclip(git_dir: str, dino_dir: str, model: nn.Module,
                    state: Dict[str, torch.Tensor], work: str) -> Tuple[int, int]:
    r"""ProxyCLIP's segmentor (its ``proxyclip_segmentor.py``, ``open_clip`` fork, prompts
    and ``myutils.py``) with the tiny CLIP and the tiny DINO, against ours under the preset
    (its method options: ``empty_rows="nan"``, the release's attention) with the same DINO
    weights as a timm backbone. Returns the differing pixels and, of
    those, the ones where the release's probabilities are NaN."""
    from unittest import mock

    with release_source(dino_dir, ["vision_transformer.py", "utils.py"]):
        import vision_transformer as vits  # DINO's

        dino = tiny_dino(vits)
    dino_state = {k: v.clone() for k, v in dino.state_dict().items()}
    names = os.path.join(work, "classes_proxyclip.txt")
    with open(names, "w") as f:
        f.write("\n".join(PROXYCLIP_CLASS_LINES) + "\n")
    files = ["open_clip", "prompts", "myutils.py", "proxyclip_segmentor.py"]
    print(f"ProxyCLIP @ {_head(git_dir)} (its proxyclip_segmentor.py, open_clip, prompts, "
          f"myutils.py; DINO @ {_head(dino_dir)} vision_transformer.py) vs preset 'proxyclip':")
    theirs_all = []
    with release_source(git_dir, files), mock.patch.object(torch.hub, "load", _hub_dino(dino)):
        # imported by the segmentor, used only by its other backbones (SAM, MAE) and by
        # myutils' spreadsheet writer: unused here
        for name in ("segment_anything", "mae", "mae.models_vit", "mae.pos_embed", "einops",
                     "openpyxl"):
            sys.modules[name] = types.ModuleType(name)
        sys.modules["segment_anything"].sam_model_registry = None  # type: ignore[attr-defined]
        sys.modules["mae"].models_vit = sys.modules["mae.models_vit"]  # type: ignore[attr-defined]
        sys.modules["mae.pos_embed"].interpolate_pos_embed = None  # type: ignore[attr-defined]
        sys.modules["einops"].rearrange = None  # type: ignore[attr-defined]
        import open_clip  # the fork

        open_clip.create_model = _fork_create_model(state)
        from proxyclip_segmentor import ProxyCLIPSegmentation

        for _, theirs_kw, ours_kw, sizes in PROXYCLIP_CASES:
            images = _images(ours_kw["short_side"], sizes)
            segmentor = ProxyCLIPSegmentation(clip_type="openai", model_type="ViT-B/16",
                                              vfm_model="dino", name_path=names, device="cpu",
                                              **theirs_kw)
            wrapped = [im.as_subclass(_KeepsFloat32) for im in images]
            theirs_all.append((images, _theirs(segmentor, wrapped, sizes)))
    backbone = _timm_dino(dino_state)
    differ = nan = 0
    for (label, _, ours_kw, sizes), (images, theirs) in zip(PROXYCLIP_CASES, theirs_all):
        ours = _ours(model, "proxyclip", ours_kw, images, sizes, PROXYCLIP_CLASS_LINES,
                     dict(backbone=backbone))
        d, n = _compare(f"  {label}", ours, theirs, False)
        differ, nan = differ + d, nan + n
    return differ, nan


def _head(git_dir: str) -> str:
    return subprocess.run(["git", "--git-dir", git_dir, "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sclip", default="/work/.mirror/wangf3014+SCLIP/repo",
                        help="bare git dir (or clone) of wangf3014/SCLIP")
    parser.add_argument("--naclip", default="/work/.mirror/sinahmr+NACLIP/repo",
                        help="bare git dir (or clone) of sinahmr/NACLIP")
    parser.add_argument("--clearclip", default="/work/.mirror/mc-lan+ClearCLIP/repo",
                        help="bare git dir (or clone) of mc-lan/ClearCLIP")
    parser.add_argument("--proxyclip", default="/work/.mirror/mc-lan+ProxyCLIP/repo",
                        help="bare git dir (or clone) of mc-lan/ProxyCLIP")
    parser.add_argument("--dino", default="/work/.mirror/facebookresearch+dino/repo",
                        help="bare git dir (or clone) of facebookresearch/dino (ProxyCLIP's "
                             "proxy backbone)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # the releases' deprecation warnings
    torch.set_num_threads(2)
    _stub_mm()
    model = tiny_model()
    state = {k: v.clone() for k, v in model.state_dict().items() if k != "attn_mask"}
    total = 0
    with tempfile.TemporaryDirectory() as work:
        weights = _state_file(model, work)
        names = os.path.join(work, "classes.txt")
        with open(names, "w") as f:
            f.write("\n".join(CLASS_LINES) + "\n")
        releases = (
            # release, git dir, files, segmentor module, class, fixed arguments, preset, cases
            ("SCLIP", args.sclip, ["clip", "pamr.py", "prompts"], "clip_segmentor",
             "CLIPForSegmentation", dict(clip_path=weights), "sclip", SCLIP_CASES),
            ("NACLIP", args.naclip, ["clip", "pamr.py", "prompts"], "naclip", "NACLIP",
             dict(clip_path=weights), "naclip", NACLIP_CASES),
            # the paper's method, not base_config.py's 'vanilla' (see the preset)
            ("ClearCLIP", args.clearclip, ["open_clip", "prompts"], "clearclip_segmentor",
             "ClearCLIPSegmentation", dict(clip_type="CLIP", vit_type="ViT-B/16",
                                           model_type="ClearCLIP", ignore_residual=True),
             "clearclip", CLEARCLIP_CASES),
        )
        for release, git_dir, files, module, cls, fixed, preset, cases in releases:
            head = _head(git_dir)
            print(f"{release} @ {head} (its {module}.py, {', '.join(files)}) vs preset {preset!r}:")
            theirs_all = []
            with release_source(git_dir, files + [module + ".py"]):
                if release == "ClearCLIP":  # the segmentor imports BLIP and GEM: unused here
                    for name in ("BLIP", "BLIP.models", "BLIP.models.blip_retrieval", "gem"):
                        sys.modules[name] = types.ModuleType(name)
                    sys.modules["BLIP.models.blip_retrieval"].blip_retrieval = None  # type: ignore[attr-defined]
                    import open_clip  # the fork

                    open_clip.create_model = _fork_create_model(state)
                segmentor_cls = getattr(__import__(module), cls)
                for _, theirs_kw, ours_kw in cases:
                    images = _images(ours_kw["short_side"])
                    segmentor = segmentor_cls(name_path=names, device="cpu", **fixed,
                                              **theirs_kw)
                    run = _theirs_clearclip if release == "ClearCLIP" else _theirs
                    theirs_all.append((images, run(segmentor, images)))
            for (label, _, ours_kw), (images, theirs) in zip(cases, theirs_all):
                ours = _ours(model, preset, ours_kw, images)
                differ, _ = _compare(f"  {label}", ours, theirs, release == "NACLIP")
                total += differ
        differ, nan = check_proxyclip(args.proxyclip, args.dino, model, state, work)
        total += differ
    print(f"differing pixels in all: {total}"
          + (f" ({nan} where the release's probabilities are NaN)" if nan else ""))


if __name__ == "__main__":
    main()
