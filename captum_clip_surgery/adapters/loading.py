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
them gives a ``ValueError`` naming the argument. Nothing is loaded partly: a checkpoint
that lacks some of the model's tensors, or holds tensors the model does not have, is an
error naming them (``allow_partial=True`` loads such a transformers checkpoint with a
warning instead), and a config that describes a far larger model than its checkpoint
holds, or more than :data:`MAX_PARAMETERS` parameters, is refused before anything is
built.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from typing import Any, Callable, Iterable, List, Mapping, Optional, Sequence, Tuple

from torch import Tensor, nn

from captum_clip_surgery._validation import check_bool, check_int
from captum_clip_surgery.adapters._common import check_tokenizer_distinguishes, hf_tokenizer
from captum_clip_surgery.adapters.registry import get_adapter, registered_adapters

__all__ = [
    "MAX_PARAMETERS",
    "config_parameters",
    "load_clip",
    "load_tokenizer",
    "square_preprocess",
]

HF_PREFIX = "hf-hub:"

#: The largest model ``load_clip`` builds, in parameters estimated from its config
#: (:func:`config_parameters`): 1e10, 40 GB in float32 — building (and randomly
#: initialising) more takes minutes and more memory than a machine explaining images
#: has; a config beyond it is refused before anything is built.
MAX_PARAMETERS = 10_000_000_000

#: A config is refused before building when it describes more than this many times the
#: parameters its checkpoint holds (plus a million for buffers and rounding): the rest
#: would be random, and building it can take minutes. Smaller gaps are caught exactly by
#: the missing-key check after loading.
_CONFIG_OVER_CHECKPOINT = 2.0

#: Weight files of an open_clip folder, as open_clip looks for them.
_OPEN_CLIP_WEIGHTS = (".safetensors", ".bin", ".pth")

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


def _tower_parameters(cfg: Mapping[str, Any]) -> int:
    r"""Rough parameter count of one transformer tower config (transformers' ``hidden_size``
    / ``num_hidden_layers`` / ``intermediate_size`` or open_clip's ``width`` / ``layers`` /
    ``mlp_ratio``); 0 when the config does not say."""
    width = cfg.get("hidden_size", cfg.get("width"))
    layers = cfg.get("num_hidden_layers", cfg.get("layers"))
    if isinstance(layers, (list, tuple)):  # a ResNet's stages: blocks of about 17 w^2 each
        layers = sum(int(v) for v in layers if isinstance(v, int))
    if isinstance(width, bool) or isinstance(layers, bool) or not isinstance(width, int) \
            or not isinstance(layers, int) or width <= 0 or layers <= 0:
        return 0
    inner = cfg.get("intermediate_size")
    if not isinstance(inner, int) or isinstance(inner, bool) or inner <= 0:
        ratio = cfg.get("mlp_ratio", 4.0)
        inner = int(width * (ratio if isinstance(ratio, (int, float)) else 4.0))
    total = layers * (4 * width * width + 2 * width * inner)
    for key in ("vocab_size", "max_position_embeddings", "context_length"):
        value = cfg.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            total += value * width
    image, patch = cfg.get("image_size"), cfg.get("patch_size")
    if isinstance(image, int) and isinstance(patch, int) and patch > 0:
        total += (image // patch) ** 2 * width + 3 * patch * patch * width
    return total


def config_parameters(config: Mapping[str, Any]) -> int:
    r"""Estimate the parameters of the model a config describes, without building it.

    Every (sub-)config that names a tower's width and depth counts ``depth · (4 w² + 2 w
    · inner)`` (attention and MLP) plus its token, position and patch embeddings:
    transformers configs (``text_config`` / ``vision_config``: ``hidden_size``,
    ``num_hidden_layers``, ``intermediate_size``, ``vocab_size``, ...) and open_clip
    ones (``text_cfg`` / ``vision_cfg``: ``width``, ``layers``, ``mlp_ratio``, ...).
    Parts the config does not describe this way (timm towers) count nothing, so the
    estimate is a lower bound of the real count, typically within a few percent of it.

    Args:
        config (Mapping): the config as a dict (``config.json``, or the
            ``model_cfg`` of an ``open_clip_config.json``).

    Returns:
        int: the estimate.

    Examples::

        >>> config_parameters({"vision_cfg": {"width": 768, "layers": 12}})
        84934656
    """
    total = _tower_parameters(config)
    for key, value in config.items():
        if isinstance(value, Mapping) and not key.endswith("_dict"):
            total += config_parameters(value)
    return total


def _safetensors_parameters(files: Iterable[str]) -> Optional[int]:
    r"""The number of values the safetensors ``files`` hold, from their headers only
    (nothing is read beyond them); ``None`` when a file is missing or not readable."""
    from safetensors import safe_open

    total = 0
    for path in files:
        try:
            with safe_open(path, framework="pt") as fh:
                for key in fh.keys():
                    count = 1
                    for side in fh.get_slice(key).get_shape():
                        count *= int(side)
                    total += count
        except Exception:  # a truncated or foreign file: the loader says what is wrong
            return None
    return total


def _hf_weight_files(path_or_id: str, local: bool) -> List[str]:
    r"""The safetensors files of a transformers checkpoint (folder or cached hub id)."""
    def find(name: str) -> Optional[str]:
        if local:
            path = os.path.join(path_or_id, name)
            return path if os.path.isfile(path) else None
        return _hf_cached_file(path_or_id, name)

    single = find("model.safetensors")
    if single is not None:
        return [single]
    index = find("model.safetensors.index.json")
    if index is None:
        return []
    with open(index, encoding="utf-8") as fh:
        shards = sorted(set(json.load(fh).get("weight_map", {}).values()))
    found = [find(shard) for shard in shards]
    return [f for f in found if f is not None] if all(found) else []


def _check_config_size(config: Mapping[str, Any], files: Sequence[str], what: str,
                       argument: str = "model") -> None:
    r"""Refuse, before building, a config far beyond its checkpoint (more than twice the
    parameters it holds: ``allow_partial`` does not lift this) or beyond
    :data:`MAX_PARAMETERS`; the message starts with ``argument``."""
    estimate = config_parameters(config)
    if estimate > MAX_PARAMETERS:
        raise ValueError(
            f"{argument}: the config of {what} describes about {estimate:,} parameters, more than "
            f"load_clip builds ({MAX_PARAMETERS:,}: building it would take minutes and "
            f"{4 * estimate / 1e9:,.0f} GB); check the config's sizes (num_hidden_layers, "
            "hidden_size, ...)"
        )
    held = _safetensors_parameters(files) if files else None
    if held is not None and estimate > _CONFIG_OVER_CHECKPOINT * held + 1_000_000:
        raise ValueError(
            f"{argument}: the config of {what} describes about {estimate:,} parameters but its "
            f"checkpoint holds {held:,}: the rest would be random (does the config match the "
            "checkpoint? num_hidden_layers, hidden_size, ...); nothing was built"
        )


def _shown(keys: Sequence[str], limit: int = 6) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _check_loaded_keys(what: str, missing: Sequence[str], unexpected: Sequence[str],
                       mismatched: Sequence[Any], allow_partial: Optional[bool],
                       argument: str = "model") -> None:
    r"""An error (a warning with ``allow_partial``) naming the tensors a checkpoint lacks,
    the ones the model does not have, and the ones of another shape; the message starts
    with ``argument``. ``allow_partial=None``: no partial load is offered (always an
    error, without the hint to allow it)."""
    problems = []
    if missing:
        problems.append(f"lacks {len(missing)} of the model's tensors ({_shown(missing)}), "
                        "which would stay randomly initialised")
    if unexpected:
        problems.append(f"holds {len(unexpected)} tensors the model does not have "
                        f"({_shown(unexpected)})")
    if mismatched:
        names = [m[0] if isinstance(m, (tuple, list)) else str(m) for m in mismatched]
        problems.append(f"holds {len(names)} tensors of another shape ({_shown(names)})")
    if not problems:
        return
    message = f"the checkpoint of {what} " + "; it ".join(problems)
    if allow_partial:
        warnings.warn(f"load_clip: {message}; loaded anyway (allow_partial=True)",
                      UserWarning, stacklevel=3)
        return
    if allow_partial is None:
        raise ValueError(f"{argument}: {message}")
    raise ValueError(
        f"{argument}: {message}; pass allow_partial=True (clip-surgery: "
        "--allow-partial-weights) to load it anyway"
    )


def _one_line(exc: BaseException, limit: int = 600) -> str:
    r"""An exception's whole message on one line (a state-dict error names its keys on the
    lines after the first), shortened to ``limit`` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _transformers_checked(path_or_id: str, argument: str = "model") -> Any:
    r"""The ``transformers`` module, once a local transformers model's config is read and
    its size checked against its weight files (:func:`_check_config_size`); every
    refusal is a ``ValueError`` starting with ``argument``."""
    try:
        import transformers
    except ImportError:
        raise ValueError(
            f"{argument}: {path_or_id!r} is a Hugging Face transformers model; install the "
            "[hf] extra (pip install 'captum-clip-surgery[hf]')"
        ) from None
    try:
        config = transformers.AutoConfig.from_pretrained(path_or_id, local_files_only=True)
    except Exception as exc:  # missing or broken config.json, unknown model type
        raise ValueError(
            f"{argument}: could not read the config of the transformers model {path_or_id!r} "
            f"from local files: {_first_line(exc)}"
        ) from None
    files = _hf_weight_files(path_or_id, os.path.isdir(path_or_id))
    _check_config_size(config.to_dict(), files, repr(path_or_id), argument)
    return transformers


def _transformers_model(
    path_or_id: str, device: str, allow_partial: bool = False
) -> Tuple[nn.Module, Any]:
    transformers = _transformers_checked(path_or_id)
    try:
        model, info = transformers.AutoModel.from_pretrained(
            path_or_id, local_files_only=True, output_loading_info=True
        )
    except Exception as exc:  # missing files, unknown architecture, bad weights
        raise ValueError(
            f"model: could not load the transformers model {path_or_id!r} from local files "
            f"(offline, or not downloaded?): {_first_line(exc)}"
        ) from None
    _check_loaded_keys(repr(path_or_id), list(info.get("missing_keys", ())),
                       list(info.get("unexpected_keys", ())),
                       list(info.get("mismatched_keys", ())), allow_partial)
    tokenizer: Any = None
    for loader in (transformers.AutoProcessor, transformers.AutoTokenizer):
        try:
            tokenizer = loader.from_pretrained(path_or_id, local_files_only=True)
            break
        except Exception:  # a model saved without its tokenizer files
            continue
    return model.to(device).eval(), tokenizer


def _open_clip_checkpoint(folder: str) -> Optional[str]:
    r"""The weight file open_clip loads from a model folder (its own preference order)."""
    names = sorted(n for n in os.listdir(folder) if n.endswith(_OPEN_CLIP_WEIGHTS))
    preferred = ["open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                 "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth",
                 "model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth"]
    for name in preferred:
        if name in names:
            return os.path.join(folder, name)
    names.sort(key=lambda n: not n.endswith(".safetensors"))
    return os.path.join(folder, names[0]) if names else None


def _open_clip_model(name: str, pretrained: Optional[str], device: str) -> Tuple[nn.Module, Any]:
    import open_clip

    if os.path.exists(SCENES_CONFIG) and "scenes_clip" not in open_clip.list_models():
        open_clip.add_model_config(SCENES_CONFIG)  # the shipped model's architecture, by name
    folder = name[len("local-dir:"):] if name.startswith("local-dir:") else None
    hub = name.startswith(HF_PREFIX) or folder is not None
    if not hub and name not in open_clip.list_models():
        known = ", ".join(sorted(open_clip.list_models())[:8])
        raise ValueError(
            f"model: unknown open_clip model {name!r} (known names include {known}, ...); "
            "expected an open_clip name, an hf-hub: id or a local model folder"
        )
    if pretrained and os.path.sep in pretrained and not os.path.exists(pretrained):
        raise ValueError(f"pretrained: checkpoint file not found: {pretrained}")
    checkpoint: Optional[str] = None
    config: Optional[Mapping[str, Any]] = None
    if folder is not None:
        checkpoint = _open_clip_checkpoint(folder)
        if checkpoint is None:  # open_clip would build a random model and only log it
            raise ValueError(
                f"model: folder {folder!r} holds an open_clip_config.json but no weights "
                "(open_clip_model.safetensors, open_clip_pytorch_model.bin, ...); the model "
                "would be random"
            )
        with open(os.path.join(folder, "open_clip_config.json"), encoding="utf-8") as fh:
            loaded = json.load(fh)
        config = loaded.get("model_cfg", loaded) if isinstance(loaded, dict) else None
    elif not name.startswith(HF_PREFIX):
        config = open_clip.get_model_config(name)
        if pretrained and os.path.isfile(pretrained):
            checkpoint = pretrained
    if isinstance(config, Mapping):
        files = [checkpoint] if checkpoint and checkpoint.endswith(".safetensors") else []
        _check_config_size(config, files, repr(folder or name))
    try:
        # require_pretrained: a folder or hub id without weights is an error, not a random
        # model; open_clip loads a full checkpoint strictly (missing or unexpected keys fail)
        model = open_clip.create_model(name, pretrained=pretrained, device=device,
                                       require_pretrained=hub or bool(pretrained))
    except Exception as exc:  # network, hub and checkpoint errors all land here
        what = f"weights {pretrained!r} for {name}" if pretrained else f"model {name!r}"
        raise ValueError(
            f"{'pretrained' if pretrained else 'model'}: could not load {what} "
            f"(offline, or not a valid checkpoint?): {_one_line(exc)}"
        ) from None
    return model.eval(), open_clip.get_tokenizer(name)


def load_tokenizer(name_or_path: str) -> Any:
    r"""A tokenizer by name or folder, from local files or caches only.

    Tried in turn: ``transformers.AutoTokenizer.from_pretrained(name_or_path,
    local_files_only=True)`` (a folder holding tokenizer files, or a hub id in the local
    Hugging Face cache), then open_clip's tokenizer of an open_clip model name.

    Args:
        name_or_path (str): a folder, a Hugging Face hub id, or an open_clip model name.

    Returns:
        a tokenizer :class:`CLIPZeroShotClassifier` takes.

    Raises:
        ValueError: naming ``tokenizer`` when none can be loaded.

    Examples::

        >>> tokenizer = load_tokenizer("google/siglip-base-patch16-224")  # cached hub id
        >>> model, preprocess, _ = load_clip("./siglip-without-tokenizer-files")
    """
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ValueError(f"tokenizer: expected a folder, hub id or model name, got {name_or_path!r}")
    reasons: List[str] = []
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)  # libraries log each failed download; our error says it
    try:
        try:
            import transformers
        except ImportError:
            transformers = None
        if transformers is not None:
            try:
                return transformers.AutoTokenizer.from_pretrained(
                    name_or_path, local_files_only=True
                )
            except Exception as exc:  # not a tokenizer folder / not cached
                reasons.append(f"transformers: {_first_line(exc).rstrip('. ')}")
        import open_clip

        if name_or_path in open_clip.list_models():
            try:
                return open_clip.get_tokenizer(name_or_path)
            except Exception as exc:  # its tokenizer must be downloaded
                reasons.append(f"open_clip: {_first_line(exc).rstrip('. ')}")
    finally:
        logging.disable(previous)
    raise ValueError(
        f"tokenizer: could not load a tokenizer from {name_or_path!r} from local files "
        f"({'; '.join(reasons) or 'not a folder, cached hub id or open_clip model name'}); "
        "expected a folder with tokenizer files, a Hugging Face hub id in the local cache, "
        "or an open_clip model name"
    )


def load_clip(
    name: str,
    pretrained: Optional[str] = None,
    device: str = "cpu",
    allow_partial: bool = False,
    tokenizer: Optional[str] = None,
) -> Tuple[nn.Module, Callable[[Any], Tensor], Any]:
    r"""Load a CLIP model, its square preprocessing and its tokenizer from local files.

    Args:
        name (str): an open_clip model name, an ``hf-hub:`` id, or a local folder
            (``save_pretrained`` output, or one with an ``open_clip_config.json``).
        pretrained (str, optional): open_clip only: a pretrained tag or a local
            checkpoint file.
        device (str): where to put the model.
        allow_partial (bool): load a transformers checkpoint that lacks some of the
            model's tensors (left randomly initialised) or holds others, with a warning
            naming them, instead of the default error. A config that describes more
            than twice the parameters its checkpoint holds is refused all the same.
            open_clip checkpoints always load strictly.
        tokenizer (str, optional): where the tokenizer comes from (a folder, a cached
            hub id or an open_clip model name, see :func:`load_tokenizer`), for a
            model folder saved without its tokenizer files; default the model's own.

    Returns:
        tuple: ``(model in eval mode, preprocess(PIL) -> [3, S, S], tokenizer)``;
        ``preprocess`` is a square resize to the model's input size with the
        model's own normalisation; ``tokenizer`` is what
        :class:`CLIPZeroShotClassifier` takes (``None`` when the adapter's default
        applies).

    Raises:
        ValueError: unknown name, files missing from the local cache, a model that
            cannot be loaded, a checkpoint that lacks tensors of the model or holds
            others (naming them), a folder without weights, or a config far larger than
            its checkpoint or than :data:`MAX_PARAMETERS` (refused before building), a
            tokenizer that cannot be loaded or cannot tell texts apart (e.g. the empty
            one ``AutoTokenizer`` makes of a folder saved without tokenizer files); the
            message starts with the argument's name.

    Examples::

        >>> model, preprocess, tokenizer = load_clip("ViT-B-16", pretrained="openai")
        >>> model, preprocess, tokenizer = load_clip("./my-hf-clip")  # save_pretrained folder
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"model: expected a model name, hf-hub: id or folder, got {name!r}")
    check_bool("allow_partial", allow_partial)
    own_tokenizer = load_tokenizer(tokenizer) if tokenizer is not None else None
    for adapter_cls in registered_adapters():  # families registered by other packages first
        loaded = adapter_cls.load(name, pretrained, device)
        if loaded is not None:
            model, loaded_tokenizer = loaded
            chosen = own_tokenizer if own_tokenizer is not None else loaded_tokenizer
            return _with_preprocess(name, model, chosen)
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
            model, loaded_tokenizer = _transformers_model(target, device, allow_partial)
        else:
            model, loaded_tokenizer = _open_clip_model(target, pretrained, device)
    finally:
        logging.disable(previous)
    if own_tokenizer is not None:
        return _with_preprocess(name, model, own_tokenizer)
    return _with_preprocess(name, model, loaded_tokenizer, family == "transformers")


def _with_preprocess(
    name: str, model: nn.Module, tokenizer: Any, need_tokenizer: bool = False
) -> Tuple[nn.Module, Callable[[Any], Tensor], Any]:
    r"""``(model, its square preprocessing, tokenizer)`` for a loaded model; a Hugging Face
    tokenizer that cannot tell texts apart is refused, and with ``need_tokenizer`` a
    missing one too (the adapter's default says what to pass)."""
    try:
        adapter = get_adapter(model)
    except TypeError as exc:
        raise ValueError(f"model: {name!r} loaded but {_first_line(exc)}") from None
    if tokenizer is not None and hf_tokenizer(tokenizer) is not None:
        check_tokenizer_distinguishes(tokenizer, adapter.text.context_length,
                                      f" (the tokenizer files of {name!r})")
    elif tokenizer is None and need_tokenizer:
        adapter.text.default_tokenizer()  # raises the clear error when there is none
    size = adapter.input_size()[0]
    return model, square_preprocess(size, adapter.image_mean, adapter.image_std), tokenizer
