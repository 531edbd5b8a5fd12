r"""Load a CLIP model by name from any supported family, without network access.

``load_clip(name)`` understands

- open_clip model names (``ViT-B-16``, ``RN50``, ``ViT-B-16-SigLIP``, the shipped
  ``scenes_clip`` architecture ...), with ``pretrained`` an open_clip tag or a local
  checkpoint file;
- ``hf-hub:ORG/NAME`` ids: an open_clip hub model when the repository holds an
  ``open_clip_config.json``, otherwise a Hugging Face ``transformers`` model — both
  read from the local Hugging Face cache only;
- a local folder written by ``save_pretrained`` (transformers: ``config.json``) or
  holding an ``open_clip_config.json`` (open_clip).

Weights are only ever read from local files or caches here; a model missing from
them gives a ``ValueError`` naming the argument.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, List, Optional, Sequence, Tuple

from torch import Tensor, nn

from captum_clip_surgery._validation import check_int
from captum_clip_surgery.adapters.registry import get_adapter, registered_adapters

__all__ = ["load_clip", "square_preprocess"]

HF_PREFIX = "hf-hub:"

#: The open_clip config of the package's shipped scenes model (package data of
#: :mod:`captum_clip_surgery.scenes`, read as a file: the adapters do not import the
#: scenes world), so that ``load_clip("scenes_clip", pretrained=...)`` knows the name.
SCENES_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scenes", "weights",
    "scenes_clip.json",
)


def square_preprocess(
    size: int, mean: Optional[Sequence[float]], std: Optional[Sequence[float]]
) -> Callable[[Any], Tensor]:
    r"""PIL image → ``[3, size, size]``: square bicubic resize, then normalisation.

    The whole image is explained (no crop), as in the CLIP Surgery release; no
    normalisation when ``mean`` and ``std`` are ``None``.

    Args:
        size (int): output side in pixels.
        mean (sequence of float, optional): per-channel mean.
        std (sequence of float, optional): per-channel standard deviation.

    Returns:
        Callable: a torchvision transform.

    Examples::

        >>> square_preprocess(224, (0.5,) * 3, (0.5,) * 3)(pil_image).shape
        torch.Size([3, 224, 224])
    """
    from torchvision import transforms as T

    check_int("size", size, minimum=1)
    steps: List[Any] = [T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC),
                        T.ToTensor()]
    if mean is not None and std is not None:
        steps.append(T.Normalize(mean, std))
    return T.Compose(steps)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _hf_cached_file(repo: str, filename: str) -> Optional[str]:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with open_clip
        return None
    found = try_to_load_from_cache(repo, filename)
    return found if isinstance(found, str) else None


def _transformers_model(path_or_id: str, device: str) -> Tuple[nn.Module, Any]:
    try:
        import transformers
    except ImportError:
        raise ValueError(
            f"model: {path_or_id!r} is a Hugging Face transformers model; install the [hf] "
            "extra (pip install 'captum-clip-surgery[hf]')"
        ) from None
    try:
        model = transformers.AutoModel.from_pretrained(path_or_id, local_files_only=True)
    except Exception as exc:  # missing files, unknown architecture, bad weights
        raise ValueError(
            f"model: could not load the transformers model {path_or_id!r} from local files "
            f"(offline, or not downloaded?): {_first_line(exc)}"
        ) from None
    tokenizer: Any = None
    for loader in (transformers.AutoProcessor, transformers.AutoTokenizer):
        try:
            tokenizer = loader.from_pretrained(path_or_id, local_files_only=True)
            break
        except Exception:  # a model saved without its tokenizer files
            continue
    return model.to(device).eval(), tokenizer


def _open_clip_model(name: str, pretrained: Optional[str], device: str) -> Tuple[nn.Module, Any]:
    import open_clip

    if os.path.exists(SCENES_CONFIG) and "scenes_clip" not in open_clip.list_models():
        open_clip.add_model_config(SCENES_CONFIG)  # the shipped model's architecture, by name
    hub = name.startswith(HF_PREFIX) or name.startswith("local-dir:")
    if not hub and name not in open_clip.list_models():
        known = ", ".join(sorted(open_clip.list_models())[:8])
        raise ValueError(
            f"model: unknown open_clip model {name!r} (known names include {known}, ...); "
            "expected an open_clip name, an hf-hub: id or a local model folder"
        )
    if pretrained and os.path.sep in pretrained and not os.path.exists(pretrained):
        raise ValueError(f"pretrained: checkpoint file not found: {pretrained}")
    try:
        model = open_clip.create_model(name, pretrained=pretrained, device=device)
    except Exception as exc:  # network, hub and checkpoint errors all land here
        what = f"weights {pretrained!r} for {name}" if pretrained else f"model {name!r}"
        raise ValueError(
            f"{'pretrained' if pretrained else 'model'}: could not load {what} "
            f"(offline, or not a valid checkpoint?): {_first_line(exc)}"
        ) from None
    return model.eval(), open_clip.get_tokenizer(name)


def load_clip(
    name: str, pretrained: Optional[str] = None, device: str = "cpu"
) -> Tuple[nn.Module, Callable[[Any], Tensor], Any]:
    r"""Load a CLIP model, its square preprocessing and its tokenizer from local files.

    Args:
        name (str): an open_clip model name, an ``hf-hub:`` id, or a local folder
            (``save_pretrained`` output, or one with an ``open_clip_config.json``).
        pretrained (str, optional): open_clip only: a pretrained tag or a local
            checkpoint file.
        device (str): where to put the model.

    Returns:
        tuple: ``(model in eval mode, preprocess(PIL) -> [3, S, S], tokenizer)``;
        ``preprocess`` is a square resize to the model's input size with the
        model's own normalisation; ``tokenizer`` is what
        :class:`CLIPZeroShotClassifier` takes (``None`` when the adapter's default
        applies).

    Raises:
        ValueError: unknown name, files missing from the local cache, or a model
            that cannot be loaded; the message starts with the argument's name.

    Examples::

        >>> model, preprocess, tokenizer = load_clip("ViT-B-16", pretrained="openai")
        >>> model, preprocess, tokenizer = load_clip("./my-hf-clip")  # save_pretrained folder
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"model: expected a model name, hf-hub: id or folder, got {name!r}")
    for adapter_cls in registered_adapters():  # families registered by other packages first
        loaded = adapter_cls.load(name, pretrained, device)
        if loaded is not None:
            return _with_preprocess(name, *loaded)
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)  # libraries log each failed download; our error says it
    try:
        family = "open_clip"
        target = name
        if os.path.isdir(name):
            if os.path.exists(os.path.join(name, "open_clip_config.json")):
                target = "local-dir:" + name
            elif os.path.exists(os.path.join(name, "config.json")):
                family = "transformers"
            else:
                raise ValueError(
                    f"model: folder {name!r} holds neither a config.json (transformers "
                    "save_pretrained) nor an open_clip_config.json"
                )
        elif name.startswith(HF_PREFIX):
            repo = name[len(HF_PREFIX):]
            if _hf_cached_file(repo, "open_clip_config.json") is None:
                config = _hf_cached_file(repo, "config.json")
                if config is None:
                    raise ValueError(
                        f"model: {name!r} is not in the local Hugging Face cache (no network "
                        "here); download it first or pass a local folder"
                    )
                with open(config, encoding="utf-8") as fh:
                    if "model_type" in json.load(fh):
                        family, target = "transformers", repo
        if family == "transformers":
            if pretrained:
                raise ValueError(
                    "pretrained: only for open_clip models; a transformers model's weights come "
                    "with its folder or hub id"
                )
            model, tokenizer = _transformers_model(target, device)
        else:
            model, tokenizer = _open_clip_model(target, pretrained, device)
    finally:
        logging.disable(previous)
    return _with_preprocess(name, model, tokenizer)


def _with_preprocess(
    name: str, model: nn.Module, tokenizer: Any
) -> Tuple[nn.Module, Callable[[Any], Tensor], Any]:
    r"""``(model, its square preprocessing, tokenizer)`` for a loaded model."""
    try:
        adapter = get_adapter(model)
    except TypeError as exc:
        raise ValueError(f"model: {name!r} loaded but {_first_line(exc)}") from None
    size = adapter.input_size()[0]
    return model, square_preprocess(size, adapter.image_mean, adapter.image_std), tokenizer
