from __future__ import annotations

import copy
from typing import Callable, Dict

import pytest
import torch

from tests.models import tiny_resnet, tiny_vit

TEXTS = ["dog", "cat", "grass", "a red car"]
FEW_TEMPLATES = ["a photo of a {}.", "{}", "there is a {} in the scene."]


@pytest.fixture(params=["vit", "vit_custom", "resnet"])
def any_model(request: pytest.FixtureRequest) -> torch.nn.Module:
    if request.param == "vit":
        return tiny_vit()
    if request.param == "vit_custom":
        return tiny_vit("custom")
    return tiny_resnet()


def native_size(model: torch.nn.Module) -> int:
    return 64 if model.visual.__class__.__name__ == "ModifiedResNet" else 32


def images_for(model: torch.nn.Module, b: int = 2, h: int = 0, w: int = 0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = native_size(model)
    return torch.randn(b, 3, h or s, w or s, generator=g)


class ModelSnapshot:
    r"""Everything about a model that no public call may change."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.state: Dict[str, torch.Tensor] = copy.deepcopy(model.state_dict())
        self.training = {n: m.training for n, m in model.named_modules()}
        self.modules = {n: type(m) for n, m in model.named_modules()}
        self.requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}

    def assert_unchanged(self) -> None:
        state = self.model.state_dict()
        assert state.keys() == self.state.keys()
        for k, v in self.state.items():
            assert torch.equal(state[k], v), f"parameter/buffer {k} changed"
        assert {n: m.training for n, m in self.model.named_modules()} == self.training
        assert {n: type(m) for n, m in self.model.named_modules()} == self.modules
        assert {n: p.requires_grad for n, p in self.model.named_parameters()} == (
            self.requires_grad
        )
        for name, m in self.model.named_modules():
            for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                          "_backward_pre_hooks", "_state_dict_hooks"):
                assert not getattr(m, hooks, {}), f"hook left on {name or 'model'} ({hooks})"
        for name, p in self.model.named_parameters():
            assert p.grad is None, f"gradient left on {name}"
            assert not p._backward_hooks, f"hook left on parameter {name}"


@pytest.fixture
def snapshot() -> Callable[[torch.nn.Module], ModelSnapshot]:
    return ModelSnapshot
