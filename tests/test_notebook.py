"""Run examples/quickstart.ipynb in a fresh kernel, check its outputs, and check that
shutting the kernel down leaves no process behind (worker processes, REMOTE agents).

The kernel runs this interpreter (a kernelspec written to a temporary directory names
``sys.executable``; nothing is registered globally), with REMOTE forced onto the embedded
pool (``XDG_CONFIG_HOME`` points at an empty directory and ``PARALLELIZE_POOL_FILE`` is
empty) and a unique marker in its environment, which its child processes inherit.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"
KERNEL_NAME = "parallelize-test-python"
MARKER_VAR = "PARALLELIZE_TEST_MARKER"
CELL_TIMEOUT = 120  # seconds per cell
LEFTOVER_TIMEOUT = 30.0  # seconds for the kernel's processes to go away after shutdown


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _require(module: str) -> ModuleType:
    """Import *module*; skip when it is missing, except on CI where that is a failure."""
    if _in_ci():
        return importlib.import_module(module)
    return pytest.importorskip(module)


def _write_kernelspec(jupyter_dir: Path) -> None:
    spec_dir = jupyter_dir / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "parallelize test (this interpreter)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))


def _processes_with(marker: str) -> dict[int, str]:
    """pid -> command line of every process whose environment holds the marker."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            if needle not in environ.split(b"\0"):
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        found[int(entry.name)] = cmdline.strip() or "<zombie or exiting>"
    return found


def _cell(nb: Any, snippet: str) -> Any:
    matches = [c for c in nb.cells if c.cell_type == "code" and snippet in c.source]
    assert len(matches) == 1, f"expected one code cell containing {snippet!r}, got {len(matches)}"
    return matches[0]


def _stream(cell: Any, name: str) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == name)


def _result(cell: Any) -> dict[str, Any]:
    results = [o for o in cell.outputs if o.output_type == "execute_result"]
    assert len(results) == 1, f"expected one execute_result, got {cell.outputs!r}"
    data: dict[str, Any] = results[0].data
    return data


def test_committed_notebook_has_no_outputs() -> None:
    nbformat = _require("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"clear the outputs of {NOTEBOOK.name} before committing: {cell.source[:60]!r}"
            )


@pytest.mark.timeout(900)
def test_quickstart_notebook_runs_and_leaves_no_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nbformat = _require("nbformat")
    nbclient = _require("nbclient")
    _require("ipykernel")

    jupyter_dir = tmp_path / "jupyter"
    _write_kernelspec(jupyter_dir)
    config_dir = tmp_path / "config"  # no parallelize/pool.toml: REMOTE uses the embedded pool
    config_dir.mkdir()
    marker = uuid.uuid4().hex
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    kernel_env = {
        **os.environ,
        MARKER_VAR: marker,
        "XDG_CONFIG_HOME": str(config_dir),
        "PARALLELIZE_POOL_FILE": "",
        "PYTHONPATH": pythonpath,
    }

    nb = nbformat.read(NOTEBOOK, as_version=4)
    # One extra cell, in memory only: which interpreter does the kernel run?
    nb.cells.append(
        nbformat.v4.new_code_cell("import sys as _sys\nprint('KERNEL-PYTHON', _sys.executable)")
    )

    # The kernel-spec search path must see our spec: the manager reads JUPYTER_PATH.
    previous = os.environ.get("JUPYTER_PATH")
    monkeypatch.setenv(
        "JUPYTER_PATH", os.pathsep.join(p for p in (str(jupyter_dir), previous) if p)
    )
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name=KERNEL_NAME,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    try:
        client.execute(env=kernel_env)  # starts, runs every cell, shuts the kernel down
    finally:
        leftovers = _wait_for_no_processes(marker)

    errors = [
        f"{o.ename}: {o.evalue}"
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "error"
    ]
    assert errors == []

    kernel_python = _stream(nb.cells[-1], "stdout")
    assert f"KERNEL-PYTHON {sys.executable}" in kernel_python

    # THREAD: the future is in flight when printed, finished (with its value) later.
    submit = _stream(_cell(nb, "def fetch"), "stdout")
    assert "<SmartFuture pending>" in submit or "<SmartFuture running>" in submit
    use = _cell(nb, "total_rows = sum(")
    assert "total_rows = 828" in _stream(use, "stdout")
    assert _result(use)["text/plain"] == "<SmartFuture finished: {'page': 7, 'rows': 107}>"

    # PROCESS with wait_all(progress=True): the values came back, with a progress bar:
    # a widget where ipywidgets is installed (the dev extra has it; its later states are
    # widget messages, not outputs), else a text bar that reached 8/8.
    progress = _cell(nb, 'desc="count_primes"')
    widget = any(
        "application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in progress.outputs
    )
    assert widget or "8/8" in _stream(progress, "stderr")
    assert "IProgress not found" not in _stream(progress, "stderr")
    counts = ast.literal_eval(_result(progress)["text/plain"])
    assert len(counts) == 8 and all(isinstance(c, int) and c > 0 for c in counts)
    assert counts == sorted(counts)

    # A SmartFuture used as its value: x + 1 (1229 primes below 10,000).
    plus_one = _cell(nb, "x + 1")
    assert "SmartFuture" in _stream(plus_one, "stdout")
    assert _result(plus_one)["text/plain"] == "1230"

    # REMOTE on the embedded pool.
    pi_text = _stream(_cell(nb, "def estimate_pi"), "stdout")
    assert pi_text.startswith("pi is about ")
    assert 3.0 < float(pi_text.split()[-1]) < 3.3

    rows = _result(_cell(nb, "def parse_row"))["text/plain"]
    assert rows.count("<SmartFuture finished") == 2 and "<SmartFuture failed: ValueError" in rows
    failure = _stream(_cell(nb, "traceback.print_exc()"), "stderr")
    assert "RemoteTraceback" in failure
    assert "Traceback on host 'local'" in failure  # 'local': the embedded pool's host
    assert "in parse_row" in failure
    assert "ValueError: invalid literal for int() with base 10: 'eighty-five'" in failure

    # Executor statistics render as an HTML table.
    stats = _result(_cell(nb, "default_executor(Method.PROCESS).stats()"))
    assert "<table" in stats["text/html"]
    assert "default-process" in stats["text/html"]
    assert "ExecutorStats" in stats["text/plain"]

    assert leftovers == {}, f"processes left behind by the notebook's kernel: {leftovers}"


def _wait_for_no_processes(marker: str) -> dict[int, str]:
    """Poll until no process carries the marker; return (and kill) what is left after the
    timeout. An empty dict when /proc is not available (the check needs Linux)."""
    if not Path("/proc/self/environ").exists():
        return {}
    deadline = time.monotonic() + LEFTOVER_TIMEOUT
    while True:
        found = _processes_with(marker)
        if not found or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for pid in found:  # descendants of this test's kernel: do not leave them running
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return found
