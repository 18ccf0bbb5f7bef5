"""RemoteFuture: the caller's future tells the scheduler of a cancel or stop, once."""

from __future__ import annotations

from typing import Any, cast

from remote._bundle import Bundle
from remote._remote_future import RemoteFuture
from remote._scheduler import Scheduler


class _Recorder:
    def __init__(self) -> None:
        self.cancelled: list[Any] = []

    def cancel(self, bundle: Any) -> None:
        self.cancelled.append(bundle)


def _future() -> tuple[RemoteFuture, _Recorder, Bundle]:
    recorder = _Recorder()
    future = RemoteFuture(cast(Scheduler, recorder))
    bundle = cast(Bundle, object())
    future.bundle = bundle
    return future, recorder, bundle


def test_cancelling_a_queued_call_tells_the_scheduler_once() -> None:
    future, recorder, bundle = _future()
    assert future.cancel() and future.cancel() and future.stop()
    assert recorder.cancelled == [bundle]


def test_stopping_a_running_call_tells_the_scheduler_once() -> None:
    future, recorder, bundle = _future()
    assert future.set_running_or_notify_cancel()
    assert not future.cancel()  # the standard rule for a running future
    assert recorder.cancelled == []
    assert future.stop() and future.cancelled()
    assert recorder.cancelled == [bundle]


def test_a_finished_call_tells_nothing() -> None:
    future, recorder, _ = _future()
    future.set_running_or_notify_cancel()
    future.set_result(1)
    assert not future.cancel() and not future.stop()
    assert recorder.cancelled == []
