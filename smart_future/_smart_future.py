"""SmartFuture: a concurrent.futures.Future that behaves like its value.

A SmartFuture wraps a ``concurrent.futures.Future`` (public attribute
``future``) and offers two faces:

* The Future API (``result``, ``exception``, ``done``, ``cancel``,
  ``cancelled``, ``running``, ``add_done_callback``,
  ``remove_done_callback``), delegated to the wrapped future.
  ``add_done_callback`` callbacks receive the SmartFuture.

* The value face: operators, conversions, comparisons, container
  and iteration protocols, calling, the context-manager protocol and
  attribute access all act on ``result()``.  Each such use blocks until the
  task has finished and re-raises the task's exception if it failed (or
  ``CancelledError`` if it was cancelled).  SmartFuture operands are
  unwrapped, so ``f(1) + f(2)`` and ``2 ** f(3)`` work.

Things that never block: ``repr()``, ``hash()`` (identity: see the class
docstring), the Future API methods other than ``result()``/``exception()``
and ``isinstance()``.

This module is the Future face and the class itself; the value face is the
mixin :class:`smart_future._value_face.ValueFace`.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Generator
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Any, Generic, TypeVar

from smart_future import _interrupt
from smart_future._status import collect_status
from smart_future._stoppable import StoppableFuture
from smart_future._value_face import ValueFace

__all__ = ["SmartFuture", "remove_callbacks"]

T = TypeVar("T")

_logger = logging.getLogger("smart_future")

_REPR_LIMIT = 80


def _truncate(text: str) -> str:
    if len(text) > _REPR_LIMIT:
        return text[: _REPR_LIMIT - 3] + "..."
    return text


def _safe_repr(obj: object) -> str:
    try:
        return _truncate(repr(obj))
    except Exception as exc:  # a broken __repr__ must not break ours
        return f"<unrepresentable {type(obj).__name__}: {type(exc).__name__}>"


def _wait_sliced(future: Future[Any], timeout: float | None, slice_: float) -> None:
    """Wait until ``future`` is done or ``timeout`` expires, in short slices.

    Used only where blocking lock acquisition cannot be interrupted by
    Ctrl-C (Windows): each slice returns to the interpreter, which then
    raises a pending KeyboardInterrupt.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while not future.done():
        step = slice_
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            step = min(step, remaining)
        with contextlib.suppress(FutureTimeoutError, CancelledError):
            future.exception(step)


def _is_task_exception(future: Future[Any], exc: BaseException) -> bool:
    """True if ``exc`` is the exception the task itself raised."""
    return future.done() and not future.cancelled() and future.exception(0) is exc


def remove_callbacks(future: Future[Any], match: Callable[[Any], bool]) -> int:
    """Remove the done-callbacks of *future* for which ``match(cb)``; return how many.

    concurrent.futures has no public way to do this; its callbacks are a list
    guarded by the future's condition (stable since Python 3.2).
    """
    condition: Any = future._condition
    with condition:
        callbacks: list[Any] = future._done_callbacks  # type: ignore[attr-defined]
        keep = [cb for cb in callbacks if not match(cb)]
        removed = len(callbacks) - len(keep)
        callbacks[:] = keep
    return removed


def _timeout_message(future: Future[Any], timeout: float) -> str:
    """Why ``result(timeout)`` gave up: the task's state and what the executors report."""
    state = "running" if future.running() else "not started yet (queued)"
    message = f"the task did not finish within {timeout:g} s: it is {state}"
    status = collect_status()
    if status:
        message += "; " + "; ".join(status)
    return message


def _running_loop() -> Any:
    """The asyncio event loop running in this thread, or None (asyncio not imported: None)."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return None
    return asyncio._get_running_loop()


class _DoneCallback:
    """A done-callback registered through a SmartFuture: calls ``fn(owner)``."""

    __slots__ = ("fn", "loop", "owner")

    def __init__(self, owner: SmartFuture[Any], fn: Callable[[Any], object], loop: Any) -> None:
        self.owner = owner
        self.fn = fn
        self.loop = loop

    def __call__(self, _future: Future[Any]) -> None:
        if self.loop is None:
            self.fn(self.owner)
            return
        with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile
            self.loop.call_soon_threadsafe(self.fn, self.owner)


class SmartFuture(ValueFace, Generic[T]):
    """A future for a value of type ``T`` that can be used as that value.

    ``SmartFuture(future)`` wraps the ``concurrent.futures.Future``
    ``future``, kept as the public attribute ``future``; pass
    ``[sf.future for sf in ...]`` to ``concurrent.futures.wait()`` or
    ``as_completed()``.  Wrapping a SmartFuture wraps its inner future.

    Using a SmartFuture as a value (operators, comparisons,
    ``bool``, ``len``, ``iter``, ``in``, indexing, ``str``, ``format``,
    numeric conversions, ``round``, ``math.trunc/floor/ceil``, calling,
    ``with``, attribute access) blocks until the task finishes, then acts on
    the value; if the task failed its exception is re-raised, if it was
    cancelled ``CancelledError`` is raised.  Notes:

    * Names defined on SmartFuture (``future``, ``value``, ``result``,
      ``exception``, ``done``, ``cancel``, ``cancelled``, ``running``,
      ``add_done_callback``, ``remove_done_callback``) refer to the future,
      not the value; use
      ``sf.value.done`` to reach a value attribute of the same name.  All
      other attribute reads, writes and deletions go to the value (dunder
      names are read from, but never written to, the value).
    * In-place operators apply the in-place operator to the value and return
      its result: after ``x += 1`` the name ``x`` is bound to a plain value,
      not a SmartFuture; for a mutable value (e.g. a list) the shared result
      is mutated.
    * ``==`` compares values (and blocks), but ``hash()`` is the identity
      hash and never blocks: SmartFutures can be put in sets, dict keys and
      ``asyncio.gather()`` without waiting.  So a SmartFuture is *not* found
      in a dict keyed by its value: use ``d[sf.value]`` for that.
    * ``np.asarray(sf)`` (the array protocol) and ufuncs see the value.
    * Numeric conversions (``int``, ``float``, ``complex``, ``index``) use
      the value's own conversion methods, as ``math.sqrt(value)`` would: a
      ``str`` value is not parsed (``int(sf.value)`` parses it).
    * ``callable(sf)`` is always true, and ``isinstance(sf, int)`` is false
      even when the value is an int.
    * ``repr()`` never blocks; it shows the state, e.g.
      ``<SmartFuture pending>`` or ``<SmartFuture finished: 42>``.
    * ``await sf`` waits without blocking the event loop.
    * Pickling, ``copy.copy`` and ``copy.deepcopy`` act on the value: the
      result is (a copy of) the value, not a SmartFuture.
    """

    __slots__ = ("__weakref__", "future")

    future: Future[T]

    def __init__(self, future: Future[T] | SmartFuture[T]) -> None:
        if isinstance(future, SmartFuture):
            future = future.future
        elif not isinstance(future, Future):
            raise TypeError(
                f"SmartFuture() expects a concurrent.futures.Future, not {type(future).__name__}"
            )
        # The slot's own setter: __setattr__ forwards to the value, and this
        # constructor is on every decorated call's hot path.
        _set_future_slot(self, future)

    # ------------------------------------------------------------------
    # Future API
    # ------------------------------------------------------------------

    def result(self, timeout: float | None = None) -> T:
        """Return the task's value, waiting up to ``timeout`` seconds.

        Blocks until the task is done (forever if ``timeout`` is None).

        Raises:
            CancelledError: if the future was cancelled.
            TimeoutError: if the future did not finish within ``timeout``.
            Exception: whatever the task raised.
            KeyboardInterrupt: on Ctrl-C while waiting; before it propagates
                the future is cancelled if it has not started and the
                interrupt hooks are run.
        """
        future = self.future
        try:
            slice_ = _interrupt.WAIT_SLICE
            if slice_ is not None and not future.done():
                _wait_sliced(future, timeout, slice_)
                return future.result(0)
            return future.result(timeout)
        except KeyboardInterrupt as exc:
            if not _is_task_exception(future, exc):
                _interrupt.notify_interrupted((future,))
            raise
        except FutureTimeoutError as exc:
            if _is_task_exception(future, exc) or timeout is None:
                raise
            raise FutureTimeoutError(_timeout_message(future, timeout)) from None

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Return the task's exception (None on success), waiting like ``result()``.

        Raises:
            CancelledError: if the future was cancelled.
            TimeoutError: if the future did not finish within ``timeout``.
            KeyboardInterrupt: on Ctrl-C while waiting (see ``result()``).
        """
        future = self.future
        try:
            slice_ = _interrupt.WAIT_SLICE
            if slice_ is not None and not future.done():
                _wait_sliced(future, timeout, slice_)
                return future.exception(0)
            return future.exception(timeout)
        except KeyboardInterrupt:
            _interrupt.notify_interrupted((future,))
            raise

    def done(self) -> bool:
        """Return True if the task finished or was cancelled.  Never blocks."""
        return self.future.done()

    def cancel(self) -> bool:
        """Cancel the task; return True if it is now cancelled.

        Unlike ``concurrent.futures.Future.cancel()``, a *running* call is also
        stopped when its executor can kill it (PROCESS and REMOTE kill its process;
        threads cannot be killed, so THREAD cancels only calls that have not
        started). ``self.future.cancel()`` keeps the standard semantics.
        """
        future = self.future
        if isinstance(future, StoppableFuture):
            return future.stop()
        return future.cancel()

    def cancelled(self) -> bool:
        """Return True if the task was cancelled.  Never blocks."""
        return self.future.cancelled()

    def running(self) -> bool:
        """Return True if the task is running.  Never blocks."""
        return self.future.running()

    def add_done_callback(self, fn: Callable[[SmartFuture[T]], object]) -> None:
        """Call ``fn(self)`` when the task finishes or is cancelled.

        If the future is already done ``fn`` is called at once, in this
        thread; otherwise in the thread that completes the future.  Registered
        from a thread running an asyncio event loop, ``fn`` is instead called
        on that loop (``call_soon_threadsafe``), as asyncio expects.  As with
        ``Future.add_done_callback``, exceptions raised by ``fn`` are logged
        (logger ``concurrent.futures``) and ignored.
        """
        loop = _running_loop()
        self.future.add_done_callback(_DoneCallback(self, fn, loop))

    def remove_done_callback(self, fn: Callable[[SmartFuture[T]], object]) -> int:
        """Remove every registration of ``fn`` made through this SmartFuture; return how many.

        As ``asyncio.Future.remove_done_callback`` (so ``asyncio.wait()`` accepts
        SmartFutures); callbacks that already ran are not counted.
        """
        return remove_callbacks(
            self.future,
            lambda cb: isinstance(cb, _DoneCallback) and cb.owner is self and cb.fn == fn,
        )

    @property
    def value(self) -> T:
        """The task's value: ``self.result()`` (blocks; may raise)."""
        return self.result()

    # ------------------------------------------------------------------
    # Representation, async (the value face: smart_future/_value_face.py)
    # ------------------------------------------------------------------

    def __repr__(self) -> str:
        """Describe the state of the future.  Never blocks."""
        future = self.future
        if future.cancelled():
            return "<SmartFuture cancelled>"
        if future.done():
            exc = future.exception(0)
            if exc is not None:
                return f"<SmartFuture failed: {_safe_repr(exc)}>"
            return f"<SmartFuture finished: {_safe_repr(future.result(0))}>"
        if future.running():
            return "<SmartFuture running>"
        return "<SmartFuture pending>"

    def __await__(self) -> Generator[Any, None, T]:
        """``await sf`` waits for the value without blocking the event loop.

        Cancelling the awaiting task cancels the future if it has not
        started (``asyncio.wrap_future`` semantics).
        """
        import asyncio  # imported lazily: most users never await

        return asyncio.wrap_future(self.future).__await__()


_set_future_slot = SmartFuture.__dict__["future"].__set__
