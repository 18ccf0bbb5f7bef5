"""The API for packages that add a way to run calls (REMOTE, the cluster engines, yours).

``parallelize`` never imports such a package: the package registers a factory for its
:class:`~parallelize.Method` with :func:`register_method`, either when it is imported or
through the ``parallelize.methods`` entry-point group, which ``parallelize`` reads the
first time a method without a registered factory is asked for::

    [project.entry-points."parallelize.methods"]
    remote = "remote._default:register"

Shared with REMOTE's embedded pool (one local worker runtime): :class:`ProcessExecutor`
with ``submit_run``/``terminate``, :func:`pickle_call` (a :class:`PickledCall`, pickled
once the PROCESS way with large buffers in shared memory, runnable more than once), the
:class:`RunHandle` a ``submit_run`` call reports to, and ``SHM_THRESHOLD`` (the default
size from which buffers go by shared memory).

Everything an executor needs from ``parallelize`` is here; executors should import
nothing else of it but its top-level public names.
"""

from __future__ import annotations

from . import _outcome as outcome_codec
from ._call_options import DEFAULT_OPTIONS, CallOptions
from ._config import (
    FAILURE_SETTINGS,
    current_settings,
    failure_setting,
    validate_failure_setting,
)
from ._errors import TaskTimeoutError, attach_remote_traceback, where_ran
from ._executor_base import BaseExecutor, ExitStage, at_threads_exit, waits_at_exit
from ._outcome_errors import failure_exception
from ._pickling import callable_name, dumps_args, dumps_function, split_bound_method
from ._pickling import dumps as dumps_value
from ._process._calls import PickledCall, pickle_call
from ._process._dispatch import ProcessFuture
from ._process._memory import trim_c_heap as release_memory
from ._process._pool import ProcessExecutor
from ._process._run_handle import RunHandle, RunState
from ._process._shm import DEFAULT_THRESHOLD as SHM_THRESHOLD
from ._records import AttemptRow, HostRow
from ._registry import method_factory, register_info_section, register_method
from ._share import blob_digest, pickled_shared
from ._stats import ExecutorStats, Outcome, TaskStats

__all__ = [
    "DEFAULT_OPTIONS",
    "FAILURE_SETTINGS",
    "SHM_THRESHOLD",
    "AttemptRow",
    "BaseExecutor",
    "CallOptions",
    "ExecutorStats",
    "ExitStage",
    "HostRow",
    "Outcome",
    "PickledCall",
    "ProcessExecutor",
    "ProcessFuture",
    "RunHandle",
    "RunState",
    "TaskStats",
    "TaskTimeoutError",
    "at_threads_exit",
    "attach_remote_traceback",
    "blob_digest",
    "callable_name",
    "current_settings",
    "dumps_args",
    "dumps_function",
    "dumps_value",
    "failure_exception",
    "failure_setting",
    "method_factory",
    "outcome_codec",
    "pickle_call",
    "pickled_shared",
    "register_info_section",
    "register_method",
    "release_memory",
    "split_bound_method",
    "validate_failure_setting",
    "waits_at_exit",
    "where_ran",
]
