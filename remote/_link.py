"""The contract between the REMOTE scheduler and the transports that reach hosts.

A :class:`HostLink` is one persistent connection to one host's worker agent
(over SSH, or over local pipes for the embedded default pool). The scheduler
sends it attempts of bundles and hears back through :class:`LinkEvents`.

Threading contract:
- ``submit``/``cancel``/``close`` may be called from any thread and never
  block on the network for long (they queue a frame or write to a socket).
- Events are delivered from the link's own reader thread, one at a time, in
  the order the agent produced them. Handlers must be quick (post to the
  scheduler's queue); they must not call ``connect``.
- After ``on_link_down`` the link delivers no further events; every attempt
  that was in flight on it without a result is lost.
- ``on_link_health`` reports a host that stopped answering (suspect) and one
  that answered again; a suspect host may still deliver results.

Local links (:class:`LocalCallLink`, the embedded pool on PROCESS workers, see
``remote/_process_link.py``) extend the contract so that nothing is pickled
twice: when every host of an executor has such a link, ``submit`` pickles each
call once the PROCESS way (:func:`parallelize.ext.pickle_call`, large buffers in
shared memory, a PicklingError at submit as for every host) and the scheduler
starts its attempts with ``submit_local``; ``on_result`` then carries a
:class:`Delivered` (the returned value, or the exception the call raised with
its traceback attached) instead of pickled bytes. Their events come from the
PROCESS pool's result thread and only post to the scheduler's queue. SSH links
and the pipe LocalLink keep the bytes contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ._errors import HostUnavailableError

if TYPE_CHECKING:
    from parallelize.ext import PickledCall
    from smart_future import StoppableFuture

__all__ = [
    "Delivered",
    "HostLink",
    "HostSpec",
    "HostUnavailableError",
    "LinkEvents",
    "LocalCallLink",
]


class Delivered:
    """A local link's outcome object: ``on_result``'s payload when nothing was pickled
    for the way back (the value if ``ok``, else the exception, traceback attached)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


@dataclass(frozen=True)
class HostSpec:
    """One validated entry of a worker pool (see the pool file reference)."""

    name: str  # display name: the TOML key, or the host if none
    host: str  # hostname, IP, or an alias from ~/.ssh/config; "local" hosts use pipes
    user: str | None = None
    port: int = 22
    slots: int = 1
    weight: float = 1.0
    python: str = "python3"
    identity_file: str | None = None
    gateway: str | None = None  # "user@host:port" of a jump host
    strict_host_key_checking: bool = True
    is_local: bool = False  # embedded pool: a local agent over pipes, no SSH
    blob_cache_bytes: int = 2 << 30  # bound of the agent's blob cache (remote/_blobs.py)
    compression: str = "auto"  # of blobs sent to it: "auto", "zstd" or "none"
    # Recycling of slot processes (None: never): attempts per process, resident bytes.
    max_tasks_per_worker: int | None = None
    max_worker_memory: int | None = None


class LinkEvents(Protocol):
    def on_result(
        self,
        link: HostLink,
        attempt_id: int,
        ok: bool,
        payload: bytes | Delivered,
        duration: float,
    ) -> None:
        """An attempt finished. ``ok``: payload is the pickled return value; otherwise the
        pickled ``(exception, traceback_text)`` the user's function raised (not an
        infrastructure failure). From a :class:`LocalCallLink`: a :class:`Delivered`.
        ``duration``: seconds the function ran on the host."""

    def on_attempt_lost(self, link: HostLink, attempt_id: int, reason: str) -> None:
        """An attempt failed for infrastructure reasons (its process died with an exit code or
        signal, its result could not be read); the link itself is still usable."""

    def on_attempt_timeout(self, link: HostLink, attempt_id: int, ran: float) -> None:
        """An attempt ran past the time limit it was submitted with and the agent killed
        it, after *ran* seconds; its slot was replaced. Not an infrastructure failure."""

    def on_link_down(self, link: HostLink, reason: str) -> None:
        """The connection is gone; every attempt in flight on it is lost."""

    def on_link_health(self, link: HostLink, suspect: bool, silent: float) -> None:
        """The host turned suspect (silent for *silent* seconds, past the link's suspect
        threshold, though not yet down) or, with ``suspect=False``, was heard again."""


class HostLink(Protocol):
    spec: HostSpec

    def connect(self, events: LinkEvents) -> None:
        """Connect, start the agent and check the remote Python and cloudpickle.

        Blocks up to the connect timeout; raises HostUnavailableError naming the host
        and the problem (unreachable, authentication, version mismatch, ...)."""

    def submit(
        self,
        attempt_id: int,
        fn_id: int,
        fn_payload: bytes,
        args_payload: bytes,
        timeout: float | None = None,
    ) -> None:
        """Start an attempt in its own process on the host. ``fn_payload`` (the pickled
        function, identified by ``fn_id``) is always given; the link sends it to the agent
        only the first time, the agent caches it by ``fn_id``. With *timeout* (seconds),
        the agent kills the attempt once it has run that long (``on_attempt_timeout``)."""

    def cancel(self, attempt_id: int) -> None:
        """Kill the attempt's process on the host; no event follows for that attempt."""

    def close(self) -> None:
        """Close the connection; the agent kills its children and exits. Idempotent."""

    @property
    def alive(self) -> bool: ...


class LocalCallLink(HostLink, Protocol):
    """A link that runs calls pickled the PROCESS way (see the module docstring)."""

    prefetches: bool
    """Whether attempts may be sent beyond the free slots, to wait at the host behind
    running ones (short calls only, see ``Host.depth``)."""

    def submit_local(
        self,
        attempt_id: int,
        call: PickledCall,
        timeout: float | None,
        caller: StoppableFuture[Any] | None = None,
    ) -> None:
        """Start an attempt of *call* (never blocks; it may be started again elsewhere).
        *caller*: the call's future, not running yet, which the link marks running
        (``StoppableFuture.mark_running``) once the attempt starts rather than waits."""

    def flush_local(self) -> None:
        """Hand over the attempts started since the last flush. The scheduler calls it
        after each round of starts, so that a link can send a round as one batch."""
