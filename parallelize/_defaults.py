"""The default executors behind ``@parallelize``: created lazily, shut down at exit.

One executor per Method, created on first use from the configuration in
force (:func:`parallelize.configure`, then environment variables). They are
shut down at interpreter exit (waiting for queued work), re-created if a
user shut one down, and forgotten in a forked child (its threads and pipes
belong to the parent), where the next call creates fresh ones.
"""

from __future__ import annotations

import threading
from concurrent.futures import Executor

import smart_future

from . import _config
from ._executor_base import (
    ExitStage,
    abandon_work_at_exit,
    at_fork_in_child,
    at_threads_exit,
    live_executors,
    waits_at_exit,
)
from ._method import Method
from ._registry import method_factory
from ._thread_executor import ThreadExecutor

__all__ = ["configure", "default_executor", "shutdown_default_executors"]

_executors: dict[Method, Executor] = {}
_lock = threading.Lock()


def default_executor(method: Method | str = Method.THREAD) -> Executor:
    """The default executor for *method*, created on first use."""
    method = Method.parse(method)
    executor = _executors.get(method)
    if executor is not None and not getattr(executor, "is_shutdown", False):
        return executor
    with _lock:
        executor = _executors.get(method)
        if executor is None or getattr(executor, "is_shutdown", False):
            executor = _create(method)
            _executors[method] = executor
        return executor


def _create(method: Method) -> Executor:
    if method is Method.THREAD:
        return ThreadExecutor(_config.thread_workers(), name="default-thread")
    if method is Method.PROCESS:
        from ._process import ProcessExecutor
        from ._process._shm import DEFAULT_THRESHOLD

        return ProcessExecutor(
            _config.process_workers(),
            name="default-process",
            shm_threshold=_config.process_shm_threshold(DEFAULT_THRESHOLD),
            max_tasks_per_worker=_config.max_tasks_per_worker(),
            max_worker_memory=_config.max_worker_memory(),
        )
    if method in (Method.DASK, Method.RAY):
        from . import _cluster

        address = _config.cluster_address(method.value)
        cluster_executor: Executor = _cluster.create_default(method.value, address)
        return cluster_executor
    factory = method_factory(method)
    executor: Executor = factory()
    return executor


def configure(
    *,
    thread_workers: int | None = None,
    process_workers: int | None = None,
    backups: bool | None = None,
    max_attempts: int | None = None,
    stall_timeout: float | None = None,
    host_down_timeout: float | None = None,
    heartbeat_interval: float | None = None,
    dask_address: str | None = None,
    ray_address: str | None = None,
    max_tasks_per_worker: int | None = None,
    max_worker_memory: int | str | None = None,
) -> None:
    """Configure the default executors (None: environment variable, else default).

    *thread_workers*, *process_workers*: sizes of the THREAD and PROCESS executors.
    *backups*, *max_attempts*, *stall_timeout*, *host_down_timeout*, *heartbeat_interval*:
    how REMOTE treats stragglers and failures (see the README's configuration reference);
    *backups* and *max_attempts* also apply to DASK and RAY.
    *dask_address* / *ray_address*: the cluster of Method.DASK / Method.RAY
    (``PARALLELIZE_DASK_ADDRESS`` / ``PARALLELIZE_RAY_ADDRESS``; unset: a local
    cluster started on first use).
    *max_tasks_per_worker*, *max_worker_memory*: a worker of the PROCESS executor is
    replaced after that many calls, or after a call that leaves it above that resident
    size (bytes, or ``"500MB"``, ``"2GiB"``...); ``PARALLELIZE_MAX_TASKS_PER_WORKER`` /
    ``PARALLELIZE_MAX_WORKER_MEMORY``.
    An existing default executor whose settings change is replaced: the old one
    finishes its queued work in the background and new calls go to the new one.
    """
    if thread_workers is not None:
        _config.validate_workers(thread_workers, "thread_workers")
    if process_workers is not None:
        _config.validate_workers(process_workers, "process_workers")
    failure = {
        "backups": backups,
        "max_attempts": max_attempts,
        "stall_timeout": stall_timeout,
        "host_down_timeout": host_down_timeout,
        "heartbeat_interval": heartbeat_interval,
    }
    for name, value in failure.items():
        if value is not None:
            _config.validate_failure_setting(name, value, "configure()")
    if dask_address is not None:
        dask_address = _config.validate_address(dask_address, "dask_address")
    if ray_address is not None:
        ray_address = _config.validate_address(ray_address, "ray_address")
    if max_tasks_per_worker is not None:
        _config.validate_max_tasks(max_tasks_per_worker, "max_tasks_per_worker")
    memory_limit = None
    if max_worker_memory is not None:
        memory_limit = _config.parse_memory_size(max_worker_memory, "max_worker_memory")
    old = _config.current_settings()
    new = _config.Settings(
        thread_workers,
        process_workers,
        **failure,  # type: ignore[arg-type]
        dask_address=dask_address,
        ray_address=ray_address,
        max_tasks_per_worker=max_tasks_per_worker,
        max_worker_memory=memory_limit,
    )
    _config.set_settings(new)
    changed = [Method.THREAD, Method.PROCESS]
    if any(getattr(old, name) != value for name, value in failure.items()):
        changed += [Method.REMOTE, Method.DASK, Method.RAY]
    if old.dask_address != dask_address:
        changed.append(Method.DASK)
    if old.ray_address != ray_address:
        changed.append(Method.RAY)
    with _lock:
        retired = [_executors.pop(m) for m in changed if m in _executors]
    for executor in retired:
        executor.shutdown(wait=False)


def shutdown_default_executors(wait: bool = True) -> None:
    """Shut down every default executor (they are re-created on the next call)."""
    with _lock:
        executors = list(_executors.values())
        _executors.clear()
    for executor in executors:
        executor.shutdown(wait=wait)


def _cancel_all_queued() -> None:
    """Ctrl-C during a wait: drop queued work everywhere so the program can stop promptly."""
    abandon_work_at_exit()
    for executor in live_executors():
        executor.cancel_queued()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    # The executors themselves were made inert by the one fork hook of _executor_base
    # (before it calls this); forget them here so that the child's first call creates
    # fresh ones.
    _executors.clear()


def _shutdown_at_exit() -> None:
    # Normally exit waits for queued work, like concurrent.futures. After a
    # Ctrl-C it does not: worker processes see their pipe close and exit.
    shutdown_default_executors(wait=waits_at_exit())


# Last at exit: the stages before have finished the default executors' work (their
# threads, schedulers and pools), so this only releases them (and the cluster engines').
at_threads_exit(_shutdown_at_exit, ExitStage.DEFAULTS)
at_fork_in_child(_after_fork_in_child, ExitStage.DEFAULTS)
smart_future.register_interrupt_hook(_cancel_all_queued)
