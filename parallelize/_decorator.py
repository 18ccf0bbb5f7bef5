"""The ``@parallelize`` decorator."""

from __future__ import annotations

import difflib
import importlib
import inspect
import sys
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar, overload

import wrapt

from smart_future import SmartFuture

from . import _defaults
from ._call_options import DEFAULT_OPTIONS, OPTION_NAMES, CallOptions, normalise_retry_on
from ._defaults import default_executor
from ._errors import PicklingError
from ._executor_base import BaseExecutor
from ._map import DurationEstimate, check_chunksize, chunk_size, submit_chunks, workers_of
from ._method import Method
from ._pickling import callable_name, register_reducer
from ._retry import submit_attempt, submit_retrying
from ._submission import has_smart_future, submit_call
from ._typing import ParallelFunction

__all__ = ["ParallelFunction", "parallelize"]

P = ParamSpec("P")
R = TypeVar("R")

_OPTIONS = ("method", "executor", *OPTION_NAMES)
# What f.options(...) may override.
_OVERRIDES = ("method", *OPTION_NAMES)


@overload
def parallelize(func: Callable[P, R], /) -> ParallelFunction[P, R]: ...


@overload
def parallelize(
    method: Method | str = ..., /, **options: Any
) -> Callable[[Callable[P, R]], ParallelFunction[P, R]]: ...


def parallelize(func: Any = None, /, **options: Any) -> Any:
    """Make calls of a function run in parallel and return :class:`SmartFuture` objects.

    Use it bare (``@parallelize``, threads) or with options::

        @parallelize(method=Method.PROCESS)
        def work(x): ...

        @parallelize(Method.REMOTE)
        def remote_work(x): ...

    Options:
        method: a :class:`Method` (or its name as a string); default THREAD.
        executor: an explicit :class:`concurrent.futures.Executor` to submit
            to instead of the default one for the method.
        timeout: seconds a call may run (counted from when it starts) before
            its future fails with :class:`TaskTimeoutError`; PROCESS and REMOTE
            kill the process running it, THREAD lets the thread run on.
        retries, retry_on, retry_backoff: re-run a call up to *retries* more
            times when it raises one of the *retry_on* exception types (one type
            or a tuple), waiting ``retry_backoff * 2**k`` seconds before retry k+1.
        backups: speculative backup copies of stragglers (REMOTE, DASK):
            True/False, or None for the executor's setting.

    The decorated function also has ``f.map(iterable, *iterables, chunksize=None)``
    (one SmartFuture per call, submitted at once) and ``f.options(**overrides)``
    (the same function with other options for the calls made through it).

    Each call returns a SmartFuture at once. SmartFuture arguments are
    waited for (without blocking the caller) and replaced by their values
    before the call runs. Works on functions, closures, lambdas and methods
    (also static and class methods); keeps ``__name__``, ``__doc__``,
    ``__wrapped__`` and the signature.

    Raises TypeError for something that is not a function or for an unknown
    option, ValueError for an unknown method, at decoration time.
    """
    if isinstance(func, (Method, str)):
        if "method" in options:
            raise TypeError("parallelize() got the method twice (positionally and as method=)")
        options["method"] = func
        func = None
    method, executor, call_options = _parse_options(options)
    if func is None:
        return lambda f: _wrap(f, method, executor, call_options)
    return _wrap(func, method, executor, call_options)


def _parse_options(options: dict[str, Any]) -> tuple[Method, Executor | None, CallOptions]:
    unknown = [name for name in options if name not in _OPTIONS]
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, _OPTIONS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise TypeError(
            f"parallelize() got an unknown option {name!r}; valid options are "
            f"{', '.join(_OPTIONS)}.{hint}"
        )
    executor = options.get("executor")
    if executor is not None and not isinstance(executor, Executor) and _cluster_client(executor):
        from . import _cluster

        executor = _cluster.executor_for_client(executor)
    if executor is not None and not isinstance(executor, Executor):
        raise TypeError(
            f"parallelize(executor=...) needs a concurrent.futures.Executor instance, "
            f"got {type(executor).__name__}"
        )
    if executor is not None and "method" in options:
        raise TypeError("parallelize() takes either method= or executor=, not both")
    method = Method.parse(options.get("method", Method.THREAD))
    if method in (Method.DASK, Method.RAY):
        from . import _cluster

        _cluster.require(method.value)
    call_options = _call_options(options)
    _check_executor_supports(executor, call_options)
    return method, executor, call_options


def _call_options(options: dict[str, Any]) -> CallOptions:
    values = {name: options[name] for name in OPTION_NAMES if name in options}
    if not values:
        return DEFAULT_OPTIONS
    if "retry_on" in values:
        values["retry_on"] = normalise_retry_on(values["retry_on"])
    built = CallOptions(**values)
    return DEFAULT_OPTIONS if built == DEFAULT_OPTIONS else built


def _check_executor_supports(executor: Executor | None, options: CallOptions) -> None:
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


def _cluster_client(obj: object) -> bool:
    # A distributed.Client is accepted as an executor (checked without importing dask).
    from ._cluster import is_dask_client

    return is_dask_client(obj)


def _wrap(
    func: Any, method: Method, executor: Executor | None, options: CallOptions = DEFAULT_OPTIONS
) -> Any:
    target = func.__func__ if isinstance(func, (staticmethod, classmethod)) else func
    if inspect.isclass(target):
        raise TypeError(
            f"@parallelize decorates a function or method, not the class {target.__name__}; "
            "decorate its methods instead"
        )
    if not callable(target):
        raise TypeError(
            f"@parallelize decorates a function or method, got {type(func).__name__} {func!r}"
        )
    if inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target):
        raise TypeError(
            f"@parallelize cannot run the coroutine function {target.__qualname__}: "
            "it would return an un-awaited coroutine. Decorate a regular function, "
            "or run the coroutine with asyncio."
        )
    if inspect.isgeneratorfunction(target):
        raise TypeError(
            f"@parallelize cannot run the generator function {target.__qualname__}: "
            "its call would only create a generator (which cannot be sent to another "
            "process) and run none of its body. Decorate a function that returns a list "
            "instead, e.g. one that does `return list(...)`."
        )

    dispatch = _Dispatch(method, executor, options)
    if options is not DEFAULT_OPTIONS:
        # Calls with options go through the dispatcher (submit_with, retries).
        def call_with_options(
            wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> SmartFuture[Any]:
            return dispatch.submit(wrapped, args, kwargs)

        wrapper = _ParallelFunction(func, call_with_options)
        wrapper._self_options = (method, executor)
        wrapper._self_dispatch = dispatch
        return wrapper

    # The hot path of every call: find the executor, and unless an argument is a
    # SmartFuture (rare), submit directly. Kept flat: the whole decorator has a
    # 30% overhead budget over ThreadPoolExecutor.submit.
    if executor is not None:
        chosen = executor

        def current_executor() -> Executor:
            return chosen
    else:
        executors = _defaults._executors

        def current_executor() -> Executor:
            found = executors.get(method)
            if found is None or getattr(found, "_shutdown", False):
                return default_executor(method)
            return found

    def call(
        wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> SmartFuture[Any]:
        target = current_executor()
        if has_smart_future(args, kwargs):
            if getattr(target, "passes_smart_futures", False):  # cluster engines chain natively
                return SmartFuture(target.submit(wrapped, *args, **kwargs))
            return submit_call(target, wrapped, args, kwargs)
        return SmartFuture(target.submit(wrapped, *args, **kwargs))

    wrapper = _ParallelFunction(func, call)
    wrapper._self_options = (method, executor)
    wrapper._self_dispatch = dispatch
    return wrapper


class _Dispatch:
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

    def with_overrides(self, overrides: dict[str, Any]) -> _Dispatch:
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
        _check_executor_supports(executor, options)
        return _Dispatch(method, executor, options, estimate)


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


class _OptionsCall:
    """What ``f.options(...)`` returns: *fn* called with other options, without re-decorating."""

    def __init__(self, fn: Callable[..., Any], dispatch: _Dispatch) -> None:
        self.__wrapped__ = fn
        self._dispatch = dispatch

    def __call__(self, *args: Any, **kwargs: Any) -> SmartFuture[Any]:
        return self._dispatch.submit(self.__wrapped__, args, kwargs)

    def map(
        self, iterable: Iterable[Any], /, *iterables: Iterable[Any], chunksize: int | None = None
    ) -> list[SmartFuture[Any]]:
        return self._dispatch.map(self.__wrapped__, (iterable, *iterables), chunksize)

    def options(self, **overrides: Any) -> _OptionsCall:
        return _OptionsCall(self.__wrapped__, self._dispatch.with_overrides(overrides))

    def __repr__(self) -> str:
        options = self._dispatch.options
        return f"<{callable_name(self.__wrapped__)} with {options}>"


class _BoundParallelFunction(wrapt.BoundFunctionWrapper):  # type: ignore[type-arg]
    """A decorated method bound to its instance: pickles as ``getattr(instance, name)``."""

    def map(
        self, iterable: Iterable[Any], /, *iterables: Iterable[Any], chunksize: int | None = None
    ) -> list[SmartFuture[Any]]:
        """As :meth:`_ParallelFunction.map`, for the bound method."""
        dispatch: _Dispatch = self._self_parent._self_dispatch
        return dispatch.map(self.__wrapped__, (iterable, *iterables), chunksize)

    def options(self, **overrides: Any) -> _OptionsCall:
        """As :meth:`_ParallelFunction.options`, for the bound method."""
        dispatch: _Dispatch = self._self_parent._self_dispatch
        return _OptionsCall(self.__wrapped__, dispatch.with_overrides(overrides))

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        instance = self._self_instance
        if instance is None:
            return self._self_parent.__reduce_ex__(protocol)  # type: ignore[no-any-return]
        return (getattr, (instance, self.__name__))

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__reduce_ex__(2)


class _ParallelFunction(wrapt.FunctionWrapper):  # type: ignore[type-arg]
    """The wrapper ``@parallelize`` returns: wrapt's, made picklable.

    Pickled by reference when it is what its module holds under its name (a
    module-level decorated function), else by value: the undecorated function
    and the options, decorated again when unpickled. So decorated functions
    can be passed to ``ProcessPoolExecutor`` or ``multiprocessing``, and
    classes holding decorated methods can be sent to PROCESS and REMOTE
    workers (a class from ``__main__`` or a notebook travels by value).
    """

    __bound_function_wrapper__ = _BoundParallelFunction
    _self_options: tuple[Method, Executor | None]
    _self_dispatch: _Dispatch

    def map(
        self, iterable: Iterable[Any], /, *iterables: Iterable[Any], chunksize: int | None = None
    ) -> list[SmartFuture[Any]]:
        """Submit one call per item (of ``zip(iterable, *iterables)``) at once.

        Returns the list of SmartFutures, each with its own result or exception.
        On PROCESS the calls are sent in chunks of *chunksize* calls per task
        (None: sized from the measured call duration); other methods, and calls
        with a ``timeout`` or retries, are sent one task per call through the
        executor's ``submit_batch`` (*chunksize* is then only checked).
        """
        return self._self_dispatch.map(self.__wrapped__, (iterable, *iterables), chunksize)

    def options(self, **overrides: Any) -> _OptionsCall:
        """This function with other options (``timeout``, ``retries``, ``retry_on``,
        ``retry_backoff``, ``backups``, ``method``) for the calls made through the result."""
        return _OptionsCall(self.__wrapped__, self._self_dispatch.with_overrides(overrides))

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        module_name: str = getattr(self, "__module__", None) or ""
        qualname = getattr(self, "__qualname__", "")
        importable = module_name not in ("", "__main__") and "<" not in qualname
        if importable and _lookup_static(module_name, qualname) is self:
            return (_load_by_name, (module_name, qualname))
        method, executor = self._self_options
        if executor is not None:
            raise PicklingError(
                f"cannot pickle {module_name}.{qualname}: it was decorated with an explicit "
                "executor=, which cannot be sent to another process. Define it at module "
                "level of an importable module (it is then sent by reference), or use method=."
            )
        options = self._self_dispatch.options
        if options is DEFAULT_OPTIONS:
            return (_rebuild, (self.__wrapped__, method.value))
        return (_rebuild, (self.__wrapped__, method.value, _options_state(options)))

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__reduce_ex__(2)


register_reducer(_ParallelFunction)
register_reducer(_BoundParallelFunction)


def _lookup_static(module_name: str, qualname: str) -> Any:
    """``module.qualname`` read from the ``__dict__``s (no descriptor binding), or None."""
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception:
        return None
    for part in qualname.split("."):
        namespace = getattr(obj, "__dict__", None)
        if not isinstance(namespace, Mapping) or part not in namespace:
            return None
        obj = namespace[part]
    return obj


def _load_by_name(module_name: str, qualname: str) -> Any:
    """Unpickle a decorated function sent by reference."""
    found = _lookup_static(module_name, qualname)
    if found is None:
        raise AttributeError(
            f"cannot unpickle the decorated function {module_name}.{qualname}: this process "
            "does not find it there (is the same version of its module importable here?)"
        )
    return found


def _options_state(options: CallOptions) -> dict[str, Any]:
    return {name: getattr(options, name) for name in OPTION_NAMES}


def _rebuild(func: Any, method: str, options: dict[str, Any] | None = None) -> Any:
    """Unpickle a decorated function sent by value: decorate it again."""
    call_options = _call_options(options) if options else DEFAULT_OPTIONS
    return _wrap(func, Method.parse(method), None, call_options)
