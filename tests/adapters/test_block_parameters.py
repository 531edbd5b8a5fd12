r"""The adapter protocol's :meth:`BlockView.named_parameters` in every family: each block
lists exactly the parameters its own forward reads, the model's own tensors, no block
sharing one with another."""

from __future__ import annotations

from typing import Any, Callable, Dict

import pytest
import torch

from captum_clip_surgery import get_adapter
from captum_clip_surgery.adapters.base import BlockView
from tests.adapters.timm_models import BUILDERS
from tests.models import tiny_vit


def _hosts() -> Any:
    from tests.adapters import hosts  # skips where clip / transformers are not installed

    return hosts


FAMILIES: Dict[str, Callable[[], torch.nn.Module]] = {
    "open_clip": tiny_vit,
    "open_clip_custom": lambda: tiny_vit("custom"),
    "open_clip_custom_norms": lambda: tiny_vit("custom", scale_attn_inner=True, scale_attn=True,
                                               scale_heads=True, ls_init_value=0.5),
    "open_clip_layer_scale": lambda: tiny_vit(ls_init_value=0.5),
    "openai": lambda: _hosts().to_openai(_hosts().openclip_vit()),
    "hf_clip": lambda: _hosts().to_hf(_hosts().openclip_vit()),
    "hf_siglip": lambda: _hosts().siglip(),
    "timm_eva02": BUILDERS["eva02"],
    "timm_siglip": BUILDERS["siglip_reg_qknorm_ls"],
    "timm_mobileclip": BUILDERS["mobileclip_vit"],
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_block_parameters_are_what_the_block_reads(family):
    model = FAMILIES[family]()
    adapter = get_adapter(model)
    h, w = adapter.input_size()
    images = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tokens, _ = adapter.image.embed(images.to(adapter.dtype))
    model_params = {id(p) for p in model.parameters()}
    seen: set = set()
    assert adapter.image.blocks
    for i, view in enumerate(adapter.image.blocks):
        listed = {id(p) for _, p in view.named_parameters()}
        assert listed and listed <= model_params, (family, i)
        assert listed.isdisjoint(seen), (family, i)
        seen |= listed
        model.zero_grad(set_to_none=True)
        view.forward(tokens).float().square().sum().backward()
        read = {id(p) for p in model.parameters() if p.grad is not None and bool(p.grad.any())}
        model.zero_grad(set_to_none=True)
        assert read <= listed, (family, i, "the block reads parameters it does not list")
        assert len(read) >= len(listed) - 2, (family, i)  # all but e.g. an unused bias


def test_a_view_that_does_not_list_its_parameters_says_so():
    class Bare(BlockView):
        num_heads, head_dim = 1, 4

        def norm1(self, x):
            return x

        def qkv(self, x):
            return x, x, x

        def attention_logits(self, q, k):
            return q

        def out(self, heads_out):
            return heads_out

        def ls1(self, x):
            return x

        def norm2(self, x):
            return x

        def mlp(self, x):
            return x

        def ls2(self, x):
            return x

        def forward(self, x):
            return x

    with pytest.raises(NotImplementedError, match="Bare does not list its parameters"):
        Bare().named_parameters()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_branch_is_affine_says_what_the_branch_is(family):
    r"""``branch_is_affine`` is true exactly where ``branch`` commutes with a mix of inputs
    whose weights sum to 1 (no inner or post-attention norm)."""
    adapter = get_adapter(FAMILIES[family]())
    g = torch.Generator().manual_seed(1)
    for view in adapter.image.blocks:
        x, y = (torch.randn(2, view.num_heads, 5, view.head_dim, generator=g).to(adapter.dtype)
                for _ in range(2))
        with torch.no_grad():
            mixed = view.branch(0.3 * x + 0.7 * y)
            separate = 0.3 * view.branch(x) + 0.7 * view.branch(y)
        affine = torch.allclose(mixed, separate, atol=1e-5, rtol=1e-4)
        assert view.branch_is_affine == affine, (family, view.branch_is_affine)
