"""Tests for smart_future.wait_any and smart_future.wait_all."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from sigint_helpers import interrupt_main_when_blocked

from smart_future import SmartFuture, _interrupt, register_interrupt_hook, wait_all, wait_any
from smart_future import _wait as _wait_module

WAIT = 10.0


def pending(n: int) -> list[Future[Any]]:
    return [Future() for _ in range(n)]


def finished(value: Any) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_result(value)
    return future


def boom() -> None:
    raise ValueError("boom in task")


# ----------------------------------------------------------------------
# wait_any
# ----------------------------------------------------------------------


def test_wait_any_yields_in_completion_order() -> None:
    futures = pending(4)
    smart = [SmartFuture(f) for f in futures]
    it = wait_any(smart)
    for index in (2, 0, 3, 1):
        futures[index].set_result(index)
    assert [sf.result() for sf in it] == [2, 0, 3, 1]


def test_wait_any_already_done_first_in_input_order() -> None:
    futures = pending(3)
    futures[2].set_result("c")
    futures[0].set_result("a")
    it = wait_any(futures)
    futures[1].set_result("b")
    assert [sf.result() for sf in it] == ["a", "c", "b"]


@pytest.mark.timeout(30)
def test_wait_any_blocks_until_each_completion() -> None:
    futures = pending(5)
    order = [3, 1, 4, 0, 2]
    consumed = [threading.Event() for _ in order]

    def completer() -> None:
        for step, index in enumerate(order):
            futures[index].set_result(index)
            # Complete the next one only after the consumer saw this one.
            if not consumed[step].wait(WAIT):
                return

    thread = threading.Thread(target=completer)
    thread.start()
    seen = []
    for step, sf in enumerate(wait_any(futures, timeout=WAIT)):
        seen.append(sf.result())
        consumed[step].set()
    thread.join(WAIT)
    assert seen == order


def test_wait_any_yields_given_smart_futures_and_wraps_plain_ones() -> None:
    plain = finished(1)
    smart = SmartFuture(finished(2))
    out = list(wait_any([plain, smart]))
    assert out[1] is smart
    assert isinstance(out[0], SmartFuture) and out[0].future is plain


def test_wait_any_duplicates_yielded_once() -> None:
    a, b = finished(1), finished(2)
    sa = SmartFuture(a)
    out = list(wait_any([sa, a, b, b, SmartFuture(a), sa]))
    assert len(out) == 2
    assert out[0] is sa and out[1].future is b


def test_wait_any_callback_called_for_each_before_yield() -> None:
    futures = pending(3)
    seen: list[SmartFuture[Any]] = []
    it = wait_any(futures, callback=seen.append)
    for i in (1, 2, 0):
        futures[i].set_result(i)
    for count, sf in enumerate(it, start=1):
        assert len(seen) == count and seen[-1] is sf
    assert [sf.result() for sf in seen] == [1, 2, 0]


def test_wait_any_empty() -> None:
    assert list(wait_any([])) == []


def test_wait_any_accepts_generator() -> None:
    assert [sf.result() for sf in wait_any(finished(i) for i in range(3))] == [0, 1, 2]


def test_wait_any_rejects_single_future_and_non_futures() -> None:
    with pytest.raises(TypeError, match="single future"):
        wait_any(SmartFuture(finished([1])))  # SmartFuture is (statically) iterable
    with pytest.raises(TypeError, match="single future"):
        wait_all(finished(1))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="int"):
        wait_any([finished(1), 2])  # type: ignore[list-item]


def test_wait_any_yields_cancelled() -> None:
    futures = pending(2)
    it = wait_any(futures)
    futures[1].cancel()
    futures[0].set_result(0)
    out = list(it)
    assert out[0].cancelled() and out[1].result() == 0


def test_wait_any_timeout_message() -> None:
    futures = pending(3)
    futures[1].set_result(1)
    it = wait_any(futures, timeout=0.05)
    assert next(it).result() == 1
    with pytest.raises(TimeoutError, match=r"^2 of 3 futures still pending after 0\.05 s$"):
        next(it)


def test_wait_any_zero_timeout_yields_done_then_raises() -> None:
    futures = [finished(0), Future()]
    it = wait_any(futures, timeout=0)
    assert next(it).result() == 0
    with pytest.raises(TimeoutError, match="1 of 2 futures still pending after 0 s"):
        next(it)


@pytest.mark.timeout(30)
def test_wait_any_sliced_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_interrupt, "WAIT_SLICE", 0.005)
    futures = pending(2)
    release = threading.Event()

    def completer() -> None:
        if release.wait(WAIT):
            futures[1].set_result(1)
            futures[0].set_result(0)

    thread = threading.Thread(target=completer)
    thread.start()
    it = wait_any(futures, timeout=WAIT)
    release.set()
    assert [sf.result() for sf in it] == [1, 0]
    thread.join(WAIT)
    with pytest.raises(TimeoutError, match="1 of 1 futures"):
        list(wait_any([Future()], timeout=0.02))


# ----------------------------------------------------------------------
# Logging of failed tasks
# ----------------------------------------------------------------------


def test_failed_task_logged_with_traceback(caplog: pytest.LogCaptureFixture) -> None:
    with ThreadPoolExecutor(max_workers=1) as pool:
        futures: list[Future[Any]] = [pool.submit(boom), pool.submit(lambda: 1)]
        with caplog.at_level(logging.ERROR, logger="smart_future"):
            out = list(wait_any(futures, timeout=WAIT))
    errors = [r for r in caplog.records if r.name == "smart_future"]
    assert len(errors) == 1
    record = errors[0]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)
    assert "in boom" in caplog.text and 'raise ValueError("boom in task")' in caplog.text
    failed = next(sf for sf in out if sf.exception() is not None)
    with pytest.raises(ValueError, match="boom in task"):
        failed.result()


def test_log_exceptions_off(caplog: pytest.LogCaptureFixture) -> None:
    future: Future[Any] = Future()
    future.set_exception(ValueError("quiet"))
    with caplog.at_level(logging.DEBUG, logger="smart_future"):
        list(wait_any([future], log_exceptions=False))
        wait_all([future], log_exceptions=False)
    assert caplog.records == []


def test_cancelled_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    future: Future[Any] = Future()
    future.cancel()
    with caplog.at_level(logging.DEBUG, logger="smart_future"):
        wait_all([future])
    assert caplog.records == []


# ----------------------------------------------------------------------
# wait_all
# ----------------------------------------------------------------------


def test_wait_all_returns_input_order() -> None:
    futures = pending(3)

    def complete() -> None:
        for i in (2, 0, 1):
            futures[i].set_result(i)

    completer = threading.Thread(target=complete)
    completer.start()
    out = wait_all(futures, timeout=WAIT)
    completer.join(WAIT)
    assert [sf.result() for sf in out] == [0, 1, 2]
    assert all(sf.done() for sf in out)


def test_wait_all_keeps_smart_futures_and_duplicates() -> None:
    a = finished("a")
    sa = SmartFuture(a)
    b = finished("b")
    out = wait_all([sa, b, a, b])
    assert len(out) == 4
    assert out[0] is sa and out[2] is sa
    assert out[1] is out[3] and out[1].future is b


def test_wait_all_does_not_raise_task_exception(caplog: pytest.LogCaptureFixture) -> None:
    bad: Future[Any] = Future()
    bad.set_exception(ValueError("bad"))
    with caplog.at_level(logging.ERROR, logger="smart_future"):
        out = wait_all([finished(1), bad])
    assert isinstance(out[1].exception(), ValueError)
    assert "bad" in caplog.text


def test_wait_all_timeout_message() -> None:
    futures = [finished(0), Future(), Future(), finished(3)]
    with pytest.raises(TimeoutError, match=r"^2 of 4 futures still pending after 0\.01 s$"):
        wait_all(futures, timeout=0.01)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("completed_before", [True, False])
def test_many_futures_linear_time(completed_before: bool) -> None:
    n = 10_000
    futures = pending(n)

    def complete() -> None:
        for f in reversed(futures):
            f.set_result(1)

    start = time.monotonic()
    if completed_before:
        complete()
        out = list(wait_any(futures))
    else:
        it = wait_any(futures, timeout=WAIT)
        thread = threading.Thread(target=complete)
        thread.start()
        out = list(it)
        thread.join(WAIT)
    assert len(out) == n
    expected = futures if completed_before else futures[::-1]
    assert [sf.future for sf in out] == expected
    assert len(wait_all(futures)) == n
    assert time.monotonic() - start < 5.0


# ----------------------------------------------------------------------
# Ctrl-C
# ----------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("use", ["wait_all", "wait_any"])
def test_ctrl_c_during_wait_cancels_pending(default_sigint: None, use: str) -> None:
    started, release = threading.Event(), threading.Event()

    def blocked() -> int:
        started.set()
        release.wait(WAIT)
        return 0

    calls: list[str] = []
    unregister = register_interrupt_hook(lambda: calls.append("hook"))
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        running = pool.submit(blocked)
        queued = [pool.submit(lambda: 1) for _ in range(3)]
        assert started.wait(WAIT)
        thread = interrupt_main_when_blocked(
            "_next_done", _wait_module._drain.__code__, release.set
        )
        with pytest.raises(KeyboardInterrupt):
            if use == "wait_all":
                wait_all([running, *queued])
            else:
                for _ in wait_any([running, *queued]):
                    pass
        thread.join(WAIT)
        assert all(f.cancelled() for f in queued)
        assert not running.cancelled()
        assert calls == ["hook"]
    finally:
        unregister()
        release.set()
        pool.shutdown(wait=True)
