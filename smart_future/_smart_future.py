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
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import operator
import sys
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Any, Generic, TypeVar

from smart_future import _interrupt
from smart_future._status import collect_status
from smart_future._stoppable import StoppableFuture

__all__ = ["SmartFuture", "remove_callbacks"]

T = TypeVar("T")

_logger = logging.getLogger("smart_future")

# Attributes that live on the SmartFuture itself (slots) and are never
# forwarded to the value.
_SLOTS = frozenset({"future", "__weakref__"})

_REPR_LIMIT = 80
_DISPLAY_HOOK_PREFIXES = ("_repr_", "_ipython_")


def _unwrap(obj: Any) -> Any:
    """Return ``obj.result()`` for a SmartFuture, ``obj`` otherwise."""
    if isinstance(obj, SmartFuture):
        return obj.result()
    return obj


def _value(sf: SmartFuture[Any]) -> Any:
    """``sf.result()`` typed as Any, for the value-face dunders."""
    return sf.result()


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


def _convert(value: Any, methods: tuple[str, ...], cast: Callable[[Any], T], what: str) -> T:
    """Call the first of *methods* the value's type defines, as the numeric protocols do."""
    kind = type(value)
    for name in methods:
        method = getattr(kind, name, None)
        if method is not None:
            result = method(value)
            return result if name == methods[0] else cast(result)
    raise TypeError(f"the value of this SmartFuture is not {what}: {kind.__name__!r} object")


def _binary(op: Callable[[Any, Any], Any], name: str) -> Callable[[SmartFuture[Any], Any], Any]:
    def method(self: SmartFuture[Any], other: Any) -> Any:
        return op(self.result(), _unwrap(other))

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"Return ``operator.{op.__name__}(self.result(), other)``; blocks."
    return method


def _reflected(op: Callable[[Any, Any], Any], name: str) -> Callable[[SmartFuture[Any], Any], Any]:
    def method(self: SmartFuture[Any], other: Any) -> Any:
        return op(_unwrap(other), self.result())

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"Return ``operator.{op.__name__}(other, self.result())``; blocks."
    return method


def _unary(op: Callable[[Any], Any], name: str) -> Callable[[SmartFuture[Any]], Any]:
    def method(self: SmartFuture[Any]) -> Any:
        return op(self.result())

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"Return ``{op.__module__}.{op.__name__}(self.result())``; blocks."
    return method


class SmartFuture(Generic[T]):
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
    # Representation, async, pickling, copying
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

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as the value: unpickling yields the value (blocks; may raise)."""
        # operator.getitem((value,), 0) rebuilds the value itself while
        # needing only the standard library on the unpickling side.
        return (operator.getitem, ((self.result(),), 0))

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return self.__reduce__()

    def __copy__(self) -> Any:
        """Return ``copy.copy(self.result())`` (blocks; may raise)."""
        return copy.copy(self.result())

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        """Return ``copy.deepcopy(self.result(), memo)`` (blocks; may raise)."""
        return copy.deepcopy(self.result(), memo)

    # ------------------------------------------------------------------
    # Attribute forwarding
    # ------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not found on the SmartFuture itself.
        if name in _SLOTS or name.startswith(_DISPLAY_HOOK_PREFIXES):
            # IPython probes _repr_html_, _ipython_display_ ... to show a cell's
            # result: answering for the value would block, so a SmartFuture
            # shows as its (never blocking) repr in notebooks too.
            raise AttributeError(name)
        return getattr(self.result(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SLOTS or (name.startswith("__") and name.endswith("__")):
            # Dunders (e.g. typing's __orig_class__) stay local: slots only,
            # so this raises AttributeError for anything but ``future``.
            object.__setattr__(self, name, value)
        else:
            setattr(self.result(), name, value)

    def __delattr__(self, name: str) -> None:
        if name in _SLOTS or (name.startswith("__") and name.endswith("__")):
            object.__delattr__(self, name)
        else:
            delattr(self.result(), name)

    def __dir__(self) -> list[str]:
        """SmartFuture's names merged with ``dir()`` of the value.

        Blocks until the task is done; if it failed or was cancelled only
        SmartFuture's own names are listed.
        """
        names = set(dir(type(self))) | {"future"}
        with contextlib.suppress(Exception):
            names.update(dir(self.result()))
        return sorted(names)

    # ------------------------------------------------------------------
    # Comparison and hashing
    # ------------------------------------------------------------------

    __eq__ = _binary(operator.eq, "__eq__")
    __ne__ = _binary(operator.ne, "__ne__")
    __lt__ = _binary(operator.lt, "__lt__")
    __le__ = _binary(operator.le, "__le__")
    __gt__ = _binary(operator.gt, "__gt__")
    __ge__ = _binary(operator.ge, "__ge__")

    def __hash__(self) -> int:
        """Identity hash: never blocks (see the class docstring for why)."""
        # Hashing the value would block every set, dict and asyncio.gather()
        # holding SmartFutures (and fail for unhashable values such as lists);
        # the concurrent.futures idiom {submit(f, u): u for u in urls} must not wait.
        return object.__hash__(self)

    # ------------------------------------------------------------------
    # Arithmetic, bitwise and matrix operators
    # ------------------------------------------------------------------

    __add__ = _binary(operator.add, "__add__")
    __sub__ = _binary(operator.sub, "__sub__")
    __mul__ = _binary(operator.mul, "__mul__")
    __matmul__ = _binary(operator.matmul, "__matmul__")
    __truediv__ = _binary(operator.truediv, "__truediv__")
    __floordiv__ = _binary(operator.floordiv, "__floordiv__")
    __mod__ = _binary(operator.mod, "__mod__")
    __divmod__ = _binary(divmod, "__divmod__")
    __lshift__ = _binary(operator.lshift, "__lshift__")
    __rshift__ = _binary(operator.rshift, "__rshift__")
    __and__ = _binary(operator.and_, "__and__")
    __xor__ = _binary(operator.xor, "__xor__")
    __or__ = _binary(operator.or_, "__or__")

    __radd__ = _reflected(operator.add, "__radd__")
    __rsub__ = _reflected(operator.sub, "__rsub__")
    __rmul__ = _reflected(operator.mul, "__rmul__")
    __rmatmul__ = _reflected(operator.matmul, "__rmatmul__")
    __rtruediv__ = _reflected(operator.truediv, "__rtruediv__")
    __rfloordiv__ = _reflected(operator.floordiv, "__rfloordiv__")
    __rmod__ = _reflected(operator.mod, "__rmod__")
    __rdivmod__ = _reflected(divmod, "__rdivmod__")
    __rlshift__ = _reflected(operator.lshift, "__rlshift__")
    __rrshift__ = _reflected(operator.rshift, "__rrshift__")
    __rand__ = _reflected(operator.and_, "__rand__")
    __rxor__ = _reflected(operator.xor, "__rxor__")
    __ror__ = _reflected(operator.or_, "__ror__")

    # In-place operators return a plain value, see the class docstring.
    __iadd__ = _binary(operator.iadd, "__iadd__")
    __isub__ = _binary(operator.isub, "__isub__")
    __imul__ = _binary(operator.imul, "__imul__")
    __imatmul__ = _binary(operator.imatmul, "__imatmul__")
    __itruediv__ = _binary(operator.itruediv, "__itruediv__")
    __ifloordiv__ = _binary(operator.ifloordiv, "__ifloordiv__")
    __imod__ = _binary(operator.imod, "__imod__")
    __ipow__ = _binary(operator.ipow, "__ipow__")
    __ilshift__ = _binary(operator.ilshift, "__ilshift__")
    __irshift__ = _binary(operator.irshift, "__irshift__")
    __iand__ = _binary(operator.iand, "__iand__")
    __ixor__ = _binary(operator.ixor, "__ixor__")
    __ior__ = _binary(operator.ior, "__ior__")

    def __pow__(self, other: Any, modulo: Any = None) -> Any:
        """Return ``pow(self.result(), other[, modulo])``; blocks."""
        if modulo is None:
            return pow(_value(self), _unwrap(other))
        return pow(_value(self), _unwrap(other), _unwrap(modulo))

    def __rpow__(self, other: Any, modulo: Any = None) -> Any:
        """Return ``pow(other, self.result()[, modulo])``; blocks."""
        if modulo is None:
            return pow(_unwrap(other), _value(self))
        return pow(_unwrap(other), _value(self), _unwrap(modulo))

    __neg__ = _unary(operator.neg, "__neg__")
    __pos__ = _unary(operator.pos, "__pos__")
    __abs__ = _unary(operator.abs, "__abs__")
    __invert__ = _unary(operator.invert, "__invert__")

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        """Let NumPy ufuncs (``ndarray + sf``, ``np.sqrt(sf)``) see the value; blocks."""
        inputs = tuple(_unwrap(x) for x in inputs)
        if "out" in kwargs:
            kwargs["out"] = tuple(_unwrap(x) for x in kwargs["out"])
        return getattr(ufunc, method)(*inputs, **kwargs)

    # ------------------------------------------------------------------
    # Conversions
    # ------------------------------------------------------------------

    def __bool__(self) -> bool:
        return bool(_value(self))

    def __str__(self) -> str:
        return str(_value(self))

    def __format__(self, format_spec: str) -> str:
        return format(_value(self), format_spec)

    def __bytes__(self) -> bytes:
        return bytes(_value(self))

    # The numeric protocols follow the value's own methods (what math.sqrt(value)
    # or "%d" % value would use), not int()/float(), which would parse strings.

    def __int__(self) -> int:
        return _convert(_value(self), ("__int__", "__index__"), int, "an integer")

    def __float__(self) -> float:
        return _convert(_value(self), ("__float__", "__index__"), float, "a real number")

    def __complex__(self) -> complex:
        return _convert(
            _value(self), ("__complex__", "__float__", "__index__"), complex, "a complex number"
        )

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        """The array protocol: ``np.asarray(sf)`` is ``np.asarray(sf.result())``; blocks."""
        import numpy  # lazily: only reached when numpy already asks

        value = _value(self)
        if copy:
            return numpy.array(value, dtype=dtype, copy=True)
        return numpy.asarray(value, dtype=dtype)

    def __index__(self) -> int:
        return operator.index(_value(self))

    def __round__(self, ndigits: int | None = None) -> Any:
        if ndigits is None:
            return round(_value(self))
        return round(_value(self), ndigits)

    def __trunc__(self) -> Any:
        return math.trunc(_value(self))

    def __floor__(self) -> Any:
        return math.floor(_value(self))

    def __ceil__(self) -> Any:
        return math.ceil(_value(self))

    # ------------------------------------------------------------------
    # Containers, iteration, calling, context management
    # ------------------------------------------------------------------

    def __len__(self) -> int:
        return len(_value(self))

    def __iter__(self) -> Iterator[Any]:
        return iter(_value(self))

    def __reversed__(self) -> Iterator[Any]:
        it: Iterator[Any] = reversed(_value(self))
        return it

    def __contains__(self, item: object) -> bool:
        return _unwrap(item) in _value(self)

    def __getitem__(self, key: Any) -> Any:
        return _value(self)[_unwrap(key)]

    def __setitem__(self, key: Any, value: Any) -> None:
        """``sf[key] = value`` stores ``value`` as is (a SmartFuture is not unwrapped)."""
        _value(self)[_unwrap(key)] = value

    def __delitem__(self, key: Any) -> None:
        del _value(self)[_unwrap(key)]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the value with the given arguments (not unwrapped); blocks."""
        return _value(self)(*args, **kwargs)

    def __enter__(self) -> Any:
        value = _value(self)
        enter = getattr(type(value), "__enter__", None)
        if enter is None:
            raise TypeError(
                f"{type(value).__name__!r} object does not support the context manager protocol"
            )
        return enter(value)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
        value = _value(self)
        return type(value).__exit__(value, exc_type, exc, tb)


_set_future_slot = SmartFuture.__dict__["future"].__set__
