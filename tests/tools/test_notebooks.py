"""The analytics notebooks in ``notebooks/``: stored without outputs, run top to bottom on a
demo store (a cell that raises fails the test), build their own demo store when no store is
given, and stop with ``StoreLockedError`` naming the writer when a writer holds the file.

Each notebook runs in a fresh kernel of the interpreter running the tests (never a
``python3`` kernelspec some other install left on the machine), with the inline matplotlib
backend, which renders with Agg and needs no display.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from egregora.database.cli.demo import DemoSummary, build_demo_store

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NAMES = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
CELL_TIMEOUT = 120


def test_the_three_notebooks_exist() -> None:
    assert NAMES == [
        "01_runs_dashboard.ipynb", "02_lineage_drilldown.ipynb", "03_data_quality.ipynb"
    ]


class ThisInterpreterKernel(AsyncKernelManager):
    """Starts ``python3`` as ipykernel's own spec for ``sys.executable``: with no kernel
    directories to search, no installed kernelspec can point it at another interpreter."""

    def _kernel_spec_manager_default(self) -> KernelSpecManager:
        return KernelSpecManager(kernel_dirs=[])


def execute(name: str, *, store: Path | None, cwd: Path) -> nbformat.NotebookNode:
    """Runs the notebook top to bottom in a new kernel and returns it with its outputs.

    Raises:
        CellExecutionError: a cell raised (its ``ename``, ``evalue`` and traceback).
    """
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    env = {k: v for k, v in os.environ.items() if k != "EGREGORA_STORE"}
    if store is not None:
        env["EGREGORA_STORE"] = str(store)
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    # A notebook given no store builds the demo under the temporary folder: the test's own.
    env["TMPDIR"] = str(cwd)
    client = NotebookClient(
        nb,
        kernel_name="python3",
        kernel_manager_class=ThisInterpreterKernel,
        timeout=CELL_TIMEOUT,
        shutdown_kernel="immediate",
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute(env=env)
    return nb


def outputs(nb: nbformat.NotebookNode, kind: str = "text") -> list[Any]:
    """Every text printed or displayed by the notebook, or every PNG image it displayed."""
    found: list[Any] = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if kind == "text" and out.output_type == "stream":
                found.append(out.text)
            elif kind == "text" and out.output_type in ("execute_result", "display_data"):
                found.append(out.data.get("text/plain", ""))
            elif kind == "png" and "image/png" in out.get("data", {}):
                found.append(out.data["image/png"])
    return found


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DemoSummary]:
    path = tmp_path_factory.mktemp("notebook-store") / "demo.duckdb"
    return path, build_demo_store(path, seed=7)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stored_without_outputs(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert set(nb.metadata) <= {"kernelspec", "language_info"}
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:
        assert cell.outputs == [], cell.source
        assert cell.execution_count is None, cell.source
        assert set(cell.metadata) <= {"tags"}, cell.source
    # The one parameter comes first, and the store is opened read-only.
    assert 'STORE = os.environ.get("EGREGORA_STORE") or None' in code[0].source
    assert code[0].metadata.get("tags") == ["parameters"]
    assert "DuckDBStorageManager(STORE, read_only=True)" in code[1].source


def _check_dashboard(text: str, images: int, demo: DemoSummary) -> None:
    assert images >= 5
    assert "5 ended runs: failure rate 20.0%, crash rate 0.0%" in text
    assert demo.run_ids["ingest_chat"] in text


def _check_drilldown(text: str, images: int, demo: DemoSummary) -> None:
    assert images >= 1
    # The drill-down follows a document of the first enrichment up to the chat's ingest,
    # and compares the two configs of enrich-urls.
    assert f"run {demo.run_ids['enrich_urls']}" in text
    assert "parents: enrich-urls <- ingest-chat" in text
    assert "summarizer-small  summarizer-large" in text
    assert "B was ROLLED_BACK: its rows were purged" in text


def _check_quality(text: str, images: int, demo: DemoSummary) -> None:
    assert images >= 2
    assert "integrity: sound (no problems found)" in text
    assert "ValidationError  documents" in text
    assert demo.run_ids["enrich_media"] in text
    assert "'pending'" in text


CHECKS = {
    "01_runs_dashboard.ipynb": _check_dashboard,
    "02_lineage_drilldown.ipynb": _check_drilldown,
    "03_data_quality.ipynb": _check_quality,
}


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_on_a_demo_store(
    name: str, demo: tuple[Path, DemoSummary], tmp_path: Path
) -> None:
    path, summary = demo
    nb = execute(name, store=path, cwd=tmp_path)
    text = "\n".join(outputs(nb))
    assert "Traceback" not in text
    assert f"DuckDBStorageManager('{path}', read-only)" in text
    CHECKS[name](text, len(outputs(nb, "png")), summary)


def test_notebook_without_a_store_builds_the_demo(tmp_path: Path) -> None:
    nb = execute("03_data_quality.ipynb", store=None, cwd=tmp_path)
    text = "\n".join(outputs(nb))
    assert f"No store given: building the demo store at {tmp_path}/egregora-demo-" in text
    assert "integrity: sound (no problems found)" in text


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A process holding a new store open for writing: (its path, the process id)."""
    path = tmp_path / "held.duckdb"
    script = textwrap.dedent(
        f"""
        import sys
        from egregora.database import DuckDBStorageManager
        with DuckDBStorageManager({str(path)!r}):
            print("ready", flush=True)
            sys.stdin.read()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        _, err = proc.communicate(input="", timeout=30)
        pytest.fail(f"the writer process could not open {path}:\n{err}")
    try:
        yield path, proc.pid
    finally:
        proc.communicate(input="", timeout=30)


def test_notebook_on_a_store_held_by_a_writer_names_it(
    writer: tuple[Path, int], tmp_path: Path
) -> None:
    path, pid = writer
    with pytest.raises(CellExecutionError) as raised:
        execute("01_runs_dashboard.ipynb", store=path, cwd=tmp_path)
    assert raised.value.ename == "StoreLockedError"
    message = raised.value.evalue
    assert f"held by process {pid}" in message
    assert "Wait for that process to finish" in message
    # The whole error output, traceback included: the driver's error is not shown.
    shown = str(raised.value)
    assert "StoreLockedError" in shown
    assert str(pid) in shown
    assert "IOException" not in shown
