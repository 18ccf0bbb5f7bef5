#!/usr/bin/env python
"""Compare parallelize with its peers on the same workloads, in one process and one run.

Run from the repository root::

    .venv/bin/pip install -e '.[bench]'                     # joblib, loky, dask, ray
    .venv/bin/python benchmarks/compare_peers.py            # full run (a few minutes)
    .venv/bin/python benchmarks/compare_peers.py --quick    # smoke run
    .venv/bin/python benchmarks/compare_peers.py --only process-pool,par-process,ray
    .venv/bin/python benchmarks/compare_peers.py --json results.json

Systems (``--only`` takes these keys, comma-separated; ``--list`` prints them):
concurrent.futures ``ThreadPoolExecutor`` and ``ProcessPoolExecutor``; parallelize THREAD,
PROCESS and REMOTE; joblib ``Parallel`` (loky and threading backends); loky's
``get_reusable_executor``; Dask (distributed ``LocalCluster``, worker processes); Ray.
Every one gets 2 workers (``--workers``). parallelize is used through the decorator,
``@parallelize(executor=...)``, with explicit executors so that every system has the same
number of workers: ``ThreadExecutor(2)``, ``ProcessExecutor(2)`` and
``RemoteExecutor(embedded_pool(2))`` (REMOTE on its embedded pool of local agents over
pipes, whatever pool file the user has). A peer whose package is missing is skipped.

Workloads, measured after each system has started and been warmed up:

(a) throughput: submit N no-op tasks (2,000 by default), then gather them -> tasks/s;
    a system that would need more than 30 s for N gets fewer tasks (the table says so);
(b) latency: median round trip of one no-op task, over 100 sequential calls;
(c) CPU: 16 tasks of ~50 ms of pure-Python work on 2 workers -> speed-up over running
    them one after the other in this process (thread-based systems hold the GIL: ~1x);
(d) large data: 4 concurrent calls that each take a 50 MB float64 array (``--large-mb``)
    and return a new array of the same size -> time per call, and how far the resident
    memory of this process and all its descendants (workers, daemons) rose above its
    level at the start of the workload (median over rounds). Each system is used as its
    documentation suggests for large arguments: joblib memory-maps arrays over 1 MB by
    itself, Ray gets the array once with ``ray.put`` and Dask with ``client.scatter``
    (inside the timed part: the array is new data for every round), and parallelize wraps
    it once with ``parallelize.share`` (REMOTE sends it once per host, PROCESS passes it in
    shared memory); the standard executors pickle it with every call.

Start-up is reported separately: the time from creating the pool or cluster (its package
already imported) to the first no-op result.

The machine is shared and noisy, so rounds are interleaved: each round runs a workload on
every system in turn (the order rotates from round to round), and the table gives medians
and ratios against ``ProcessPoolExecutor`` measured in the same rounds. Every system stays
up for the whole run, so the idle overhead of one (e.g. Ray's or Dask's daemons) is
background noise for the others, as it would be in a real program.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import logging
import os
import platform
import signal
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing

INSTALL_HINT = "pip install 'parallelize[bench]'"
MAX_THROUGHPUT_SECONDS = 30.0  # per throughput run; slower systems get fewer tasks
RESULT_TIMEOUT = 300.0  # seconds; a stuck system fails instead of hanging the run


# -- the work (module-level, so every system can pickle it) ---------------------------


def noop() -> None:
    return None


def burn_cpu(loops: int) -> int:
    total = 0
    for i in range(loops):
        total += i * i % 7
    return total


def scale_array(x: Any) -> Any:
    """(d): a new array of the same size as *x* (one pass over it)."""
    return x * 1.5


def calibrate(seconds: float) -> int:
    """Loops of burn_cpu that take about *seconds* in this process (median of 3)."""
    loops = 50_000
    while True:
        started = time.perf_counter()
        burn_cpu(loops)
        took = time.perf_counter() - started
        if took > 0.02:
            break
        loops *= 2
    estimates = []
    for _ in range(3):
        started = time.perf_counter()
        burn_cpu(loops)
        estimates.append(loops * seconds / (time.perf_counter() - started))
    return max(1, int(statistics.median(estimates)))


# -- one runner per system --------------------------------------------------------------


class Runner:
    """A started system: runs the three workloads, then closes."""

    def start(self, workers: int) -> None:
        """Create the pool or cluster and wait for its first no-op result."""
        raise NotImplementedError

    def many_noops(self, count: int) -> None:
        raise NotImplementedError

    def one_noop(self) -> None:
        raise NotImplementedError

    def cpu_tasks(self, loops: int, count: int) -> None:
        raise NotImplementedError

    def large_calls(self, array: Any, count: int) -> list[Any]:
        """*count* concurrent ``scale_array(array)`` calls; their results."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class ExecutorRunner(Runner):
    """Any concurrent.futures.Executor, through submit and result."""

    def __init__(self, make: Callable[[int], Any], close: Callable[[Any], None] | None = None):
        self._make = make
        self._close = close
        self.executor: Any = None

    def start(self, workers: int) -> None:
        self.executor = self._make(workers)
        self.one_noop()

    def many_noops(self, count: int) -> None:
        submit = self.executor.submit
        futures = [submit(noop) for _ in range(count)]
        for future in futures:
            future.result(RESULT_TIMEOUT)

    def one_noop(self) -> None:
        self.executor.submit(noop).result(RESULT_TIMEOUT)

    def cpu_tasks(self, loops: int, count: int) -> None:
        futures = [self.executor.submit(burn_cpu, loops) for _ in range(count)]
        for future in futures:
            future.result(RESULT_TIMEOUT)

    def large_calls(self, array: Any, count: int) -> list[Any]:
        futures = [self.executor.submit(scale_array, array) for _ in range(count)]
        return [future.result(RESULT_TIMEOUT) for future in futures]

    def close(self) -> None:
        if self.executor is None:
            return
        if self._close is not None:
            self._close(self.executor)
        else:
            self.executor.shutdown(wait=True)
        self.executor = None


class ParallelizeRunner(Runner):
    """A parallelize executor used through the decorator: calls return SmartFutures."""

    def __init__(self, make: Callable[[int], Any]) -> None:
        self._make = make
        self.executor: Any = None

    def start(self, workers: int) -> None:
        from parallelize import parallelize

        self.executor = self._make(workers)
        self._noop = parallelize(executor=self.executor)(noop)
        self._burn = parallelize(executor=self.executor)(burn_cpu)
        self._scale = parallelize(executor=self.executor)(scale_array)
        self.one_noop()

    def many_noops(self, count: int) -> None:
        call = self._noop
        futures = [call() for _ in range(count)]
        for future in futures:
            future.result(RESULT_TIMEOUT)

    def one_noop(self) -> None:
        self._noop().result(RESULT_TIMEOUT)

    def cpu_tasks(self, loops: int, count: int) -> None:
        futures = [self._burn(loops) for _ in range(count)]
        for future in futures:
            future.result(RESULT_TIMEOUT)

    def large_calls(self, array: Any, count: int) -> list[Any]:
        from parallelize import share

        # As the README suggests for an object many calls use (REMOTE then sends it
        # once per host; PROCESS still passes it in shared memory, THREAD as is).
        shared = share(array)
        futures = [self._scale(shared) for _ in range(count)]
        return [future.result(RESULT_TIMEOUT) for future in futures]

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True)
            self.executor = None


class JoblibRunner(Runner):
    """joblib.Parallel kept open (used as a context manager) across calls."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.parallel: Any = None

    def start(self, workers: int) -> None:
        import joblib

        self._delayed = joblib.delayed
        extra: dict[str, Any] = {}
        if self.backend == "loky":
            # Keep idle workers for the whole run (the default lets them go after 300 s).
            extra["idle_worker_timeout"] = 3600
        self.parallel = joblib.Parallel(n_jobs=workers, backend=self.backend, **extra)
        self.parallel.__enter__()
        self.one_noop()

    def many_noops(self, count: int) -> None:
        self.parallel(self._delayed(noop)() for _ in range(count))

    def one_noop(self) -> None:
        self.parallel([self._delayed(noop)()])

    def cpu_tasks(self, loops: int, count: int) -> None:
        self.parallel(self._delayed(burn_cpu)(loops) for _ in range(count))

    def large_calls(self, array: Any, count: int) -> list[Any]:
        # joblib's defaults: arrays over 1 MB are memory-mapped for the loky backend.
        return list(self.parallel(self._delayed(scale_array)(array) for _ in range(count)))

    def close(self) -> None:
        if self.parallel is None:
            return
        # joblib keeps the loky workers for later Parallel calls, even after the context
        # exits; the benchmark must not leave them behind, so stop them explicitly.
        workers = getattr(getattr(self.parallel, "_backend", None), "_workers", None)
        self.parallel.__exit__(None, None, None)
        self.parallel = None
        if self.backend == "loky":
            if workers is None:
                from joblib.externals.loky import reusable_executor

                workers = getattr(reusable_executor, "_executor", None)
            if workers is not None:
                workers.shutdown(wait=True, kill_workers=True)


class DaskRunner(Runner):
    """A distributed LocalCluster of worker processes, one thread each."""

    def __init__(self) -> None:
        self.cluster: Any = None
        self.client: Any = None

    def start(self, workers: int) -> None:
        from distributed import Client, LocalCluster

        self.cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        self.client = Client(self.cluster)
        self.one_noop()

    def many_noops(self, count: int) -> None:
        submit = self.client.submit
        futures = [submit(noop, pure=False) for _ in range(count)]
        self.client.gather(futures)

    def one_noop(self) -> None:
        self.client.submit(noop, pure=False).result(RESULT_TIMEOUT)

    def cpu_tasks(self, loops: int, count: int) -> None:
        futures = [self.client.submit(burn_cpu, loops, pure=False) for _ in range(count)]
        self.client.gather(futures)

    def large_calls(self, array: Any, count: int) -> list[Any]:
        shared = self.client.scatter(array, broadcast=True)
        futures = [self.client.submit(scale_array, shared, pure=False) for _ in range(count)]
        results = list(self.client.gather(futures))
        del futures, shared  # let the cluster drop the array and the results
        return results

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None


class RayRunner(Runner):
    """ray.init(num_cpus=workers) on this machine, tasks as remote functions."""

    def __init__(self) -> None:
        self.ray: Any = None

    def start(self, workers: int) -> None:
        import ray

        self.ray = ray
        ray.init(
            num_cpus=workers,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
        )
        self._noop = ray.remote(noop)
        self._burn = ray.remote(burn_cpu)
        self._scale = ray.remote(scale_array)
        self.one_noop()

    def many_noops(self, count: int) -> None:
        remote = self._noop.remote
        self.ray.get([remote() for _ in range(count)], timeout=RESULT_TIMEOUT)

    def one_noop(self) -> None:
        self.ray.get(self._noop.remote(), timeout=RESULT_TIMEOUT)

    def cpu_tasks(self, loops: int, count: int) -> None:
        refs = [self._burn.remote(loops) for _ in range(count)]
        self.ray.get(refs, timeout=RESULT_TIMEOUT)

    def large_calls(self, array: Any, count: int) -> list[Any]:
        shared = self.ray.put(array)
        refs = [self._scale.remote(shared) for _ in range(count)]
        return list(self.ray.get(refs, timeout=RESULT_TIMEOUT))

    def close(self) -> None:
        if self.ray is not None:
            self.ray.shutdown()
            self.ray = None


def _thread_pool(workers: int) -> Any:
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=workers)


def _process_pool(workers: int) -> Any:
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=workers)


def _loky_executor(workers: int) -> Any:
    import loky

    # A long idle timeout: the default (10 s) would let the workers go between rounds.
    return loky.get_reusable_executor(max_workers=workers, timeout=3600)


def _loky_close(executor: Any) -> None:
    executor.shutdown(wait=True, kill_workers=True)


def _par_thread(workers: int) -> Any:
    from parallelize import ThreadExecutor

    return ThreadExecutor(workers, name="bench-thread")


def _par_process(workers: int) -> Any:
    from parallelize import ProcessExecutor

    return ProcessExecutor(workers, name="bench-process")


def _par_remote(workers: int) -> Any:
    from remote import RemoteExecutor, embedded_pool

    # An explicit embedded pool: local agents over pipes, never the user's pool file.
    return RemoteExecutor(embedded_pool(workers), name="bench-remote")


@dataclass(frozen=True)
class Spec:
    key: str
    label: str
    kind: str  # "threads" or "processes"
    modules: tuple[str, ...]  # what must be importable
    make: Callable[[], Runner]


SPECS: tuple[Spec, ...] = (
    Spec(
        "thread-pool",
        "concurrent.futures ThreadPoolExecutor",
        "threads",
        (),
        lambda: ExecutorRunner(_thread_pool),
    ),
    Spec(
        "process-pool",
        "concurrent.futures ProcessPoolExecutor",
        "processes",
        (),
        lambda: ExecutorRunner(_process_pool),
    ),
    Spec(
        "par-thread",
        "parallelize THREAD",
        "threads",
        ("parallelize",),
        lambda: ParallelizeRunner(_par_thread),
    ),
    Spec(
        "par-process",
        "parallelize PROCESS",
        "processes",
        ("parallelize",),
        lambda: ParallelizeRunner(_par_process),
    ),
    Spec(
        "par-remote",
        "parallelize REMOTE (embedded pool)",
        "processes",
        ("parallelize", "remote"),
        lambda: ParallelizeRunner(_par_remote),
    ),
    Spec(
        "joblib-loky",
        "joblib Parallel (loky)",
        "processes",
        ("joblib",),
        lambda: JoblibRunner("loky"),
    ),
    Spec(
        "joblib-threading",
        "joblib Parallel (threading)",
        "threads",
        ("joblib",),
        lambda: JoblibRunner("threading"),
    ),
    Spec(
        "loky",
        "loky get_reusable_executor",
        "processes",
        ("loky",),
        lambda: ExecutorRunner(_loky_executor, _loky_close),
    ),
    Spec(
        "dask",
        "Dask distributed LocalCluster",
        "processes",
        ("dask", "distributed"),
        DaskRunner,
    ),
    Spec("ray", "Ray", "processes", ("ray",), RayRunner),
)
REFERENCE = "process-pool"


# -- bookkeeping ------------------------------------------------------------------------


@dataclass
class Entry:
    spec: Spec
    runner: Runner | None = None
    status: str = "ok"  # "ok", or why the system has no numbers
    version: str | None = None
    import_s: float | None = None
    startup_s: float | None = None
    noop_tasks: int = 0
    noop_s: list[float] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    large_s: list[float] = field(default_factory=list)  # (d), per call
    large_extra_rss: list[int] = field(default_factory=list)  # (d), bytes
    notes: list[str] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.runner is not None and self.status == "ok"

    def fail(self, what: str, exc: BaseException) -> None:
        self.status = f"failed during {what}: {type(exc).__name__}: {exc}".splitlines()[0]
        print(f"  {self.spec.key}: {self.status}", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        self.shut()

    def shut(self) -> None:
        runner, self.runner = self.runner, None
        if runner is None:
            return
        try:
            runner.close()
        except Exception as exc:
            print(f"  {self.spec.key}: error while closing: {exc!r}", file=sys.stderr)


def _version(spec: Spec) -> str | None:
    if not spec.modules:
        return platform.python_version()
    from importlib import metadata

    name = {"parallelize": "parallelize", "remote": "parallelize"}.get(
        spec.modules[0], spec.modules[0]
    )
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# -- the run ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    workers: int
    rounds: int
    noop_tasks: int
    latency_calls: int
    cpu_tasks: int
    cpu_ms: float
    large_mb: float
    large_calls: int


def rotated(entries: list[Entry], round_index: int) -> Iterator[Entry]:
    live = [e for e in entries if e.running]
    if not live:
        return
    shift = round_index % len(live)
    yield from (e for e in live[shift:] + live[:shift] if e.running)


def start_all(entries: list[Entry], config: Config, loops: int) -> None:
    for entry in entries:
        spec = entry.spec
        missing = [m for m in spec.modules if importlib.util.find_spec(m) is None]
        if missing:
            entry.status = f"skipped (not installed: {INSTALL_HINT})"
            print(f"{spec.label}: {entry.status} [missing: {', '.join(missing)}]")
            continue
        try:
            started = time.perf_counter()
            for module in spec.modules:
                importlib.import_module(module)
            entry.import_s = time.perf_counter() - started
        except Exception as exc:  # installed but broken
            entry.status = f"skipped (import failed: {type(exc).__name__}: {exc})"
            print(f"{spec.label}: {entry.status}")
            continue
        entry.version = _version(spec)
        entry.runner = spec.make()
        print(f"{spec.label}: starting ...", end="", flush=True)
        try:
            started = time.perf_counter()
            entry.runner.start(config.workers)
            entry.startup_s = time.perf_counter() - started
        except Exception as exc:
            print()
            entry.status = f"skipped (failed to start: {type(exc).__name__}: {exc})".splitlines()[0]
            print(f"{spec.label}: {entry.status}")
            traceback.print_exc(file=sys.stderr)
            entry.shut()
            continue
        print(f" {entry.startup_s:.2f} s; warming up ...", end="", flush=True)
        try:
            warm = min(200, config.noop_tasks)
            started = time.perf_counter()
            entry.runner.many_noops(warm)
            per_task = (time.perf_counter() - started) / warm
            for _ in range(5):
                entry.runner.one_noop()
            entry.runner.cpu_tasks(loops, config.workers)
        except Exception as exc:
            print()
            entry.fail("warm-up", exc)
            continue
        entry.noop_tasks = config.noop_tasks
        projected = per_task * config.noop_tasks
        if projected > MAX_THROUGHPUT_SECONDS:
            fewer = max(warm, int(MAX_THROUGHPUT_SECONDS / per_task) // 100 * 100)
            entry.noop_tasks = fewer
            entry.notes.append(
                f"(a) with {fewer:,} tasks ({config.noop_tasks:,} would take ~{projected:.0f} s)"
            )
        print(" done")


def measure(entries: list[Entry], config: Config, loops: int) -> list[float]:
    """Interleaved rounds of the three workloads; returns the sequential CPU times."""
    sequential_s: list[float] = []
    per_round = [config.latency_calls // config.rounds] * config.rounds
    for i in range(config.latency_calls % config.rounds):
        per_round[i] += 1
    for r in range(config.rounds):
        print(f"round {r + 1}/{config.rounds}: throughput", end="", flush=True)
        for entry in rotated(entries, r):
            assert entry.runner is not None
            try:
                started = time.perf_counter()
                entry.runner.many_noops(entry.noop_tasks)
                entry.noop_s.append(time.perf_counter() - started)
            except Exception as exc:
                entry.fail("throughput", exc)
        print(", latency", end="", flush=True)
        for entry in rotated(entries, r):
            assert entry.runner is not None
            try:
                for _ in range(per_round[r]):
                    started = time.perf_counter()
                    entry.runner.one_noop()
                    entry.latency_s.append(time.perf_counter() - started)
            except Exception as exc:
                entry.fail("latency", exc)
        print(", CPU", end="", flush=True)
        started = time.perf_counter()
        for _ in range(config.cpu_tasks):
            burn_cpu(loops)
        sequential_s.append(time.perf_counter() - started)
        for entry in rotated(entries, r):
            assert entry.runner is not None
            try:
                started = time.perf_counter()
                entry.runner.cpu_tasks(loops, config.cpu_tasks)
                entry.cpu_s.append(time.perf_counter() - started)
            except Exception as exc:
                entry.fail("CPU workload", exc)
        if config.large_mb > 0:
            print(", large data", end="", flush=True)
            measure_large(entries, config, r)
        print(" done", flush=True)
    return sequential_s


def measure_large(entries: list[Entry], config: Config, round_index: int) -> None:
    """(d) for every system in turn: time per call and the rise of resident memory."""
    import numpy as np
    from _large_data import MemorySampler

    count = config.large_calls
    array = np.random.default_rng(round_index).random(int(config.large_mb * 1e6) // 8)
    expected_last = array[-1] * 1.5
    with MemorySampler() as sampler:
        for entry in rotated(entries, round_index):
            assert entry.runner is not None
            try:
                with sampler.phase(entry.spec.key):
                    started = time.perf_counter()
                    results = entry.runner.large_calls(array, count)
                    took = time.perf_counter() - started
                    ok = len(results) == count and all(
                        r.shape == array.shape and r[-1] == expected_last for r in results
                    )
                    del results
                if not ok:
                    raise AssertionError("wrong results")
                entry.large_s.append(took / count)
                entry.large_extra_rss.append(sampler.extra_rss[entry.spec.key][-1])
            except Exception as exc:
                entry.fail("large-data workload", exc)


def shutdown_all(entries: list[Entry]) -> None:
    for entry in reversed(entries):
        if entry.runner is not None:
            print(f"closing {entry.spec.label}", file=sys.stderr)
            entry.shut()


# multiprocessing's and loky's resource trackers live until this interpreter exits (they
# stop when the last end of their pipe closes): expected, not a leak.
RESOURCE_TRACKER = "resource_tracker import main"


def leftover_processes(wait: float = 10.0) -> tuple[list[str], list[str]]:
    """Descendants of this process still alive after shutdown (after up to *wait* s):
    (resource trackers, anything else). Empty lists when psutil is not installed."""
    try:
        import psutil
    except ImportError:
        return [], []
    me = psutil.Process()
    deadline = time.monotonic() + wait
    while True:
        trackers, others = [], []
        for child in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if child.status() == psutil.STATUS_ZOMBIE:
                    continue
                cmd = " ".join(child.cmdline())
                line = f"pid {child.pid}: {cmd[:120]}"
                (trackers if RESOURCE_TRACKER in cmd else others).append(line)
        if not others or time.monotonic() > deadline:
            return trackers, others
        time.sleep(0.2)


# -- reporting --------------------------------------------------------------------------


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def results_of(entries: list[Entry], sequential_s: list[float]) -> dict[str, dict[str, Any]]:
    seq = median(sequential_s)
    out: dict[str, dict[str, Any]] = {}
    for entry in entries:
        noop = median(entry.noop_s)
        cpu = median(entry.cpu_s)
        out[entry.spec.key] = {
            "label": entry.spec.label,
            "kind": entry.spec.kind,
            "status": entry.status,
            "version": entry.version,
            "import_s": entry.import_s,
            "startup_s": entry.startup_s,
            "noop_tasks": entry.noop_tasks,
            "noop_s": entry.noop_s,
            "noop_median_s": noop,
            "tasks_per_s": entry.noop_tasks / noop if noop else None,
            "latency_s": entry.latency_s,
            "latency_median_s": median(entry.latency_s),
            "cpu_s": entry.cpu_s,
            "cpu_median_s": cpu,
            "cpu_speedup": seq / cpu if seq and cpu else None,
            "large_s": entry.large_s,
            "large_median_s": median(entry.large_s),
            "large_extra_rss": entry.large_extra_rss,
            "large_extra_rss_median": (
                statistics.median(entry.large_extra_rss) if entry.large_extra_rss else None
            ),
            "notes": entry.notes,
        }
    ref = out.get(REFERENCE)
    for row in out.values():
        row["tasks_per_s_vs_reference"] = (
            row["tasks_per_s"] / ref["tasks_per_s"]
            if ref and ref["tasks_per_s"] and row["tasks_per_s"]
            else None
        )
        row["latency_vs_reference"] = (
            row["latency_median_s"] / ref["latency_median_s"]
            if ref and ref["latency_median_s"] and row["latency_median_s"]
            else None
        )
        for key in ("large_median_s", "large_extra_rss_median"):
            row[f"{key}_vs_reference"] = (
                row[key] / ref[key] if ref and ref[key] and row[key] is not None else None
            )
    return out


def markdown_table(results: dict[str, dict[str, Any]], config: Config) -> str:
    pp = "x ProcessPool"
    header = [
        "system",
        "kind",
        "start-up (s)",
        f"(a) no-op tasks/s (N={config.noop_tasks:,})",
        pp,
        "(b) round trip p50 (ms)",
        pp,
        f"(c) speed-up, {config.cpu_tasks} x {config.cpu_ms:g} ms",
        "notes",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results.values():
        if row["status"] != "ok" and row["tasks_per_s"] is None:
            cells = [row["label"], row["kind"], *["-"] * 6, row["status"]]
        else:
            notes = list(row["notes"])
            if row["status"] != "ok":
                notes.append(row["status"])
            cells = [
                row["label"],
                row["kind"],
                _fmt(row["startup_s"], ".2f"),
                _fmt(row["tasks_per_s"], ",.0f"),
                _fmt(row["tasks_per_s_vs_reference"], ".2f"),
                _fmt(row["latency_median_s"], ".3f", 1e3),
                _fmt(row["latency_vs_reference"], ".2f"),
                _fmt(row["cpu_speedup"], ".2f"),
                "; ".join(notes),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def large_table(results: dict[str, dict[str, Any]], config: Config) -> str:
    pp = "x ProcessPool"
    header = [
        "system",
        "kind",
        f"(d) ms per call ({config.large_calls} x {config.large_mb:g} MB in and out)",
        pp,
        "(d) peak rise of RSS (MB)",
        pp,
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results.values():
        if row["large_median_s"] is None:
            continue
        cells = [
            row["label"],
            row["kind"],
            _fmt(row["large_median_s"], ".0f", 1e3),
            _fmt(row["large_median_s_vs_reference"], ".2f"),
            _fmt(row["large_extra_rss_median"], ".0f", 1e-6),
            _fmt(row["large_extra_rss_median_vs_reference"], ".2f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    keys = [s.key for s in SPECS]
    parser = argparse.ArgumentParser(
        description="Compare parallelize with concurrent.futures, joblib, loky, Dask and Ray."
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument(
        "--only", metavar="NAMES", help=f"comma-separated systems to run, of: {', '.join(keys)}"
    )
    parser.add_argument("--list", action="store_true", help="list the systems and exit")
    parser.add_argument("--json", metavar="PATH", help="save the raw numbers as JSON")
    parser.add_argument("--workers", type=int, default=2, help="workers per system (2)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (5; --quick: 2)")
    parser.add_argument("--tasks", type=int, help="no-op tasks for (a) (2000; --quick: 200)")
    parser.add_argument(
        "--latency-calls", type=int, help="sequential calls for (b) (100; --quick: 10)"
    )
    parser.add_argument("--cpu-tasks", type=int, help="tasks for (c) (16; --quick: 4)")
    parser.add_argument("--cpu-ms", type=float, help="CPU time per task for (c) (50; --quick: 20)")
    parser.add_argument(
        "--large-mb",
        type=float,
        help="array size for (d) in MB (50; --quick: 10); 0 skips (d)",
    )
    args = parser.parse_args(argv)
    if args.only:
        wanted = [k.strip() for k in args.only.split(",") if k.strip()]
        unknown = sorted(set(wanted) - set(keys))
        if unknown:
            parser.error(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(keys)}")
        args.only = wanted
    for name in ("workers", "rounds", "tasks", "latency_calls", "cpu_tasks"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.cpu_ms is not None and args.cpu_ms <= 0:
        parser.error("--cpu-ms must be positive")
    if args.large_mb is not None and args.large_mb < 0:
        parser.error("--large-mb must be 0 (skip) or positive")
    return args


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # run the finally blocks: shut every system down


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for spec in SPECS:
            print(f"{spec.key:18} {spec.label}")
        return 0
    quick = args.quick

    def pick(value: int | float | None, full: float, short: float) -> Any:
        return value if value is not None else (short if quick else full)

    config = Config(
        workers=args.workers,
        rounds=pick(args.rounds, 5, 2),
        noop_tasks=pick(args.tasks, 2000, 200),
        latency_calls=max(pick(args.latency_calls, 100, 10), 1),
        cpu_tasks=pick(args.cpu_tasks, 16, 4),
        cpu_ms=float(pick(args.cpu_ms, 50.0, 20.0)),
        large_mb=float(pick(args.large_mb, 50.0, 10.0)),
        large_calls=4,
    )
    if config.latency_calls < config.rounds:
        config = Config(**{**config.__dict__, "latency_calls": config.rounds})
    signal.signal(signal.SIGTERM, _on_sigterm)

    specs = [s for s in SPECS if not args.only or s.key in args.only]
    entries = [Entry(spec) for spec in specs]
    loops = calibrate(config.cpu_ms / 1e3)
    print(
        f"{platform.python_implementation()} {platform.python_version()} on "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs; "
        f"{config.workers} workers per system, {config.rounds} interleaved rounds; "
        f"burn_cpu({loops:,}) ~ {config.cpu_ms:g} ms"
    )
    sequential_s: list[float] = []
    trackers: list[str] = []
    leftovers: list[str] = []
    try:
        start_all(entries, config, loops)
        sequential_s = measure(entries, config, loops)
    finally:
        shutdown_all(entries)
        trackers, leftovers = leftover_processes()

    results = results_of(entries, sequential_s)
    seq = median(sequential_s)
    print()
    print(
        f"(a) submit N no-op tasks, then gather; (b) median of {config.latency_calls} sequential "
        f"single-task round trips; (c) {config.cpu_tasks} tasks of ~{config.cpu_ms:g} ms "
        f"pure-Python CPU on {config.workers} workers, sequential in this process "
        f"{_fmt(seq, '.0f', 1e3)} ms (median). Medians of {config.rounds} interleaved rounds; "
        f"'x ProcessPool' is the ratio to concurrent.futures.ProcessPoolExecutor in the same "
        f"rounds. Start-up: pool/cluster creation to first no-op result (imports excluded)."
    )
    print()
    print(markdown_table(results, config))
    if config.large_mb > 0:
        print()
        print(
            f"(d) {config.large_calls} concurrent calls, each a {config.large_mb:g} MB float64 "
            f"array in and a new one out, on {config.workers} workers: median time per call, "
            "and median peak rise of the summed RSS of this process and all its descendants "
            "over its level at the start of the workload (shared pages count once per "
            "process)."
        )
        print()
        print(large_table(results, config))
    if leftovers:
        print(f"\nWARNING: {len(leftovers)} process(es) still alive after shutdown:")
        for line in leftovers:
            print(f"  {line}")
    else:
        print(
            "\nAll pools and clusters shut down; no worker process left"
            + (
                f" ({len(trackers)} resource tracker(s) of multiprocessing/loky exit with "
                "this interpreter)."
                if trackers
                else "."
            )
        )
    if args.json:
        payload = {
            "config": config.__dict__,
            "cpu_loops": loops,
            "machine": {
                "python": platform.python_version(),
                "implementation": platform.python_implementation(),
                "platform": platform.platform(),
                "cpu_count": os.cpu_count(),
            },
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "sequential_cpu_s": sequential_s,
            "sequential_cpu_median_s": seq,
            "reference": REFERENCE,
            "systems": results,
            "leftover_processes": leftovers,
            "resource_trackers_at_exit": trackers,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"raw numbers saved to {args.json}")
    return 1 if leftovers else 0


if __name__ == "__main__":
    sys.exit(main())
