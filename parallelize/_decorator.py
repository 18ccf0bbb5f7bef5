"""The ``@parallelize`` decorator."""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor
from typing import Any, ParamSpec, TypeVar, cast, overload

import wrapt

from smart_future import SmartFuture

from . import _defaults
from ._call_options import DEFAULT_OPTIONS, OPTION_NAMES, CallOptions
from ._defaults import default_executor
from ._dispatch import Dispatch, OptionsCall, check_executor_supports, parse_call_options
from ._errors import PicklingError
from ._method import Method
from ._pickling import register_reducer
from ._submission import has_smart_future, submit_call
from ._typing import ParallelFunction

__all__ = ["ParallelFunction", "parallelize"]

P = ParamSpec("P")
R = TypeVar("R")

_OPTIONS = ("method", "executor", *OPTION_NAMES)


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
    call_options = parse_call_options(options)
    check_executor_supports(executor, call_options)
    return method, executor, call_options


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

    dispatch = Dispatch(method, executor, options)
    if options is not DEFAULT_OPTIONS:
        # Calls with options go through the dispatcher (submit_with, retries).
        def call_with_options(
            wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> SmartFuture[Any]:
            return dispatch.submit(wrapped, args, kwargs)

        wrapper = _ParallelFunction(cast(Any, func), call_with_options)
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

    wrapper = _ParallelFunction(cast(Any, func), call)
    wrapper._self_options = (method, executor)
    wrapper._self_dispatch = dispatch
    return wrapper


class _BoundParallelFunction(wrapt.BoundFunctionWrapper):  # type: ignore[type-arg]
    """A decorated method bound to its instance: pickles as ``getattr(instance, name)``."""

    def map(
        self, iterable: Iterable[Any], /, *iterables: Iterable[Any], chunksize: int | None = None
    ) -> list[SmartFuture[Any]]:
        """As :meth:`_ParallelFunction.map`, for the bound method."""
        dispatch: Dispatch = self._self_parent._self_dispatch
        return dispatch.map(self.__wrapped__, (iterable, *iterables), chunksize)

    def options(self, **overrides: Any) -> OptionsCall:
        """As :meth:`_ParallelFunction.options`, for the bound method."""
        dispatch: Dispatch = self._self_parent._self_dispatch
        return OptionsCall(self.__wrapped__, dispatch.with_overrides(overrides))

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
    _self_dispatch: Dispatch

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

    def options(self, **overrides: Any) -> OptionsCall:
        """This function with other options (``timeout``, ``retries``, ``retry_on``,
        ``retry_backoff``, ``backups``, ``method``) for the calls made through the result."""
        return OptionsCall(self.__wrapped__, self._self_dispatch.with_overrides(overrides))

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
    call_options = parse_call_options(options) if options else DEFAULT_OPTIONS
    return _wrap(func, Method.parse(method), None, call_options)
