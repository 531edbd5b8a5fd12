r"""A plug-in written against the public API only, as another package would write it:
a toy model family with its adapter (the "add an adapter in one file" recipe of
``docs/architecture.md``) and a toy method (the "add a method in one file" recipe).

Nothing in ``captum_clip_surgery`` knows this file. Importing it registers both through
the public decorators; an installed distribution can declare them instead as entry
points (groups ``captum_clip_surgery.methods`` and ``captum_clip_surgery.adapters``).
"""

from __future__ import annotations

import zlib
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_clip_surgery import LastBlockAttribution, register_adapter, register_method
from captum_clip_surgery.adapters import (
    BlockView,
    ClassTokenHead,
    CLIPAdapter,
    ImageTowerView,
    TextTowerView,
    attention,
    merge_heads,
    resize_positional_embedding,
    split_heads,
)

# --------------------------------------------------------------------------------------
# a model family of its own: a small ViT image tower and a bag-of-words text tower


class ToyBlock(nn.Module):
    r"""A pre-norm block: ``x + attn(norm1 x)``, then ``x + mlp(norm2 x)``."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ToyCLIP(nn.Module):
    r"""A tiny CLIP that no library knows: 32-px images, patch 8, two blocks."""

    def __init__(self, seed: int = 0, width: int = 32, embed: int = 16, vocab: int = 211) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.patch, self.grid, self.vocab, self.context = 8, 4, vocab, 8
        self.patch_embed = nn.Conv2d(3, width, 8, 8, bias=False)
        self.cls = nn.Parameter(0.5 * torch.randn(width))
        self.pos = nn.Parameter(0.5 * torch.randn(1 + self.grid * self.grid, width))
        self.blocks = nn.ModuleList(ToyBlock(width, 2) for _ in range(2))
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, embed, bias=False)
        self.words = nn.Embedding(vocab, embed, padding_idx=0)
        self.logit_scale = nn.Parameter(torch.tensor(2.5))

    def encode_image(self, images: Tensor) -> Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], 1, -1), x], dim=1) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.proj(self.norm(x[:, 0]))

    def encode_text(self, ids: Tensor) -> Tensor:
        mask = (ids > 0).float()
        return (self.words(ids) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)


def toy_tokenizer(texts: List[str], context: int = 8, vocab: int = 211) -> Tensor:
    r"""Words hashed to ids ``1..vocab-1``, padded with 0 (211 ids: no two words of the
    scenes world collide, so no two class names get the same features)."""
    out = torch.zeros(len(texts), context, dtype=torch.long)
    for i, text in enumerate(texts):
        words = text.lower().replace(".", " ").split()[:context]
        for j, word in enumerate(words):
            out[i, j] = 1 + zlib.crc32(word.encode()) % (vocab - 1)
    return out


# --------------------------------------------------------------------------------------
# the adapter: views of the toy model's own modules, nothing copied or changed


class ToyBlockView(BlockView):
    def __init__(self, block: ToyBlock) -> None:
        self.block = block
        self.num_heads = block.attn.num_heads
        self.head_dim = block.attn.embed_dim // block.attn.num_heads

    def norm1(self, x: Tensor) -> Tensor:
        return self.block.norm1(x)

    def qkv(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        attn = self.block.attn
        q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        return tuple(split_heads(t, self.num_heads) for t in (q, k, v))  # type: ignore[return-value]

    def attention_logits(self, q: Tensor, k: Tensor) -> Tensor:
        return (q * self.scale) @ k.transpose(-2, -1)

    def original_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return attention(q, k, v, self.scale)

    def out(self, heads_out: Tensor) -> Tensor:
        return self.block.attn.out_proj(merge_heads(heads_out))

    def ls1(self, x: Tensor) -> Tensor:
        return x

    def norm2(self, x: Tensor) -> Tensor:
        return self.block.norm2(x)

    def mlp(self, x: Tensor) -> Tensor:
        return self.block.mlp(x)

    def ls2(self, x: Tensor) -> Tensor:
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class ToyHead(ClassTokenHead):
    def __init__(self, model: ToyCLIP) -> None:
        self.model = model

    def post_norm(self, x: Tensor) -> Tensor:
        return self.model.norm(x)

    def projection(self, x: Tensor) -> Tensor:
        return self.model.proj(x)


class ToyImageView(ImageTowerView):
    def __init__(self, model: ToyCLIP) -> None:
        self.model = model
        self.patch_size = (model.patch, model.patch)
        self.native_grid = (model.grid, model.grid)
        self.blocks = [ToyBlockView(b) for b in model.blocks]
        self.head = ToyHead(model)

    def embed(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        x = self.model.patch_embed(images)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.model.cls.expand(x.shape[0], 1, -1), x], dim=1)
        return x + resize_positional_embedding(self.model.pos, self.native_grid, grid), grid


class ToyTextView(TextTowerView):
    def __init__(self, model: ToyCLIP) -> None:
        self.model = model
        self.context_length = model.context

    def default_tokenizer(self) -> Callable[[List[str]], Tensor]:
        return toy_tokenizer

    def encode(self, token_ids: Tensor, truncate: bool = True) -> Tensor:
        return self.model.encode_text(token_ids.to(self.model.words.weight.device))


@register_adapter
class ToyAdapter(CLIPAdapter):
    r"""The adapter of :class:`ToyCLIP`; ``load_clip("toy:SEED")`` builds one."""

    family = "toy CLIP (tests/toy_plugin.py)"

    def __init__(self, model: ToyCLIP) -> None:
        super().__init__(model)
        self.image = ToyImageView(model)
        self.text = ToyTextView(model)

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return isinstance(model, ToyCLIP)

    @classmethod
    def load(cls, name: str, pretrained: Optional[str], device: str):  # type: ignore[override]
        if not name.startswith("toy:"):
            return None
        return ToyCLIP(seed=int(name[len("toy:"):])).to(device).eval(), None

    def encode_image(self, images: Tensor) -> Tensor:
        return self.model.encode_image(images)

    def logit_scale(self) -> Tensor:
        return self.model.logit_scale.exp()


# --------------------------------------------------------------------------------------
# the method: SCLIP's shape with another attention (key-key only, residual and MLP kept)


@register_method("toy_kk", title="Toy k-k")
class ToyKKAttribution(LastBlockAttribution):
    r"""The last block attends with ``softmax(k kᵀ/√d)``; residual and MLP kept."""

    method_name = "Toy k-k"

    def last_block_tokens(
        self, block: BlockView, x: Tensor, q: Tensor, k: Tensor, v: Tensor, grid: Tuple[int, int]
    ) -> Tensor:
        return block.residual(x, attention(k, k, v, block.scale))
