"""The future a REMOTE call returns: cancelling or stopping it tells the scheduler.

The scheduler has to hear of a cancel to drop the call's queued or running attempts.
A done-callback per call would do it, at the price of a closure, a locked
``add_done_callback`` on the submitting thread and one more Python call when every
call finishes on the scheduler thread; this future posts the one message itself, and
only when it is cancelled or stopped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from smart_future import StoppableFuture

if TYPE_CHECKING:
    from ._bundle import Bundle
    from ._scheduler import Scheduler

__all__ = ["RemoteFuture"]


class RemoteFuture(StoppableFuture[Any]):
    """A :class:`~smart_future.StoppableFuture` bound to its call's bundle."""

    def __init__(self, scheduler: Scheduler) -> None:
        super().__init__()
        self._scheduler: Scheduler | None = scheduler
        self.bundle: Bundle | None = None  # set once the bundle that holds it exists

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        self._tell_scheduler()
        return True

    def stop(self) -> bool:
        if not super().stop():  # (a pending call goes through cancel() above)
            return False
        self._tell_scheduler()
        return True

    def _tell_scheduler(self) -> None:
        # Once: the scheduler ignores a cancel of a finished bundle anyway, but a call
        # cancelled again and again should not flood its queue. (A call on the direct
        # lane has no bundle until the scheduler adopts it: see remote/_lane.py.)
        bundle = self.bundle
        if bundle is not None:
            scheduler, self._scheduler = self._scheduler, None
            if scheduler is not None:
                scheduler.cancel(bundle)
