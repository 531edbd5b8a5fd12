r"""Every tutorial notebook runs end to end on the shipped scenes model (offline).

Each notebook is read into memory and executed there (the file is never
rewritten) with nbclient in the ``python3`` kernel, which ipykernel installs into
the environment's ``share/jupyter/kernels`` and jupyter_client runs with this
interpreter. The working directory is a temporary folder, so files the notebooks
write (e.g. evaluation results) land there and no notebook may depend on the
repository's current directory. Any cell error fails the test.

A kernel runs with one intra-op thread, so the selected notebooks are executed
together, as many at a time as the machine has cores, once per session; each
notebook's test then reports its own outcome.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Dict, Optional

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from nbclient import NotebookClient

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
KERNEL = "python3"
CELL_TIMEOUT_S = 600


def test_tutorials_exist() -> None:
    assert NOTEBOOKS, f"no notebooks found in {TUTORIALS}"


def test_readme_lists_every_notebook() -> None:
    readme = (TUTORIALS / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"\(([^()\s]+\.ipynb)\)", readme))
    missing = [p.name for p in NOTEBOOKS if p.name not in listed]
    assert not missing, f"tutorials/README.md does not link {missing}"


def _kernel_missing() -> Optional[str]:
    try:
        KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        return (f"Jupyter kernel {KERNEL!r} not found: install ipykernel into this environment "
                "(pip install -e '.[test]')")
    return None


async def _execute(path: Path, folder: Path, env: Dict[str, str], slots: asyncio.Semaphore
                   ) -> Optional[str]:
    r"""Run one notebook in ``folder``; ``None`` when every cell ran, else the error."""
    async with slots:
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL,
                                resources={"metadata": {"path": str(folder)}})
        try:
            await client.async_execute(env=env)  # CellExecutionError names the cell
        except Exception as error:  # reported by the notebook's own test
            return f"{type(error).__name__}: {error}"
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
                  if o.output_type == "error"]
        return f"error outputs: {errors}" if errors else None


@pytest.fixture(scope="session")
def notebook_outcomes(request: pytest.FixtureRequest,
                      tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Optional[str]]:
    r"""The outcome of every notebook this session selected, run together."""
    missing = _kernel_missing()
    if missing:
        pytest.fail(missing)
    selected = sorted({item.callspec.params["path"] for item in request.session.items
                       if item.originalname == "test_notebook_runs"}, key=str)
    # the kernels inherit this environment: one intra-op thread each, and no notebook may
    # reach the network in its default configuration
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

    async def run_all() -> Dict[str, Optional[str]]:
        slots = asyncio.Semaphore(max(1, min(len(selected), os.cpu_count() or 1)))
        runs = [_execute(p, tmp_path_factory.mktemp(p.stem), env, slots) for p in selected]
        return dict(zip((p.name for p in selected), await asyncio.gather(*runs)))

    return asyncio.run(run_all())


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path: Path, notebook_outcomes: Dict[str, Optional[str]]) -> None:
    outcome = notebook_outcomes[path.name]
    assert outcome is None, f"{path.name}: {outcome}"
