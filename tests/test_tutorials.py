r"""Every tutorial notebook runs end to end on the shipped scenes model (offline).

Each notebook is read into memory and executed there (the file is never
rewritten) with nbclient in the ``python3`` kernel, which ipykernel installs into
the environment's ``share/jupyter/kernels`` and jupyter_client runs with this
interpreter. The working directory is a temporary folder, so files the notebooks
write (e.g. evaluation results) land there and no notebook may depend on the
repository's current directory. Any cell error fails the test.
"""

from __future__ import annotations

import re
from pathlib import Path

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


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        pytest.fail(
            f"Jupyter kernel {KERNEL!r} not found: install ipykernel into this environment "
            "(pip install -e '.[test]')"
        )
    # the kernel inherits this environment: one intra-op thread keeps the small models fast
    # on shared CPUs, and no notebook may reach the network in its default configuration
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name=KERNEL,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
