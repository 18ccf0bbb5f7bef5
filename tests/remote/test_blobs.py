"""Large arguments sent once per host (remote/_blobs.py), share(), blob compression.

Bytes are measured on the links (``stats().extra["bytes_sent"]``: bytes written to each
host's current connection) of real agents behind real OpenSSH servers (``sshd`` fixtures).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import stat
import sys
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pytest
from sshd import EventRecorder
from test_agent import AgentProc, expect_protocol_error

from parallelize import ProcessExecutor, Shared, ThreadExecutor, share
from remote import _wire
from remote._blobs import (
    Blob,
    BlobArgs,
    BlobLRU,
    BlobRef,
    prepare_args,
    zstd_version,
)
from remote._errors import HostErrorKind, HostUnavailableError, PoolConfigError
from remote._executor import RemoteExecutor
from remote._link import HostSpec
from remote._pool_config import embedded_pool, parse_pool
from remote._ssh_link import SSHLink

WAIT = 60.0
MB = 1 << 20

cloudpickle.register_pickle_by_value(sys.modules[__name__])


# -- tasks (pickled by value: hosts cannot import this module) ------------------------------


def total(a: Any, i: int = 0) -> float:
    return float(np.asarray(a).sum()) + i


def agent_pid_and_sum(a: Any) -> tuple[int, float]:
    return os.getppid(), float(a.sum())  # a slot's parent is its agent


def try_write(a: Any) -> str:
    try:
        a[0] = 1.0
    except ValueError as exc:
        return f"refused: {exc}"
    return "written"


def identity_check(a: Any, b: Any) -> bool:
    return a is b


# -- pure logic ------------------------------------------------------------------------------


def _blob(tag: int, size: int) -> Blob:
    return Blob(bytes([tag]) * 32, b"x" * size)


def test_lru_sends_once_and_evicts_oldest_unpinned() -> None:
    lru = BlobLRU(max_bytes=100)
    a, b, c = _blob(1, 60), _blob(2, 30), _blob(3, 50)
    assert lru.use([a]) == ([a], [])
    assert lru.use([a]) == ([], [])
    assert lru.use([b]) == ([b], [])
    send, evicted = lru.use([c])  # 140 bytes: a, the oldest, goes
    assert send == [c] and evicted == [a.digest]
    assert lru.total_bytes == 80
    # blobs of one call are never evicted for each other, even above the bound
    send, evicted = lru.use([a, b, c])
    assert send == [a] and evicted == [] and lru.total_bytes == 140
    assert lru.use([_blob(4, 1)])[1] == [a.digest]  # back under the bound: a alone goes
    assert lru.total_bytes == 81 and a.digest not in lru


def test_prepare_args_replaces_large_arguments_only() -> None:
    small = prepare_args(total, (1, "x"), {"k": [1, 2]}, MB, compress=False)
    assert not isinstance(small, BlobArgs)
    big = np.random.rand(MB // 4)  # 2 MiB
    payload = prepare_args(total, (big, big), {"other": big, "n": 3}, MB, compress=False)
    assert isinstance(payload, BlobArgs)
    assert len(payload.blobs) == 1  # one object: pickled once, one blob
    assert len(payload) < 4096
    # calls in flight with equal arguments hold one pickled copy between them
    other = prepare_args(total, (big.copy(),), {}, MB, compress=False)
    assert isinstance(other, BlobArgs) and other.blobs[0] is payload.blobs[0]
    # a large list has no cheap size estimate: found by the second pass
    listed = prepare_args(total, (list(range(400_000)),), {}, MB, compress=False)
    assert isinstance(listed, BlobArgs) and len(listed.blobs) == 1
    # threshold 0: only share() handles
    assert not isinstance(prepare_args(total, (big,), {}, 0, compress=False), BlobArgs)
    handle = share(big)
    first = prepare_args(total, (handle,), {}, 0, compress=False)
    again = prepare_args(total, (handle,), {}, 0, compress=False)
    assert isinstance(first, BlobArgs) and isinstance(again, BlobArgs)
    assert first.blobs[0] is again.blobs[0]  # pickled once per handle
    # an unknown slot-side module name never appears on the controller: refs pickle small
    assert len(cloudpickle.dumps(BlobRef(b"\0" * 32))) < 200


@pytest.mark.skipif(zstd_version() is None, reason="zstandard is not installed")
def test_compression_only_when_it_pays() -> None:
    zeros = Blob(b"z" * 32, bytes(8 * MB))
    zeros.compress()
    assert zeros.zstd is not None and len(zeros.zstd) < MB // 10
    noise = Blob(b"n" * 32, np.random.default_rng(1).random(MB).tobytes())
    noise.compress()
    assert noise.zstd is None  # random floats shrink ~1.07x: sent raw


def test_share_on_thread_passes_the_object_itself() -> None:
    obj = {"weights": [1, 2, 3]}
    with ThreadExecutor(2) as ex:
        assert ex.submit(identity_check, share(obj), obj).result() is True
        assert ex.submit(lambda x: x, x=share(obj)).result() is obj


def test_share_on_process_arrives_as_the_object() -> None:
    array = np.arange(300_000, dtype=float)
    with ProcessExecutor(1) as ex:
        assert ex.submit(total, share(array), 1).result() == float(array.sum()) + 1


def test_share_rejects_a_handle() -> None:
    with pytest.raises(TypeError, match="handle"):
        Shared(share(1))


# -- settings ---------------------------------------------------------------------------------

_HOSTS = {"hosts": {"a": {"host": "10.0.0.1"}}}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"executor": {"blob_threshold": -1}}, "blob_threshold"),
        ({"executor": {"blob_threshold": "big"}}, "blob_threshold"),
        ({"executor": {"compression": "lz4"}}, "compression"),
        ({"defaults": {"blob_cache_bytes": 1000}}, "blob_cache_bytes"),
        ({"hosts": {"a": {"host": "10.0.0.1", "compression": True}}}, "compression"),
        ({"hosts": {"a": {"host": "10.0.0.1", "blob_cache_bytes": 1.5e9}}}, "blob_cache_bytes"),
    ],
)
def test_bad_blob_settings_name_the_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(PoolConfigError, match=field) as info:
        parse_pool({**_HOSTS, **data}, "pool.toml")
    assert "Fix:" in str(info.value)


def test_blob_settings_from_the_pool_file() -> None:
    config = parse_pool(
        {
            **_HOSTS,
            "executor": {"blob_threshold": 4096, "compression": "none", "max_attempts": 2},
            "defaults": {"blob_cache_bytes": 8 * MB},
        },
        "pool.toml",
    )
    assert config.blob_threshold == 4096 and config.executor == {"max_attempts": 2}
    assert config.hosts[0].compression == "none"
    assert config.hosts[0].blob_cache_bytes == 8 * MB


def test_bad_threshold_from_environment_or_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_BLOB_THRESHOLD", "lots")
    with pytest.raises(ValueError, match="PARALLELIZE_BLOB_THRESHOLD"):
        RemoteExecutor(embedded_pool(1))
    monkeypatch.setenv("PARALLELIZE_BLOB_THRESHOLD", "2048")
    ex = RemoteExecutor(embedded_pool(1))
    assert ex.blob_threshold == 2048
    ex.shutdown()
    with pytest.raises(ValueError, match="blob_threshold"):
        RemoteExecutor(embedded_pool(1), blob_threshold=-5)


# -- over real SSH ----------------------------------------------------------------------------


def _sent(ex: RemoteExecutor) -> dict[str, int]:
    sent: dict[str, int] = ex.stats().extra["bytes_sent"]
    return sent


def _specs(ssh_hosts: Any, n: int, slots: int, **changes: Any) -> list[HostSpec]:
    return [dataclasses.replace(s, **changes) for s in ssh_hosts(n, slots=slots)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("shared", [True, False], ids=["share", "implicit"])
def test_sent_once_per_host(ssh_hosts: Any, shared: bool) -> None:
    array = np.random.default_rng(0).random(MB // 2)  # 4 MiB, incompressible
    specs = _specs(ssh_hosts, 2, 2, compression="none")
    with RemoteExecutor(specs, backups=False) as ex:
        arg = share(array) if shared else array
        futures = [ex.submit(total, arg, i) for i in range(16)]
        assert [f.result(timeout=WAIT) for f in futures] == [
            float(array.sum()) + i for i in range(16)
        ]
        sent = _sent(ex)
        hosts_used = {r["host"] for r in ex.stats().extra["attempts"]}
    assert len(sent) == 2
    for name in hosts_used:  # the array once, plus the agent's source and 16 small frames
        assert 4 * MB < sent[name] < 4 * MB + 512 * 1024, sent


@pytest.mark.timeout(120)
def test_eviction_then_resend(ssh_hosts: Any) -> None:
    a = np.full(90_000, 1.0)  # ~700 KB each: two do not fit a 1 MiB cache
    b = np.full(90_000, 2.0)
    for cache, resent in ((MB, True), (4 * MB, False)):
        specs = _specs(ssh_hosts, 1, 1, blob_cache_bytes=cache, compression="none")
        with RemoteExecutor(specs, blob_threshold=64 * 1024) as ex:
            assert ex.submit(total, a).result(timeout=WAIT) == 90_000.0
            assert ex.submit(total, b).result(timeout=WAIT) == 180_000.0
            before = _sent(ex)[specs[0].name]
            assert ex.submit(total, a).result(timeout=WAIT) == 90_000.0
            delta = _sent(ex)[specs[0].name] - before
        assert (delta > a.nbytes) is resent, (cache, delta)


@pytest.mark.timeout(120)
def test_agent_restart_then_resend(ssh_hosts: Any) -> None:
    array = np.full(MB // 4, 3.0)  # 2 MiB
    handle = share(array)
    specs = _specs(ssh_hosts, 1, 1, compression="none")
    with RemoteExecutor(specs) as ex:
        pid, value = ex.submit(agent_pid_and_sum, handle).result(timeout=WAIT)
        assert value == float(array.sum())
        os.kill(pid, signal.SIGKILL)  # the agent and its cache are gone
        new_pid, value = ex.submit(agent_pid_and_sum, handle).result(timeout=WAIT)
        assert new_pid != pid and value == float(array.sum())
        sent = _sent(ex)[specs[0].name]  # the new connection's bytes: the array again
    assert 2 * MB < sent < 3 * MB


@pytest.mark.timeout(120)
def test_remote_arrays_are_read_only(ssh_hosts: Any) -> None:
    specs = _specs(ssh_hosts, 1, 1)
    with RemoteExecutor(specs) as ex:
        answer = ex.submit(try_write, share(np.zeros(1000))).result(timeout=WAIT)
    assert answer.startswith("refused: ") and "read-only" in answer


needs_zstd = pytest.mark.skipif(zstd_version() is None, reason="zstandard is not installed")


@needs_zstd
@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["auto", "zstd", "none"])
def test_compression_roundtrip(ssh_hosts: Any, mode: str) -> None:
    zeros = np.zeros(MB)  # 8 MiB that compress to almost nothing
    specs = _specs(ssh_hosts, 1, 1, compression=mode)
    with RemoteExecutor(specs) as ex:
        assert ex.submit(total, share(zeros), 5).result(timeout=WAIT) == 5.0
        sent = _sent(ex)[specs[0].name]
    assert (sent < MB) is (mode != "none"), sent


def zeros_of(n: int) -> Any:
    import numpy

    return numpy.zeros(n)


@needs_zstd
@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["auto", "none"])
def test_large_results_come_back_compressed(ssh_hosts: Any, mode: str) -> None:
    specs = _specs(ssh_hosts, 1, 1, compression=mode)
    with RemoteExecutor(specs) as ex:
        result = ex.submit(zeros_of, MB).result(timeout=WAIT)  # 8 MiB of zeros
        assert result.shape == (MB,) and not result.any()
        noise = ex.submit(np.random.default_rng(1).random, MB // 8).result(timeout=WAIT)
        assert noise.shape == (MB // 8,)  # 1 MiB that does not shrink: sent as it is
        received: int = ex.stats().extra["bytes_received"][specs[0].name]
    if mode == "none":
        assert received > 9 * MB, received
    else:
        assert MB < received < 2 * MB, received


def _python_without_zstd(tmp_path: Path) -> str:
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "zstandard.py").write_text("raise ImportError('hidden for this test')\n")
    wrapper = tmp_path / "python-no-zstd"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={hide} exec {sys.executable} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return str(wrapper)


@needs_zstd
@pytest.mark.timeout(120)
def test_host_without_zstandard(ssh_hosts: Any, tmp_path: Path) -> None:
    python = _python_without_zstd(tmp_path)
    zeros = np.zeros(MB)
    spec = dataclasses.replace(ssh_hosts(1, slots=1, python=python)[0], compression="auto")
    with RemoteExecutor([spec]) as ex:  # auto falls back to sending raw bytes
        assert ex.submit(total, share(zeros), 1).result(timeout=WAIT) == 1.0
        assert _sent(ex)[spec.name] > 8 * MB
    link = SSHLink(dataclasses.replace(spec, compression="zstd"))
    with pytest.raises(HostUnavailableError, match="pip install zstandard") as info:
        link.connect(EventRecorder())
    assert info.value.kind is HostErrorKind.VERSION


# -- the agent's side, spoken to directly -----------------------------------------------------


def _blob_frame(blob: Blob) -> bytes:
    head = _wire.encode_blob_head(blob.digest, _wire.BLOB_RAW, len(blob.data), len(blob.data))
    return head + blob.data


def test_agent_keeps_blobs_in_step_and_rejects_unknown_ones() -> None:
    array = np.arange(1000, dtype=float)
    data = cloudpickle.dumps(array)
    blob = Blob(hashlib.sha256(data).digest(), data)
    args = cloudpickle.dumps(((BlobRef(blob.digest), 1), {}))
    agent = AgentProc(slots=1)
    try:
        agent.send(_blob_frame(blob))
        for attempt in (1, 2):  # the second SUBMIT finds the blob in the agent and slot
            agent.send(_wire.encode_blob_use(attempt, [blob.digest]))
            agent.send(_wire.encode_submit(attempt, 7, cloudpickle.dumps(total), args))
            kind, body = agent.recv()
            assert kind == _wire.RESULT
            _, ok, payload, _ = _wire.decode_result(body)
            assert ok and cloudpickle.loads(payload) == float(array.sum()) + 1
        agent.send(_wire.encode_blob_drop([blob.digest]))
        agent.send(_wire.encode_blob_use(3, [blob.digest]))
        assert "out of step" in expect_protocol_error(agent)
    finally:
        if agent.proc.poll() is None:
            agent.proc.kill()
        agent.proc.wait()
        for stream in (agent.proc.stdin, agent.proc.stdout, agent.proc.stderr):
            if stream is not None:
                stream.close()
