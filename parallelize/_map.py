"""``f.map(xs)``: many calls at once, one future per call, small calls run in chunks.

Each call keeps its own future, exception and progress tick. On the PROCESS pool
the calls are grouped into chunks:
one task runs a chunk's calls in turn and returns each call's outcome, which is then
split into the per-call futures (an exception stays with its call, with the worker's
traceback attached as for any other call). Measured: 10,000 no-op calls on 2 PROCESS
workers cost about 3.5x joblib's time when sent one task per call, and about joblib's
time in chunks.

The automatic chunk size follows the function's measured call duration (each chunk
reports how long its calls took), aiming at chunks of about ``_CHUNK_SECONDS`` while
keeping at least ``_MIN_CHUNKS_PER_WORKER`` chunks per worker so that work is spread
evenly; before anything has been measured it assumes tiny calls only when there are
many of them.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, Future, InvalidStateError
from typing import Any

from ._errors import PicklingError, attach_remote_traceback
from ._pickling import callable_name, dumps_function, split_bound_method

__all__ = ["DurationEstimate", "check_chunksize", "chunk_size", "submit_chunks"]

_CHUNK_SECONDS = 0.05
_MIN_CHUNKS_PER_WORKER = 8
_MAX_CHUNK = 512


def check_chunksize(chunksize: Any) -> None:
    if chunksize is None:
        return
    if isinstance(chunksize, bool) or not isinstance(chunksize, int):
        raise TypeError(
            f"map(chunksize=...) takes a whole number of calls per task (or None for "
            f"automatic), got {chunksize!r}"
        )
    if chunksize < 1:
        raise ValueError(
            f"map(chunksize=...) must be 1 or more calls per task, got {chunksize}; "
            "use None to size chunks automatically"
        )


class DurationEstimate:
    """A running mean of one function's call duration (seconds), from its chunks."""

    __slots__ = ("calls", "seconds")

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0

    def add(self, seconds: float, calls: int) -> None:
        # Unlocked: a lost update only makes the next chunk size a little less exact.
        self.seconds += seconds
        self.calls += calls

    @property
    def mean(self) -> float | None:
        return self.seconds / self.calls if self.calls else None


def chunk_size(n: int, workers: int, estimate: DurationEstimate) -> int:
    """Calls per task for *n* calls on *workers* workers (see the module docstring)."""
    spread = max(1, n // (workers * _MIN_CHUNKS_PER_WORKER))
    mean = estimate.mean
    if mean is None:
        return min(spread, _MAX_CHUNK)
    by_duration = max(1, int(_CHUNK_SECONDS / mean)) if mean > 0 else _MAX_CHUNK
    return max(1, min(spread, by_duration, _MAX_CHUNK))


def run_chunk(
    fn_bytes: bytes, calls: Sequence[tuple[Any, ...]], origin_pid: int
) -> tuple[float, list[Any], dict[int, tuple[BaseException, str | None]]]:
    """Run in the worker: the calls' values (None where a call failed) and, by
    position, each failure's exception and traceback text (pickling an exception
    drops its traceback). A list of plain values unpickles much faster than one
    outcome tuple per call.

    The function comes pickled by ``dumps_function`` (a decorated module-level
    function travels by reference, as for single calls).
    """
    fn = pickle.loads(fn_bytes)
    values: list[Any] = []
    failures: dict[int, tuple[BaseException, str | None]] = {}
    start = time.perf_counter()
    remote = os.getpid() != origin_pid
    for index, args in enumerate(calls):
        try:
            values.append(fn(*args))
        except Exception as exc:
            tb = None
            if remote:
                tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            failures[index] = (exc, tb)
            values.append(None)
    return time.perf_counter() - start, values, failures


def submit_chunks(
    submit_batch: Callable[
        [Callable[..., Any], Iterable[tuple[tuple[Any, ...], dict[str, Any]]]], list[Future[Any]]
    ],
    fn: Callable[..., Any],
    argsets: list[tuple[Any, ...]],
    size: int,
    estimate: DurationEstimate,
) -> list[Future[Any]]:
    """Submit *argsets* in chunks of *size*; return one future per call."""
    futures: list[Future[Any]] = [Future() for _ in argsets]
    pid = os.getpid()
    function, _ = split_bound_method(fn, ())
    if function is not fn:  # a bound method: its instance goes with each call
        instance = fn.__self__  # type: ignore[attr-defined]
        argsets = [(instance, *args) for args in argsets]
    fn_bytes = dumps_function(function)
    chunks = [argsets[i : i + size] for i in range(0, len(argsets), size)]
    try:
        tasks = submit_batch(run_chunk, [((fn_bytes, chunk, pid), {}) for chunk in chunks])
    except PicklingError as exc:
        # The executor names the chunk runner's argument; name the user's function.
        raise PicklingError(
            f"cannot send the calls of {callable_name(fn)} to a worker: the arguments of "
            f"one of them could not be pickled ({exc.__cause__ or exc}). Pass picklable "
            "values (data instead of open files, locks or connections), or use Method.THREAD."
        ) from exc
    for index, task in enumerate(tasks):
        start = index * size
        task.add_done_callback(_Splitter(futures[start : start + size], estimate))
    return futures


class _Splitter:
    """Done-callback of a chunk's task: completes each call's future."""

    __slots__ = ("estimate", "futures")

    def __init__(self, futures: list[Future[Any]], estimate: DurationEstimate) -> None:
        self.futures = futures
        self.estimate = estimate

    def __call__(self, task: Future[Any]) -> None:
        if task.cancelled():
            for future in self.futures:
                future.cancel()
            return
        error = task.exception()
        if error is not None:  # the chunk as a whole failed (worker died, unpicklable result)
            for future in self.futures:
                with contextlib.suppress(InvalidStateError):
                    future.set_exception(error)
            return
        seconds, values, failures = task.result()
        self.estimate.add(seconds, len(values))
        # A future cancelled by its caller meanwhile refuses its outcome
        # (try/except, not contextlib.suppress: this loop runs once per call).
        for index, (future, value) in enumerate(zip(self.futures, values, strict=True)):
            if failures and index in failures:
                continue
            try:  # noqa: SIM105
                future.set_result(value)
            except InvalidStateError:
                pass
        for index, (exc, tb) in failures.items():
            if tb is not None:
                attach_remote_traceback(exc, tb)
            future = self.futures[index]
            with contextlib.suppress(InvalidStateError):
                future.set_exception(exc)


def workers_of(executor: Executor) -> int:
    """The executor's worker count when it tells, else the machine's CPU count."""
    for name in ("max_workers", "_max_workers"):
        value = getattr(executor, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return max(1, os.cpu_count() or 1)
