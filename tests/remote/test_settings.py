"""Failure-handling settings: RemoteExecutor arguments, configure(), PARALLELIZE_*
variables, the pool file's [executor] table, defaults, in that order of precedence."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import parallelize
from remote import PoolConfigError, RemoteExecutor
from remote._executor import resolve_options
from remote._pool_config import load_pool

POOL = """
[executor]
backups = false
max_attempts = 5
stall_timeout = 7
host_down_timeout = 30.5
heartbeat_interval = 2

[hosts.a]
host = "a.example"
"""


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in parallelize._config.FAILURE_SETTINGS.values():
        monkeypatch.delenv(name[0], raising=False)
    yield
    parallelize.configure()


def test_pool_file_executor_table(tmp_path: Path) -> None:
    path = tmp_path / "pool.toml"
    path.write_text(POOL)
    config = load_pool(path)
    assert config is not None
    assert dict(config.executor) == {
        "backups": False,
        "max_attempts": 5,
        "stall_timeout": 7.0,
        "host_down_timeout": 30.5,
        "heartbeat_interval": 2.0,
    }


@pytest.mark.parametrize(
    ("line", "field", "expected"),
    [
        ("backups = 1", "backups", "true or false"),
        ("max_attempts = 0", "max_attempts", "integer >= 1"),
        ("stall_timeout = -1", "stall_timeout", "positive number of seconds"),
        ("stall_timout = 3", "stall_timout", "did you mean 'stall_timeout'"),
    ],
)
def test_pool_file_executor_errors(tmp_path: Path, line: str, field: str, expected: str) -> None:
    path = tmp_path / "pool.toml"
    path.write_text(f'[executor]\n{line}\n[hosts.a]\nhost = "a.example"\n')
    with pytest.raises(PoolConfigError) as info:
        load_pool(path)
    assert (info.value.entry, info.value.field) == ("executor", field)
    assert expected in str(info.value) and "Fix:" in str(info.value)


def test_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    table = {"max_attempts": 5, "stall_timeout": 7.0, "backups": False}
    assert resolve_options({}, {}) == {
        "backups": True,
        "max_attempts": 3,
        "stall_timeout": 10.0,
        "host_down_timeout": 60.0,
        "heartbeat_interval": 5.0,
    }
    assert resolve_options({}, table)["max_attempts"] == 5
    monkeypatch.setenv("PARALLELIZE_MAX_ATTEMPTS", "4")
    monkeypatch.setenv("PARALLELIZE_BACKUPS", "yes")
    resolved = resolve_options({}, table)
    assert (resolved["max_attempts"], resolved["backups"]) == (4, True)
    parallelize.configure(max_attempts=2)
    assert resolve_options({}, table)["max_attempts"] == 2
    assert resolve_options({"max_attempts": 9}, table)["max_attempts"] == 9
    assert resolve_options({}, table)["stall_timeout"] == 7.0


def test_bad_values_name_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"configure\(\): stall_timeout must be a positive"):
        parallelize.configure(stall_timeout=0)
    with pytest.raises(ValueError, match="max_attempts must be an integer"):
        parallelize.configure(max_attempts=1.5)  # type: ignore[arg-type]
    monkeypatch.setenv("PARALLELIZE_BACKUPS", "maybe")
    with pytest.raises(ValueError, match=r"PARALLELIZE_BACKUPS.*true or false.*unset it"):
        resolve_options({}, {})
    monkeypatch.delenv("PARALLELIZE_BACKUPS")
    with pytest.raises(ValueError, match=r"RemoteExecutor\(\): host_down_timeout"):
        RemoteExecutor([], host_down_timeout=-1)


def test_executor_reports_what_it_uses(tmp_path: Path) -> None:
    path = tmp_path / "pool.toml"
    path.write_text(POOL.replace('host = "a.example"', 'host = "127.0.0.1"\nport = 1'))
    parallelize.configure(heartbeat_interval=1.5)
    ex = RemoteExecutor(path, max_attempts=2)
    try:
        assert ex.options == {
            "backups": False,
            "max_attempts": 2,
            "stall_timeout": 7.0,
            "host_down_timeout": 30.5,
            "heartbeat_interval": 1.5,
        }
    finally:
        ex.shutdown()


def test_info_shows_failure_settings_and_their_source(tmp_path: Path) -> None:
    path = tmp_path / "pool.toml"
    path.write_text(POOL)
    env = {"PARALLELIZE_POOL_FILE": str(path), "PARALLELIZE_STALL_TIMEOUT": "3", "PATH": "/usr/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "parallelize", "info"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert "stall_timeout      3.0    from environment variable PARALLELIZE_STALL_TIMEOUT=3" in out
    assert "max_attempts       5      from the pool file's [executor] table" in out
