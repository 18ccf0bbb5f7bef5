"""``python -m parallelize info`` and the command line."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

import parallelize
from parallelize import ThreadExecutor, _info
from parallelize import __main__ as cli

ROOT = Path(__file__).resolve().parent.parent
ENV_NAMES = ("PARALLELIZE_THREAD_WORKERS", "PARALLELIZE_PROCESS_WORKERS", "PARALLELIZE_POOL_FILE")


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-m", "parallelize", *args],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )


def line_with(text: str, needle: str) -> str:
    matches = [line for line in text.splitlines() if needle in line]
    assert matches, f"no line with {needle!r} in:\n{text}"
    return matches[0]


def test_info_sources_and_environment(tmp_path: Path) -> None:
    proc = run_cli("info", PARALLELIZE_THREAD_WORKERS="7", XDG_CONFIG_HOME=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    thread = line_with(out, "thread_workers ")
    assert " 7 " in thread and "environment variable PARALLELIZE_THREAD_WORKERS=7" in thread
    process = line_with(out, "process_workers ")
    assert f" {os.cpu_count() or 1} " in process and "default (cpu_count)" in process
    assert "PARALLELIZE_THREAD_WORKERS=7" in out
    assert "PARALLELIZE_PROCESS_WORKERS unset" in out
    assert "PARALLELIZE_POOL_FILE unset" in out
    pool = line_with(out, "pool file")
    assert str(tmp_path / "parallelize" / "pool.toml") in pool
    assert "not present: REMOTE uses the embedded local pool" in pool
    for name in ("Python", "parallelize", "cloudpickle", "numpy", "wrapt"):
        line = line_with(out, f"  {name} ")
        assert "not installed" not in line, line
    assert line_with(out, "  Python ").split()[1] == ".".join(map(str, sys.version_info[:3]))
    assert line_with(out, "  parallelize ").split()[1] == importlib.metadata.version("parallelize")
    assert "live executors in this process:" in out
    assert "none" in out.split("live executors in this process:")[1]


def test_info_pool_file_from_environment(tmp_path: Path) -> None:
    pool = tmp_path / "my-pool.toml"
    pool.write_text('[hosts.a]\nhost = "a.example"\n')
    proc = run_cli("info", PARALLELIZE_POOL_FILE=str(pool), PARALLELIZE_PROCESS_WORKERS="3")
    assert proc.returncode == 0, proc.stderr
    line = line_with(proc.stdout, "pool file")
    assert str(pool) in line and "from PARALLELIZE_POOL_FILE" in line and "(present)" in line
    pool.write_text("")  # an invalid file is reported as such
    invalid = run_cli("info", PARALLELIZE_POOL_FILE=str(pool)).stdout
    assert "INVALID" in line_with(invalid, "pool file")
    assert "defines no hosts" in line_with(invalid, "pool file")
    assert f"PARALLELIZE_POOL_FILE={pool}" in proc.stdout
    assert "environment variable PARALLELIZE_PROCESS_WORKERS=3" in line_with(
        proc.stdout, "process_workers "
    )


def test_info_missing_pool_file_from_environment(tmp_path: Path) -> None:
    proc = run_cli("info", PARALLELIZE_POOL_FILE=str(tmp_path / "nope.toml"))
    assert proc.returncode == 0, proc.stderr
    assert "MISSING" in line_with(proc.stdout, "pool file")


def test_info_reports_bad_environment_value() -> None:
    proc = run_cli("info", PARALLELIZE_THREAD_WORKERS="lots")
    assert proc.returncode == 0, proc.stderr
    line = line_with(proc.stdout, "thread_workers ")
    assert "ERROR" in line and "'lots'" in line


def test_info_in_process_shows_configure_and_live_executors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PARALLELIZE_THREAD_WORKERS", "9")
    parallelize.configure(thread_workers=3)
    parallelize.default_executor().submit(int).result()
    with ThreadExecutor(1, name="mine") as mine:
        text = _info.format_info()
        assert mine.name in text
    assert "from configure(thread_workers=3)" in line_with(text, "thread_workers ")
    assert "PARALLELIZE_THREAD_WORKERS=9" in text  # read, though configure() wins
    live = text.split("live executors in this process:")[1]
    assert "'default-thread'" in live and "(default," in live
    assert "'mine'" in live and "(user," in live


def test_help_documents_subcommands() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    assert "demo" in proc.stdout and "info" in proc.stdout
    assert "Without a subcommand, runs the demo" in " ".join(proc.stdout.split())


def test_unknown_subcommand_fails() -> None:
    proc = run_cli("bogus")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr


@pytest.mark.parametrize("argv", [[], ["demo"]])
def test_no_arguments_and_demo_run_the_demo(
    monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    calls: list[str] = []

    def fake_demo() -> int:
        calls.append("demo")
        return 0

    monkeypatch.setattr("parallelize._demo.main", fake_demo)
    assert cli.main(argv) == 0
    assert calls == ["demo"]


def test_info_subcommand_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["info"]) == 0
    assert "parallelize configuration" in capsys.readouterr().out
