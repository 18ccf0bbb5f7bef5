"""Large-data workload and memory probes shared by the large-data benchmarks.

The workload of issue 11: a 50 MB float64 array in, an array of the same size
out, 4 concurrent calls on 2 workers. Memory is read from ``/proc`` (Linux):

* **RSS sum**: resident set sizes of this process and its descendants added up
  (what ``ps`` shows). Pages shared between processes count once per process.
* **memory in use**: anonymous resident memory of the same processes plus the
  growth of the machine's shared memory (``Shmem`` in ``/proc/meminfo``) since
  the run started -- each page once, including shared-memory segments that no
  process has mapped at that moment. The machine-wide figure also moves with
  other users' shared memory; it is a cross-check, the target uses the RSS sum.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from typing import Any

import numpy as np

ARRAY_BYTES = 50_000_000
CONCURRENT_CALLS = 4
WORKERS = 2
_PAGE = os.sysconf("SC_PAGE_SIZE")


def scale(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The task: a new array of the same size (one pass over the input)."""
    return x * 1.5


def make_array() -> np.ndarray[Any, Any]:
    return np.random.default_rng(0).random(ARRAY_BYTES // 8)


def concurrent_calls(submit: Callable[..., Any], array: np.ndarray[Any, Any]) -> None:
    """CONCURRENT_CALLS calls of ``scale(array)`` at once; check the results; drop them."""
    futures = [submit(scale, array) for _ in range(CONCURRENT_CALLS)]
    results = [f.result(300) for f in futures]
    for result in results:
        if result.shape != array.shape or result[-1] != array[-1] * 1.5:
            raise AssertionError("wrong result")


def executor_call(executor: Executor) -> Callable[..., Any]:
    return executor.submit


def descendants(pid: int) -> list[int]:
    """Child processes of *pid*, recursively (from /proc/PID/task/*/children)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            found.extend(kids)
            todo.extend(kids)
    return found


def rss(pid: int) -> tuple[int, int]:
    """(resident bytes, anonymous resident bytes) of *pid*; zeros if it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            fields = f.read().split()
    except OSError:
        return 0, 0
    resident, shared = int(fields[1]) * _PAGE, int(fields[2]) * _PAGE
    return resident, resident - shared


def machine_shmem() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Shmem:"):
                return int(line.split()[1]) * 1024
    return 0


class MemorySampler:
    """Samples memory of this process tree every few milliseconds while a phase is on
    (``with sampler.phase(name)``). Per phase it keeps the peak RSS sum, the peak memory in
    use, and for every time the phase ran, how far the RSS sum rose above its level at the
    start (``extra_rss``: the workload's own peak, whatever else is running)."""

    def __init__(self, interval: float = 0.003) -> None:
        self.interval = interval
        self.peak_rss: dict[str, int] = {}
        self.peak_used: dict[str, int] = {}
        self.extra_rss: dict[str, list[int]] = {}
        self._phase: str | None = None
        self._start = 0
        self._peak = 0
        self._lock = threading.Lock()
        self._shmem_base = machine_shmem()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        total, _ = self._measure()
        with self._lock:
            self._phase, self._start, self._peak = name, total, total
        try:
            yield
        finally:
            self._sample()  # the end of a phase counts
            with self._lock:
                self.extra_rss.setdefault(name, []).append(self._peak - self._start)
                self._phase = None

    def _measure(self) -> tuple[int, int]:
        me = os.getpid()
        total = anon = 0
        for pid in (me, *descendants(me)):
            resident, anonymous = rss(pid)
            total += resident
            anon += anonymous
        return total, anon + max(0, machine_shmem() - self._shmem_base)

    def _sample(self) -> None:
        if self._phase is None:
            return
        total, used = self._measure()
        with self._lock:
            phase = self._phase
            if phase is None:
                return
            self._peak = max(self._peak, total)
            self.peak_rss[phase] = max(self.peak_rss.get(phase, 0), total)
            self.peak_used[phase] = max(self.peak_used.get(phase, 0), used)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()


def settled_rss(pid: int, timeout: float = 5.0) -> int:
    """RSS of *pid* once it stops changing (two reads 100 ms apart within 1 MB)."""
    deadline = time.monotonic() + timeout
    last = rss(pid)[0]
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = rss(pid)[0]
        if abs(now - last) < 1 << 20:
            return now
        last = now
    return last


def small_numpy_call(x: np.ndarray[Any, Any]) -> float:
    return float(x.sum())


def idle_worker_growth(
    make_executor: Callable[[], Any], worker_pid: Callable[[Any], int]
) -> tuple[int, int]:
    """(RSS of a fresh worker, RSS of the same worker idle after a 50 MB call).

    "Fresh" is after one small numpy call, so that importing numpy is not
    counted as growth.
    """
    executor = make_executor()
    try:
        executor.submit(small_numpy_call, np.ones(10)).result(60)
        pid = worker_pid(executor)
        fresh = settled_rss(pid)
        executor.submit(scale, make_array()).result(300)
        idle = settled_rss(pid)
        return fresh, idle
    finally:
        executor.shutdown()


def mb(n: float) -> str:
    return f"{n / 1e6:.0f} MB"
