r"""Fixtures of the test suite; shared helpers live in :mod:`tests.helpers`."""

from __future__ import annotations

from typing import Any, Callable, Tuple

import pytest
import torch

from tests.helpers import ModelSnapshot
from tests.models import tiny_resnet, tiny_vit


@pytest.fixture(params=["vit", "vit_custom", "resnet"])
def any_model(request: pytest.FixtureRequest) -> torch.nn.Module:
    if request.param == "vit":
        return tiny_vit()
    if request.param == "vit_custom":
        return tiny_vit("custom")
    return tiny_resnet()


@pytest.fixture
def snapshot() -> Callable[[torch.nn.Module], ModelSnapshot]:
    return ModelSnapshot


@pytest.fixture
def one_thread():
    r"""Tiny models run fastest on one thread (OpenMP oversubscription on shared CPUs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def scenes_clip() -> Tuple[Any, Callable[[Any], torch.Tensor], Callable[..., torch.Tensor]]:
    r"""The shipped scenes CLIP, loaded once for the whole session (no test may change it)."""
    from captum_clip_surgery.scenes import load_scenes_clip

    return load_scenes_clip()


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    r"""The tiny test models run fastest on one thread: two threads on 2 cores only add
    OpenMP spinning to the suite's CPU time. Tests that need more set it themselves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_finish(session: pytest.Session) -> None:
    r"""Start the selected tutorial notebooks in the background (:mod:`tests.test_tutorials`):
    their kernels run on the core the single-threaded suite leaves free."""
    from tests import test_tutorials

    test_tutorials.start_selected(session)


def pytest_sessionfinish(session: pytest.Session) -> None:
    from tests import test_tutorials

    test_tutorials.stop()

