"""The per-call options contract: validation, and StoppableFuture's stop of a running call."""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_COMPLETED, Future, wait

import pytest

from parallelize.ext import CallOptions
from smart_future import SmartFuture, StoppableFuture


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"timeout": 0}, ValueError, "timeout="),
        ({"timeout": -1.5}, ValueError, "positive"),
        ({"timeout": "10"}, TypeError, "number of seconds"),
        ({"timeout": True}, TypeError, "timeout="),
        ({"retries": -1}, ValueError, "retries="),
        ({"retries": 2}, ValueError, "retry_on="),
        ({"retries": 1, "retry_on": (int,)}, TypeError, "exception types"),
        ({"retry_backoff": -1}, ValueError, "retry_backoff="),
        ({"backups": "yes"}, TypeError, "backups="),
    ],
)
def test_bad_options_name_the_option(options: dict[str, object], error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        CallOptions(**options)  # type: ignore[arg-type]


def test_merged_validates_and_normalises() -> None:
    options = CallOptions(timeout=5).merged({"retries": 2, "retry_on": ConnectionError})
    assert options.retry_on == (ConnectionError,)
    assert options.timeout == 5
    assert options.for_executor().retries == 0
    with pytest.raises(TypeError, match="unknown call option 'timout'"):
        options.merged({"timout": 1})


def test_stop_cancels_a_running_future_and_wakes_waiters() -> None:
    future: StoppableFuture[int] = StoppableFuture()
    assert future.set_running_or_notify_cancel()
    seen: list[bool] = []
    future.add_done_callback(lambda f: seen.append(f.cancelled()))
    woke = threading.Event()

    def waiter() -> None:
        wait([future], return_when=FIRST_COMPLETED)
        woke.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    assert not future.cancel()  # the raw future keeps the standard semantics
    assert SmartFuture(future).cancel()
    assert woke.wait(10)
    thread.join(10)
    assert future.cancelled() and seen == [True]


def test_stop_of_a_finished_future_is_false_and_plain_futures_keep_standard_cancel() -> None:
    future: StoppableFuture[int] = StoppableFuture()
    future.set_running_or_notify_cancel()
    future.set_result(1)
    assert not future.stop()
    plain: Future[int] = Future()
    plain.set_running_or_notify_cancel()
    assert not SmartFuture(plain).cancel()
