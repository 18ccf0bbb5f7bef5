"""RemoteExecutor: a concurrent.futures executor whose workers are slots on SSH hosts.

``submit`` pickles the call in the caller's thread (so an unpicklable function
or argument raises :class:`~parallelize._errors.PicklingError` at once),
wraps it in a :class:`~remote._bundle.Bundle` and posts it to the
:class:`~remote._scheduler.Scheduler`, whose single thread owns every bundle
and host (see that module for the threading model, retries, backups and
cancellation).

Returned futures are StoppableFuture objects (smart_future): PENDING while
queued, RUNNING from when the first attempt is sent to a slot. ``future.cancel()``
keeps the standard meaning (it refuses a running call); ``SmartFuture.cancel()``
and :meth:`RemoteExecutor.cancel` also stop a running one. Either way a
done-callback tells the scheduler, which kills the bundle's processes on their
hosts.

:meth:`RemoteExecutor.submit_with` takes per-call options
(:class:`~parallelize.ext.CallOptions`): ``timeout`` (enforced on the host: the
process is killed and the future fails with :class:`~parallelize.TaskTimeoutError`),
``backups`` (False: never a backup copy of this call; None or True: the executor's
setting) and ``avoid_hosts`` (hosts to keep the call off when another has a free
slot; set by the decorator's retries).
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from parallelize import PicklingError
from parallelize.ext import (
    DEFAULT_OPTIONS,
    SHM_THRESHOLD,
    BaseExecutor,
    CallOptions,
    ExecutorStats,
    callable_name,
    dumps_function,
    failure_setting,
    pickle_call,
    split_bound_method,
    validate_failure_setting,
)
from smart_future import StoppableFuture, register_status_provider

from ._agent_client import LinkTiming
from ._blobs import prepare_args, resolve_threshold, zstd_version
from ._bundle import Bundle
from ._lane import LaneFuture
from ._link import HostLink, HostSpec
from ._policies import SelectionPolicy, make_policy
from ._process_link import ProcessLink, runs_in_process
from ._remote_future import RemoteFuture
from ._scheduler import LinkFactory, Scheduler

if TYPE_CHECKING:
    from ._pool_config import PoolConfig

__all__ = ["RemoteExecutor", "default_link_factory"]

logger = logging.getLogger("remote")

_embedded_logged = False
_MAX_FRAME = 0xFFFFFFFF - 64  # the wire's 32-bit frame length, less the SUBMIT header
_bundle_ids = itertools.count(1)


def default_link_factory(
    spec: HostSpec,
    *,
    connect_timeout: float = 10.0,
    timing: LinkTiming | None = None,
    process_workers: bool = True,
) -> HostLink:
    """A ProcessLink (PROCESS workers) for an embedded-pool host on this interpreter, a
    LocalLink (an agent over pipes) for another local interpreter, an SSHLink otherwise.
    ``process_workers=False``: LocalLinks for every local host (a pool that mixes local and
    SSH hosts sends every host the same wire payloads)."""
    if process_workers and runs_in_process(spec):
        return ProcessLink(spec)
    if spec.is_local:
        from ._local_link import LocalLink

        return LocalLink(spec, connect_timeout=connect_timeout, timing=timing)
    from ._ssh_link import SSHLink

    return SSHLink(spec, connect_timeout=connect_timeout, timing=timing)


_DEFAULTS: dict[str, bool | int | float] = {
    "backups": True,
    "max_attempts": 3,
    "stall_timeout": 10.0,
    "host_down_timeout": 60.0,
    "heartbeat_interval": 5.0,
}


def resolve_options(
    explicit: Mapping[str, bool | int | float | None], from_pool: Mapping[str, bool | int | float]
) -> dict[str, bool | int | float]:
    """Each failure-handling setting from, in order: the executor's argument,
    ``configure()``, the environment, the pool file's ``[executor]`` table, the default."""
    out: dict[str, bool | int | float] = {}
    for name, default in _DEFAULTS.items():
        value = explicit.get(name)
        if value is not None:
            out[name] = validate_failure_setting(name, value, "RemoteExecutor()")
            continue
        value = failure_setting(name)
        if value is None:
            value = from_pool.get(name)
        out[name] = default if value is None else value
    return out


class _StatusLine:
    """The executor's status provider for progress bars (``smart_future`` status providers).

    Returns the :func:`~remote._heartbeat.format_summary` line the scheduler thread
    publishes (at most every 0.2 s while it has work), or None while the executor has no
    work. Reading a published snapshot never waits for the scheduler, so a busy scheduler
    cannot leave the bar showing a stale line (it used to show the connecting phase's
    "0/1 hosts up" while calls completed). Holds the scheduler weakly so a registration
    never keeps it alive."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = weakref.ref(scheduler)

    def __call__(self) -> str | None:
        scheduler = self._scheduler()
        if scheduler is None or not scheduler.alive:
            return None
        summary = scheduler.published_summary
        if scheduler.published_idle or summary is None:
            return None
        return summary


def _resolve_pool(
    pool: PoolConfig | str | os.PathLike[str] | Sequence[HostSpec] | None,
) -> PoolConfig:
    """The pool to use: the one given, the configured pool file, or the embedded pool."""
    global _embedded_logged
    from ._pool_config import PoolConfig, embedded_pool, load_pool

    if isinstance(pool, (list, tuple)):
        return PoolConfig(hosts=tuple(pool))
    if isinstance(pool, PoolConfig):
        return pool
    if pool is not None and not isinstance(pool, (str, os.PathLike)):
        raise TypeError(
            f"RemoteExecutor(pool=...) takes a PoolConfig, a pool file path or a list of "
            f"HostSpec, not {type(pool).__name__}"
        )
    config = load_pool(os.fspath(pool)) if pool is not None else load_pool()
    if config is None:
        config = embedded_pool()
        if not _embedded_logged:
            _embedded_logged = True
            logger.info(
                "no worker pool configured (no pool file; see PARALLELIZE_POOL_FILE): using "
                "the embedded default pool, %d local worker slot(s) on this machine",
                sum(h.slots for h in config.hosts),
            )
    return config


class RemoteExecutor(BaseExecutor):
    """Runs calls on a pool of hosts reached over SSH (or local agents for the embedded pool).

    *pool*: a :class:`PoolConfig`, the path of a pool file, a list of :class:`HostSpec`, or
    None for the configured pool (``PARALLELIZE_POOL_FILE`` or the user's pool file), falling
    back to the embedded default pool (logged once at INFO on the ``remote`` logger).
    *policy*: ``"weighted"`` (random, proportional to weight x free slots), ``"round_robin"``
    or a :class:`SelectionPolicy`. Every *heartbeat_interval* seconds the
    status is logged at INFO on the ``remote`` logger and, with *backups*, one straggling
    bundle may get a speculative copy on another host (at most *max_backups_per_bundle*
    each; the first copy to finish wins). A bundle whose attempts fail for infrastructure
    reasons *max_attempts* times is poisoned; when no host is reachable for
    *host_down_timeout* seconds pending calls fail with :class:`HostUnavailableError`.
    Arguments pickled larger than *blob_threshold* bytes (default: ``[executor]
    blob_threshold`` of the pool file, ``PARALLELIZE_BLOB_THRESHOLD``, 1 MiB; 0: off) and
    :func:`parallelize.share` handles are sent once per host (see ``remote/_blobs.py``).
    *max_tasks_per_worker* and *max_worker_memory* (bytes, or a size such as ``"2GiB"``)
    recycle a slot's process after that many calls or once its resident memory is over
    the limit, on hosts whose pool entry does not set its own (see the pool file).
    """

    supports_timeout = True

    def __init__(
        self,
        pool: PoolConfig | str | os.PathLike[str] | Sequence[HostSpec] | None = None,
        *,
        policy: str | SelectionPolicy = "weighted",
        heartbeat_interval: float | None = None,
        backups: bool | None = None,
        max_backups_per_bundle: int = 2,
        backup_budget: float = 0.1,
        max_attempts: int | None = None,
        stall_timeout: float | None = None,
        host_down_timeout: float | None = None,
        timeline_limit: int = 10_000,
        max_tasks_per_worker: int | None = None,
        max_worker_memory: int | str | None = None,
        name: str = "remote",
        link_factory: LinkFactory | None = None,
        clock: Callable[[], float] = time.monotonic,
        blob_threshold: int | None = None,
    ) -> None:
        from ._pool_config import with_recycling

        config = with_recycling(_resolve_pool(pool), max_tasks_per_worker, max_worker_memory)
        self.hosts = list(config.hosts)
        self.blob_threshold = resolve_threshold(blob_threshold, config.blob_threshold)
        # compress blobs (once, in the submitting thread) if some host may take them so
        self._compress = zstd_version() is not None and any(
            h.compression != "none" for h in self.hosts
        )
        options = resolve_options(
            {
                "backups": backups,
                "max_attempts": max_attempts,
                "stall_timeout": stall_timeout,
                "host_down_timeout": host_down_timeout,
                "heartbeat_interval": heartbeat_interval,
            },
            config.executor,
        )
        self.options = options
        # Every host on PROCESS workers (the embedded pool): calls are pickled the PROCESS
        # way, once, and results come back as objects (see remote/_link.py).
        self._local_calls = link_factory is None and all(runs_in_process(h) for h in self.hosts)
        if link_factory is None:
            link_factory = functools.partial(
                default_link_factory,
                connect_timeout=config.connect_timeout,
                timing=LinkTiming(stall_timeout=float(options["stall_timeout"])),
                process_workers=self._local_calls,
            )
        selection = make_policy(policy)
        super().__init__(name=name)
        self._scheduler = scheduler = Scheduler(
            self.hosts,
            link_factory,
            policy=selection,
            stats=self._stats,
            name=name,
            heartbeat_interval=float(options["heartbeat_interval"]),
            backups=bool(options["backups"]),
            max_backups_per_bundle=max_backups_per_bundle,
            backup_budget=backup_budget,
            max_attempts=int(options["max_attempts"]),
            host_down_timeout=float(options["host_down_timeout"]),
            timeline_limit=timeline_limit,
            timeout_grace=float(options["stall_timeout"]),
            clock=clock,
        )
        # A one-host embedded pool: calls skip the scheduler thread while its host is up.
        self._lane = scheduler.lane if self._local_calls else None
        self._unregister_status = register_status_provider(_StatusLine(self._scheduler))

    # -- submitting -----------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return self._submit(DEFAULT_OPTIONS, fn, args, kwargs)

    def submit_with(
        self, options: CallOptions, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> Future[Any]:
        """Submit one call with per-call *options*: ``timeout`` (seconds from when a slot
        starts it; the process is killed and the future fails with ``TaskTimeoutError``;
        not retried), ``backups`` (False: no backup copies of this call; None or True:
        the executor's setting) and ``avoid_hosts`` (preferred against when another host
        has a free slot). Retry options are the decorator's and are ignored here."""
        return self._submit(options.for_executor(), fn, args, kwargs)

    def _submit(
        self,
        options: CallOptions,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Future[Any]:
        self._check_open()  # (in a forked child too: BaseExecutor's fork hook closed it there)
        if self._scheduler.closed:
            raise RuntimeError(
                f"cannot submit to RemoteExecutor {self.name!r}: its scheduler has stopped "
                "(the interpreter is exiting, or the executor was torn down)"
            )
        target, call_args = split_bound_method(fn, args)
        if self._local_calls:
            call = pickle_call(target, call_args, kwargs, SHM_THRESHOLD)
            lane = self._lane
            if lane is not None and lane.is_open:
                on_lane = LaneFuture(self._scheduler, call, next(_bundle_ids), options.timeout)
                self._stats.task_submitted()  # (before the call can finish, as below)
                if lane.submit(on_lane):
                    return on_lane
                future: RemoteFuture = on_lane
                self._stats.task_submitted(-1)  # the lane closed meanwhile: the scheduler's
            else:
                future = RemoteFuture(self._scheduler)
            bundle = Bundle(
                future.bundle_id if isinstance(future, LaneFuture) else next(_bundle_ids),
                callable_name(fn),
                call.fn_bytes,
                call.args_bytes,
                future,
                time.monotonic(),
                timeout=options.timeout,
                allow_backups=options.backups is not False,
                avoid_hosts=options.avoid_hosts,
                local_call=call,
            )
            return self._post(bundle, future)
        future = RemoteFuture(self._scheduler)
        fn_payload = dumps_function(target)
        args_payload = prepare_args(
            target, call_args, kwargs, self.blob_threshold, compress=self._compress
        )
        if len(fn_payload) + len(args_payload) > _MAX_FRAME:
            raise PicklingError(
                f"cannot send call to {callable_name(fn)}: its pickled function and arguments "
                f"take {len(fn_payload) + len(args_payload):,} bytes, more than one REMOTE "
                f"frame carries ({_MAX_FRAME:,}). Fix: pass a path or a smaller object and "
                "load the data on the host."
            )
        bundle = Bundle(
            next(_bundle_ids),
            callable_name(fn),
            fn_payload,
            args_payload,
            future,
            time.monotonic(),
            timeout=options.timeout,
            allow_backups=options.backups is not False,
            avoid_hosts=options.avoid_hosts,
        )
        return self._post(bundle, future)

    def _post(self, bundle: Bundle, future: RemoteFuture) -> Future[Any]:
        future.bundle = bundle  # from now on a cancel reaches the scheduler
        self._stats.task_submitted()
        self._scheduler.submit(bundle)
        return future

    def cancel(self, future: Future[Any]) -> bool:
        """Cancel a call of this executor, killing its processes if it is running."""
        if isinstance(future, StoppableFuture):
            return future.stop()
        return future.cancel()

    # -- introspection ----------------------------------------------------

    def stats(self) -> ExecutorStats:
        """Counters and durations; ``attempts`` and ``hosts`` are typed rows
        (:class:`parallelize.AttemptRow`, :class:`parallelize.HostRow`), and ``extra``
        holds the scheduler's other figures (and the same rows as dicts).

        ``extra``: ``done``/``in_flight``/``pending`` and per-state bundle counts,
        ``backups_started``/``backups_won``, ``p50``/``p95``/``eta`` in seconds,
        ``hosts`` (name -> state, slots, in_flight, done, lost, p50, p95, reason,
        in_flight_bundles) and ``attempts``: one record per finished attempt
        (bundle, attempt, host, slot, start, end (seconds since the executor
        started), outcome, is_backup, reason) for drawing a timeline;
        ``bytes_sent``/``bytes_received``: host name -> bytes written to / read from its
        current connection.
        """
        extra, attempts, hosts = self._scheduler.call(self._scheduler.snapshot)
        return self._stats.snapshot(self.name, attempt_rows=attempts, host_rows=hosts, **extra)

    def heartbeat_now(self) -> None:
        """Log the status table and consider a backup right away."""
        self._scheduler.heartbeat_now()

    # -- BaseExecutor hooks -------------------------------------------------

    def _shutdown_impl(self, *, wait: bool, cancel_futures: bool) -> None:
        self._unregister_status()
        if cancel_futures:
            self._cancel_queued()
        self._scheduler.stop()
        if wait:
            self._join()

    def _join(self) -> None:
        self._scheduler.join()

    def _cancel_queued(self) -> int:
        scheduler = self._scheduler
        if not scheduler.alive:
            return 0
        return scheduler.call(scheduler.cancel_pending)
