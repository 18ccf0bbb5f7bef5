"""Per-call options behind the decorator (issue 10): timeout on THREAD, retries, f.map, f.options.

PROCESS timeouts are tested with the PROCESS executor; here PROCESS is used only for
retries and f.map. Runs are counted in a file so that calls in worker processes count.
"""

from __future__ import annotations

import os
import pickle
import threading
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from pathlib import Path

import pytest

import parallelize as par
from parallelize import Method, SmartFuture, TaskTimeoutError, parallelize, wait_all
from parallelize._pickling import dumps
from parallelize._retry import AttemptsFuture
from parallelize._submission import submit_call
from parallelize._timer import call_later
from parallelize.ext import DEFAULT_OPTIONS, CallOptions, attach_remote_traceback
from smart_future import StoppableFuture

EVENT_TIMEOUT = 30.0  # generous deadlock guard for waits


def count_run(counter: str) -> int:
    """Append one line to *counter* (a file) and return how many runs it now records."""
    with open(counter, "a") as file:
        file.write("x\n")
    with open(counter) as file:
        return len(file.readlines())


def runs(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def flaky(counter: str, failures: int) -> str:
    """Fail with ConnectionError on the first *failures* runs, then succeed."""
    run = count_run(counter)
    if run <= failures:
        raise ConnectionError(f"run {run} failed")
    return f"ok after {run} runs"


def fails_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x * x


def add(x: int, y: int) -> int:
    return x + y


@pytest.fixture
def counter(tmp_path: Path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # never leave a worker thread blocked for the teardown's shutdown


# ----------------------------------------------------------------------
# decoration
# ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"timeout": 0}, ValueError, "timeout="),
        ({"timeout": "5"}, TypeError, "timeout="),
        ({"retries": 2}, ValueError, "retry_on="),
        ({"retries": 1, "retry_on": "ConnectionError"}, TypeError, "retry_on="),
        ({"retries": 1, "retry_on": (ConnectionError, int)}, TypeError, "exception types"),
        ({"retry_backoff": -1}, ValueError, "retry_backoff="),
        ({"backups": "yes"}, TypeError, "backups="),
        ({"timout": 1}, TypeError, "Did you mean 'timeout'"),
    ],
)
def test_bad_options_fail_at_decoration(
    options: dict[str, object], error: type, words: str
) -> None:
    with pytest.raises(error, match=words):
        parallelize(**options)


def test_retry_on_takes_one_type_or_a_tuple() -> None:
    one = parallelize(retries=1, retry_on=ConnectionError)(add)
    many = parallelize(retries=1, retry_on=[ConnectionError, TimeoutError])(add)
    assert one._self_dispatch.options.retry_on == (ConnectionError,)
    assert many._self_dispatch.options.retry_on == (ConnectionError, TimeoutError)


def test_foreign_executor_with_timeout_fails_at_decoration() -> None:
    with ThreadPoolExecutor(1) as pool:
        with pytest.raises(TypeError, match="ThreadPoolExecutor, which cannot enforce timeout="):
            parallelize(executor=pool, timeout=1)
        # retries are the decorator's own: any executor takes them
        retried = parallelize(executor=pool, retries=1, retry_on=ValueError)(add)
        assert retried(1, 2).result(EVENT_TIMEOUT) == 3


def test_default_options_keep_the_plain_call_path() -> None:
    plain = parallelize(add)
    explicit_defaults = parallelize(timeout=None, retries=0)(add)
    assert plain._self_dispatch.options is DEFAULT_OPTIONS
    assert explicit_defaults._self_dispatch.options is DEFAULT_OPTIONS


# ----------------------------------------------------------------------
# THREAD timeout
# ----------------------------------------------------------------------


def test_thread_timeout_fails_the_future_and_the_thread_runs_on(gate: threading.Event) -> None:
    finished = threading.Event()

    @parallelize(timeout=0.2)
    def wait_for_gate() -> str:
        gate.wait(EVENT_TIMEOUT)
        finished.set()
        return "late"

    future = wait_for_gate()
    with pytest.raises(TaskTimeoutError) as caught:
        future.result(EVENT_TIMEOUT)
    error = caught.value
    assert isinstance(error, TimeoutError)
    assert error.where == "thread" and error.timeout == 0.2
    assert "wait_for_gate" in error.function
    assert not finished.is_set()  # the thread was not stopped: it still waits
    gate.set()
    assert finished.wait(EVENT_TIMEOUT)  # ... and runs to its end; the result is dropped
    assert isinstance(future.exception(), TaskTimeoutError)


def test_thread_timeout_counts_from_the_start_of_the_call(gate: threading.Event) -> None:
    executor = par.ThreadExecutor(1)
    try:
        blocker = parallelize(executor=executor)(gate.wait)(EVENT_TIMEOUT)
        quick = parallelize(executor=executor, timeout=0.1)(add)(1, 2)
        # Queued behind the blocker for longer than its timeout: still pending, not failed.
        with pytest.raises(FutureTimeoutError):
            quick.result(0.5)
        assert not quick.done() and not quick.running()
        gate.set()
        assert blocker.result(EVENT_TIMEOUT) is True
        assert quick.result(EVENT_TIMEOUT) == 3
    finally:
        gate.set()
        executor.shutdown()


def test_thread_timeouts_share_one_timer_thread() -> None:
    timed = parallelize(timeout=30)(add)
    assert wait_all([timed(i, i) for i in range(50)], timeout=EVENT_TIMEOUT)[-1] == 98
    timers = [t for t in threading.enumerate() if t.name == "parallelize-timer"]
    assert len(timers) == 1
    assert not [t for t in threading.enumerate() if isinstance(t, threading.Timer)]


def test_timer_runs_in_order_and_cancelled_handles_never_run() -> None:
    seen: list[int] = []
    done = threading.Event()
    cancelled = [call_later(0.01, lambda: seen.append(-1)) for _ in range(100)]
    for handle in cancelled:
        handle.cancel()
    call_later(0.05, lambda: seen.append(2))
    call_later(0.0, lambda: seen.append(1))
    call_later(0.1, done.set)
    assert done.wait(EVENT_TIMEOUT)
    assert seen == [1, 2]


# ----------------------------------------------------------------------
# retries
# ----------------------------------------------------------------------


@pytest.mark.parametrize("method", [Method.THREAD, Method.PROCESS])
def test_call_failing_twice_then_succeeding_is_retried(method: Method, counter: Path) -> None:
    retried = parallelize(method=method, retries=3, retry_on=ConnectionError)(flaky)
    assert retried(str(counter), 2).result(EVENT_TIMEOUT) == "ok after 3 runs"
    assert runs(counter) == 3


@pytest.mark.parametrize("method", [Method.THREAD, Method.PROCESS])
def test_final_exception_carries_the_earlier_attempts(method: Method, counter: Path) -> None:
    retried = parallelize(method=method, retries=2, retry_on=(ConnectionError,))(flaky)
    error = retried(str(counter), 10).exception(EVENT_TIMEOUT)
    assert isinstance(error, ConnectionError) and str(error) == "run 3 failed"
    assert runs(counter) == 3
    history = error.retry_history  # type: ignore[attr-defined]
    assert [str(e) for e in history] == ["run 1 failed", "run 2 failed"]
    assert error.__notes__ == [
        "attempt 1 of 3 failed: ConnectionError: run 1 failed",
        "attempt 2 of 3 failed: ConnectionError: run 2 failed",
    ]


def test_other_errors_are_not_retried(counter: Path) -> None:
    @parallelize(retries=3, retry_on=ConnectionError)
    def wrong(path: str) -> None:
        count_run(path)
        raise KeyError("not retried")

    error = wrong(str(counter)).exception(EVENT_TIMEOUT)
    assert isinstance(error, KeyError) and not hasattr(error, "retry_history")
    assert runs(counter) == 1


def test_timeout_is_retried_when_retry_on_asks(counter: Path, gate: threading.Event) -> None:
    @parallelize(timeout=0.2, retries=1, retry_on=TimeoutError)
    def first_run_hangs(path: str) -> str:
        if count_run(path) == 1:
            gate.wait(EVENT_TIMEOUT)
        return "second run"

    assert first_run_hangs(str(counter)).result(EVENT_TIMEOUT) == "second run"
    assert runs(counter) == 2


def test_cancel_during_backoff_stops_the_retries(counter: Path) -> None:
    failed_once = threading.Event()

    @parallelize(retries=3, retry_on=ConnectionError, retry_backoff=60)
    def fails(path: str) -> None:
        count_run(path)
        failed_once.set()
        raise ConnectionError("down")

    future = fails(str(counter))
    assert failed_once.wait(EVENT_TIMEOUT)
    assert not future.done()
    assert future.cancel()
    assert future.cancelled()
    with pytest.raises(CancelledError):
        future.result(EVENT_TIMEOUT)
    assert runs(counter) == 1


def test_running_thread_attempt_is_not_cancelled(gate: threading.Event) -> None:
    started = threading.Event()

    @parallelize(retries=1, retry_on=ConnectionError)
    def blocks() -> int:
        started.set()
        gate.wait(EVENT_TIMEOUT)
        return 1

    future = blocks()
    assert started.wait(EVENT_TIMEOUT)
    assert future.running()
    assert not future.cancel()  # threads cannot be stopped: as concurrent.futures
    gate.set()
    assert future.result(EVENT_TIMEOUT) == 1


def test_attempts_future_stops_a_running_stoppable_attempt() -> None:
    outer = AttemptsFuture()
    attempt: StoppableFuture[int] = StoppableFuture()
    attempt.set_running_or_notify_cancel()
    outer.set_attempt(attempt)
    assert outer.running()
    assert not outer.cancel()  # the raw future keeps the standard semantics
    assert SmartFuture(outer).cancel()  # SmartFuture.cancel() stops the running attempt
    assert outer.cancelled() and attempt.cancelled()


def test_retries_with_smart_future_arguments(counter: Path) -> None:
    retried = parallelize(retries=2, retry_on=ConnectionError)(flaky)
    path = parallelize(os.fspath)(counter)  # a SmartFuture argument: the call waits for it
    assert retried(path, 1).result(EVENT_TIMEOUT) == "ok after 2 runs"


# ----------------------------------------------------------------------
# f.map
# ----------------------------------------------------------------------


@pytest.mark.parametrize("method", [Method.THREAD, Method.PROCESS])
def test_map_gives_one_future_per_call_with_its_own_exception(method: Method) -> None:
    mapped = parallelize(method=method)(fails_on_three)
    futures = mapped.map(range(6))
    assert len(futures) == 6 and all(isinstance(f, SmartFuture) for f in futures)
    assert [f.exception(EVENT_TIMEOUT) is None for f in futures] == [True] * 3 + [False, True, True]
    assert [f.result() for i, f in enumerate(futures) if i != 3] == [0, 1, 4, 16, 25]
    error = futures[3].exception()
    assert isinstance(error, ValueError) and str(error) == "three"
    if method is Method.PROCESS:
        assert "fails_on_three" in str(error.__cause__)  # the worker's traceback


@pytest.mark.parametrize("chunksize", [None, 1, 7])
def test_map_on_process_in_chunks(chunksize: int | None) -> None:
    mapped = parallelize(method=Method.PROCESS)(add)
    futures = mapped.map(range(300), range(300, 0, -1), chunksize=chunksize)
    assert [f.result(EVENT_TIMEOUT) for f in futures] == [300] * 300


def test_map_stops_at_the_shortest_iterable_and_takes_smart_futures() -> None:
    mapped = parallelize(add)
    first = parallelize(add)(1, 1)
    assert [f.result(EVENT_TIMEOUT) for f in mapped.map([first, 10, 20], [1, 2])] == [3, 12]
    assert mapped.map([]) == []


@pytest.mark.parametrize(
    ("chunksize", "error"), [(0, ValueError), (-3, ValueError), (1.5, TypeError), (True, TypeError)]
)
def test_map_refuses_a_bad_chunksize(chunksize: object, error: type) -> None:
    with pytest.raises(error, match="chunksize"):
        parallelize(add).map([1], [2], chunksize=chunksize)  # type: ignore[arg-type]


class Scaler:
    def __init__(self, factor: int) -> None:
        self.factor = factor

    @parallelize
    def scale(self, x: int) -> int:
        return self.factor * x

    @parallelize(method=Method.PROCESS)
    def scale_in_process(self, x: int) -> int:
        return self.factor * x


def test_map_on_bound_methods() -> None:
    scaler = Scaler(3)
    assert [f.result(EVENT_TIMEOUT) for f in scaler.scale.map([1, 2])] == [3, 6]
    futures = scaler.scale_in_process.map(range(100), chunksize=10)
    assert [f.result(EVENT_TIMEOUT) for f in futures] == [3 * i for i in range(100)]


def test_wait_all_with_progress_over_map(capsys: pytest.CaptureFixture[str]) -> None:
    mapped = parallelize(method=Method.PROCESS)(add)
    done = wait_all(mapped.map(range(50), range(50)), progress=True)
    assert [f.result() for f in done] == [2 * i for i in range(50)]


def test_map_with_retries_retries_each_call(tmp_path: Path) -> None:
    retried = parallelize(retries=1, retry_on=ConnectionError)(flaky)
    counters = [tmp_path / "a", tmp_path / "b"]
    futures = retried.map([str(c) for c in counters], [1, 1])
    assert [f.result(EVENT_TIMEOUT) for f in futures] == ["ok after 2 runs"] * 2
    assert [runs(c) for c in counters] == [2, 2]


# ----------------------------------------------------------------------
# f.options
# ----------------------------------------------------------------------


def test_options_override_for_the_calls_made_through_it(gate: threading.Event) -> None:
    @parallelize
    def wait_for_gate() -> bool:
        return gate.wait(EVENT_TIMEOUT)

    with pytest.raises(TaskTimeoutError):
        wait_for_gate.options(timeout=0.1)().result(EVENT_TIMEOUT)
    gate.set()
    assert wait_for_gate().result(EVENT_TIMEOUT) is True  # the function itself is unchanged
    assert wait_for_gate._self_dispatch.options.timeout is None


def test_options_method_switches_the_executor() -> None:
    in_thread = parallelize(os.getpid)
    assert in_thread().result(EVENT_TIMEOUT) == os.getpid()
    in_process = in_thread.options(method=Method.PROCESS)
    assert in_process().result(EVENT_TIMEOUT) != os.getpid()
    assert [f.result(EVENT_TIMEOUT) != os.getpid() for f in in_process.map([])] == []
    chained = in_process.options(timeout=None)
    assert chained().result(EVENT_TIMEOUT) != os.getpid()


def test_options_retries_and_map(counter: Path) -> None:
    plain = parallelize(method=Method.PROCESS)(flaky)
    assert isinstance(plain(str(counter), 1).exception(EVENT_TIMEOUT), ConnectionError)
    assert runs(counter) == 1
    retried = plain.options(retries=2, retry_on=ConnectionError)
    assert retried(str(counter), 2).result(EVENT_TIMEOUT) == "ok after 3 runs"
    assert runs(counter) == 3
    assert [f.result(EVENT_TIMEOUT) for f in retried.map([str(counter)], [0])] == [
        "ok after 4 runs"
    ]


def test_options_refuse_unknown_names_and_bad_values() -> None:
    f = parallelize(add)
    with pytest.raises(TypeError, match=r"'retry'; valid options are method, timeout, retries"):
        f.options(retry=2)
    with pytest.raises(ValueError, match="timeout="):
        f.options(timeout=-1)
    with ThreadPoolExecutor(1) as pool, pytest.raises(TypeError, match="cannot enforce timeout="):
        parallelize(executor=pool)(add).options(timeout=1)


def test_options_on_bound_methods() -> None:
    scaler = Scaler(2)
    assert scaler.scale.options(timeout=10)(4).result(EVENT_TIMEOUT) == 8
    assert [f.result(EVENT_TIMEOUT) for f in scaler.scale.options(timeout=10).map([1])] == [2]


# ----------------------------------------------------------------------
# pickling
# ----------------------------------------------------------------------


def test_pickled_by_value_keeps_the_options() -> None:
    @parallelize(method=Method.PROCESS, timeout=5, retries=2, retry_on=ConnectionError)
    def local(x: int) -> int:
        return x

    copy = pickle.loads(dumps(local))  # parallelize's pickler, as PROCESS and REMOTE use
    options = copy._self_dispatch.options
    assert (options.timeout, options.retries, options.retry_on) == (5, 2, (ConnectionError,))
    assert copy._self_options[0] is Method.PROCESS
    assert copy.__wrapped__(3) == 3


def test_thread_executor_submit_with_enforces_the_timeout(gate: threading.Event) -> None:
    executor = par.ThreadExecutor(2)
    try:
        assert executor.supports_timeout
        options = CallOptions(timeout=0.1)
        hung = executor.submit_with(options, gate.wait, EVENT_TIMEOUT)
        quick = executor.submit_with(options, add, 2, 3)
        assert quick.result(EVENT_TIMEOUT) == 5
        assert isinstance(hung.exception(EVENT_TIMEOUT), TaskTimeoutError)
        batch = executor.submit_batch(add, [((1, 1), {}), ((2, 2), {})], options)
        assert [f.result(EVENT_TIMEOUT) for f in batch] == [2, 4]
    finally:
        gate.set()
        executor.shutdown()


def test_map_names_the_function_when_an_argument_cannot_be_pickled() -> None:
    mapped = parallelize(method=Method.PROCESS)(add)
    with pytest.raises(par.PicklingError, match=r"calls of .*add to a worker"):
        mapped.map([1, threading.Lock()], [1, 2], chunksize=2)


class RecordingExecutor(par.ThreadExecutor):
    """A ThreadExecutor that records the options each submit_with receives."""

    def __init__(self) -> None:
        super().__init__(2)
        self.seen: list[CallOptions] = []

    def submit_with(self, options, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.seen.append(options)
        return super().submit_with(options, fn, *args, **kwargs)


def test_retries_avoid_the_hosts_where_attempts_failed(counter: Path) -> None:
    def fails_on_hosts(path: str) -> str:
        run = count_run(path)
        if run <= 2:
            raise attach_remote_traceback(ConnectionError(f"run {run}"), "tb", host=f"h{run}")
        return "ok"

    executor = RecordingExecutor()
    try:
        retried = parallelize(executor=executor, retries=3, retry_on=ConnectionError)
        assert retried(fails_on_hosts)(str(counter)).result(EVENT_TIMEOUT) == "ok"
        assert [o.avoid_hosts for o in executor.seen] == [{"h1"}, {"h1", "h2"}]
        assert all(o.retries == 0 for o in executor.seen)  # retries never reach executors
        last = parallelize(executor=executor, retries=1, retry_on=ConnectionError)(fails_on_hosts)
        other = counter.with_name("other")
        error = last(str(other)).exception(EVENT_TIMEOUT)
        assert error is not None and runs(other) == 2
        assert error.__notes__ == ["attempt 1 of 2 failed on host h1: ConnectionError: run 1"]
    finally:
        executor.shutdown()


def test_chained_call_is_stopped_through_its_smart_future() -> None:
    dependency: Future[int] = Future()
    attempts: list[StoppableFuture[int]] = []

    def submit(fn: object, args: tuple[object, ...], kwargs: dict[str, object]) -> Future[int]:
        attempt: StoppableFuture[int] = StoppableFuture()
        attempt.set_running_or_notify_cancel()  # as if a worker had started it
        attempts.append(attempt)
        return attempt

    with ThreadPoolExecutor(1) as unused:  # *submit* replaces the executor's submit
        chained = submit_call(unused, add, (SmartFuture(dependency), 1), {}, submit)
    assert not chained.running()
    dependency.set_result(1)
    assert len(attempts) == 1 and chained.running()
    assert not chained.future.cancel()  # raw future: standard semantics
    assert chained.cancel() and attempts[0].cancelled()


_OVERRUN_SCRIPT = """
import threading, time
from parallelize import parallelize, TaskTimeoutError

release = threading.Event()

@parallelize(timeout=0.3)
def stuck():
    release.wait(120)  # never released: only the timeout ends the wait for it

@parallelize
def short():
    time.sleep(0.5)
    return "done"

try:
    stuck().result()
except TaskTimeoutError as error:
    assert not error.stopped and "runs on" in str(error), error
late = stuck()   # still running when the script ends; times out during exit
kept = short()   # an ordinary call: exit waits for it
print("submitted", flush=True)
"""


def test_exit_does_not_wait_for_thread_calls_past_their_timeout(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    script = tmp_path / "overrun.py"
    script.write_text(_OVERRUN_SCRIPT)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=100
    )
    assert done.returncode == 0, done.stderr
    assert "submitted" in done.stdout
    # Both stuck calls wait up to 120 s: exit returning well before shows it did not join them.
    assert time.monotonic() - started < 60
