"""How the calls of a decorated function are submitted when they carry options.

``@parallelize(...)`` parses its per-call options into one :class:`CallOptions`
(``parse_call_options``) and refuses, at decoration, options an explicit executor cannot
honour (``check_executor_supports``). A :class:`Dispatch` holds the method, the
explicit executor (if any) and the options of one decorated function, or of one
``f.options(...)``: it submits single calls (``submit_with``, retries, SmartFuture
arguments) and ``f.map`` batches. Plain calls of a function decorated with default
options never come here: the decorator keeps its flat hot path for them.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future
from typing import Any

from smart_future import SmartFuture

from . import _defaults
from ._call_options import DEFAULT_OPTIONS, OPTION_NAMES, CallOptions, normalise_retry_on
from ._defaults import default_executor
from ._executor_base import BaseExecutor
from ._map import DurationEstimate, check_chunksize, chunk_size, submit_chunks, workers_of
from ._method import Method
from ._pickling import callable_name
from ._retry import submit_attempt, submit_retrying
from ._submission import has_smart_future, submit_call

__all__ = ["Dispatch", "OptionsCall", "check_executor_supports", "parse_call_options"]

# What f.options(...) may override.
_OVERRIDES = ("method", *OPTION_NAMES)


def parse_call_options(options: dict[str, Any]) -> CallOptions:
    """The per-call options among the decorator's *options* (DEFAULT_OPTIONS if none)."""
    values = {name: options[name] for name in OPTION_NAMES if name in options}
    if not values:
        return DEFAULT_OPTIONS
    if "retry_on" in values:
        values["retry_on"] = normalise_retry_on(values["retry_on"])
    built = CallOptions(**values)
    return DEFAULT_OPTIONS if built == DEFAULT_OPTIONS else built


def check_executor_supports(executor: Executor | None, options: CallOptions) -> None:
    """Refuse, at decoration, options an explicit executor cannot honour."""
    if executor is None:
        return
    kind = type(executor).__name__
    if not isinstance(executor, BaseExecutor):
        wanted = [
            name
            for name, value in (("timeout", options.timeout), ("backups", options.backups))
            if value is not None
        ]
        if wanted:
            raise TypeError(
                f"parallelize(executor=...) got a {kind}, which cannot enforce "
                f"{wanted[0]}=: only parallelize's executors take per-call options. Use "
                "method=Method.THREAD/PROCESS/REMOTE (or a ThreadExecutor/ProcessExecutor "
                f"as executor=), or drop {wanted[0]}= (retries= works with any executor)."
            )
    elif options.timeout is not None and not executor.supports_timeout:
        raise TypeError(
            f"parallelize(executor=...) got a {kind}, which cannot enforce timeout=: use "
            "method=THREAD, PROCESS or REMOTE, or drop the option"
        )


class Dispatch:
    """How calls of one decorated function (or of one ``f.options(...)``) are submitted."""

    __slots__ = ("estimate", "executor", "method", "options")

    def __init__(
        self,
        method: Method,
        executor: Executor | None,
        options: CallOptions,
        estimate: DurationEstimate | None = None,
    ) -> None:
        self.method = method
        self.executor = executor
        self.options = options
        # The measured call duration, which sizes f.map's chunks.
        self.estimate = estimate if estimate is not None else DurationEstimate()

    def current_executor(self) -> Executor:
        if self.executor is not None:
            return self.executor
        found = _defaults._executors.get(self.method)
        if found is None or getattr(found, "_shutdown", False):
            return default_executor(self.method)
        return found

    def submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> SmartFuture[Any]:
        target = self.current_executor()
        options = self.options

        def submit_one(
            fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Future[Any]:
            if options.retries:
                return submit_retrying(target, options, fn, args, kwargs)
            return submit_attempt(target, options, fn, args, kwargs)

        if has_smart_future(args, kwargs) and not getattr(target, "passes_smart_futures", False):
            return submit_call(target, fn, args, kwargs, submit_one)
        return SmartFuture(submit_one(fn, args, kwargs))

    def map(
        self, fn: Callable[..., Any], iterables: tuple[Iterable[Any], ...], chunksize: Any
    ) -> list[SmartFuture[Any]]:
        check_chunksize(chunksize)
        argsets = list(zip(*iterables, strict=False))  # as map(): the shortest ends it
        if not argsets:
            return []
        target = self.current_executor()
        options = self.options
        if options.retries or _has_smart_future_in(argsets):
            return [self.submit(fn, args, {}) for args in argsets]
        if not isinstance(target, BaseExecutor):
            return [SmartFuture(target.submit(fn, *args)) for args in argsets]
        for_executor = options.for_executor()
        size = 1
        if for_executor.timeout is None and _runs_chunks(target):
            size = chunksize or chunk_size(len(argsets), workers_of(target), self.estimate)
        if size > 1:

            def submit_batch(
                task: Callable[..., Any], calls: Iterable[tuple[tuple[Any, ...], dict[str, Any]]]
            ) -> list[Future[Any]]:
                return target.submit_batch(task, calls, for_executor)

            futures = submit_chunks(submit_batch, fn, argsets, size, self.estimate)
        else:
            futures = target.submit_batch(fn, [(args, {}) for args in argsets], for_executor)
        return [SmartFuture(future) for future in futures]

    def with_overrides(self, overrides: dict[str, Any]) -> Dispatch:
        unknown = [name for name in overrides if name not in _OVERRIDES]
        if unknown:
            name = unknown[0]
            close = difflib.get_close_matches(name, _OVERRIDES, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise TypeError(
                f"options() got an unknown option {name!r}; valid options are "
                f"{', '.join(_OVERRIDES)}.{hint}"
            )
        method, executor = self.method, self.executor
        estimate: DurationEstimate | None = self.estimate
        if "method" in overrides:
            method = Method.parse(overrides["method"])
            if method in (Method.DASK, Method.RAY):
                from . import _cluster

                _cluster.require(method.value)
            executor = None
            estimate = None
        values = {k: v for k, v in overrides.items() if k != "method"}
        options = self.options.merged(values) if values else self.options
        check_executor_supports(executor, options)
        return Dispatch(method, executor, options, estimate)


def _has_smart_future_in(argsets: list[tuple[Any, ...]]) -> bool:
    # The set of argument types is quicker to build than testing every argument.
    kinds = {type(value) for args in argsets for value in args}
    return any(issubclass(kind, SmartFuture) for kind in kinds)


def _runs_chunks(executor: Executor) -> bool:
    """Whether f.map groups calls into chunks on *executor*: the PROCESS pool.

    Its workers import parallelize (the chunk runner travels by reference) and a
    call costs far more there than running it. THREAD calls cost a few microseconds;
    REMOTE hosts need not have parallelize installed and the cluster engines keep one
    engine future per call: they get one task per call (their ``submit_batch`` may
    batch as it likes).
    """
    process = sys.modules.get("parallelize._process")
    return process is not None and isinstance(executor, process.ProcessExecutor)


class OptionsCall:
    """What ``f.options(...)`` returns: *fn* called with other options, without re-decorating."""

    def __init__(self, fn: Callable[..., Any], dispatch: Dispatch) -> None:
        self.__wrapped__ = fn
        self._dispatch = dispatch

    def __call__(self, *args: Any, **kwargs: Any) -> SmartFuture[Any]:
        return self._dispatch.submit(self.__wrapped__, args, kwargs)

    def map(
        self, iterable: Iterable[Any], /, *iterables: Iterable[Any], chunksize: int | None = None
    ) -> list[SmartFuture[Any]]:
        return self._dispatch.map(self.__wrapped__, (iterable, *iterables), chunksize)

    def options(self, **overrides: Any) -> OptionsCall:
        return OptionsCall(self.__wrapped__, self._dispatch.with_overrides(overrides))

    def __repr__(self) -> str:
        options = self._dispatch.options
        return f"<{callable_name(self.__wrapped__)} with {options}>"
