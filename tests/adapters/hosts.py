r"""Tiny seeded CLIPs of every host family, built in code, and their tokenizers.

One set of OpenAI-format weights (a tiny open_clip ``CLIP`` with QuickGELU, every
parameter non-trivial) is loaded into OpenAI ``clip.model.CLIP`` and converted to
transformers ``CLIPModel`` with the official key mapping, so that every host runs
the same network.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import warnings
from typing import Any, Dict, List, Optional

import open_clip
import pytest
import torch

from tests.models import _randomize

# the [test] extra installs both; without them the tests of these hosts are skipped
with warnings.catch_warnings():  # clip-anytorch imports pkg_resources
    warnings.simplefilter("ignore")
    clip = pytest.importorskip("clip")  # its __init__ imports clip.model
transformers = pytest.importorskip("transformers")

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

EMBED = 32
VISION_WIDTH = 128  # OpenAI clip derives heads as width // 64: 2 heads
TEXT_WIDTH = 128
CONTEXT = 77
VOCAB = 49408
IMAGE = 32
PATCH = 8
RESNET_IMAGE = 64


def openclip_vit(seed: int = 0) -> open_clip.CLIP:
    r"""A 3-block ViT CLIP in OpenAI's layout (QuickGELU, 64-wide heads), 32-px inputs."""
    torch.manual_seed(seed)
    model = open_clip.CLIP(
        embed_dim=EMBED,
        vision_cfg=dict(image_size=IMAGE, patch_size=PATCH, width=VISION_WIDTH, layers=3,
                        head_width=64),
        text_cfg=dict(context_length=CONTEXT, vocab_size=VOCAB, width=TEXT_WIDTH, heads=2, layers=2),
        quick_gelu=True,
    )
    _randomize(model)
    return model.eval()


def openclip_resnet(seed: int = 0) -> open_clip.CLIP:
    r"""A ModifiedResNet CLIP in OpenAI's layout on 64-px inputs (a 2x2 pool grid)."""
    torch.manual_seed(seed)
    model = open_clip.CLIP(
        embed_dim=EMBED,
        vision_cfg=dict(image_size=RESNET_IMAGE, layers=(1, 1, 1, 1), width=8, head_width=64),
        text_cfg=dict(context_length=CONTEXT, vocab_size=VOCAB, width=TEXT_WIDTH, heads=2, layers=2),
        quick_gelu=True,
    )
    _randomize(model)
    return model.eval()


def to_openai(model: open_clip.CLIP) -> torch.nn.Module:
    r"""The same weights in OpenAI ``clip.model.CLIP`` (float32)."""
    state = model.state_dict()
    resnet = "visual.proj" not in state
    if resnet:
        layers = tuple(
            len({k.split(".")[2] for k in state if k.startswith(f"visual.layer{b}.")})
            for b in (1, 2, 3, 4)
        )
        vision_width = state["visual.layer1.0.conv1.weight"].shape[0]
        patch = None
        side = round((state["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        resolution = side * 32
    else:
        layers = len([k for k in state if k.startswith("visual.") and k.endswith("attn.in_proj_weight")])
        vision_width = state["visual.conv1.weight"].shape[0]
        patch = state["visual.conv1.weight"].shape[-1]
        side = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        resolution = side * patch
    out = clip.model.CLIP(
        state["text_projection"].shape[1], resolution, layers, vision_width, patch,
        state["positional_embedding"].shape[0], state["token_embedding.weight"].shape[0],
        state["ln_final.weight"].shape[0], TEXT_WIDTH // 64,
        len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")}),
    )
    out.load_state_dict(state)
    return out.eval()


def cast_like_openai(model: torch.nn.Module, dtype: torch.dtype) -> None:
    r"""``clip.model.convert_weights`` for any half dtype: conv, linear and attention
    weights and the projections cast, LayerNorms and embeddings left in float32."""
    for m in model.modules():
        tensors = []
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            tensors = [m.weight, m.bias]
        elif isinstance(m, torch.nn.MultiheadAttention):
            tensors = [m.in_proj_weight, m.in_proj_bias]
        tensors += [getattr(m, name, None) for name in ("text_projection", "proj")]
        for t in tensors:
            if isinstance(t, torch.Tensor):
                t.data = t.data.to(dtype)


def _block_to_hf(state: Dict[str, torch.Tensor], src: str, dst: str, out: Dict[str, torch.Tensor]) -> None:
    q, k, v = state[f"{src}.attn.in_proj_weight"].chunk(3, dim=0)
    qb, kb, vb = state[f"{src}.attn.in_proj_bias"].chunk(3, dim=0)
    for name, w, b in (("q_proj", q, qb), ("k_proj", k, kb), ("v_proj", v, vb)):
        out[f"{dst}.self_attn.{name}.weight"] = w
        out[f"{dst}.self_attn.{name}.bias"] = b
    pairs = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
             "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    for a, b_ in pairs.items():
        for p in ("weight", "bias"):
            out[f"{dst}.{b_}.{p}"] = state[f"{src}.{a}.{p}"]


def _ln(state: Dict[str, torch.Tensor], src: str, dst: str, out: Dict[str, torch.Tensor]) -> None:
    out[f"{dst}.weight"] = state[f"{src}.weight"]
    out[f"{dst}.bias"] = state[f"{src}.bias"]


def hf_config(model: open_clip.CLIP, eos_token_id: int = 49407, attn: str = "sdpa") -> Any:
    visual = model.visual
    vision_layers = len(visual.transformer.resblocks)
    text_layers = len(model.transformer.resblocks)
    return transformers.CLIPConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH,
                         num_attention_heads=TEXT_WIDTH // 64, num_hidden_layers=text_layers,
                         max_position_embeddings=CONTEXT, hidden_act="quick_gelu",
                         eos_token_id=eos_token_id, bos_token_id=49406, pad_token_id=1),
        vision_config=dict(hidden_size=VISION_WIDTH, intermediate_size=4 * VISION_WIDTH,
                           num_attention_heads=VISION_WIDTH // 64, num_hidden_layers=vision_layers,
                           image_size=IMAGE, patch_size=PATCH, hidden_act="quick_gelu"),
        projection_dim=EMBED,
        attn_implementation=attn,
    )


def hf_state_dict(model: open_clip.CLIP) -> Dict[str, torch.Tensor]:
    r"""OpenAI-format weights to transformers ``CLIPModel`` keys (the official mapping)."""
    s = model.state_dict()
    out: Dict[str, torch.Tensor] = {}
    out["text_model.embeddings.token_embedding.weight"] = s["token_embedding.weight"]
    out["text_model.embeddings.position_embedding.weight"] = s["positional_embedding"]
    for i in range(len(model.transformer.resblocks)):
        _block_to_hf(s, f"transformer.resblocks.{i}", f"text_model.encoder.layers.{i}", out)
    _ln(s, "ln_final", "text_model.final_layer_norm", out)
    out["text_projection.weight"] = s["text_projection"].t()
    out["vision_model.embeddings.class_embedding"] = s["visual.class_embedding"]
    out["vision_model.embeddings.patch_embedding.weight"] = s["visual.conv1.weight"]
    out["vision_model.embeddings.position_embedding.weight"] = s["visual.positional_embedding"]
    _ln(s, "visual.ln_pre", "vision_model.pre_layrnorm", out)
    for i in range(len(model.visual.transformer.resblocks)):
        _block_to_hf(s, f"visual.transformer.resblocks.{i}", f"vision_model.encoder.layers.{i}", out)
    _ln(s, "visual.ln_post", "vision_model.post_layernorm", out)
    out["visual_projection.weight"] = s["visual.proj"].t()
    out["logit_scale"] = s["logit_scale"]
    return {k: v.clone() for k, v in out.items()}


def to_hf(model: open_clip.CLIP, eos_token_id: int = 49407, attn: str = "sdpa") -> Any:
    r"""The same weights in a transformers ``CLIPModel``."""
    hf = transformers.CLIPModel(hf_config(model, eos_token_id, attn))
    missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False)
    assert not unexpected and all(k.endswith("position_ids") for k in missing), (missing, unexpected)
    return hf.eval()


def to_hf_pair(model: open_clip.CLIP, attn: str = "sdpa") -> Any:
    r"""The same weights as ``(CLIPVisionModelWithProjection, CLIPTextModelWithProjection)``."""
    config = hf_config(model, attn=attn)
    state = hf_state_dict(model)
    vision_cfg, text_cfg = config.vision_config, config.text_config
    vision_cfg.projection_dim = text_cfg.projection_dim = EMBED
    vision = transformers.CLIPVisionModelWithProjection(vision_cfg)
    text = transformers.CLIPTextModelWithProjection(text_cfg)
    vision_state = {k: v for k, v in state.items() if k.startswith(("vision_model.", "visual_"))}
    text_state = {k: v for k, v in state.items() if k.startswith(("text_model.", "text_"))}
    for half, sub in ((vision, vision_state), (text, text_state)):
        missing, unexpected = half.load_state_dict(sub, strict=False)
        assert not unexpected and all(k.endswith("position_ids") for k in missing), (missing, unexpected)
    return vision.eval(), text.eval()


def siglip(seed: int = 0, attn: str = "sdpa", context: int = 16, vocab: int = 64) -> Any:
    r"""A tiny transformers ``SiglipModel`` (3 blocks, 32-px inputs, patch 8), every
    parameter non-trivial."""
    torch.manual_seed(seed)
    config = transformers.SiglipConfig(
        text_config=dict(vocab_size=vocab, hidden_size=48, intermediate_size=96,
                         num_attention_heads=2, num_hidden_layers=2,
                         max_position_embeddings=context, pad_token_id=1, eos_token_id=2),
        vision_config=dict(hidden_size=48, intermediate_size=96, num_attention_heads=3,
                           num_hidden_layers=3, image_size=IMAGE, patch_size=PATCH),
        attn_implementation=attn,
    )
    model = transformers.SiglipModel(config)
    g = torch.Generator().manual_seed(4321)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in ("logit_scale", "logit_bias"):
                p.copy_(torch.tensor([2.3 if name == "logit_scale" else -1.7]))
            elif p.ndim <= 1:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g) if "weight" in name
                        else 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[-1] ** -0.5)
        probe = model.vision_model.head.probe
        probe.copy_(torch.randn(probe.shape, generator=g))
    return model.eval()


@functools.cache
def _clip_bpe_files() -> str:
    r"""A directory with CLIP's BPE as ``vocab.json`` / ``merges.txt`` (from open_clip's copy)."""
    st = open_clip.SimpleTokenizer()
    vocab = dict(st.encoder)
    vocab["<|startoftext|>"] = vocab.pop("<start_of_text>")
    vocab["<|endoftext|>"] = vocab.pop("<end_of_text>")
    folder = tempfile.mkdtemp(prefix="clip-bpe-")
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f)
    ranks = sorted(st.bpe_ranks.items(), key=lambda kv: kv[1])
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(pair) for pair, _ in ranks) + "\n")
    return folder


@functools.cache
def clip_tokenizer() -> Any:
    r"""A transformers ``CLIPTokenizer`` with CLIP's real BPE, built offline."""
    # from_pretrained on the two files works in transformers 4.x and 5.x alike
    return transformers.CLIPTokenizer.from_pretrained(_clip_bpe_files(), model_max_length=CONTEXT)


SIGLIP_WORDS: List[str] = ["<unk>", "<pad>", "</s>", "a", "photo", "of", "the", "dog", "cat",
                           "grass", "red", "car", "there", "is", "in", "scene", ".", "this", "one"]


@functools.cache
def siglip_tokenizer(context: int = 16) -> Any:
    r"""A word-level transformers tokenizer in SigLIP's manner: appends ``</s>``, pads
    with ``<pad>`` (id 1) to the model length."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(SIGLIP_WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", vocab["</s>"])]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>",
        model_max_length=context,
    )


class ProcessorLike:
    r"""A minimal processor: holds a tokenizer as ``.tokenizer`` and image statistics."""

    def __init__(self, tokenizer: Any, mean: Optional[List[float]] = None,
                 std: Optional[List[float]] = None) -> None:
        self.tokenizer = tokenizer
        self.image_mean = mean or [0.1, 0.2, 0.3]
        self.image_std = std or [0.4, 0.5, 0.6]

    def __call__(self, text: Any = None, **kwargs: Any) -> Any:
        return self.tokenizer(text, **kwargs)
