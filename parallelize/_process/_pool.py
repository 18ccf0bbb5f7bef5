"""``ProcessExecutor``: a process pool that survives worker deaths and batches tiny tasks.

Workers are ``python -m parallelize._process._worker`` processes started with
``subprocess.Popen`` (no fork of the parent, no re-import of its ``__main__``),
each connected by a task pipe, a result pipe and, for large buffers, a Unix
socket that carries shared-memory descriptors (see ``_protocol`` and ``_shm``).

The pool is split by job:

* ``_calls``: pickling a call in the caller's thread;
* ``_handles``: tasks, worker handles, starting a worker process;
* ``_dispatch``: the shared state under the pool lock, queueing, batching,
  when a call starts, killing and retiring workers (its docstring states the
  threads, the lock and the worker lifecycle);
* ``_results``: the result thread (results, deadlines, reaping);
* this module: the executor facade, exit and fork handling.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, ParamSpec, TypeVar

from .._call_options import CallOptions
from .._config import parse_memory_size, validate_max_tasks
from .._executor_base import BaseExecutor, ExitStage, at_threads_exit, waits_at_exit
from .._pickling import dumps_function, split_bound_method
from . import _shm
from ._calls import PickledCall, dumps_call
from ._dispatch import Pool, ProcessFuture, Submission
from ._handles import State
from ._run_handle import RunHandle

__all__ = ["ProcessExecutor"]

P = ParamSpec("P")
T = TypeVar("T")

# The pools to finish at exit. Pools, not executors: a ProcessExecutor dropped without
# shutdown leaves its pool running its queue (the finaliser closes it), and exit still
# waits for that work, as ProcessPoolExecutor does.
_live_pools: weakref.WeakSet[Pool] = weakref.WeakSet()


class ProcessExecutor(BaseExecutor):
    r"""Run calls in local worker processes; ``submit`` returns a ``concurrent.futures.Future``.

    Workers are started on demand, up to *max_workers* (default: the number
    of CPUs). Calls are pickled with cloudpickle in ``submit`` (an unpicklable
    function or argument raises :class:`PicklingError` there). A worker that
    dies fails only the task it was running (:class:`WorkerDiedError`) and is
    replaced. Workers exit with the pool, and also as soon as the parent
    process dies.

    Buffers of at least *shm_threshold* bytes (default 1 MiB) -- numpy arrays
    anywhere in the arguments or the result, top-level ``bytes`` -- travel
    through shared memory instead of the pipes: they arrive in the worker as
    read-only views without a copy, and results come back the same way.
    ``shm_threshold=None`` sends everything through the pipes. Shared memory
    needs Linux (``memfd_create``); elsewhere the threshold is ignored.

    Task control: ``submit_with(CallOptions(timeout=S), fn, ...)`` fails a call
    that runs longer than *S* seconds (counted from when its worker starts it)
    with :class:`TaskTimeoutError` and kills its worker; futures are
    :class:`~smart_future.StoppableFuture`\ s whose ``stop()`` kills the worker
    running the call. A worker is replaced after *max_tasks_per_worker* calls,
    or after a call that leaves it above *max_worker_memory* (bytes, or a size
    such as ``"2GiB"``); nothing queued is lost or run twice.

    *stdio*: called once per worker started, returns the write ends of two pipes for its
    stdout and stderr (closed by the pool once the worker has them; default: the workers
    write to this process's own). REMOTE's embedded pool uses it to prefix each line.
    *drain_stdio*: called on the result thread before each batch of results is delivered,
    so that what the calls printed to those pipes is passed on before their results.

    *host*: the name of the REMOTE host these workers are the slots of (the embedded pool):
    a failed call's traceback and ``where_ran`` name it, as for any host; default: the
    worker process.
    """

    supports_timeout = True

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        name: str = "process",
        shm_threshold: int | None = _shm.DEFAULT_THRESHOLD,
        max_tasks_per_worker: int | None = None,
        max_worker_memory: int | str | None = None,
        stdio: Callable[[], tuple[int, int]] | None = None,
        drain_stdio: Callable[[], None] | None = None,
        host: str | None = None,
    ) -> None:
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        if max_workers <= 0:
            raise ValueError(f"max_workers must be at least 1, not {max_workers}")
        if shm_threshold is not None and (
            isinstance(shm_threshold, bool)
            or not isinstance(shm_threshold, int)
            or shm_threshold < 1
        ):
            raise ValueError(
                f"shm_threshold must be a size in bytes (an int of at least 1), or None to "
                f"send everything through the pipes; got {shm_threshold!r}"
            )
        if max_tasks_per_worker is not None:
            validate_max_tasks(max_tasks_per_worker, "max_tasks_per_worker")
        if max_worker_memory is not None:
            max_worker_memory = parse_memory_size(max_worker_memory, "max_worker_memory")
        super().__init__(name=name)
        self.max_workers = max_workers
        self.shm_threshold = shm_threshold if _shm.AVAILABLE else None
        self.max_tasks_per_worker = max_tasks_per_worker
        self.max_worker_memory: int | None = max_worker_memory
        self._pool = Pool(
            max_workers,
            name,
            self._stats,
            self.shm_threshold,
            max_tasks_per_worker,
            max_worker_memory,
            stdio,
            host,
        )
        self._pool.drain_stdio = drain_stdio
        _live_pools.add(self._pool)
        # If the executor is dropped without shutdown, let its workers go when idle.
        self._finalizer = weakref.finalize(self, self._pool.close)

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        return self._submit(None, fn, args, kwargs)

    def submit_with(
        self, options: CallOptions, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> Future[T]:
        return self._submit(options.for_executor().timeout, fn, args, kwargs)

    def _submit(
        self,
        timeout: float | None,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Future[T]:
        self._check_open()
        function, call_args = split_bound_method(fn, args)
        fn_bytes = dumps_function(function)
        args_bytes, segment = dumps_call(function, call_args, kwargs, self.shm_threshold)
        future: ProcessFuture[T] = ProcessFuture()
        future._pool = self._pool
        self._pool.submit(future, function, fn_bytes, args_bytes, segment, timeout)
        return future

    def submit_run(
        self,
        call: PickledCall,
        handle: RunHandle | ProcessFuture[Any],
        timeout: float | None = None,
    ) -> None:
        """Run a call pickled by :func:`~parallelize.ext.pickle_call` (it may be run again:
        each run gets its own descriptor of the call's shared memory), reporting to
        *handle* instead of a future (or to a :class:`ProcessFuture` subclass, completed
        as PROCESS completes its own). The shared API of REMOTE's embedded pool: see
        :class:`~parallelize.ext.RunHandle` for when it is told what."""
        self._check_open()
        handle._pool = self._pool
        segment = call.segment_for_run()
        self._pool.submit(handle, call.fn, call.fn_bytes, call.args_bytes, segment, timeout)

    def submit_runs(self, runs: list[tuple[PickledCall, RunHandle, float | None]]) -> None:
        """``submit_run`` for a batch of (call, handle, timeout), handed to the workers
        together (the embedded pool's scheduler starts attempts in batches)."""
        self._check_open()
        pool = self._pool
        batch: list[Submission] = []
        for call, handle, timeout in runs:
            handle._pool = pool
            batch.append(
                (handle, call.fn, call.fn_bytes, call.args_bytes, call.segment_for_run(), timeout)
            )
        pool.submit_many(batch)

    def terminate(self) -> None:
        """Kill every worker now: queued and running calls fail (``WorkerDiedError``)."""
        with self._shutdown_lock:
            self._shutdown = True
        self._pool.terminate()

    def join_workers(self, timeout: float) -> None:
        """Wait up to *timeout* seconds for the result thread to reap every worker."""
        results = self._pool.results
        if results is not None and results.thread is not threading.current_thread():
            results.thread.join(timeout)

    def worker_pids(self) -> list[int]:
        """Process ids of the live worker processes (for diagnostics and tests)."""
        with self._pool.lock:
            return [w.pid for w in self._pool.workers if w.state is not State.DEAD]

    def _shutdown_impl(self, *, wait: bool, cancel_futures: bool) -> None:
        if cancel_futures:
            self._pool.cancel_queued()
        self._pool.close()
        if wait:
            self._pool.join()

    def _join(self) -> None:
        self._pool.join()

    def _cancel_queued(self) -> int:
        return self._pool.cancel_queued()

    def _after_fork_in_child(self) -> None:
        """In a forked child: make this executor inert and closed; the parent's workers are
        left alone (their pipes are closed in the child only)."""
        super()._after_fork_in_child()
        self._pool.after_fork_in_child()
        self._finalizer.detach()


def _at_exit() -> None:
    # Like the standard library: let queued and running tasks finish, then reap;
    # after a Ctrl-C during a wait the user wants out: stop the workers now.
    # A Ctrl-C while joining: stop the rest now (the one exit hook then moves on).
    for pool in list(_live_pools):
        if waits_at_exit():
            pool.close()
        else:
            pool.terminate()
    try:
        for pool in list(_live_pools):
            pool.join()
    except KeyboardInterrupt:
        for pool in list(_live_pools):
            pool.terminate()
        raise


# In the one exit hook, where ProcessPoolExecutor also waits (before atexit handlers):
# after REMOTE's schedulers, whose embedded pool runs on a ProcessExecutor.
at_threads_exit(_at_exit, ExitStage.POOLS)
