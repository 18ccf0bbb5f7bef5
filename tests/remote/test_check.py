"""``python -m remote check``: against real sshd hosts (see conftest.py), no mocks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from remote.__main__ import main
from remote._link import HostSpec

LOCAL = f"{sys.version_info[0]}.{sys.version_info[1]}"
REPO = Path(__file__).resolve().parents[2]


def write_pool(path: Path, specs: list[HostSpec], connect_timeout: float = 5.0) -> Path:
    lines = ["[defaults]", f"connect_timeout = {connect_timeout}"]
    lines.append("strict_host_key_checking = false")
    for spec in specs:
        lines += [
            "",
            f"[hosts.{spec.name}]",
            f'host = "{spec.host}"',
            f"port = {spec.port}",
            f"slots = {spec.slots}",
            f'python = "{spec.python}"',
        ]
        if spec.user:
            lines.append(f'user = "{spec.user}"')
        if spec.identity_file:
            lines.append(f'identity_file = "{spec.identity_file}"')
    path.write_text("\n".join(lines) + "\n")
    return path


def fake_python(directory: Path, name: str, body: str) -> str:
    """An executable that acts as this interpreter after running *body* (like test_links.py)."""
    script = directory / name
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"{body}\n"
        "code = sys.argv[2]\n"
        "sys.argv = ['-c'] + sys.argv[3:]\n"
        "exec(compile(code, '<string>', 'exec'), {'__name__': '__main__'})\n"
    )
    script.chmod(0o755)
    return str(script)


def row(output: str, name: str) -> str:
    lines = [line for line in output.splitlines() if line.split()[:1] == [name]]
    assert len(lines) == 1, output
    return lines[0]


def test_all_hosts_fine(ssh_hosts: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import cloudpickle

    specs = ssh_hosts(2, slots=3)
    pool = write_pool(tmp_path / "pool.toml", specs)
    assert main(["check", str(pool), "--pings", "5"]) == 0
    out = capsys.readouterr().out
    assert "HOST" in out and "LATENCY" in out and str(pool) in out
    python = ".".join(str(part) for part in sys.version_info[:3])
    for spec in specs:
        line = row(out, spec.name)
        assert f"{spec.user}@{spec.host}:{spec.port}" in line
        assert " yes " in line and python in line and cloudpickle.__version__ in line
        assert " 3 " in line and " ms " in line and line.endswith("ok")
    assert "Problems" not in out
    assert "2/2 host(s) usable, 6 slot(s) available" in out


def test_unreachable_host(
    ssh_hosts: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = ssh_hosts(1)[0]
    with socket.socket() as sock:  # a port on which nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = HostSpec(
        name="dead", host="127.0.0.1", port=port, user=good.user, python=good.python, slots=1
    )
    pool = write_pool(tmp_path / "pool.toml", [good, dead], connect_timeout=3)
    assert main(["check", str(pool), "--pings", "2"]) == 1
    out = capsys.readouterr().out
    assert row(out, good.name).endswith("ok")
    line = row(out, "dead")
    assert " no " in line and "unreachable" in line
    assert f"dead: unreachable. Fix: check the host is up and `ssh -p {port} " in out
    assert f"{good.user}@127.0.0.1` works" in out
    assert "1/2 host(s) usable" in out


def test_bad_pool_file(tmp_path: Path) -> None:
    pool = tmp_path / "pool.toml"
    pool.write_text('[hosts.bad]\nhost = "127.0.0.2"\nslots = 0\n')
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "remote", "check", str(pool)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2, done
    assert str(pool) in done.stderr and "[hosts.bad]" in done.stderr
    assert "'slots'" in done.stderr and "Fix:" in done.stderr
    assert done.stdout == ""


def test_missing_pool_file_is_a_bad_pool(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(tmp_path / "nope.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_wrong_python_and_missing_cloudpickle(
    ssh_hosts: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = fake_python(tmp_path, "python37", "sys.version_info = (3, 7, 1, 'final', 0)")
    bare = fake_python(tmp_path, "barepython", "sys.modules['cloudpickle'] = None")
    first, second, third = ssh_hosts(3)
    specs = [
        HostSpec(**{**first.__dict__, "python": old}),
        HostSpec(**{**second.__dict__, "python": bare}),
        third,
    ]
    pool = write_pool(tmp_path / "pool.toml", specs)
    assert main(["check", str(pool), "--pings", "2"]) == 1
    out = capsys.readouterr().out
    mismatch = row(out, first.name)
    assert " yes " in mismatch and "3.7.1" in mismatch and "python mismatch" in mismatch
    assert f"set python = to an interpreter matching {LOCAL}" in out
    missing = row(out, second.name)
    assert " yes " in missing and "missing" in missing and "cloudpickle missing" in missing
    assert f"{second.name}: cloudpickle missing. Fix: pip install cloudpickle on the host" in out
    assert row(out, third.name).endswith("ok")
    assert "1/3 host(s) usable" in out


def test_no_pool_checks_the_embedded_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PARALLELIZE_POOL_FILE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))  # no pool.toml there
    assert main(["check", "--pings", "3"]) == 0
    out = capsys.readouterr().out
    assert "No pool configured" in out and "embedded local pool" in out
    line = row(out, "local")
    assert "local (pipes)" in line and line.endswith("ok")
