"""Choosing and configuring the cluster engines (no cluster needed except for the local one)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

import parallelize
from parallelize import Method


def test_import_parallelize_imports_neither_dask_nor_ray() -> None:
    code = (
        "import sys\n"
        "import parallelize\n"
        "@parallelize.parallelize(method=parallelize.Method.DASK)\n"
        "def f(): pass\n"
        "@parallelize.parallelize(method='ray')\n"
        "def g(): pass\n"
        "loaded = [m for m in ('dask', 'distributed', 'ray') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize(
    ("method", "module", "extra"),
    [
        (Method.DASK, "distributed", "dask"),
        (Method.RAY, "ray", "ray"),
    ],
)
def test_missing_extra_fails_at_decoration_with_the_pip_command(
    monkeypatch: pytest.MonkeyPatch, method: Method, module: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed
    with pytest.raises(ImportError, match=rf"pip install 'parallelize\[{extra}\]'"):

        @parallelize.parallelize(method=method)
        def f() -> None: ...


def test_method_names_parse() -> None:
    assert Method.parse("dask") is Method.DASK and Method.parse("RAY") is Method.RAY


@pytest.mark.parametrize("bad", ["", "   ", 8786])
def test_bad_addresses_fail_at_configure(bad: object) -> None:
    with pytest.raises(ValueError, match="dask_address must be a non-empty string"):
        parallelize.configure(dask_address=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ray_address"):
        parallelize.configure(ray_address=bad)  # type: ignore[arg-type]


def test_bad_backups_setting_fails_at_configure() -> None:
    with pytest.raises(ValueError, match="backups must be true or false"):
        parallelize.configure(backups="no")  # type: ignore[arg-type]


def test_without_an_address_a_local_dask_cluster_starts_once_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("distributed")
    from parallelize import _cluster

    monkeypatch.delenv("PARALLELIZE_DASK_ADDRESS", raising=False)
    monkeypatch.setattr(_cluster, "_local_logged", set())
    caplog.set_level(logging.INFO, logger="parallelize")

    @parallelize.parallelize(method=Method.DASK)
    def double(x: int) -> int:
        return 2 * x

    assert double(21).result(120) == 42
    executor = parallelize.default_executor(Method.DASK)
    assert executor._cluster is not None  # type: ignore[attr-defined]
    scheduler = executor.client.scheduler.address  # type: ignore[attr-defined]
    assert scheduler.startswith("tcp://127.0.0.1:")
    parallelize.configure()  # replaces the executor; the next one starts a new local cluster
    assert double(1).result(120) == 2
    notes = [r.getMessage() for r in caplog.records if "local one" in r.getMessage()]
    assert len(notes) == 1 and "PARALLELIZE_DASK_ADDRESS" in notes[0]
