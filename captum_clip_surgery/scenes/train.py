r"""Train the small scenes CLIP: ``python -m captum_clip_surgery.scenes.train``.

Deterministic for a seed: training scene ``step * batch_size + j`` of
``ScenesWorld(seed)``, flips, rotations and texts chosen with a generator seeded by
``(seed, step)`` (see :func:`make_batch`). Symmetric InfoNCE with one hard negative
text per image (:func:`contrastive_loss`) and open_clip's learnable temperature
(``logit_scale``), AdamW with warm-up and cosine decay. Half of the texts are the
scene's caption; the other half fill one of the package's 85 default prompt
templates with one class present in the scene, so that zero-shot prompt ensembles
work. ``--device cuda`` runs the same batches on a GPU.

Resumable: ``--out DIR`` receives ``checkpoint.safetensors`` (model),
``optimizer.safetensors`` (AdamW moments and step counts) and ``state.json``
(step, elapsed time, arguments, the loss of every step); ``--resume`` continues
from them. Nothing is pickled. ``--export`` writes the shipped fp16 weights and
config into the package; ``python -m captum_clip_surgery.scenes.plot_training DIR``
draws the loss curve.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from typing import Callable, Dict, List, Optional, Set, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from captum_clip_surgery._validation import check_device
from captum_clip_surgery.adapters.registry import get_adapter
from captum_clip_surgery.core.text import default_templates
from captum_clip_surgery.scenes.model import (
    MODEL_CONFIG,
    WEIGHTS_PATH,
    build_scenes_clip,
    export_weights,
    scenes_tokenizer,
)
from captum_clip_surgery.scenes.world import _CAPTIONS, ScenesWorld, _article

__all__ = ["contrastive_loss", "main", "make_batch", "used_token_ids"]


def _swap(text: str, present: List[str], absent: List[str], rng: np.random.Generator) -> str:
    r"""``text`` with one present name (with its article) replaced by an absent one."""
    order = [n for n in present if _article(n) in text]
    old = order[int(rng.integers(len(order)))]
    new = absent[int(rng.integers(len(absent)))]
    return text.replace(_article(old), _article(new), 1)


def make_batch(
    world: ScenesWorld, step: int, batch_size: int, seed: int
) -> Tuple[torch.Tensor, List[str], List[str]]:
    r"""Images ``[B, 3, H, W]``, their texts and one hard negative text per image.

    Each image is flipped and rotated by a random multiple of 90 degrees (its
    content, hence its texts, are unchanged). Its text is the scene's caption
    (probability 1/2) or a default prompt template filled with one present class
    (an object with probability 3/4, else the background). The hard negative is
    the same text with one present name swapped for an absent one of the same
    kind (object for object, background for background), so the image must tell
    every object apart, not just its background.
    """
    rng = np.random.default_rng([seed, step, 7])
    templates = default_templates()
    images, texts, negatives = [], [], []
    for j in range(batch_size):
        s = world.sample(step * batch_size + j)
        pixels = np.rot90(np.asarray(s["image"]), k=int(rng.integers(4)))
        if rng.random() < 0.5:
            pixels = pixels[:, ::-1]
        images.append(np.ascontiguousarray(pixels))
        objects, background = s["objects"], s["background"]
        absent = [o for o in world.object_classes if o not in objects]
        other = [b for b in world.background_classes if b != background]
        if rng.random() < 0.5:
            text = s["caption"]
            negative = _swap(text, objects, absent, rng)
        else:
            template = templates[int(rng.integers(len(templates)))]
            if rng.random() < 0.75:
                name = objects[int(rng.integers(len(objects)))]
                wrong = absent[int(rng.integers(len(absent)))]
            else:
                name, wrong = background, other[int(rng.integers(len(other)))]
            text, negative = template.format(name), template.format(wrong)
        texts.append(text)
        negatives.append(negative)
    # the images are rendered at the model's size: scenes_preprocess reduces to this
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(OPENAI_DATASET_MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).reshape(1, 3, 1, 1)
    return (x - mean) / std, texts, negatives


def contrastive_loss(
    image: torch.Tensor, text: torch.Tensor, negative: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    r"""Symmetric InfoNCE with one extra hard negative text per image.

    ``image``, ``text``, ``negative``: L2-normalised ``[B, D]``. Image → text
    classifies over the B texts and the B hard negatives; text → image over the B
    images. The two cross-entropies are averaged.
    """
    labels = torch.arange(image.shape[0], device=image.device)
    logits = scale * image @ torch.cat([text, negative]).t()
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits[:, : len(labels)].t(), labels)) / 2


def used_token_ids(world: ScenesWorld, tokenizer: Callable[[List[str]], torch.Tensor]) -> Set[int]:
    r"""Every token id the training texts and the default prompt ensembles can produce."""
    names = world.class_names + [""]
    texts = [t.format(n) for t in default_templates() for n in names]
    texts += [c.format(objects="a " + n + " an " + n + ",", background=b)
              for c in _CAPTIONS for n in world.object_classes for b in world.background_classes]
    texts += [" and ", "a", "an"]
    ids = tokenizer(texts)
    return set(int(t) for t in ids.unique())


def _lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _optimizer_tensors(opt: torch.optim.Optimizer) -> Dict[str, torch.Tensor]:
    tensors = {}
    for pid, state in opt.state_dict()["state"].items():
        for name, value in state.items():
            value = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"{pid}.{name}"] = value.detach().clone().contiguous()
    return tensors


def _load_optimizer(opt: torch.optim.Optimizer, tensors: Dict[str, torch.Tensor]) -> None:
    state: Dict[int, Dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})


def main(argv: Optional[List[str]] = None) -> None:
    r"""Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1400)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu",
                        help="cpu (default) or cuda: the same data and seed, the run takes minutes")
    parser.add_argument("--out", default="runs/scenes_clip")
    parser.add_argument("--save-every", type=int, default=100)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--export", action="store_true",
                        help=f"write the fp16 weights to {WEIGHTS_PATH} at the end")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    world = ScenesWorld(seed=args.seed)
    tokenizer = scenes_tokenizer(MODEL_CONFIG["text_cfg"]["context_length"])
    try:  # a device torch cannot name or this machine lacks (e.g. cuda without a GPU)
        check_device("--device", args.device)
    except ValueError as exc:
        parser.error(str(exc))  # one line and exit status 2, no traceback
    device = torch.device(args.device)
    model = build_scenes_clip(seed=args.seed).to(device)
    text_tower = get_adapter(model).text  # exact truncated text encoding
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.98), eps=1e-6,
    )
    os.makedirs(args.out, exist_ok=True)
    ckpt, opt_path, state_path = (os.path.join(args.out, f) for f in
                                  ("checkpoint.safetensors", "optimizer.safetensors", "state.json"))
    start, elapsed = 0, 0.0
    losses: List[Tuple[int, float]] = []  # (step, training loss), kept in state.json
    if args.resume and os.path.exists(state_path):
        model.load_state_dict(load_file(ckpt, device=str(device)), strict=False)
        _load_optimizer(opt, load_file(opt_path))  # load_state_dict moves moments to the params
        with open(state_path, encoding="utf-8") as fh:
            saved = json.load(fh)
        start, elapsed = int(saved["step"]), float(saved.get("elapsed_s", 0.0))
        losses = [(int(a), float(b)) for a, b in saved.get("losses", [])][:start]
    model.train()
    t0 = time.perf_counter() - elapsed

    def save(step: int) -> None:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()
                   if not k.endswith("attn_mask")}, ckpt)
        save_file(_optimizer_tensors(opt), opt_path)
        with open(state_path, "w", encoding="utf-8") as fh:
            json.dump({"step": step, "elapsed_s": time.perf_counter() - t0, "args": vars(args),
                       "losses": losses}, fh)

    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="scenes CLIP")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr(step, args.steps, args.lr, args.warmup)
        images, texts, negatives = make_batch(world, step, args.batch_size, args.seed)
        img = F.normalize(model.encode_image(images.to(device)), dim=-1)
        ids = tokenizer(texts + negatives).to(device)
        txt = F.normalize(text_tower.encode(ids, truncate=True), dim=-1)
        loss = contrastive_loss(img, txt[: len(texts)], txt[len(texts):],
                                model.logit_scale.exp().clamp(max=100))
        losses.append((step + 1, loss.item()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        bar.set_postfix(loss=f"{loss.item():.3f}", T=f"{model.logit_scale.exp().item():.1f}")
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            save(step + 1)
    print(f"trained {args.steps} steps in {time.perf_counter() - t0:.0f} s")
    if args.export:
        model = model.cpu().eval()
        export_weights(model, used_token_ids(world, tokenizer), metadata={
            "steps": str(args.steps), "seed": str(args.seed), "batch_size": str(args.batch_size),
            "train_seconds": f"{time.perf_counter() - t0:.0f}",
        })
        print(f"exported {WEIGHTS_PATH}")


if __name__ == "__main__":
    main()
