r"""The largest difference of each 2024–25 method to its plain reference, on the tests' cases.

The tests compare SC-CLIP, ResCLIP, ProxyCLIP, CASS, CorrCLIP, LPOSS and LPOSS+ with independent plain
implementations written from the releases (``tests/reference.py``,
``tests/reference_backbones.py``, and the plain LPOSS pipeline of
``tests/apps/test_label_propagation.py``), each at a native and a non-native non-square
size, on the tests' tiny models (``tests/models.py``, ``tests/adapters/backbones.py``:
random weights, no download). This script runs the same cases and prints, per case, the
largest absolute difference of the outputs (token features for the methods, score maps for
LPOSS / LPOSS+) and how many of the hard decisions (METHODS-2025 §9: SC-CLIP's anomaly
tokens, ResCLIP's first-pass patch labels, ProxyCLIP's kept attention entries, CASS's head
matching, LPOSS's kNN sets) differ from the reference's. ``max |Δ|`` is over every output;
``max |Δ| where decisions agree`` leaves out the images (SC-CLIP, ResCLIP), rows (ProxyCLIP)
whose decisions differ, as the tests do (CASS is compared under its own matching).

Run from the repository root: ``PYTHONPATH=. python benchmarks/reference_differences.py``
(one thread; about a minute).
"""

from __future__ import annotations

from typing import Callable, List, Tuple

import torch
import torch.nn.functional as F

from captum_clip_surgery import (
    CASSAttribution,
    CLIPZeroShotClassifier,
    CorrCLIPAttribution,
    NACLIPAttribution,
    ProxyCLIPAttribution,
    ResCLIPAttribution,
    SCCLIPAttribution,
    lposs_plus,
    lposs_scores,
)
from captum_clip_surgery.adapters import get_backbone
from captum_clip_surgery.methods.corrclip import corrclip_attention, merge_regions
from captum_clip_surgery.methods.proxyclip import proxy_attention
from captum_clip_surgery.methods.resclip import RESCLIP_SETTINGS
from tests import reference as ref
from tests import reference_backbones as refb
from tests.adapters import backbones as tiny
from tests.apps.test_label_propagation import plain_lposs_scores
from tests.helpers import FEW_TEMPLATES, TEXTS, images_for
from tests.methods.test_cass import _timm_last_keys
from tests.models import tiny_vit

Row = Tuple[str, str, str, str, float, float, float]


def _clf(model: torch.nn.Module) -> CLIPZeroShotClassifier:
    return CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)


def _size(size: Tuple[int, int], native: int) -> str:
    kind = "native" if size == (native, native) else "non-native"
    return f"{size[0]}×{size[1]} ({kind})"


def _per_image(got: torch.Tensor, expected: torch.Tensor, agree: torch.Tensor) -> float:
    if not bool(agree.any()):
        return float("nan")
    return float((got[agree] - expected[agree]).abs().max())


def scclip_rows() -> List[Row]:
    rows = []
    model = tiny_vit(layers=12, image_size=64)  # the test's 12-block tower, 8×8 grid
    explainer = SCCLIPAttribution(_clf(model))
    for size in [(64, 64), (48, 80)]:
        images = images_for(model, b=2, h=size[0], w=size[1], seed=3)
        with torch.no_grad():
            got, _ = explainer.token_features(images)
            expected, outliers = ref.scclip_tokens(model, images)
            anomalies = explainer.anomalies(images)
        flips = (anomalies != outliers).flatten(1).sum(1)
        rows.append(("SC-CLIP", "tests.reference.scclip_tokens", _size(size, 64),
                     f"{int(flips.sum())} of {outliers.numel()} anomaly flags",
                     float((got - expected).abs().max()), _per_image(got, expected, flips == 0),
                     float(expected.abs().max())))
    return rows


def resclip_rows() -> List[Row]:
    rows = []
    model = tiny_vit(layers=12, image_size=64)
    cases = [("naclip", (64, 64), "voc20"), ("naclip", (48, 80), "voc20"),
             ("clearclip", (48, 80), "ade20k"), ("sclip", (48, 80), "voc21")]
    for base, size, dataset in cases:
        explainer = ResCLIPAttribution(_clf(model), base=base, dataset=dataset)
        setting = RESCLIP_SETTINGS[dataset]
        images = images_for(model, b=2, h=size[0], w=size[1], seed=3)
        with torch.no_grad():
            got, _ = explainer.token_features(images)
            expected, labels = ref.resclip_tokens(
                model, images, explainer.classifier.text_features, base,
                setting["rcs_weights"], setting["sfr_weights"], setting["temp_thd"])
            mine = explainer.patch_labels(images)
        flips = (mine != labels).flatten(1).sum(1)
        rows.append((f"ResCLIP ({base}, {dataset})", "tests.reference.resclip_tokens",
                     _size(size, 64), f"{int(flips.sum())} of {labels.numel()} patch labels",
                     float((got - expected).abs().max()), _per_image(got, expected, flips == 0),
                     float(expected.abs().max())))
    return rows


def _proxy_rows(agree: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.ones(agree.shape[0], 1, dtype=torch.bool), agree.all(-1)], 1)


def proxyclip_rows() -> List[Row]:
    rows = []
    model, dino = tiny_vit(), tiny.timm_dino()
    backbone = get_backbone(dino, positional_resize="bicubic_antialias")  # timm's own rule
    cases = [  # (label, explainer, the reference's proxy features of the images)
        ("ProxyCLIP (DINO-shaped timm ViT)", ProxyCLIPAttribution(_clf(model), backbone=backbone),
         lambda images: dino.forward_features(refb.renormalise(images))[:, 1:]),
        ("ProxyCLIP (CLIP's own tower)", ProxyCLIPAttribution(_clf(model)),  # the model's own tower
         lambda images: refb.clip_tower_proxy_features(model, images)),
    ]
    for label, explainer, reference_features in cases:
        for size in [(32, 32), (40, 24)]:
            images = images_for(model, b=2, h=size[0], w=size[1])
            with torch.no_grad():
                got, grid = explainer.token_features(images)
                expected, kept = refb.proxyclip_tokens(model, images, reference_features(images),
                                                       grid)
                got_kept = proxy_attention(explainer.proxy_features(images)[0]) > 0
            agree = got_kept == kept
            keep = _proxy_rows(agree)
            rows.append((label, "tests.reference_backbones.proxyclip_tokens",
                         _size(size, 32), f"{int((~agree).sum())} of {kept.numel()} kept entries",
                         float((got - expected).abs().max()),
                         float((got[keep] - expected[keep]).abs().max()),
                         float(expected.abs().max())))
    return rows


def corrclip_rows() -> List[Row]:
    from tests.methods.test_corrclip import block_regions, dino_q_plus_k

    rows = []
    model, dino = tiny_vit(), tiny.timm_dino()
    backbone = get_backbone(dino, positional_resize="bicubic_antialias")  # timm's own rule
    for eps in (0.035, 0.2):
        explainer = CorrCLIPAttribution(_clf(model), backbone=backbone,
                                        mask_generator=block_regions, eps=eps)
        for size in [(32, 32), (40, 24)]:
            images = images_for(model, b=2, h=size[0], w=size[1])
            with torch.no_grad():
                got, grid = explainer.token_features(images)
                expected, merged, kept = refb.corrclip_tokens(
                    model, images, dino_q_plus_k(dino, images), grid, block_regions(images),
                    explainer.spatial_layers, eps=eps)
                feats = explainer.backbone_features(images)[0]
                labels = torch.nn.functional.interpolate(
                    block_regions(images)[:, None].float(), size=grid, mode="nearest")
                labels = labels[:, 0].long().flatten(1)
                ours = torch.stack([merge_regions(labels[i], feats[i], eps) for i in range(2)])
                got_kept = torch.stack([corrclip_attention(feats[i], ours[i]) > 0
                                        for i in range(2)])
            regions = int((ours != merged).any(-1).sum())
            entries = int((got_kept != kept).sum())
            same = ((ours == merged).all(-1) & (got_kept == kept).flatten(1).all(-1))
            rows.append((f"CorrCLIP (DINO-shaped timm ViT, eps {eps})",
                         "tests.reference_backbones.corrclip_tokens", _size(size, 32),
                         f"{regions} of 2 merged label maps, {entries} of {kept.numel()} kept "
                         "entries", float((got - expected).abs().max()),
                         _per_image(got, expected, same), float(expected.abs().max())))
    return rows


def cass_rows() -> List[Row]:
    rows = []
    model, dino = tiny_vit(), tiny.timm_dino(embed_dim=48)
    backbone = get_backbone(dino, positional_resize="bicubic_antialias")
    explainer = CASSAttribution(_clf(model), backbone=backbone)
    for size in [(32, 32), (40, 24)]:
        images = images_for(model, b=2, h=size[0], w=size[1])
        dino_grid = (size[0] // 4, size[1] // 4)
        with torch.no_grad():
            got, _ = explainer.token_features(images)
            keys = _timm_last_keys(dino, refb.renormalise(images))
            expected, matching, cost = refb.cass_tokens(model, images, keys, dino_grid)
            ours = explainer.head_matching(images)
            same, _, _ = refb.cass_tokens(model, images, keys, dino_grid, matching=ours)
        heads = torch.arange(cost.shape[1])
        gap = max(abs(float(cost[b, heads, ours[b]].sum() - cost[b, heads, matching[b]].sum()))
                  for b in range(ours.shape[0]))
        differ = int((ours != matching).any(-1).sum())
        rows.append(("CASS (DINO-shaped timm ViT)", "tests.reference_backbones.cass_tokens",
                     _size(size, 32),
                     f"{differ} of {ours.shape[0]} head matchings (cost gap {gap:.1e})",
                     float((got - expected).abs().max()), float((got - same).abs().max()),
                     float(expected.abs().max())))
    return rows


def lposs_rows() -> List[Row]:
    rows = []
    model, dino = tiny_vit(), tiny.timm_dino()
    backbone = get_backbone(dino, positional_resize="bicubic_antialias")
    explainer = NACLIPAttribution(_clf(model))
    for size, window in [((32, 32), None), ((48, 40), None), ((48, 40), (32, 16))]:
        images = images_for(model, b=2, h=size[0], w=size[1])
        with torch.no_grad():
            got = lposs_scores(explainer, images, backbone=backbone, sliding_window=window, k=50)
            expected = plain_lposs_scores(explainer, dino, images, window, k=50)
        where = _size(size, 32) + (", windows 32/16" if window else "")
        diff = float((got - expected).abs().max())
        rows.append(("LPOSS (NACLIP scores, k = 50)",
                     "tests/apps/test_label_propagation.py: plain_lposs_scores", where,
                     "(kNN sets compared in test_lposs_matches_dense_reference)", diff, diff,
                     float(expected.abs().max())))
    g = torch.Generator().manual_seed(3)
    for size, radius in [((12, 12), 6), ((9, 10), 6), ((7, 11), 2)]:
        rgb = torch.rand(2, 3, *size, generator=g)
        rgb[:, :, :4] = 0.3 + 0.01 * rgb[:, :, :4]  # a flat region: strong edges inside it
        scores = torch.randn(2, 3, 4, 5, generator=g)
        got = lposs_plus(rgb, scores, radius=radius)
        up = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
        expected = torch.stack([refb.lposs_plus(rgb[b], up[b], radius=radius)
                                for b in range(2)]).float()
        diff = float((got - expected).abs().max())
        rows.append(("LPOSS+ (float32 vs float64)", "tests.reference_backbones.lposs_plus",
                     f"{size[0]}×{size[1]}, radius {radius}", "none", diff, diff,
                     float(expected.abs().max())))
    return rows


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    parts: List[Callable[[], List[Row]]] = [
        scclip_rows, resclip_rows, proxyclip_rows, cass_rows, corrclip_rows, lposs_rows]
    print("| method | plain reference | size | decisions that differ | max abs diff "
          "| max abs diff where decisions agree | max abs of the reference |")
    print("|---|---|---|---|---:|---:|---:|")
    for part in parts:
        for name, reference, size, decisions, diff, agreeing, scale in part():
            print(f"| {name} | `{reference}` | {size} | {decisions} | {diff:.1e} "
                  f"| {agreeing:.1e} | {scale:.2g} |")


if __name__ == "__main__":
    main()
