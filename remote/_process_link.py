"""ProcessLink: the embedded pool's hosts run their slots as PROCESS workers.

Why the PROCESS pool behind REMOTE's scheduler (and not PROCESS as a REMOTE link
without retries): issue 9 asks for one worker runtime for every local call.
PROCESS already has the lean one -- workers started by ``subprocess`` and fed
batches over pipes, shared-memory buffers for large arguments and results,
deadlines and recycling enforced by its result thread, worker deaths seen
through process sentinels. REMOTE's value is above that line: the scheduler's
retries of lost attempts ending in :class:`~parallelize.PoisonedCallError`,
backups, per-host stats and the attempt log. Putting the PROCESS pool under the
scheduler keeps both and removes a whole second runtime from the local path:
no agent process between the controller and the slots, no second codec, no
link writer/reader threads. A call that fails in the embedded pool therefore
fails with the same type and message as under PROCESS (a raised exception, an
unpicklable result, ``sys.exit``); a dead worker is retried by the scheduler
first, as on any REMOTE host.

How a call goes: ``RemoteExecutor.submit`` pickles it once, the PROCESS way
(:func:`parallelize.ext.pickle_call`: large buffers, ``share()``\\ d objects
included, go into one shared-memory segment written once), because every host
of the executor has this link. The scheduler thread starts an attempt with
:meth:`ProcessLink.submit_local`, which queues it on the PROCESS pool (never
blocks: the pool's pipes are non-blocking) with a :class:`~parallelize.ext.RunHandle`
(no future per attempt: the scheduler completes the caller's). The pool's result
thread completes the handle, which posts one event to the scheduler's queue: the
value or exception itself (:class:`~remote._link.Delivered`), nothing pickled again;
:class:`~parallelize.WorkerDiedError` becomes a lost attempt and
:class:`~parallelize.TaskTimeoutError` a timed-out one.

Threads: ``submit_local``/``flush_local``/``cancel`` run on the scheduler thread, events on the
PROCESS pool's result thread (or, for a call killed by ``close``, on the
closing thread). What the workers print is passed on with the host's name in
front (``remote/_output_relay.py``). ``_lock`` guards ``_running`` (attempt id ->
handle) only and is never held while calling into the pool or posting an event.

A pool of this one host alone (the default embedded pool) runs its calls on the
*direct lane* instead while the host is up (``remote/_lane.py``): the caller's thread
hands them to this link's pool, and the scheduler only books them, or adopts a call
whose attempt failed. ``lane_executor`` gives the lane the pool.

The pipe-based :class:`~remote._local_link.LocalLink` (a real agent process on
this machine) stays for local hosts that name another Python, and for tests
that need a real agent.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import cloudpickle

from parallelize import RemoteTraceback, TaskTimeoutError, WorkerDiedError
from parallelize.ext import PickledCall, ProcessExecutor, RunHandle
from smart_future import StoppableFuture

from ._errors import HostErrorKind, HostUnavailableError
from ._link import Delivered, HostSpec, LinkEvents
from ._output_relay import OutputRelay

__all__ = ["ProcessLink", "runs_in_process"]


def runs_in_process(spec: HostSpec) -> bool:
    """Whether an embedded-pool host can run on PROCESS workers: a local host whose
    Python is this interpreter (another interpreter needs a real agent: LocalLink)."""
    if not spec.is_local:
        return False
    python = spec.python
    return python in ("", "python3", "python") or os.path.realpath(
        os.path.expanduser(python)
    ) == os.path.realpath(sys.executable)


class _AttemptHandle(RunHandle):
    """An attempt in the pool: reports to its link by attempt id, and marks the caller's
    future running when it starts. One object per attempt where callbacks took a
    closure, its cells and a bound method: fewer objects for the GC to follow per call."""

    __slots__ = ("_attempt_id", "_caller", "_link")

    def __init__(
        self, link: ProcessLink, attempt_id: int, caller: StoppableFuture[Any] | None
    ) -> None:
        super().__init__(_unused)
        self._link = link
        self._attempt_id = attempt_id
        self._caller = caller

    def _started(self) -> None:
        if self._caller is not None:
            self._caller.mark_running()

    def _report(self, value: Any, error: BaseException | None) -> None:
        self._link._done(self._attempt_id, value, error, self.run_seconds)


def _unused(value: Any, error: BaseException | None, seconds: float) -> None:
    raise RuntimeError("an attempt handle reports through _report")  # never called


class ProcessLink:
    """A :class:`~remote._link.LocalCallLink` whose slots are PROCESS workers."""

    def __init__(self, spec: HostSpec) -> None:
        self.spec = spec
        self.hello: dict[str, Any] = {
            "python": ".".join(map(str, sys.version_info[:3])),
            "cloudpickle": str(cloudpickle.__version__),
            "pid": os.getpid(),
        }
        self._events: LinkEvents | None = None
        self._executor: ProcessExecutor | None = None
        self._lock = threading.Lock()
        self._running: dict[int, RunHandle] = {}
        # Started, not yet handed to the pool (scheduler thread only).
        self._outgoing: list[tuple[PickledCall, RunHandle, float | None]] = []
        self._closed = False
        self._relay: OutputRelay | None = None

    def connect(self, events: LinkEvents) -> None:
        try:
            self._relay = OutputRelay(self.spec.name)
            self._executor = ProcessExecutor(
                self.spec.slots,
                name=f"remote:{self.spec.name}",
                max_tasks_per_worker=self.spec.max_tasks_per_worker,
                max_worker_memory=self.spec.max_worker_memory,
                stdio=self._relay.new_pipes,
                drain_stdio=self._relay.drain_stdout,
                host=self.spec.name,
            )
            # It runs the calls REMOTE's scheduler finishes at exit (RemoteExecutor itself
            # refuses submissions once the interpreter exits).
            self._executor.serves_another_executor = True
        except (OSError, ValueError) as exc:
            if self._relay is not None:
                self._relay.close()
            raise HostUnavailableError(
                f"host {self.spec.name!r} (local): cannot start its worker pool: {exc}",
                kind=HostErrorKind.AGENT_START,
                host=self.spec.name,
            ) from None
        self._events = events

    def submit(
        self,
        attempt_id: int,
        fn_id: int,
        fn_payload: bytes,
        args_payload: bytes,
        timeout: float | None = None,
    ) -> None:
        raise TypeError(
            f"host {self.spec.name!r} runs calls pickled by parallelize.ext.pickle_call "
            "(submit_local); a wire payload cannot be sent to it"
        )

    # The pool queues attempts behind running ones in each worker (see ``submit_local``).
    prefetches = True

    def submit_local(
        self,
        attempt_id: int,
        call: PickledCall,
        timeout: float | None,
        caller: StoppableFuture[Any] | None = None,
    ) -> None:
        executor = self._executor
        if executor is None or self._closed:
            raise RuntimeError(f"link to {self.spec.name!r} is closed")
        # The scheduler may send more attempts than there are workers (short calls: the
        # pool then batches them). *caller*, the call's future when it is not running yet,
        # turns running when the attempt really starts in a worker, so that until then
        # the caller can still cancel() it the standard way.
        handle = _AttemptHandle(self, attempt_id, caller)
        with self._lock:
            self._running[attempt_id] = handle
        # Held until flush_local: the scheduler starts attempts in batches, and the pool
        # takes a batch under one lock and sends it to a worker as one frame.
        self._outgoing.append((call, handle, timeout))

    def lane_executor(self) -> ProcessExecutor | None:
        """The pool itself, for the direct lane (remote/_lane.py), while the link is open."""
        return None if self._closed else self._executor

    def flush_local(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        executor = self._executor
        if not outgoing or executor is None or self._closed:
            return
        executor.submit_runs(outgoing)

    def _done(
        self, attempt_id: int, value: Any, exc: BaseException | None, duration: float
    ) -> None:
        # The pool's result thread: post one event and return (the scheduler owns the rest).
        # A cancelled handle never gets here (RunHandle drops its answer).
        with self._lock:
            if self._running.pop(attempt_id, None) is None:
                return  # the link was closed
        events = self._events
        if events is None or self._closed:
            return
        if exc is None:
            events.on_result(self, attempt_id, True, Delivered(value), duration)
        elif isinstance(exc.__cause__, RemoteTraceback):  # raised by the call itself
            events.on_result(self, attempt_id, False, Delivered(exc), duration)
        elif isinstance(exc, WorkerDiedError):
            events.on_attempt_lost(self, attempt_id, str(exc))
        elif isinstance(exc, TaskTimeoutError):
            events.on_attempt_timeout(self, attempt_id, float(exc.timeout or 0.0))
        else:  # an unpicklable or unreadable result: the call's failure, as under PROCESS
            events.on_result(self, attempt_id, False, Delivered(exc), duration)

    def cancel(self, attempt_id: int) -> None:
        with self._lock:
            handle = self._running.pop(attempt_id, None)
        if handle is not None:
            handle.stop()  # kills the worker if the attempt is running

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._running.clear()
        executor = self._executor
        if executor is not None:
            executor.terminate()
        if self._relay is not None:
            self._relay.close()

    def wait_closed(self, timeout: float) -> None:
        """Give the killed workers up to *timeout* seconds to be reaped and their last
        output to be passed on."""
        deadline = time.monotonic() + timeout
        executor = self._executor
        if executor is not None:
            executor.join_workers(timeout)
        if self._relay is not None:
            self._relay.join(max(0.0, deadline - time.monotonic()))

    @property
    def alive(self) -> bool:
        return self._executor is not None and not self._closed
