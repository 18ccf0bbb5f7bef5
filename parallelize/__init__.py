"""parallelize: make parallel work a one-line change.

Put ``@parallelize`` on a function and its calls return
:class:`~smart_future.SmartFuture` objects that run on a thread, a local
process (``Method.PROCESS``) or a machine reached over SSH
(``Method.REMOTE``)::

    from parallelize import parallelize, Method

    @parallelize(method=Method.PROCESS)
    def square(x):
        return x * x

    futures = [square(i) for i in range(10)]
    total = sum(futures)          # each SmartFuture behaves like its value
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from smart_future import SmartFuture, wait_all, wait_any

from ._decorator import parallelize
from ._defaults import configure, default_executor, shutdown_default_executors
from ._errors import (
    AttemptRecord,
    ParallelizeError,
    PicklingError,
    PoisonedCallError,
    RemoteTraceback,
    TaskLostError,
    TaskTimeoutError,
    WorkerDiedError,
)
from ._executor_base import BaseExecutor
from ._method import Method
from ._records import AttemptRow, HostRow
from ._share import Shared, share
from ._stats import ExecutorStats
from ._thread_executor import ThreadExecutor
from ._typing import ParallelFunction

if TYPE_CHECKING:
    from ._process import ProcessExecutor

__all__ = [
    "AttemptRecord",
    "AttemptRow",
    "BaseExecutor",
    "ExecutorStats",
    "HostRow",
    "Method",
    "ParallelFunction",
    "ParallelizeError",
    "PicklingError",
    "PoisonedCallError",
    "ProcessExecutor",
    "RemoteTraceback",
    "Shared",
    "SmartFuture",
    "TaskLostError",
    "TaskTimeoutError",
    "ThreadExecutor",
    "WorkerDiedError",
    "configure",
    "default_executor",
    "parallelize",
    "share",
    "shutdown_default_executors",
    "wait_all",
    "wait_any",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name: str) -> Any:
    # The process pool is imported on first use so that importing parallelize
    # (and starting a worker process) stays cheap.
    if name == "ProcessExecutor":
        from ._process import ProcessExecutor

        return ProcessExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
