"""The scripts and metadata a new user meets first: no reinstall per run, no
setuptools deprecation warnings, a demo that says what it compares."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from parallelize import _demo

if sys.version_info >= (3, 11):
    import tomllib

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is new in 3.11")
def test_license_is_an_spdx_expression() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # A TOML table here makes setuptools (>= 77) print a deprecation warning on every install.
    assert project["license"] == "MIT"
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    assert any(req.replace(" ", "").startswith("setuptools>=77") for req in build["requires"])


def test_bootstrap_installs_only_when_pyproject_changes(tmp_path: Path) -> None:
    """scripts/_bootstrap.sh with a stand-in interpreter that records its calls."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "_bootstrap.sh", tmp_path / "scripts")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    log = tmp_path / "calls.log"
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    python.chmod(python.stat().st_mode | stat.S_IEXEC)

    def bootstrap() -> list[str]:
        log.write_text("")
        subprocess.run(
            ["bash", "-c", f"source {tmp_path}/scripts/_bootstrap.sh && bootstrap_python dev"],
            check=True,
            timeout=60,
            env={**os.environ},
        )
        return [line for line in log.read_text().splitlines() if line]

    first = bootstrap()
    assert any("install" in call and "-e" in call for call in first), first
    assert bootstrap() == []  # nothing changed: no pip at all
    with (tmp_path / "pyproject.toml").open("a") as f:
        f.write("\n# changed\n")
    assert any("-e" in call for call in bootstrap())


def test_demo_section_reports_medians_of_interleaved_rounds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    order: list[str] = []

    def sequential() -> int:
        order.append("s")
        return 1

    def parallel() -> int:
        order.append("p")
        return 1

    _demo._section("TITLE", sequential, parallel, rounds=3)
    out = capsys.readouterr().out
    assert order == ["s", "p", "s", "p", "s", "p"]
    assert "one after another in this process" in out and "through @parallelize" in out
    assert "median of 3 interleaved rounds" in out


def test_demo_says_slower_when_the_parallel_run_loses(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a machine busy with other work the workers may get no CPU: "0.5x faster" would be
    # nonsense to a newcomer; the demo says it was slower, and why.
    times = iter([1.0, 2.0])  # sequential 1 s, parallel 2 s
    monkeypatch.setattr(_demo, "_time", lambda run: (next(times), run()))
    _demo._section("TITLE", lambda: 1, lambda: 1)
    out = capsys.readouterr().out
    assert "2.0x SLOWER" in out and "faster" not in out
