"""The README's cluster example, run unchanged as a script on each engine.

For Ray the only edit is the method named in the example's own comment
(``Method.DASK`` -> ``Method.RAY``); the cluster comes from the environment variable.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from engines import DaskCluster, RayCluster

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = "<!-- cluster-example:"


def _example() -> str:
    text = README.read_text()
    after = text[text.index(MARKER) :]
    match = re.search(r"```python\n(.*?)```", after, re.DOTALL)
    assert match is not None, "the README's cluster example is missing"
    return match.group(1)


def _run(script: str, tmp_path: Path, env: dict[str, str]) -> str:
    path = tmp_path / "example.py"
    path.write_text(script)
    done = subprocess.run(
        [sys.executable, str(path)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_readme_example_on_dask(dask_cluster: DaskCluster, tmp_path: Path) -> None:
    out = _run(_example(), tmp_path, {"PARALLELIZE_DASK_ADDRESS": dask_cluster.address})
    assert re.fullmatch(r"60 days, best day \d+ \(peak \d\.\d{3}\)\n", out)


@pytest.mark.ray
def test_readme_example_on_ray(ray_cluster: RayCluster, tmp_path: Path) -> None:
    script = _example()
    assert "Method.DASK" in script
    out = _run(
        script.replace("Method.DASK", "Method.RAY"),
        tmp_path,
        {"PARALLELIZE_RAY_ADDRESS": ray_cluster.address, "RAY_AUTH_MODE": "disabled"},
    )
    assert re.fullmatch(r"60 days, best day \d+ \(peak \d\.\d{3}\)\n", out)


@pytest.fixture(autouse=True)
def _no_stray_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PARALLELIZE_DASK_ADDRESS", raising=False)
    monkeypatch.delenv("PARALLELIZE_RAY_ADDRESS", raising=False)
