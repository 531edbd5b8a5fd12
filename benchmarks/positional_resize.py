r"""How far each method moves from its authors' release at non-native sizes, before and
after following the release's positional-embedding resize.

On an open_clip ViT-B-16 (random weights built in code: nothing is downloaded) the script
computes each method's patch-text cosine map (5 random unit text features) at 336×336 and
224×336 three ways: the plain re-implementation of the method with its release's resize
rule (``tests/reference.py``, standing in for the authors' code), the package with the
bilinear resize it used for every method before (``positional_resize="bilinear"``), and the
package with its default (the release's rule). It prints the largest absolute difference of
the cosines to the reference, before → after; for LeGrad and Grad-ECLIP, of the relevance
maps scaled to [0, 1]::

    python benchmarks/positional_resize.py
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    import open_clip

    import tests.reference as ref
    from captum_clip_surgery import (
        ClearCLIPAttribution,
        CLIPSurgeryAttribution,
        CLIPZeroShotClassifier,
        GEMAttribution,
        GradECLIPAttribution,
        LeGradAttribution,
        MaskCLIPAttribution,
        NACLIPAttribution,
        SCLIPAttribution,
    )

    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = open_clip.create_model("ViT-B-16").eval()
    clf = CLIPZeroShotClassifier(model, ["a", "b"], templates=["{}"])
    texts = F.normalize(torch.randn(5, 512, generator=torch.Generator().manual_seed(1)), dim=-1)

    def cosines(tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(tokens[:, 1:], dim=-1) @ texts.t()

    token_methods: Dict[str, Tuple[type, Callable[..., torch.Tensor]]] = {
        "surgery": (CLIPSurgeryAttribution, lambda m, x: ref.vit_tokens(m, x, 6)),
        "maskclip": (MaskCLIPAttribution, ref.maskclip_tokens),
        "gem": (GEMAttribution, ref.gem_tokens),
        "sclip": (SCLIPAttribution, ref.sclip_tokens),
        "clearclip": (ClearCLIPAttribution, ref.clearclip_tokens),
        "naclip": (NACLIPAttribution, ref.naclip_tokens),
    }
    sizes = [(336, 336), (224, 336)]
    rows = []
    for h, w in sizes:
        images = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(h + w))
        with torch.no_grad():
            for name, (cls, reference) in token_methods.items():
                expected = cosines(reference(model, images))
                before = cosines(cls(clf, positional_resize="bilinear").token_features(images)[0])
                after = cosines(cls(clf).token_features(images)[0])
                rows.append((name, f"{h}×{w}", cls.default_positional_resize,
                             float((before - expected).abs().max()),
                             float((after - expected).abs().max())))
        for name, cls, reference in (("legrad", LeGradAttribution, ref.legrad_map),
                                     ("gradeclip", GradECLIPAttribution, ref.gradeclip_map)):
            text = clf.text_features[0]

            def unit(m: torch.Tensor) -> torch.Tensor:
                m = m.flatten()
                return (m - m.min()) / (m.max() - m.min())

            expected = unit(reference(model, images, text))
            before = unit(cls(clf, positional_resize="bilinear").relevance(images, target=0))
            after = unit(cls(clf).relevance(images, target=0))
            rows.append((name, f"{h}×{w}", cls.default_positional_resize,
                         float((before - expected).abs().max()), float((after - expected).abs().max())))
    print("| method | size | release rule | max |Δ| before (bilinear) | after (release rule) |")
    print("|---|---|---|---|---|")
    for name, size, rule, before, after in rows:
        print(f"| {name} | {size} | {rule} | {before:.3g} | {after:.3g} |")


if __name__ == "__main__":
    main()
