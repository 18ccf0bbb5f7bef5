"""Per-call options: what ``@parallelize(timeout=..., retries=...)`` and ``f.options(...)`` set.

A :class:`CallOptions` travels from the decorator to the executor with each call
(``BaseExecutor.submit_with``). It is frozen and validated when built, so bad
input fails at decoration (or at ``f.options(...)``), naming the option and the fix.

Who does what:

* ``timeout``: the executor. It counts from when the call starts running. PROCESS
  and REMOTE kill the process that runs it; THREAD fails the future at the deadline
  and the thread runs on. The future fails with :class:`TaskTimeoutError`.
* ``retries``/``retry_on``/``retry_backoff``: the decorator, the same for every
  method (a failed attempt is submitted again; REMOTE is asked to avoid the host
  where it failed through ``avoid_hosts``).
* ``backups``: executors that run backup copies of stragglers (REMOTE, DASK);
  None means the executor's own setting.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEFAULT_OPTIONS", "OPTION_NAMES", "CallOptions"]


@dataclass(frozen=True, slots=True)
class CallOptions:
    """Options of one call; the defaults mean "as the executor is configured"."""

    timeout: float | None = None
    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = ()
    retry_backoff: float = 0.0
    backups: bool | None = None
    # Set by the retry logic, not by users: hosts where earlier attempts failed
    # (REMOTE prefers another host when one is free).
    avoid_hosts: frozenset[str] = field(default=frozenset())

    def __post_init__(self) -> None:
        _check_timeout(self.timeout)
        _check_retries(self.retries)
        _check_retry_on(self.retry_on)
        _check_backoff(self.retry_backoff)
        if self.backups is not None and not isinstance(self.backups, bool):
            raise TypeError(
                f"backups= must be True or False (or None for the executor's setting), "
                f"got {self.backups!r}"
            )
        if self.retries and not self.retry_on:
            raise ValueError(
                f"retries={self.retries} needs retry_on=: the exception types worth "
                "retrying, e.g. retry_on=(ConnectionError, TimeoutError). Application "
                "errors are never retried by default."
            )

    @property
    def is_default(self) -> bool:
        """True when no option asks the executor for anything special."""
        return self.timeout is None and self.backups is None and not self.avoid_hosts

    def for_executor(self) -> CallOptions:
        """The options an executor sees: retries are the decorator's job."""
        if not self.retries and not self.retry_on and not self.retry_backoff:
            return self
        return dataclasses.replace(self, retries=0, retry_on=(), retry_backoff=0.0)

    def merged(self, overrides: Mapping[str, Any]) -> CallOptions:
        """These options with *overrides* (validated) replacing some of them."""
        unknown = [name for name in overrides if name not in OPTION_NAMES]
        if unknown:
            raise TypeError(
                f"unknown call option {unknown[0]!r}; valid ones are {', '.join(OPTION_NAMES)}"
            )
        values = dict(overrides)
        if "retry_on" in values:
            values["retry_on"] = normalise_retry_on(values["retry_on"])
        return dataclasses.replace(self, **values)


OPTION_NAMES = ("timeout", "retries", "retry_on", "retry_backoff", "backups")


def normalise_retry_on(value: Any) -> tuple[type[BaseException], ...]:
    """Accept one exception type or an iterable of them, as ``except`` does."""
    if isinstance(value, type):
        return (value,)
    if isinstance(value, (list, tuple, set, frozenset)):
        return tuple(value)
    raise TypeError(
        f"retry_on= takes an exception type or a tuple of them, got {value!r}; "
        "e.g. retry_on=(ConnectionError, TimeoutError)"
    )


def _check_timeout(timeout: Any) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout= takes a number of seconds (or None), got {timeout!r}")
    if not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(
            f"timeout= must be a positive, finite number of seconds, got {timeout!r}; "
            "use None for no limit"
        )


def _check_retries(retries: Any) -> None:
    if isinstance(retries, bool) or not isinstance(retries, int):
        raise TypeError(f"retries= takes a whole number of extra attempts, got {retries!r}")
    if retries < 0:
        raise ValueError(f"retries= must be 0 or more, got {retries}")


def _check_retry_on(retry_on: Any) -> None:
    if not isinstance(retry_on, tuple):
        raise TypeError(f"retry_on= takes an exception type or a tuple of them, got {retry_on!r}")
    for kind in retry_on:
        if not (isinstance(kind, type) and issubclass(kind, BaseException)):
            raise TypeError(
                f"retry_on= must hold exception types, got {kind!r}; "
                "e.g. retry_on=(ConnectionError, TimeoutError)"
            )


def _check_backoff(backoff: Any) -> None:
    if isinstance(backoff, bool) or not isinstance(backoff, (int, float)):
        raise TypeError(f"retry_backoff= takes a number of seconds, got {backoff!r}")
    if not math.isfinite(backoff) or backoff < 0:
        raise ValueError(f"retry_backoff= must be 0 or more seconds, got {backoff!r}")


DEFAULT_OPTIONS = CallOptions()
