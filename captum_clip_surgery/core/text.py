r"""Text side (``docs/method.md`` §5): prompt templates, prompt-ensembled text features, cache."""

from __future__ import annotations

import functools
import string
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_clip_surgery._validation import check_bool, check_int
from captum_clip_surgery.adapters._common import (
    check_distinct_token_ids,
    check_tokenizer_distinguishes,
    hf_tokenizer,
    openai_imagenet_templates,
    tokenize,
)
from captum_clip_surgery.adapters.base import CLIPAdapter, inference_mode_of

__all__ = [
    "DEFAULT_TEMPLATES",  # noqa: F822 (built on first use, see __getattr__)
    "SCENE_TEMPLATES",
    "default_templates",
    "TextFeatureCache",
    "check_token_ids",
    "validate_texts",
]

#: The five scene templates the CLIP Surgery release adds to CLIP's ImageNet set.
SCENE_TEMPLATES: Tuple[str, ...] = (
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
    "this is the {} in the scene.",
    "this is one {} in the scene.",
)



@functools.cache
def default_templates() -> Tuple[str, ...]:
    r"""The release's 85 templates: CLIP's 80 ImageNet templates plus
    :data:`SCENE_TEMPLATES` (also available as the constant ``DEFAULT_TEMPLATES``)."""
    return openai_imagenet_templates() + SCENE_TEMPLATES


def __getattr__(name: str) -> Any:
    # DEFAULT_TEMPLATES is built on first use: the ImageNet list comes from open_clip,
    # which importing this module must not import
    if name == "DEFAULT_TEMPLATES":
        return default_templates()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def validate_texts(texts: object, name: str = "texts") -> List[str]:
    r"""Return ``texts`` as a list of strings or raise a clear error."""
    if isinstance(texts, str):
        raise TypeError(f"{name}: expected a list of strings, got a single string {texts!r}")
    try:
        items = list(texts)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(
            f"{name}: expected a list of strings, got {type(texts).__name__}"
        ) from None
    if not items:
        raise ValueError(f"{name}: expected at least one text, got an empty list")
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise TypeError(f"{name}: expected strings, item {i} is {type(t).__name__} ({t!r})")
    return items


def validate_templates(templates: object) -> Tuple[str, ...]:
    r"""Return ``templates`` as a tuple of format strings, each with exactly one plain
    ``{}`` replacement field, or raise a clear error naming ``templates``.

    Every template is parsed as :meth:`str.format` parses it
    (:meth:`string.Formatter.parse`): it must hold one replacement field, ``{}``
    itself (no name or index such as ``{x}`` / ``{0}``, no conversion or format
    spec); literal braces are written doubled (``"{{{}}}"`` gives ``{dog}``). A
    template that would fill in the same text for every class (``"{{}}"``: the
    literal ``{}``) or fail at the first call (``"a {x} of {}"``, ``"{} }"``) is
    refused here, at construction.

    Args:
        templates (list[str] or None): prompt templates; ``None`` gives the default 85.

    Returns:
        tuple[str, ...]: the templates.

    Raises:
        TypeError: when ``templates`` is not a list of strings.
        ValueError: naming ``templates`` and the template at fault.

    Examples::

        >>> validate_templates(["a photo of a {}.", "{}"])
        ('a photo of a {}.', '{}')
    """
    if templates is None:
        return default_templates()
    items = validate_texts(templates, "templates")
    for i, t in enumerate(items):
        try:
            fields = [(name, spec, conversion)
                      for _, name, spec, conversion in string.Formatter().parse(t)
                      if name is not None]
        except ValueError as exc:  # a single '{' or '}'
            raise ValueError(
                f"templates: template {i} ({t!r}) is not a valid format string ({exc}); "
                "write literal braces doubled ('{{' and '}}')"
            ) from None
        plain = [f for f in fields if f == ("", "", None)]
        if len(fields) != 1 or len(plain) != 1:
            shown = ", ".join(
                "{" + name + ("!" + conversion if conversion else "") + (":" + spec if spec else "")
                + "}" for name, spec, conversion in fields
            ) or "none"
            raise ValueError(
                f"templates: template {i} ({t!r}) must hold exactly one '{{}}' placeholder for "
                f"the text (no names, indices, conversions or format specs; literal braces "
                f"doubled), got replacement fields: {shown}"
            )
    return tuple(items)


def check_token_ids(ids: object, count: int, context_length: Optional[int] = None) -> Tensor:
    r"""Check a tokenizer's output for ``count`` strings: an integer ``[count, L]`` tensor
    of non-negative ids, ``1 <= L <= context_length`` (when the tower has one)."""
    if not isinstance(ids, Tensor) or ids.ndim != 2:
        raise TypeError(
            "tokenizer: expected token ids as a 2-D tensor [N, L], got "
            f"{type(ids).__name__}{'' if not isinstance(ids, Tensor) else list(ids.shape)}"
        )
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"tokenizer: expected integer token ids, got {ids.dtype}")
    if ids.shape[0] != count or ids.shape[1] == 0:
        raise ValueError(
            f"tokenizer: expected one row of token ids per string ({count} rows, at least one "
            f"column), got shape {list(ids.shape)}"
        )
    if isinstance(context_length, int) and ids.shape[1] > context_length:
        raise ValueError(
            f"tokenizer: expected at most {context_length} tokens per row (the text tower's "
            f"context length), got {ids.shape[1]}"
        )
    if bool((ids < 0).any()):
        raise ValueError(f"tokenizer: expected non-negative token ids, got {int(ids.min())}")
    return ids


class TextFeatureCache:
    r"""Prompt-ensembled text features with a per-(text, templates) cache.

    For each text, every template is filled in, encoded, L2-normalised; the
    mean is L2-normalised again. All missing prompts of a call are tokenized
    together and encoded by the text view's ``encode_many``: in length buckets,
    each run only up to its own last pooled (EOT) position, and for open_clip's
    causal text tower with each shared prefix (a template's words) computed
    once — exact under the causal mask, a small fraction of the full-context
    cost (``benchmarks/bench_core.py``).

    Args:
        adapter (CLIPAdapter): the model's adapter.
        tokenizer (Callable or tokenizer, optional): a callable mapping a list
            of strings to token ids ``[N, L]`` (a tensor, or a mapping with
            ``input_ids``), or a Hugging Face tokenizer / processor (called
            padded and truncated to the model's context length); default: the
            model family's own tokenizer. A Hugging Face tokenizer that gives two
            plainly different texts the same ids is refused here (``ValueError``
            naming ``tokenizer``), any tokenizer that does so for the texts of a call
            when they are encoded.
        truncate (bool): run the text tower only up to the last EOT position.
        chunk_size (int): most prompts encoded per forward.
        bucket_overhead (float, optional): the cost of one forward in tokens,
            which decides how far prompts of different lengths are merged into
            one bucket; default 32 on CPU (where a forward costs its tokens) and
            4096 elsewhere (where small batches leave the device idle).
    """

    def __init__(
        self,
        adapter: CLIPAdapter,
        tokenizer: Optional[Callable[[List[str]], Tensor]] = None,
        truncate: bool = True,
        chunk_size: int = 512,
        bucket_overhead: Optional[float] = None,
    ) -> None:
        if tokenizer is not None and not callable(tokenizer):
            raise TypeError(
                f"tokenizer: expected a callable mapping a list of strings to token ids, or a "
                f"Hugging Face tokenizer or processor, got {type(tokenizer).__name__}"
            )
        check_bool("truncate", truncate)
        check_int("chunk_size", chunk_size, minimum=1)
        self.adapter = adapter
        self.tokenizer = tokenizer if tokenizer is not None else adapter.text.default_tokenizer()
        if hf_tokenizer(self.tokenizer) is not None:  # e.g. an empty one of a bare folder
            check_tokenizer_distinguishes(self.tokenizer, adapter.text.context_length)
        self.truncate = truncate
        if chunk_size < 1:
            raise ValueError(f"chunk_size: expected >= 1, got {chunk_size}")
        self.chunk_size = chunk_size
        self.bucket_overhead = bucket_overhead
        self._cache: Dict[Tuple[str, Tuple[str, ...]], Tensor] = {}

    def clear(self) -> None:
        r"""Forget every cached feature."""
        self._cache.clear()

    def __len__(self) -> int:
        return len(self._cache)

    def token_ids(self, texts: Sequence[str]) -> Tensor:
        r"""Token ids ``[N, L]`` (long, on the model's device) of ``texts`` from
        this cache's tokenizer, whatever its form.

        Raises:
            TypeError: naming ``tokenizer`` when it does not give ``N`` rows of
                integer token ids.
            ValueError: naming ``tokenizer`` when it gives several different texts
                all the same ids (a degenerate tokenizer, e.g. the empty one of a
                Hugging Face folder saved without its tokenizer files).
        """
        context = self.adapter.text.context_length
        ids = check_token_ids(tokenize(self.tokenizer, texts, context), len(texts), context)
        check_distinct_token_ids(list(texts), ids)
        return ids.to(self.adapter.device)

    def features(self, texts: Sequence[str], templates: Tuple[str, ...]) -> Tensor:
        r"""Unit text features ``[T, D]`` (float32, on the model's device).

        Args:
            texts (list[str]): class names or free-form texts.
            templates (tuple[str, ...]): format strings with one ``{}``.

        Returns:
            Tensor: ``[T, D]`` prompt-ensembled, unit-norm features.
        """
        # normal tensors even under torch.inference_mode(): cached features must stay usable
        # by later calls that need autograd
        with torch.inference_mode(False):
            missing = list(dict.fromkeys(t for t in texts if (t, templates) not in self._cache))
            if missing:
                for text, feature in zip(missing, self._encode(missing, templates)):
                    self._cache[(text, templates)] = feature
            device = self.adapter.device
            return torch.stack([self._cache[(t, templates)].to(device) for t in texts])

    @torch.no_grad()
    def _encode(self, texts: List[str], templates: Tuple[str, ...]) -> Tensor:
        prompts = [template.format(text) for text in texts for template in templates]
        ids = self.token_ids(prompts)
        device = self.adapter.device
        ids = ids.to(device)
        chunks = []
        with inference_mode_of(self.adapter.model):
            if self.truncate:
                overhead = self.bucket_overhead
                if overhead is None:
                    overhead = 32.0 if device.type == "cpu" else 4096.0
                index = torch.arange(len(prompts), device=device)
                feats = self.adapter.text.encode_many(ids, self.chunk_size, overhead)
                chunks.append((index, F.normalize(feats.float(), dim=-1)))
            else:
                for index in torch.arange(len(prompts), device=device).split(self.chunk_size):
                    feats = self.adapter.text.encode(ids[index], truncate=False)
                    chunks.append((index, F.normalize(feats.float(), dim=-1)))
        dim = chunks[0][1].shape[-1]
        out = torch.empty(len(prompts), dim, device=device)
        for index, feats in chunks:
            out[index] = feats
        mean = out.reshape(len(texts), len(templates), dim).mean(dim=1)
        return F.normalize(mean, dim=-1)
