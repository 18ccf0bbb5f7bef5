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


def test_finished_calls_are_freed_by_reference_counting_not_left_to_the_cyclic_gc() -> None:
    # A future and its bundle pointed at each other: every finished call waited for a full
    # collection, which then walked all of them. With the GC off, dropping the futures
    # must free them at once.
    import gc
    import time
    import weakref

    from remote import RemoteExecutor
    from remote._pool_config import embedded_pool

    with RemoteExecutor(embedded_pool(1), heartbeat_interval=3600) as executor:
        futures = [executor.submit(abs, -i) for i in range(20)]
        assert [f.result(60) for f in futures] == list(range(20))
        refs = [weakref.ref(f) for f in futures]
        gc.disable()
        try:
            del futures
            # The scheduler and the pool's result thread may still hold the last one in a
            # local variable for a moment: a round trip through the scheduler, then wait
            # (generously) for those frames to end.
            executor._scheduler.call(lambda: None)
            deadline = time.monotonic() + 30
            while any(r() is not None for r in refs) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert [r() for r in refs] == [None] * 20
        finally:
            gc.enable()
