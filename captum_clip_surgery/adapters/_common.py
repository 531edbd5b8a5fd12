r"""Pieces shared by the adapters of several families.

- :func:`tokenize`: any tokenizer a user holds (a callable returning token ids,
  a Hugging Face tokenizer or processor) to a ``LongTensor [N, L]``;
  :func:`check_tokenizer_distinguishes` / :func:`check_distinct_token_ids`: refuse a
  degenerate tokenizer (one that gives different texts the same ids);
- :func:`run_text_blocks`: a pre-norm text transformer run functionally from its
  block views, with or without a causal mask (any attention backend the model
  was configured with is bypassed);
- :func:`clip_bpe_pieces`: the text of CLIP BPE token ids, from whichever CLIP
  tokenizer the user holds (open_clip, OpenAI ``clip``, Hugging Face);
- :class:`MultiheadBlockView`: the block of open_clip's and OpenAI ``clip``'s
  transformers (``ln_1``, an ``nn.MultiheadAttention`` with a fused ``in_proj``,
  ``ln_2``, ``mlp``, optional ``ls_1`` / ``ls_2``);
- :class:`CLIPAttentionPoolHead`: the attention pool of CLIP's ModifiedResNet;
- :func:`openai_imagenet_templates`: the 80 prompt templates of the CLIP paper.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_clip_surgery.adapters.base import (
    AttentionPoolHead,
    BlockView,
    attention,
    merge_heads,
    resize_positional_embedding,
    split_heads,
)

__all__ = [
    "CLIPAttentionPoolHead",
    "MultiheadBlockView",
    "clip_bpe_pieces",
    "TOKENIZER_HELP",
    "TOKENIZER_PROBES",
    "check_distinct_token_ids",
    "check_tokenizer_distinguishes",
    "hf_tokenizer",
    "openai_imagenet_templates",
    "run_text_blocks",
    "tokenize",
]


def openai_imagenet_templates() -> Tuple[str, ...]:
    r"""The 80 ImageNet prompt templates of the CLIP paper (as open_clip ships them), the
    first part of CLIP Surgery's 85-template ensemble."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)


def hf_tokenizer(obj: object) -> Optional[Any]:
    r"""The Hugging Face tokenizer behind ``obj`` (a tokenizer, or a processor
    holding one as ``.tokenizer``), or ``None`` when ``obj`` is neither.

    ``transformers`` is never imported here: a user holding one of its
    tokenizers has imported it already.
    """
    transformers = sys.modules.get("transformers")
    if transformers is None:
        return None
    base = getattr(transformers, "PreTrainedTokenizerBase", None)
    if base is None:
        return None
    if isinstance(obj, base):
        return obj
    inner = getattr(obj, "tokenizer", None)
    return inner if isinstance(inner, base) else None


def tokenize(tokenizer: Any, texts: Sequence[str], context_length: int) -> Tensor:
    r"""Token ids ``[N, L]`` (long) of ``texts`` from any tokenizer a user holds.

    A Hugging Face tokenizer (or a processor holding one) is called the way the
    model families expect: padded to ``context_length`` (``"max_length"``) and
    truncated to it. Any other callable is called with the list of texts and
    must return integer token ids ``[N, L]``, as a tensor or as the
    ``input_ids`` of a mapping (e.g. a ``BatchEncoding``).

    Args:
        tokenizer (Callable or tokenizer): the tokenizer.
        texts (list[str]): ``N`` texts.
        context_length (int): the text tower's context length.

    Returns:
        Tensor: ``[N, L]`` long token ids.

    Raises:
        TypeError: naming ``tokenizer`` when its output is not ``N`` rows of
            integer token ids.
    """
    texts = list(texts)
    hf = hf_tokenizer(tokenizer)
    if hf is not None:
        out = hf(texts, padding="max_length", max_length=context_length, truncation=True,
                 return_tensors="pt")
    else:
        out = tokenizer(texts)
    if isinstance(out, Mapping) or hasattr(out, "input_ids"):
        ids = out["input_ids"] if isinstance(out, Mapping) else out.input_ids
        where = " (its input_ids)"
    else:
        ids, where = out, ""
    if (
        not isinstance(ids, Tensor)
        or ids.ndim != 2
        or ids.is_floating_point()
        or ids.is_complex()
        or ids.dtype == torch.bool
    ):
        shown = (
            f"{ids.dtype} tensor of shape {list(ids.shape)}" if isinstance(ids, Tensor)
            else type(ids).__name__
        )
        raise TypeError(
            f"tokenizer: expected integer token ids as a 2-D tensor [N, L]{where}, got {shown}; "
            "pass a callable returning a LongTensor [N, L], or a Hugging Face tokenizer/processor"
        )
    if ids.shape[0] != len(texts):
        raise ValueError(
            f"tokenizer: expected one row of token ids per string ({len(texts)} rows), got "
            f"{ids.shape[0]} rows"
        )
    return ids.long()


#: Two plainly different texts a working tokenizer of any vocabulary tells apart.
TOKENIZER_PROBES: Tuple[str, str] = ("a photo of a dog.", "a red car on the street.")

#: What a degenerate tokenizer error says to do (one line, for the command line too).
TOKENIZER_HELP = (
    "pass the model's own tokenizer: tokenizer= a transformers tokenizer or processor (e.g. "
    "AutoTokenizer.from_pretrained('openai/clip-vit-base-patch16'), or for SigLIP "
    "'google/siglip-base-patch16-224': the hub id or folder the weights came from) or a "
    "callable returning token ids [N, L]; on the command line --tokenizer PATH_OR_NAME"
)


def check_distinct_token_ids(texts: Sequence[str], ids: Tensor, where: str = "") -> None:
    r"""Refuse token ids that are the same for every one of several different texts.

    A tokenizer that cannot tell texts apart (e.g. the empty tokenizer, with a vocabulary
    of 2, that ``AutoTokenizer`` builds for a Hugging Face folder saved without its
    tokenizer files) gives every text the same features and every map the same picture.

    Args:
        texts (list[str]): the tokenized strings.
        ids (Tensor): their ``[N, L]`` token ids.
        where (str): what the tokenizer is, for the message.

    Raises:
        ValueError: naming ``tokenizer``, when the texts differ but every row of ``ids``
            is the same.
    """
    distinct = list(dict.fromkeys(texts))
    if len(distinct) < 2 or ids.shape[0] < 2 or not bool((ids == ids[:1]).all()):
        return
    raise ValueError(
        f"tokenizer{where}: gives the same token ids {ids[0, :8].tolist()} to every one of "
        f"{len(distinct)} different texts (e.g. {distinct[0]!r} and {distinct[1]!r}): an empty "
        "or wrong tokenizer (a Hugging Face folder saved without its tokenizer files gives one "
        "with a vocabulary of 2), or texts cut off by the context length; " + TOKENIZER_HELP
    )


def check_tokenizer_distinguishes(tokenizer: Any, context_length: int, where: str = "") -> None:
    r"""Tokenize :data:`TOKENIZER_PROBES` and refuse a tokenizer that gives both the same
    ids (see :func:`check_distinct_token_ids`)."""
    texts = list(TOKENIZER_PROBES)
    check_distinct_token_ids(texts, tokenize(tokenizer, texts, context_length), where)


def run_text_blocks(blocks: Sequence[BlockView], x: Tensor, causal: bool) -> Tensor:
    r"""Run pre-norm blocks ``x = x + ls1(out(attn(qkv(norm1 x))))``,
    ``x = x + ls2(mlp(norm2 x))`` with the attention computed here.

    Args:
        blocks (list[BlockView]): the text tower's blocks.
        x (Tensor): ``[N, L, C]`` embedded tokens.
        causal (bool): causal mask (CLIP) or full attention (SigLIP).

    Returns:
        Tensor: ``[N, L, C]`` output of the last block.
    """
    for block in blocks:
        q, k, v = block.qkv(block.norm1(x))
        x = block.residual(x, attention(q, k, v, block.scale, causal=causal))
    return x


_BYTE_DECODER: Optional[dict] = None


def _byte_decoder() -> dict:
    global _BYTE_DECODER
    if _BYTE_DECODER is None:
        from open_clip.tokenizer import bytes_to_unicode

        _BYTE_DECODER = {u: b for b, u in bytes_to_unicode().items()}
    return _BYTE_DECODER


def _piece(text: str, byte_decoder: dict) -> Tuple[bytes, bool]:
    ends = text.endswith("</w>")
    if ends:
        text = text[: -len("</w>")]
    if all(c in byte_decoder for c in text):
        return bytes(byte_decoder[c] for c in text), ends
    return text.encode("utf-8"), ends


def clip_bpe_pieces(token_ids: Sequence[int], tokenizer: Optional[object] = None) -> List[Tuple[bytes, bool]]:
    r"""``(utf-8 bytes, ends_a_word)`` per CLIP BPE token id.

    Decodes with ``tokenizer`` when it can (a Hugging Face tokenizer or processor
    through ``convert_ids_to_tokens``; open_clip's or OpenAI's ``SimpleTokenizer``
    through ``decoder``/``byte_decoder``), else with the CLIP BPE vocabulary that
    open_clip ships (the same in every CLIP host).
    """
    hf = hf_tokenizer(tokenizer)
    if hf is not None:
        texts = hf.convert_ids_to_tokens([int(i) for i in token_ids])
        return [_piece(t, _byte_decoder()) for t in texts]
    tok: Any = tokenizer
    if not (hasattr(tok, "decoder") and hasattr(tok, "byte_decoder")):
        tok = _default_bpe()
    decoder, byte_decoder = tok.decoder, tok.byte_decoder
    unknown = [int(i) for i in token_ids if int(i) not in decoder]
    if unknown:
        raise TypeError(
            f"tokenizer: cannot decode token ids {unknown[:5]} with the CLIP vocabulary; pass the "
            "tokenizer that produced them as a transformers tokenizer or a SimpleTokenizer"
        )
    return [_piece(decoder[int(i)], byte_decoder) for i in token_ids]


_DEFAULT_BPE: Optional[Any] = None


def _default_bpe() -> Any:
    global _DEFAULT_BPE
    if _DEFAULT_BPE is None:
        import open_clip

        _DEFAULT_BPE = open_clip.SimpleTokenizer()
    return _DEFAULT_BPE


class CLIPAttentionPoolHead(AttentionPoolHead):
    r"""The attention pool of CLIP's ModifiedResNet (open_clip and OpenAI ``clip`` share
    its layout): the mean token queries ``[mean; grid] + positional embedding`` through
    ``q_proj`` / ``k_proj`` / ``v_proj``, then ``c_proj``."""

    query_kind = "mean"

    def __init__(self, pool: nn.Module) -> None:
        self.pool_module = pool
        self.num_heads = pool.num_heads
        self.head_dim = pool.q_proj.in_features // pool.num_heads
        side = int(round((pool.positional_embedding.shape[0] - 1) ** 0.5))
        self.native_grid = (side, side)

    def prepare(self, tokens: Tensor, num_prefix_tokens: int, grid: Tuple[int, int]) -> Tensor:
        x = tokens[:, num_prefix_tokens:]
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
        pos = resize_positional_embedding(
            self.pool_module.positional_embedding, self.native_grid, grid
        )
        return x + pos.to(x.dtype)

    def query(self, keys: Tensor) -> Tensor:
        return keys[:, :1]

    def q(self, x: Tensor) -> Tensor:
        return self.pool_module.q_proj(x)

    def k(self, x: Tensor) -> Tensor:
        return self.pool_module.k_proj(x)

    def v(self, x: Tensor) -> Tensor:
        return self.pool_module.v_proj(x)

    def out(self, x: Tensor) -> Tensor:
        return self.pool_module.c_proj(x)


def is_scale_or_identity(module: Optional[nn.Module]) -> bool:
    r"""Whether ``module`` is absent, ``nn.Identity`` or a layer scale (``x * gamma``:
    open_clip's and timm's ``LayerScale``), i.e. linear."""
    if module is None or isinstance(module, nn.Identity):
        return True
    return type(module).__name__ == "LayerScale" and type(module).__module__.split(".")[0] in (
        "open_clip", "timm") and [n for n, _ in module.named_parameters()] == ["gamma"]


class MultiheadBlockView(BlockView):
    r"""The transformer block of open_clip (``ResidualAttentionBlock``) and OpenAI ``clip``
    (``clip.model.ResidualAttentionBlock``): ``ln_1``, an ``nn.MultiheadAttention`` with a
    fused ``in_proj``, ``ln_2``, ``mlp``, and open_clip's layer scales ``ls_1`` / ``ls_2``
    where the block has them. The attention may be sequence-first (OpenAI, older
    open_clip) or batch-first; the view is always batch-first.

    Args:
        block (nn.Module): the block.
    """

    def __init__(self, block: nn.Module) -> None:
        attn = getattr(block, "attn", None)
        if not isinstance(attn, nn.MultiheadAttention):
            raise TypeError(
                "model: expected attention blocks with an nn.MultiheadAttention, got "
                f"{type(attn).__qualname__}"
            )
        if not attn._qkv_same_embed_dim or attn.in_proj_weight is None:
            raise TypeError("model: attention blocks with separate q/k/v weights are not supported")
        self.block = block
        self.attn = attn
        self.num_heads = attn.num_heads
        self.head_dim = attn.embed_dim // attn.num_heads
        self._ls1 = getattr(block, "ls_1", None)
        self._ls2 = getattr(block, "ls_2", None)

    def named_parameters(self) -> Iterator[Tuple[str, nn.Parameter]]:
        return self.block.named_parameters()

    def norm1(self, x: Tensor) -> Tensor:
        return self.block.ln_1(x)

    def qkv(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        q, k, v = F.linear(x, self.attn.in_proj_weight, self.attn.in_proj_bias).chunk(3, dim=-1)
        h = self.num_heads
        return split_heads(q, h), split_heads(k, h), split_heads(v, h)

    def attention_logits(self, q: Tensor, k: Tensor) -> Tensor:
        return (q * self.scale) @ k.transpose(-2, -1)

    def original_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return attention(q, k, v)

    def out(self, heads_out: Tensor) -> Tensor:
        proj = self.attn.out_proj
        return F.linear(merge_heads(heads_out), proj.weight, proj.bias)

    def ls1(self, x: Tensor) -> Tensor:
        return x if self._ls1 is None else self._ls1(x)

    @property
    def branch_is_affine(self) -> bool:
        return is_scale_or_identity(self._ls1)

    def norm2(self, x: Tensor) -> Tensor:
        return self.block.ln_2(x)

    def mlp(self, x: Tensor) -> Tensor:
        return self.block.mlp(x)

    def ls2(self, x: Tensor) -> Tensor:
        return x if self._ls2 is None else self._ls2(x)

    def forward(self, x: Tensor) -> Tensor:
        if getattr(self.attn, "batch_first", False):
            return self.block(x)
        return self.block(x.transpose(0, 1)).transpose(0, 1)
