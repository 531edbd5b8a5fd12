r"""Every tutorial notebook runs end to end on the shipped scenes model (offline).

Each notebook is read into memory and executed there (the file is never
rewritten) with nbclient in the ``python3`` kernel, which ipykernel installs into
the environment's ``share/jupyter/kernels`` and jupyter_client runs with this
interpreter. The working directory is a temporary folder, so files the notebooks
write (e.g. evaluation results) land there and no notebook may depend on the
repository's current directory. Any cell error fails the test.

A kernel runs with one intra-op thread, and so does the rest of the suite
(``tests/conftest.py``): the selected notebooks start in the background as soon as
the session has collected its tests (``pytest_collection_finish`` in the conftest),
one at a time while the other tests run, then as many at a time as the machine has
cores once the first notebook test waits for its outcome. Each notebook's test
reports its own outcome; the kernels are shut down when the session ends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Dict, Optional, Sequence

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


#: Scheduling only: the longest notebooks start first.
LONGEST_FIRST = ("06_trust_the_maps.ipynb", "05_training_free_family.ipynb")


def _kernel_missing() -> Optional[str]:
    try:
        KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        return (f"Jupyter kernel {KERNEL!r} not found: install ipykernel into this environment "
                "(pip install -e '.[test]')")
    return None


class BackgroundNotebooks:
    r"""Executes notebooks on an event loop of its own thread, ``slots`` at a time; each
    outcome is ``None`` when every cell ran, else the error."""

    def __init__(self, paths: Sequence[Path], slots: int = 1) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="tutorials-")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="notebooks",
                                        daemon=True)
        self._thread.start()
        self._slots = asyncio.Semaphore(slots)  # bound to the loop on first use
        self._extra = max(1, os.cpu_count() or 1) - slots
        # the kernels inherit this environment: one intra-op thread each, and no notebook
        # may reach the network in its default configuration
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        order = sorted(paths, key=lambda p: (p.name not in LONGEST_FIRST,
                                              LONGEST_FIRST.index(p.name)
                                              if p.name in LONGEST_FIRST else 0, p.name))
        self._futures: Dict[str, concurrent.futures.Future[Optional[str]]] = {
            p.name: asyncio.run_coroutine_threadsafe(self._execute(p, env), self._loop)
            for p in order}

    async def _execute(self, path: Path, env: Dict[str, str]) -> Optional[str]:
        async with self._slots:
            folder = Path(self._folder.name) / path.stem
            folder.mkdir()
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

    def result(self, name: str) -> Optional[str]:
        r"""Wait for a notebook (the other tests are done: every core may run one now)."""
        for _ in range(self._extra):
            self._loop.call_soon_threadsafe(self._slots.release)
        self._extra = 0
        return self._futures[name].result()

    def close(self) -> None:
        r"""Cancel what has not finished, shut its kernels down and remove the folders."""
        for future in self._futures.values():
            future.cancel()

        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(drain(), self._loop).result(timeout=60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()
        self._folder.cleanup()


_RUNNER: Optional[BackgroundNotebooks] = None


def start_selected(session: pytest.Session) -> None:
    r"""Start the notebooks the session selected (called once tests are collected)."""
    global _RUNNER
    if session.config.option.collectonly or _kernel_missing():
        return
    selected = {item.callspec.params["path"] for item in session.items
                if item.originalname == "test_notebook_runs"}
    if selected:
        _RUNNER = BackgroundNotebooks(sorted(selected, key=str))


def stop() -> None:
    r"""Shut the background notebooks down (the session ends)."""
    global _RUNNER
    if _RUNNER is not None:
        _RUNNER.close()
        _RUNNER = None


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path: Path) -> None:
    missing = _kernel_missing()
    if missing:
        pytest.fail(missing)
    assert _RUNNER is not None, "the conftest's pytest_collection_finish did not start it"
    outcome = _RUNNER.result(path.name)
    assert outcome is None, f"{path.name}: {outcome}"
