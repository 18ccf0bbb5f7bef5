"""The value face of SmartFuture: everything that acts on the task's value.

:class:`ValueFace` is a mixin that holds every dunder through which a SmartFuture
is used as its value: operators, comparisons, conversions, container,
iteration, calling and context-manager protocols, attribute forwarding,
pickling and copying. Each calls ``self.result()`` (blocking, re-raising the
task's exception) and acts on what it returns; SmartFuture operands are
unwrapped. ``hash()`` is the exception: identity, never blocking (it sits next
to ``__eq__`` because defining one without the other would unset it).

The Future face (waiting, cancelling, callbacks, ``repr``) is
:mod:`smart_future._smart_future`, whose SmartFuture docstring documents the
behaviour users see. Python looks dunders up on the type and fills the type's
slots when the class is created, so taking them from a base class costs
nothing per call.
"""

from __future__ import annotations

import contextlib
import copy
import math
import operator
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

__all__ = ["ValueFace"]

T = TypeVar("T")

# Attributes that live on the SmartFuture itself (its slots) and are never
# forwarded to the value.
_OWN_NAMES = frozenset({"future", "__weakref__"})

_DISPLAY_HOOK_PREFIXES = ("_repr_", "_ipython_")


def _unwrap(obj: Any) -> Any:
    """Return ``obj.result()`` for a SmartFuture, ``obj`` otherwise."""
    if isinstance(obj, ValueFace):
        return obj.result()
    return obj


def _convert(value: Any, methods: tuple[str, ...], cast: Callable[[Any], T], what: str) -> T:
    """Call the first of *methods* the value's type defines, as the numeric protocols do."""
    kind = type(value)
    for name in methods:
        method = getattr(kind, name, None)
        if method is not None:
            result = method(value)
            return result if name == methods[0] else cast(result)
    raise TypeError(f"the value of this SmartFuture is not {what}: {kind.__name__!r} object")


def _binary(op: Callable[[Any, Any], Any], name: str) -> Callable[[ValueFace, Any], Any]:
    def method(self: ValueFace, other: Any) -> Any:
        return op(self.result(), _unwrap(other))

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"Return ``operator.{op.__name__}(self.result(), other)``; blocks."
    return method


def _reflected(op: Callable[[Any, Any], Any], name: str) -> Callable[[ValueFace, Any], Any]:
    def method(self: ValueFace, other: Any) -> Any:
        return op(_unwrap(other), self.result())

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"Return ``operator.{op.__name__}(other, self.result())``; blocks."
    return method


def _unary(op: Callable[[Any], Any], name: str) -> Callable[[ValueFace], Any]:
    def method(self: ValueFace) -> Any:
        return op(self.result())

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"Return ``{op.__module__}.{op.__name__}(self.result())``; blocks."
    return method


class ValueFace:
    """The dunders that make a SmartFuture usable as its value (see the module doc).

    A subclass provides ``result()``; this class adds no state (empty slots)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def result(self, timeout: float | None = None) -> Any: ...

    # ------------------------------------------------------------------
    # Pickling, copying
    # ------------------------------------------------------------------

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
        if name in _OWN_NAMES or name.startswith(_DISPLAY_HOOK_PREFIXES):
            # IPython probes _repr_html_, _ipython_display_ ... to show a cell's
            # result: answering for the value would block, so a SmartFuture
            # shows as its (never blocking) repr in notebooks too.
            raise AttributeError(name)
        return getattr(self.result(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _OWN_NAMES or (name.startswith("__") and name.endswith("__")):
            # Dunders (e.g. typing's __orig_class__) stay local: slots only,
            # so this raises AttributeError for anything but ``future``.
            object.__setattr__(self, name, value)
        else:
            setattr(self.result(), name, value)

    def __delattr__(self, name: str) -> None:
        if name in _OWN_NAMES or (name.startswith("__") and name.endswith("__")):
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
        """Identity hash: never blocks (see SmartFuture's docstring for why)."""
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
            return pow(self.result(), _unwrap(other))
        return pow(self.result(), _unwrap(other), _unwrap(modulo))

    def __rpow__(self, other: Any, modulo: Any = None) -> Any:
        """Return ``pow(other, self.result()[, modulo])``; blocks."""
        if modulo is None:
            return pow(_unwrap(other), self.result())
        return pow(_unwrap(other), self.result(), _unwrap(modulo))

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
        return bool(self.result())

    def __str__(self) -> str:
        return str(self.result())

    def __format__(self, format_spec: str) -> str:
        return format(self.result(), format_spec)

    def __bytes__(self) -> bytes:
        return bytes(self.result())

    # The numeric protocols follow the value's own methods (what math.sqrt(value)
    # or "%d" % value would use), not int()/float(), which would parse strings.

    def __int__(self) -> int:
        return _convert(self.result(), ("__int__", "__index__"), int, "an integer")

    def __float__(self) -> float:
        return _convert(self.result(), ("__float__", "__index__"), float, "a real number")

    def __complex__(self) -> complex:
        return _convert(
            self.result(), ("__complex__", "__float__", "__index__"), complex, "a complex number"
        )

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        """The array protocol: ``np.asarray(sf)`` is ``np.asarray(sf.result())``; blocks."""
        import numpy  # lazily: only reached when numpy already asks

        value = self.result()
        if copy:
            return numpy.array(value, dtype=dtype, copy=True)
        return numpy.asarray(value, dtype=dtype)

    def __index__(self) -> int:
        return operator.index(self.result())

    def __round__(self, ndigits: int | None = None) -> Any:
        if ndigits is None:
            return round(self.result())
        return round(self.result(), ndigits)

    def __trunc__(self) -> Any:
        return math.trunc(self.result())

    def __floor__(self) -> Any:
        return math.floor(self.result())

    def __ceil__(self) -> Any:
        return math.ceil(self.result())

    # ------------------------------------------------------------------
    # Containers, iteration, calling, context management
    # ------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.result())

    def __iter__(self) -> Iterator[Any]:
        return iter(self.result())

    def __reversed__(self) -> Iterator[Any]:
        it: Iterator[Any] = reversed(self.result())
        return it

    def __contains__(self, item: object) -> bool:
        return _unwrap(item) in self.result()

    def __getitem__(self, key: Any) -> Any:
        return self.result()[_unwrap(key)]

    def __setitem__(self, key: Any, value: Any) -> None:
        """``sf[key] = value`` stores ``value`` as is (a SmartFuture is not unwrapped)."""
        self.result()[_unwrap(key)] = value

    def __delitem__(self, key: Any) -> None:
        del self.result()[_unwrap(key)]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the value with the given arguments (not unwrapped); blocks."""
        return self.result()(*args, **kwargs)

    def __enter__(self) -> Any:
        value = self.result()
        enter = getattr(type(value), "__enter__", None)
        if enter is None:
            raise TypeError(
                f"{type(value).__name__!r} object does not support the context manager protocol"
            )
        return enter(value)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
        value = self.result()
        return type(value).__exit__(value, exc_type, exc, tb)
