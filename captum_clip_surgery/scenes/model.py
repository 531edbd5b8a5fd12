r"""The small open_clip CLIP trained on the scenes world, shipped with the package."""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import open_clip
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torchvision import transforms as T

__all__ = [
    "CONFIG_PATH",
    "MODEL_CONFIG",
    "WEIGHTS_PATH",
    "build_scenes_clip",
    "describe_weights",
    "export_weights",
    "load_scenes_clip",
    "scenes_preprocess",
    "scenes_tokenizer",
]

_HERE = os.path.dirname(os.path.abspath(__file__))
WEIGHTS_PATH = os.path.join(_HERE, "weights", "scenes_clip.safetensors")
CONFIG_PATH = os.path.join(_HERE, "weights", "scenes_clip.json")

#: open_clip ``CLIP`` config of the shipped model: a standard ViT tower
#: (``nn.MultiheadAttention`` blocks, class-token pooling) and text transformer.
MODEL_CONFIG: Dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {
        "image_size": 96, "patch_size": 8, "width": 160, "layers": 6,
        "head_width": 40, "mlp_ratio": 4.0,
    },
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4},
}

_EMBEDDING = "token_embedding.weight"


def build_scenes_clip(config: Optional[Dict[str, Any]] = None, seed: int = 0) -> open_clip.CLIP:
    r"""A freshly initialised model of the shipped architecture (seeded)."""
    cfg = dict(MODEL_CONFIG if config is None else config)
    torch.manual_seed(seed)
    return open_clip.CLIP(
        embed_dim=cfg["embed_dim"], vision_cfg=dict(cfg["vision_cfg"]), text_cfg=dict(cfg["text_cfg"])
    )


def scenes_preprocess(image_size: int = 96) -> Callable[[Any], Tensor]:
    r"""PIL image → normalised ``[3, image_size, image_size]`` tensor (square resize, no crop)."""
    return T.Compose([
        T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BICUBIC),
        T.ToTensor(),
        T.Normalize(open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD),
    ])


def scenes_tokenizer(context_length: int = 32) -> Callable[[Union[str, List[str]]], Tensor]:
    r"""open_clip's standard BPE tokenizer with the shipped context length."""
    return open_clip.SimpleTokenizer(context_length=context_length)


def export_weights(
    model: nn.Module,
    used_tokens: Iterable[int],
    path: str = WEIGHTS_PATH,
    config: Optional[Dict[str, Any]] = None,
    metadata: Optional[Dict[str, str]] = None,
) -> None:
    r"""Write fp16 safetensors (+ the JSON config beside it).

    Only the token-embedding rows of ``used_tokens`` are stored (the rest of the
    49408-row table was never trained); loading fills the other rows with zeros.
    """
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()
             if not k.endswith("attn_mask")}
    ids = torch.tensor(sorted(set(int(t) for t in used_tokens)), dtype=torch.int64)
    table = state.pop(_EMBEDDING)
    state["token_embedding.rows"] = table[ids].contiguous()
    state["token_embedding.ids"] = ids
    save_file(state, path, metadata=metadata or {})
    os.chmod(path, 0o644)  # package data: readable by everyone
    with open(os.path.splitext(path)[0] + ".json", "w", encoding="utf-8") as fh:
        json.dump(config or MODEL_CONFIG, fh, indent=2)


def _load_state(path: str, model: nn.Module) -> Dict[str, Tensor]:
    state = load_file(path)
    ids = state.pop("token_embedding.ids")
    rows = state.pop("token_embedding.rows")
    table = torch.zeros_like(model.state_dict()[_EMBEDDING], dtype=rows.dtype)
    table[ids] = rows
    state[_EMBEDDING] = table
    return state


def load_scenes_clip(
    device: Union[str, torch.device, None] = None,
    dtype: Optional[torch.dtype] = None,
    weights: Optional[str] = None,
) -> Tuple[open_clip.CLIP, Callable[[Any], Tensor], Callable[[Union[str, List[str]]], Tensor]]:
    r"""The shipped scenes CLIP, its preprocessing and its tokenizer — no network.

    Weights are read with safetensors (no code is executed).

    Args:
        device (str or torch.device, optional): where to put the model (default CPU).
        dtype (torch.dtype, optional): default float32.
        weights (str, optional): another safetensors file of the same format.

    Returns:
        tuple: ``(model in eval mode, preprocess(PIL) -> [3, 96, 96], tokenizer)``.

    Raises:
        FileNotFoundError: when the weights file is missing.

    Examples::

        >>> model, preprocess, tokenizer = load_scenes_clip()
        >>> model.visual.image_size
        (96, 96)
    """
    path = weights or WEIGHTS_PATH
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights: scenes model weights not found at {path}")
    config_path = os.path.splitext(path)[0] + ".json"
    config = MODEL_CONFIG
    if os.path.exists(config_path):
        with open(config_path, encoding="utf-8") as fh:
            config = json.load(fh)
    model = build_scenes_clip(config)
    state = _load_state(path, model)
    missing, unexpected = model.load_state_dict(
        {k: v.float() for k, v in state.items()}, strict=False
    )
    missing = [k for k in missing if not k.endswith("attn_mask")]
    if missing or unexpected:
        raise RuntimeError(f"weights: {path} does not match the model ({missing=}, {unexpected=})")
    model = model.to(device=device or "cpu", dtype=dtype or torch.float32).eval()
    size = int(config["vision_cfg"]["image_size"])
    return model, scenes_preprocess(size), scenes_tokenizer(int(config["text_cfg"]["context_length"]))


def describe_weights(path: Optional[str] = None) -> Dict[str, Any]:
    r"""Facts about a weights file of the shipped format (read with safetensors only).

    Args:
        path (str, optional): default the shipped weights.

    Returns:
        dict: ``parameters`` (of the loaded model), ``embedding_parameters`` (the full
        token-embedding table), ``stored_embedding_rows``, ``file_bytes``,
        ``logit_scale`` (the learnt temperature, exponentiated) and the training
        ``metadata`` stored in the file (steps, seed, batch size, train seconds).
    """
    from safetensors import safe_open

    path = path or WEIGHTS_PATH
    model, _, _ = load_scenes_clip(weights=path)
    with safe_open(path, "pt") as fh:
        metadata = dict(fh.metadata() or {})
        rows = int(fh.get_tensor("token_embedding.ids").numel())
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "embedding_parameters": model.state_dict()[_EMBEDDING].numel(),
        "stored_embedding_rows": rows,
        "file_bytes": os.path.getsize(path),
        "logit_scale": float(model.logit_scale.detach().exp()),
        "metadata": metadata,
    }

