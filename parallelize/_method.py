"""Where a decorated call runs."""

from __future__ import annotations

import enum

__all__ = ["Method"]


class Method(enum.Enum):
    """Where a ``@parallelize`` call runs.

    THREAD: a thread of this process (the default; best for I/O and for code
    that releases the GIL, such as numpy). PROCESS: a local worker process
    (best for pure-Python CPU work). REMOTE: a worker slot on a pool of
    machines reached over SSH (or the embedded local pool when none is
    configured). DASK / RAY: a task on a Dask or Ray cluster (``pip install
    'parallelize[dask]'`` / ``'parallelize[ray]'``; see :func:`configure`).
    """

    THREAD = "thread"
    PROCESS = "process"
    REMOTE = "remote"
    DASK = "dask"
    RAY = "ray"

    @classmethod
    def parse(cls, value: Method | str) -> Method:
        """Accept a Method or its name/value in any case; reject anything else clearly."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            key = value.strip().lower()
            for member in cls:
                if key in (member.value, member.name.lower()):
                    return member
        choices = ", ".join(f"Method.{m.name}" for m in cls)
        raise ValueError(
            f"unknown parallelize method {value!r}; choose one of {choices} "
            f"(or the strings {', '.join(repr(m.value) for m in cls)})"
        )
