r"""Record every method's output on every model family, or check them bit for bit.

A refactoring that moves code must not change a single output. This script runs every
method defined for a model (``compare`` with the method's defaults, and the token-grid
``similarity`` of the token-map methods) on the shipped scenes model and on a tiny
seeded model of each family (open_clip ViTs, ResNet, every timm tower, CoCa, CLIPA,
OpenAI ``clip``, Hugging Face CLIP, the HF vision/text pair and SigLIP), at the native
input size and at a non-native, non-square one, and writes the outputs to a
safetensors file (``record``) or compares them with such a file bit for bit
(``check``: exit 1 on the first difference)::

    python benchmarks/method_outputs.py record /tmp/before.safetensors   # on the old code
    python benchmarks/method_outputs.py check /tmp/before.safetensors    # on the new code

It prints one line per model with the number of tensors recorded or compared. Run it
from the repository root (the tiny models are built by ``tests/``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TEXTS = ["dog", "a red car", "grass"]
TEMPLATES = ["a photo of a {}.", "{}", "there is a {} in the scene."]


def _models() -> Iterator[Tuple[str, Callable[[], Tuple[Any, Any, List[Tuple[int, int]]]]]]:
    r"""``(id, build)`` with ``build() -> (model, tokenizer, sizes)``."""
    from tests.adapters import hosts, timm_models
    from tests.models import tiny_resnet, tiny_vit

    def fixed(model: Any, tokenizer: Any, native: int, step: int, native_only: bool = False):
        sizes = [(native, native)] + ([] if native_only else [(native + step, native + 2 * step)])
        return lambda: (model() if callable(model) else model, tokenizer, sizes)

    yield "openclip_vit", fixed(tiny_vit, None, 32, 8)
    yield "openclip_vit_custom", fixed(lambda: tiny_vit("custom"), None, 32, 8)
    yield "openclip_resnet", fixed(tiny_resnet, None, 64, 32)
    for name, build in timm_models.BUILDERS.items():
        tower = timm_models.TOWERS.get(name)
        native = tower.image_size if tower else 32
        only = bool(tower and tower.native_only)
        step = 32 if native == 64 else 8
        yield f"timm_{name}", fixed(build, None, native, step, only)
    yield "openai_vit", fixed(lambda: hosts.to_openai(hosts.openclip_vit()), None, 32, 8)
    yield "openai_resnet", fixed(lambda: hosts.to_openai(hosts.openclip_resnet()), None, 64, 32)
    yield "hf_clip", fixed(lambda: hosts.to_hf(hosts.openclip_vit()), hosts.clip_tokenizer(), 32, 8)

    def pair() -> Any:
        from captum_clip_surgery import HFCLIPPair

        oc = hosts.openclip_vit()
        return HFCLIPPair(*hosts.to_hf_pair(oc), logit_scale=float(oc.logit_scale.detach().exp()))

    yield "hf_pair", fixed(pair, hosts.clip_tokenizer(), 32, 8)
    yield "hf_siglip", fixed(hosts.siglip, hosts.siglip_tokenizer(), 32, 8)

    def scenes() -> Tuple[Any, Any, List[Tuple[int, int]]]:
        from captum_clip_surgery.scenes import load_scenes_clip

        model, _, tokenizer = load_scenes_clip()
        return model, tokenizer, [(96, 96), (104, 120)]

    yield "scenes", scenes


def _outputs(model: Any, tokenizer: Any, sizes: List[Tuple[int, int]]) -> Dict[str, torch.Tensor]:
    from captum_clip_surgery import (
        CLIPZeroShotClassifier,
        build_method,
        compare,
        segment,
        supported_methods,
    )

    clf = CLIPZeroShotClassifier(model, TEXTS, templates=TEMPLATES, tokenizer=tokenizer)
    out: Dict[str, torch.Tensor] = {"text_features": clf.text_features}
    methods = supported_methods(clf)
    for h, w in sizes:
        g = torch.Generator().manual_seed(h * 1000 + w)
        images = torch.randn(2, 3, h, w, generator=g)
        key = f"{h}x{w}"
        out[f"{key}/logits"] = clf(images).detach()
        for method in methods:
            kwargs: Dict[str, Dict[str, Any]] = {}
            if method == "ig":
                kwargs = {"ig": {"n_steps": 8}}
            if method == "smoothgrad":
                continue  # random noise: not reproducible across calls by design
            try:
                maps = compare(clf, images, [0, 2], methods=[method], method_kwargs=kwargs)
            except (TypeError, ValueError) as exc:  # a method the model cannot run: its message
                text = f"{type(exc).__name__}: {exc}".encode()
                out[f"{key}/error/{method}"] = torch.tensor(list(text), dtype=torch.uint8)
                continue
            out[f"{key}/compare/{method}"] = maps[method]
            explainer = build_method(method, clf)
            if hasattr(explainer, "similarity"):
                with torch.no_grad():
                    out[f"{key}/similarity/{method}"] = explainer.similarity(images)
                    out[f"{key}/segment/{method}"] = segment(explainer, images).float()
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("record", "check"))
    parser.add_argument("path", help="safetensors file")
    parser.add_argument("--only", default=None, help="comma-separated model ids")
    args = parser.parse_args(argv)
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(1)  # one reduction order for the bit-for-bit comparison
    only = set(args.only.split(",")) if args.only else None
    expected = load_file(args.path) if args.action == "check" else {}
    recorded: Dict[str, torch.Tensor] = {}
    failures = 0
    for name, build in _models():
        if only and name not in only:
            continue
        start = time.perf_counter()
        torch.manual_seed(0)
        outs = _outputs(*build())
        outs = {f"{name}/{k}": v.detach().contiguous().cpu() for k, v in outs.items()}
        if args.action == "record":
            recorded.update(outs)
            print(f"{name}: recorded {len(outs)} tensors in {time.perf_counter() - start:.1f} s")
            continue
        want = {k: v for k, v in expected.items() if k.startswith(name + "/")}
        missing = sorted(set(want) - set(outs))
        extra = sorted(set(outs) - set(want))
        differ = [k for k in sorted(set(want) & set(outs))
                  if want[k].dtype != outs[k].dtype or want[k].shape != outs[k].shape
                  or not torch.equal(want[k], outs[k])]
        failures += len(missing) + len(extra) + len(differ)
        status = "identical" if not (missing or extra or differ) else "DIFFERENT"
        print(f"{name}: {len(want)} tensors, {status} in {time.perf_counter() - start:.1f} s")
        for k in missing:
            print(f"  missing now: {k}")
        for k in extra:
            print(f"  new now: {k}")
        for k in differ:
            d = (want[k].float() - outs[k].float()).abs().max() if want[k].shape == outs[k].shape else None
            print(f"  differs: {k} (max abs difference {d})")
    if args.action == "record":
        save_file(recorded, args.path)
        print(f"wrote {len(recorded)} tensors to {args.path}")
        return 0
    print("all identical" if failures == 0 else f"{failures} tensors differ or are missing")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
