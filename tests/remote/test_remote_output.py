"""What REMOTE tasks print reaches the caller: stdout on stdout, stderr on stderr, each line
prefixed with the host's name (embedded pool and a real sshd host, through RemoteExecutor)."""

from __future__ import annotations

import sys
import time

import cloudpickle
import pytest

from remote._executor import RemoteExecutor
from remote._link import HostSpec
from remote._pool_config import embedded_pool

pytestmark = pytest.mark.timeout(120)
WAIT = 60.0

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # hosts cannot import this module


def report(n: int) -> int:
    print(f"result line {n}")
    print(f"problem line {n}", file=sys.stderr)
    return n * 2


@pytest.mark.parametrize("kind", ["embedded", "ssh"])
def test_task_output_goes_to_the_matching_stream(
    kind: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    hosts: list[HostSpec]
    if kind == "embedded":
        hosts = list(embedded_pool(2).hosts)
    else:
        hosts = request.getfixturevalue("ssh_hosts")(1, slots=2)
    name = hosts[0].name
    ex = RemoteExecutor(hosts)
    try:
        assert [f.result(WAIT) for f in [ex.submit(report, n) for n in range(4)]] == [0, 2, 4, 6]
        out, err = capsys.readouterr()
        # A task's stdout arrives before its result: every line is there already.
        assert sorted(out.splitlines()) == [f"[{name}] result line {n}" for n in range(4)]
        deadline = time.monotonic() + WAIT
        while err.count("problem line") < 4:  # stderr has its own, asynchronous path
            assert time.monotonic() < deadline, err
            time.sleep(0.02)
            err += capsys.readouterr().err
        assert all(f"[{name}] problem line {n}" in err for n in range(4))
        assert "result line" not in err
    finally:
        ex.shutdown()
