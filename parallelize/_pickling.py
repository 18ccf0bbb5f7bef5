"""Serialising calls for workers in other processes or on other hosts.

Functions are pickled with cloudpickle (so lambdas, closures and functions
defined in ``__main__`` or a notebook work) and the bytes are cached per
function object: pickling a function by value costs several microseconds,
more than the rest of a small task's overhead. Like Dask's function cache,
this means globals captured *by value* are snapshotted when a function is
first shipped (see the README's pitfalls). Bound methods are split into
their function (cached) and their instance (pickled with every call, since
instance state changes between calls).

Three things are added to cloudpickle here:

* A function that ``@parallelize`` decorated at module level is sent *by
  reference* (``module.name.__wrapped__``): the module attribute is the
  decorator's wrapper, so cloudpickle would otherwise send it by value.
* Code sent by value keeps its file name (cloudpickle replaces it with
  ``<dynamic-code>``) and carries the source lines of its functions, which the
  worker registers with :mod:`linecache` when it unpickles them, so worker
  tracebacks show file names and source lines as local ones do (also for
  notebook cells, whose "files" exist only in the kernel's linecache).
* Types registered with :func:`register_reducer` (the decorator's wrapper)
  are pickled by their own ``__reduce_ex__``, before cloudpickle's
  function handling would see them as plain functions.
"""

from __future__ import annotations

import importlib
import inspect
import io
import linecache
import operator
import pickle
import sys
import threading
import types
import weakref
from collections.abc import Callable
from typing import Any

import cloudpickle

from ._errors import PicklingError

__all__ = [
    "callable_name",
    "dumps",
    "dumps_args",
    "dumps_function",
    "module_reference",
    "register_reducer",
    "split_bound_method",
]

_function_cache: weakref.WeakKeyDictionary[Callable[..., Any], bytes] = weakref.WeakKeyDictionary()
_cache_lock = threading.Lock()
# Types whose values plain pickle handles exactly as cloudpickle does (and faster).
SIMPLE_TYPES = frozenset({int, float, str, bytes, bool, type(None)})
_PROTOCOL = 5  # what _Pickler uses
_own_reduce: set[type] = set()
_DYNAMIC_FILENAME = "<dynamic-code>"  # what cloudpickle puts in co_filename
_OPEN_FILE_TYPES = frozenset(
    {io.TextIOWrapper, io.BufferedReader, io.BufferedWriter, io.BufferedRandom, io.FileIO}
)


def callable_name(fn: Callable[..., Any]) -> str:
    """A readable name for error messages: ``module.qualname``."""
    module = getattr(fn, "__module__", None) or "?"
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return f"{module}.{qualname}"


def register_reducer(cls: type) -> None:
    """Pickle instances of *cls* with their own ``__reduce_ex__`` (before cloudpickle's rules)."""
    _own_reduce.add(cls)


class _ModuleReference:
    """Pickles as ``importlib.import_module(name)``: a module by reference, stdlib only."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __reduce__(self) -> tuple[Any, ...]:
        return (importlib.import_module, (self.name,))


def module_reference(name: str) -> Any:
    """An object that unpickles as the module *name* (imported there)."""
    return _ModuleReference(name)


class _SourceRegistration:
    """Unpickles (with the standard library only) by putting source lines into linecache."""

    __slots__ = ("sources",)

    def __init__(self, sources: dict[str, list[str]]) -> None:
        self.sources = sources

    def __reduce__(self) -> tuple[Any, ...]:
        code = (
            "import linecache\n"
            f"for name, lines in {self.sources!r}.items():\n"
            "    linecache.cache[name] = (len(lines), None, lines, name)\n"
        )
        return (exec, (code,))


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle that keeps file names of code sent by value and collects their source."""

    def __init__(
        self, file: io.BytesIO, buffer_callback: Callable[[Any], Any] | None = None
    ) -> None:
        super().__init__(file, protocol=5, buffer_callback=buffer_callback)
        self.sources: dict[str, dict[int, str]] = {}

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind in _own_reduce:
            return obj.__reduce_ex__(5)
        if kind is types.CodeType:
            return self._code_reduce(obj)
        if kind in _OPEN_FILE_TYPES:
            # cloudpickle would send a read-mode file's contents (and refuse others):
            # a copy that silently diverges from the file. Refuse every open file.
            name = getattr(obj, "name", "?")
            raise pickle.PicklingError(
                f"the open file {name!r} cannot be sent to another process; pass its path "
                "(or the data read from it) instead"
            )
        return super().reducer_override(obj)

    def _code_reduce(self, code: types.CodeType) -> Any:
        reduce = getattr(cloudpickle.cloudpickle, "_code_reduce", None)
        if reduce is None:  # pragma: no cover - a cloudpickle without it: plain behaviour
            return NotImplemented
        func, args = reduce(code)
        filename = code.co_filename
        args = tuple(filename if arg == _DYNAMIC_FILENAME else arg for arg in args)
        self._collect_source(code)
        return func, args

    def _collect_source(self, code: types.CodeType) -> None:
        filename = code.co_filename
        lines = linecache.getlines(filename)
        if not lines:
            return
        numbers = [line for _, _, line in code.co_lines() if line is not None]
        first = code.co_firstlineno
        last = max(numbers, default=first)
        kept = self.sources.setdefault(filename, {})
        for number in range(first, min(last, len(lines)) + 1):
            kept[number] = lines[number - 1]

    def source_lines(self) -> dict[str, list[str]]:
        """Collected sources: each file's lines, blank except those of the code sent."""
        result = {}
        for filename, kept in self.sources.items():
            size = max(kept)
            result[filename] = [kept.get(n, "\n") for n in range(1, size + 1)]
        return result


def _dump(obj: Any) -> tuple[bytes, dict[str, list[str]]]:
    buffer = io.BytesIO()
    pickler = _Pickler(buffer)
    pickler.dump(obj)
    return buffer.getvalue(), pickler.source_lines()


def dumps(obj: Any) -> bytes:
    """cloudpickle *obj* with the highest protocol (see the module docstring)."""
    return _dump(obj)[0]


def dumps_with_buffer_callback(
    obj: Any, *, protocol: int = 5, buffer_callback: Callable[[Any], Any] | None = None
) -> bytes:
    """``dumps`` with pickle protocol 5's out-of-band buffers passed to *buffer_callback*
    (for the shared-memory transport), with the same refusals (open files) as ``dumps``."""
    if protocol != 5:
        raise ValueError("only pickle protocol 5 carries out-of-band buffers")
    buffer = io.BytesIO()
    _Pickler(buffer, buffer_callback).dump(obj)
    return buffer.getvalue()


def split_bound_method(
    fn: Callable[..., Any], args: tuple[Any, ...]
) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """Turn ``obj.method, args`` into ``function, (obj, *args)`` so the function can be cached."""
    if isinstance(fn, types.MethodType) and isinstance(fn.__func__, types.FunctionType):
        return fn.__func__, (fn.__self__, *args)
    return fn, args


def _reference_through_wrapper(fn: types.FunctionType) -> Any:
    """An object pickling as *fn* by reference through the decorator's wrapper, or None.

    For ``@parallelize def f`` in an importable module, ``module.f`` is the
    wrapper and ``module.f.__wrapped__`` the function (also for methods,
    static and class methods: the path is checked here, in the parent).
    """
    module_name = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", "")
    if not module_name or module_name == "__main__" or "<" in qualname:
        return None
    module = sys.modules.get(module_name)
    if module is None or module_name in cloudpickle.list_registry_pickle_by_value():
        return None
    for path in (f"{qualname}.__wrapped__", f"{qualname}.__wrapped__.__func__"):
        try:
            found = operator.attrgetter(path)(module)
        except Exception:
            continue
        if found is fn:
            return _AttributeReference(module_name, path)
    return None


class _AttributeReference:
    """Pickles as ``operator.attrgetter(path)(module)``, with the standard library only."""

    __slots__ = ("module", "path")

    def __init__(self, module: str, path: str) -> None:
        self.module = module
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (operator.attrgetter(self.path), (_ModuleReference(self.module),))


def _dumps_function_uncached(fn: Callable[..., Any]) -> bytes:
    if isinstance(fn, types.FunctionType):
        reference = _reference_through_wrapper(fn)
        if reference is not None:
            return dumps(reference)
    data, sources = _dump(fn)
    if sources:
        # Unpickling the pair registers the sources, then getitem returns the function.
        data = dumps(_Pair(fn, _SourceRegistration(sources)))
    return data


class _Pair:
    """Pickles as ``operator.getitem((fn, registration), 0)``: *fn*, with a side effect."""

    __slots__ = ("fn", "registration")

    def __init__(self, fn: Any, registration: _SourceRegistration) -> None:
        self.fn = fn
        self.registration = registration

    def __reduce__(self) -> tuple[Any, ...]:
        return (operator.getitem, ((self.fn, self.registration), 0))


def dumps_function(fn: Callable[..., Any]) -> bytes:
    """Pickle *fn*, cached per function object when *fn* is a plain function."""
    cacheable = isinstance(fn, types.FunctionType)
    if cacheable:
        with _cache_lock:
            cached = _function_cache.get(fn)
        if cached is not None:
            return cached
    try:
        data = _dumps_function_uncached(fn)
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
    """Pickle ``(args, kwargs)`` for a call of *fn*; name the culprit on failure.

    Arguments of a few exact types pickle identically with the standard pickler, which
    costs a fraction of setting up cloudpickle's for every call of a small task."""
    if _all_simple(args) and _all_simple(kwargs.values()):
        return pickle.dumps((args, kwargs), protocol=_PROTOCOL)
    try:
        return dumps((args, kwargs))
    except Exception as exc:
        culprit = _find_unpicklable(fn, args, kwargs)
        raise PicklingError(
            f"cannot send call to {callable_name(fn)} to a worker: {culprit} could not be "
            f"pickled ({type(exc).__name__}: {exc}). Pass picklable values (for example "
            "data instead of open files, locks or connections), or use Method.THREAD."
        ) from exc


def _all_simple(values: Any) -> bool:
    simple = SIMPLE_TYPES
    return all(type(value) in simple for value in values)


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
