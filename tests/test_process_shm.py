"""Large buffers through shared memory in ProcessExecutor, with real worker processes.

Shared-memory segments are memfd files named ``parallelize:<pool pid>:...``;
the tests find them in ``/proc/*/fd`` and ``/proc/*/maps`` to check that a
call really used one and that nobody holds one any more afterwards -- also when
a worker or the parent was killed with SIGKILL mid-call.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from parallelize._errors import WorkerDiedError
from parallelize._process import ProcessExecutor, _shm

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not _shm.AVAILABLE, reason="shared memory needs memfd_create (Linux)"),
]

REPO_ROOT = Path(__file__).resolve().parent.parent
MB = 1 << 20
TIMEOUT = 30.0


# -- helpers run in the workers ------------------------------------------------------------


def scale(x: Any) -> Any:
    return x * 2


def identity(x: Any) -> Any:
    return x


def describe(x: np.ndarray[Any, Any]) -> tuple[bool, bool]:
    """(writable, lies in a parallelize shared-memory mapping) for an argument."""
    address = x.__array_interface__["data"][0]
    with open("/proc/self/maps") as maps:
        for line in maps:
            if "memfd:parallelize:" in line:
                start, end = (int(v, 16) for v in line.split()[0].split("-"))
                if start <= address < end:
                    return bool(x.flags.writeable), True
    return bool(x.flags.writeable), False


def write_into(x: np.ndarray[Any, Any]) -> None:
    x[0] = 1.0


def kinds(*args: Any, **kwargs: Any) -> list[str]:
    return [type(v).__name__ for v in (*args, *kwargs.values())]


def checksum(data: dict[str, Any], blob: bytes = b"", raw: bytearray | None = None) -> float:
    total = float(data["a"].sum()) + float(data["nested"][0].sum()) + len(blob)
    return total + (len(raw) if raw is not None else 0)


def hold(x: np.ndarray[Any, Any], started: str, go: str) -> float:
    """Say that the call started (with this worker's pid), then wait for *go*."""
    Path(started + ".tmp").write_text(str(os.getpid()))
    os.rename(started + ".tmp", started)
    while not os.path.exists(go):
        time.sleep(0.01)
    return float(x.sum())


_pinned: list[bytearray] = []


def worker_pid() -> int:
    return os.getpid()


def fragment_heap() -> int:
    """Leave ~40 MB of freed C heap that glibc keeps: the top chunk stays in use."""
    chunks = [bytearray(100_000) for _ in range(400)]  # under glibc's mmap threshold
    _pinned.append(chunks[-1])
    del chunks
    return os.getpid()


# -- helpers of the test process -----------------------------------------------------------


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def segment_holders(pool_pid: int) -> list[str]:
    """Processes that hold a descriptor or a mapping of a segment of the pool of *pool_pid*."""
    tag = f"memfd:parallelize:{pool_pid}:"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
            with open(f"/proc/{entry}/maps") as maps:
                found.extend(f"pid {entry} mapping" for line in maps if tag in line)
        except OSError:  # gone, or not ours
            continue
        for fd in fds:
            try:
                if tag in os.readlink(f"/proc/{entry}/fd/{fd}"):
                    found.append(f"pid {entry} fd {fd}")
            except OSError:  # closed meanwhile
                continue
    return found


def dev_shm() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def new_dev_shm_entries(before: set[str], *pids: int) -> list[str]:
    """Entries added to /dev/shm since *before* that could be ours (other programs on the
    machine add theirs meanwhile): named after parallelize or one of *pids*."""
    marks = ("parallelize", *(str(pid) for pid in pids))
    return sorted(e for e in dev_shm() - before if any(mark in e for mark in marks))


def big_array(nbytes: int = 4 * MB) -> np.ndarray[Any, Any]:
    return np.arange(nbytes // 8, dtype=np.float64)


@pytest.fixture
def executor() -> Iterator[ProcessExecutor]:
    ex = ProcessExecutor(2)
    yield ex
    ex.shutdown()


# -- behaviour -----------------------------------------------------------------------------


def test_large_array_goes_through_shared_memory_read_only(executor: ProcessExecutor) -> None:
    assert executor.submit(describe, big_array()).result(TIMEOUT) == (False, True)
    assert executor.submit(describe, np.ones(100)).result(TIMEOUT) == (True, False)
    # Fortran order is contiguous too; a strided view is not: it is pickled as before.
    fortran = np.asfortranarray(big_array().reshape(1024, -1))
    assert executor.submit(describe, fortran).result(TIMEOUT) == (False, True)
    assert executor.submit(describe, big_array()[::2]).result(TIMEOUT) == (True, False)


def test_results_come_back_equal_and_writable(executor: ProcessExecutor) -> None:
    array = big_array()
    result = executor.submit(scale, array).result(TIMEOUT)
    np.testing.assert_array_equal(result, array * 2)
    assert result.flags.writeable
    result[0] = 42.0  # copy-on-write: the segment is private to this process
    assert result[0] == 42.0
    fortran = np.asfortranarray(array.reshape(1024, -1))
    back = executor.submit(identity, fortran).result(TIMEOUT)
    np.testing.assert_array_equal(back, fortran)
    assert back.flags.f_contiguous


def test_writing_into_an_argument_is_a_clear_error(executor: ProcessExecutor) -> None:
    with pytest.raises(ValueError, match="read-only"):
        executor.submit(write_into, big_array()).result(TIMEOUT)
    executor.submit(write_into, np.zeros(10)).result(TIMEOUT)  # small: a private copy


def test_nested_buffers_keywords_and_big_bytes(executor: ProcessExecutor) -> None:
    data = {"a": big_array(), "nested": [big_array(2 * MB), "text"]}
    blob = b"x" * (3 * MB)
    raw = bytearray(2 * MB)
    expected = float(data["a"].sum()) + float(data["nested"][0].sum()) + len(blob) + len(raw)
    assert executor.submit(checksum, data, blob=blob, raw=raw).result(TIMEOUT) == expected
    assert executor.submit(kinds, blob, raw=raw).result(TIMEOUT) == ["bytes", "bytearray"]
    assert executor.submit(identity, blob).result(TIMEOUT) == blob


def test_threshold_is_configurable() -> None:
    with ProcessExecutor(1, shm_threshold=None) as off:
        assert off.submit(describe, big_array()).result(TIMEOUT) == (True, False)
    with ProcessExecutor(1, shm_threshold=1000) as low:
        assert low.submit(describe, np.ones(1000)).result(TIMEOUT) == (False, True)
        assert low.submit(describe, np.ones(100)).result(TIMEOUT) == (True, False)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "1M"])
def test_bad_threshold_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="shm_threshold must be a size in bytes"):
        ProcessExecutor(1, shm_threshold=bad)


def test_segments_are_freed_when_calls_are_done(executor: ProcessExecutor) -> None:
    me = os.getpid()
    results = [executor.submit(scale, big_array()) for _ in range(4)]
    values = [f.result(TIMEOUT) for f in results]
    # Arguments: freed on both sides. Results: mapped here while the arrays live.
    assert all("mapping" in holder for holder in segment_holders(me))
    assert segment_holders(me)
    del results, values
    gc.collect()
    wait_for(lambda: not segment_holders(me), "every segment to be released")


def resident(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_idle_worker_gives_memory_back() -> None:
    with ProcessExecutor(1) as ex:
        pid = ex.submit(worker_pid).result(TIMEOUT)  # imports this module in the worker
        fresh = resident(pid)
        assert ex.submit(fragment_heap).result(TIMEOUT) == pid
        # Without the release when idle (gc + malloc_trim), the worker keeps ~40 MB more.
        wait_for(lambda: resident(pid) < fresh + 15 * MB, "the idle worker to shrink")


def test_calls_use_the_pipe_when_no_descriptor_is_left(tmp_path: Path) -> None:
    import resource

    started, go = str(tmp_path / "started"), str(tmp_path / "go")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with ProcessExecutor(1, shm_threshold=1000) as ex:
        blocker = ex.submit(hold, np.ones(10), started, go)
        wait_for(lambda: os.path.exists(started), "the worker to be busy")
        # Queued calls hold one segment each: let only ~10 of them get a descriptor.
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 10, hard))
        try:
            futures = [ex.submit(describe, np.full(1000, float(i))) for i in range(40)]
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        Path(go).touch()
        blocker.result(TIMEOUT)
        placed = [f.result(TIMEOUT) for f in futures]
    assert (False, True) in placed  # read-only views of shared memory, while there were fds
    assert (True, False) in placed  # then private copies through the pipe


# -- SIGKILL mid-call ----------------------------------------------------------------------


def test_worker_killed_mid_call_leaves_no_segment(tmp_path: Path) -> None:
    before = dev_shm()
    me = os.getpid()
    started, go = str(tmp_path / "started"), str(tmp_path / "go")
    with ProcessExecutor(1) as ex:
        future = ex.submit(hold, big_array(8 * MB), started, go)
        wait_for(lambda: os.path.exists(started), "the call to start")
        worker = int(Path(started).read_text())
        assert any(f"pid {worker} mapping" in h for h in segment_holders(me))
        os.kill(worker, signal.SIGKILL)
        with pytest.raises(WorkerDiedError, match="SIGKILL"):
            future.result(TIMEOUT)
        wait_for(lambda: not segment_holders(me), "the segment to be released")
        Path(go).touch()
        # The pool goes on, with shared memory.
        assert ex.submit(describe, big_array()).result(TIMEOUT) == (False, True)
    assert new_dev_shm_entries(before, me, worker) == []


PARENT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from test_process_shm import hold
    from parallelize._process import ProcessExecutor

    ex = ProcessExecutor(1)
    future = ex.submit(hold, np.arange(1 << 20, dtype=np.float64), sys.argv[2], sys.argv[3])
    future.result()
    """
)


def test_parent_killed_mid_call_leaves_no_segment(tmp_path: Path) -> None:
    before = dev_shm()
    started, go = str(tmp_path / "started"), str(tmp_path / "go")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT_SCRIPT, str(Path(__file__).parent), started, go], env=env
    )
    try:
        wait_for(lambda: os.path.exists(started), "the call to start")
        worker = int(Path(started).read_text())
        assert any(f"pid {worker} mapping" in h for h in segment_holders(parent.pid))
        parent.kill()
        parent.wait(TIMEOUT)
        wait_for(lambda: not os.path.exists(f"/proc/{worker}/maps"), "the worker to exit")
        assert segment_holders(parent.pid) == []
    finally:
        Path(go).touch()
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    assert new_dev_shm_entries(before, parent.pid, worker) == []


def test_default_executor_threshold_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import parallelize
    from parallelize import Method, default_executor

    monkeypatch.setenv("PARALLELIZE_SHM_THRESHOLD", "1000")
    assert getattr(default_executor(Method.PROCESS), "shm_threshold", None) == 1000
    parallelize.shutdown_default_executors()
    monkeypatch.setenv("PARALLELIZE_SHM_THRESHOLD", "off")
    assert getattr(default_executor(Method.PROCESS), "shm_threshold", 0) is None
    parallelize.shutdown_default_executors()
    monkeypatch.setenv("PARALLELIZE_SHM_THRESHOLD", "1M")
    with pytest.raises(ValueError, match="PARALLELIZE_SHM_THRESHOLD='1M' is not a size in bytes"):
        default_executor(Method.PROCESS)
