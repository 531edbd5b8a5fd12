r"""Load a second vision backbone (DINO, DINOv2, ...) by name, from local files only.

``load_backbone(name)`` understands

- a timm model name (``vit_base_patch8_224.dino``, ``vit_base_patch14_reg4_dinov2.lvd142m``,
  ...): the architecture is built by timm, its weights read from ``checkpoint`` (a
  safetensors file, or a PyTorch file read with ``weights_only=True``) or, without one,
  from the timm weights already in the local Hugging Face cache;
- ``hf-hub:ORG/NAME`` (``hf-hub:facebook/dinov2-base``): a Hugging Face ``transformers``
  model from the local cache;
- a local folder written by ``save_pretrained`` (``config.json``).

As for :func:`~captum_clip_surgery.adapters.loading.load_clip`, nothing is downloaded and
nothing is loaded partly: a checkpoint that lacks tensors of the model, or holds others,
is an error naming them. The model returned is understood by
:func:`~captum_clip_surgery.adapters.backbone_registry.get_backbone` (checked here), so it
can be passed as ``backbone=`` to ProxyCLIP, CASS and CorrCLIP, or as ``refine_backbone=`` to LPOSS.
"""

from __future__ import annotations

import logging
import os
from typing import Dict, Optional

import torch
from torch import Tensor, nn

from captum_clip_surgery.adapters.backbone_registry import get_backbone, supported_backbones
from captum_clip_surgery.adapters.loading import (
    HF_PREFIX,
    _check_loaded_keys,
    _first_line,
    _hf_cached_file,
    _transformers_checked,
)

__all__ = ["load_backbone"]


def _read_state_dict(path: str, argument: str = "backbone_checkpoint") -> Dict[str, Tensor]:
    r"""The tensors of a weights file: safetensors, or a PyTorch file read with
    ``weights_only=True`` (never executing code); a ``state_dict`` / ``model`` entry of a
    training checkpoint is unwrapped. Errors name ``argument``."""
    if not os.path.isfile(path):
        raise ValueError(f"{argument}: no such file: {path!r}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable, truncated, or a pickle needing code
        raise ValueError(
            f"{argument}: could not read {path!r} as safetensors or a weights-only "
            f"PyTorch file: {_first_line(exc)}"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{argument}: {path!r} holds no tensor dictionary")
    return state


def _load_strict(model: nn.Module, state: Dict[str, Tensor], what: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    _check_loaded_keys(what, missing, unexpected, mismatched, None, "backbone")
    model.load_state_dict(state, strict=True)


def _timm_backbone(name: str, checkpoint: Optional[str]) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ValueError(
            f"backbone: {name!r} is not a folder or hf-hub: id, and timm (which builds named "
            "backbones) is not installed: pip install timm"
        ) from None
    if not timm.is_model(name):
        raise ValueError(
            f"backbone: {name!r} is neither a local folder, an hf-hub: id nor a timm model name "
            "(e.g. vit_base_patch8_224.dino, vit_base_patch14_reg4_dinov2.lvd142m)"
        )
    if checkpoint is None:
        cfg = timm.models.get_pretrained_cfg(name)
        hub = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        cached = None
        if hub:
            repo = hub.split("@")[0]
            for filename in ("model.safetensors", "open_clip_model.safetensors"):
                cached = _hf_cached_file(repo, filename)
                if cached is not None:
                    break
        if cached is None:
            raise ValueError(
                f"backbone: the weights of {name!r} are not in the local Hugging Face cache "
                f"({hub or 'no hub id'}; nothing is downloaded here): run "
                f"timm.create_model({name!r}, pretrained=True) once where there is a network, "
                "or pass backbone_checkpoint= (clip-surgery: --backbone-checkpoint FILE)"
            )
        checkpoint = cached
    state = _read_state_dict(checkpoint)
    try:
        model = timm.create_model(name, pretrained=False)
    except Exception as exc:
        raise ValueError(f"backbone: timm could not build {name!r}: {_first_line(exc)}") from None
    _load_strict(model, state, repr(checkpoint))
    return model


def _transformers_backbone(path_or_id: str) -> nn.Module:
    transformers = _transformers_checked(path_or_id, "backbone")
    try:
        model, info = transformers.AutoModel.from_pretrained(
            path_or_id, local_files_only=True, output_loading_info=True, use_safetensors=True
        )
    except Exception as exc:
        raise ValueError(
            f"backbone: could not load the transformers model {path_or_id!r} from local "
            f"safetensors files: {_first_line(exc)}"
        ) from None
    missing = [k for k in info.get("missing_keys", ()) if "pooler" not in k]
    _check_loaded_keys(repr(path_or_id), missing, list(info.get("unexpected_keys", ())),
                       list(info.get("mismatched_keys", ())), None, "backbone")
    return model


def load_backbone(name: str, checkpoint: Optional[str] = None, device: str = "cpu") -> nn.Module:
    r"""Load a second vision backbone from local files, in eval mode on ``device``.

    Args:
        name (str): a timm model name (``vit_base_patch8_224.dino``), an ``hf-hub:`` id
            of a transformers model (``hf-hub:facebook/dinov2-base``) or a local
            ``save_pretrained`` folder.
        checkpoint (str, optional): timm names only: the weights file (``.safetensors``,
            or a PyTorch file read with ``weights_only=True``); default the timm weights
            in the local Hugging Face cache.
        device (str): where to put the model.

    Returns:
        nn.Module: the backbone, a model
        :func:`~captum_clip_surgery.adapters.backbone_registry.get_backbone` understands.

    Raises:
        ValueError: unknown name, weights missing from the local files, a checkpoint
            that lacks tensors of the model or holds others (naming them), or a model no
            backbone view understands; the message starts with the argument's name.

    Examples::

        >>> dino = load_backbone("vit_base_patch8_224.dino")  # timm weights in the HF cache
        >>> dino = load_backbone("vit_base_patch8_224.dino", checkpoint="dino_vitb8.safetensors")
        >>> explainer = ProxyCLIPAttribution(clf, backbone=dino)
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"backbone: expected a timm name, hf-hub: id or folder, got {name!r}")
    if checkpoint is not None and not isinstance(checkpoint, str):
        raise TypeError(f"backbone_checkpoint: expected a file path, got {checkpoint!r}")
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)  # libraries log each failed lookup; our error says it
    try:
        if os.path.isdir(name) or name.startswith(HF_PREFIX):
            if checkpoint is not None:
                raise ValueError(
                    "backbone_checkpoint: only for timm names; a transformers model's weights "
                    "come with its folder or hub id"
                )
            target = name if os.path.isdir(name) else name[len(HF_PREFIX):]
            if os.path.isdir(name) and not os.path.exists(os.path.join(name, "config.json")):
                raise ValueError(
                    f"backbone: folder {name!r} holds no config.json (transformers "
                    "save_pretrained)"
                )
            model = _transformers_backbone(target)
        else:
            model = _timm_backbone(name, checkpoint)
    finally:
        logging.disable(previous)
    model = model.to(device).eval()
    try:
        get_backbone(model)
    except TypeError:
        raise ValueError(
            f"backbone: {name!r} loaded as {type(model).__qualname__}, which no backbone view "
            f"understands; supported: {'; '.join(supported_backbones())}"
        ) from None
    return model

