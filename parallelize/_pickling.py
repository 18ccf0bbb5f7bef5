"""Serialising calls for workers in other processes or on other hosts.

Functions are pickled with cloudpickle (so lambdas, closures and functions
defined in ``__main__`` or a notebook work) and the bytes are cached per
function object: pickling a function by value costs several microseconds,
more than the rest of a small task's overhead. Like Dask's function cache,
this means globals captured *by value* are snapshotted when a function is
first shipped (see the README's pitfalls). Bound methods are split into
their function (cached) and their instance (pickled with every call, since
instance state changes between calls).
"""

from __future__ import annotations

import inspect
import threading
import types
import weakref
from collections.abc import Callable
from typing import Any

import cloudpickle

from ._errors import PicklingError

__all__ = ["callable_name", "dumps", "dumps_args", "dumps_function", "split_bound_method"]

_function_cache: weakref.WeakKeyDictionary[Callable[..., Any], bytes] = weakref.WeakKeyDictionary()
_cache_lock = threading.Lock()


def callable_name(fn: Callable[..., Any]) -> str:
    """A readable name for error messages: ``module.qualname``."""
    module = getattr(fn, "__module__", None) or "?"
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return f"{module}.{qualname}"


def dumps(obj: Any) -> bytes:
    """cloudpickle *obj* with the highest protocol."""
    return cloudpickle.dumps(obj, protocol=5)  # type: ignore[no-any-return]


def split_bound_method(
    fn: Callable[..., Any], args: tuple[Any, ...]
) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """Turn ``obj.method, args`` into ``function, (obj, *args)`` so the function can be cached."""
    if isinstance(fn, types.MethodType) and isinstance(fn.__func__, types.FunctionType):
        return fn.__func__, (fn.__self__, *args)
    return fn, args


def dumps_function(fn: Callable[..., Any]) -> bytes:
    """Pickle *fn*, cached per function object when *fn* is a plain function."""
    cacheable = isinstance(fn, types.FunctionType)
    if cacheable:
        with _cache_lock:
            cached = _function_cache.get(fn)
        if cached is not None:
            return cached
    try:
        data = dumps(fn)
    except Exception as exc:
        raise PicklingError(
            f"cannot send {callable_name(fn)} to a worker: the function could not be pickled "
            f"({type(exc).__name__}: {exc}). Define it at module level or make what it "
            "references picklable, or use Method.THREAD."
        ) from exc
    if cacheable:
        with _cache_lock:
            _function_cache[fn] = data
    return data


def dumps_args(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """Pickle ``(args, kwargs)`` for a call of *fn*; name the culprit on failure."""
    try:
        return dumps((args, kwargs))
    except Exception as exc:
        culprit = _find_unpicklable(fn, args, kwargs)
        raise PicklingError(
            f"cannot send call to {callable_name(fn)} to a worker: {culprit} could not be "
            f"pickled ({type(exc).__name__}: {exc}). Pass picklable values (for example "
            "data instead of open files, locks or connections), or use Method.THREAD."
        ) from exc


def _find_unpicklable(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    try:
        names = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        names = []
    for index, value in enumerate(args):
        if not _picklable(value):
            label = f"argument {names[index]!r}" if index < len(names) else f"argument {index}"
            return f"{label} (position {index}, type {type(value).__qualname__})"
    for key, value in kwargs.items():
        if not _picklable(value):
            return f"keyword argument {key!r} (type {type(value).__qualname__})"
    return "the arguments"


def _picklable(value: Any) -> bool:
    try:
        dumps(value)
    except Exception:
        return False
    return True
