"""The future ``ProcessExecutor.submit`` returns (its own module: the worker handles
need it without the pool)."""

from __future__ import annotations

import mmap
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

from smart_future import StoppableFuture

if TYPE_CHECKING:
    from ._dispatch import Pool

__all__ = ["ProcessFuture"]

T = TypeVar("T")


class ProcessFuture(StoppableFuture[T]):
    """A PROCESS future: ``stop()`` of a running call kills the worker running it."""

    _pool: Pool | None = None
    run_seconds = 0.0  # how long the call ran in its worker, set before it completes
    worker_pid = 0  # the worker that ran it: set for subclasses only (REMOTE's direct lane)

    def set_skip_flag(self, flags: bytearray | mmap.mmap, position: int) -> None:
        """Set ``flags[position]`` to 1 if this call is cancelled while it waits in a worker
        behind another (the worker then skips it). A done-callback here; a subclass may
        do it without one (REMOTE's direct lane, as ``RunHandle.set_skip_flag``)."""

        def flag(future: Future[Any]) -> None:
            if future.cancelled():
                flags[position] = 1

        self.add_done_callback(flag)

    def stop(self) -> bool:
        if not super().stop():
            return False
        pool = self._pool
        if pool is not None:
            pool.stop_running(self)
        return True
