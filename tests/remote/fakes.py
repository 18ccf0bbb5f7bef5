"""In-memory fakes for scheduler tests: a link whose attempts the test runs, fails or
loses by hand, a pool of them, and a clock the test advances. Nothing sleeps."""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Callable
from typing import Any

import cloudpickle

from parallelize.ext import outcome_codec
from remote._executor import RemoteExecutor
from remote._link import HostSpec, HostUnavailableError, LinkEvents

WAIT = 10.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeLink:
    def __init__(self, spec: HostSpec, pool: FakePool) -> None:
        self.spec = spec
        self.pool = pool
        self.events: LinkEvents | None = None
        self.submitted: dict[int, tuple[int, bytes, bytes]] = {}
        self.timeouts: dict[int, float] = {}  # attempt id -> the time limit it was sent with
        self.cancelled: list[int] = []
        self.closed = False

    def connect(self, events: LinkEvents) -> None:
        gate = self.pool.connect_gates.get(self.spec.name)
        if gate is not None:
            gate.wait(WAIT)
        error = self.pool.connect_errors.get(self.spec.name)
        if isinstance(error, BaseException):
            with self.pool.cond:
                self.pool.connect_failures[self.spec.name] = (
                    self.pool.connect_failures.get(self.spec.name, 0) + 1
                )
                self.pool.cond.notify_all()
            raise error
        if error is not None:
            with self.pool.cond:
                self.pool.connect_failures[self.spec.name] = (
                    self.pool.connect_failures.get(self.spec.name, 0) + 1
                )
                self.pool.cond.notify_all()
            raise HostUnavailableError(f"host {self.spec.name}: {error}")
        self.events = events

    def submit(
        self,
        attempt_id: int,
        fn_id: int,
        fn_payload: bytes,
        args_payload: bytes,
        timeout: float | None = None,
    ) -> None:
        with self.pool.cond:
            self.submitted[attempt_id] = (fn_id, fn_payload, args_payload)
            if timeout is not None:
                self.timeouts[attempt_id] = timeout
            self.pool.attempts.append((self.spec.name, attempt_id))
            self.pool.cond.notify_all()
        if self.pool.auto:
            self.run(attempt_id)

    def cancel(self, attempt_id: int) -> None:
        with self.pool.cond:
            self.cancelled.append(attempt_id)
            self.pool.cond.notify_all()

    def close(self) -> None:
        self.closed = True

    @property
    def alive(self) -> bool:
        return not self.closed

    # -- test controls -----------------------------------------------------

    def run(self, attempt_id: int) -> None:
        """Run the attempt here, now, and report what happened."""
        _, fn_payload, args_payload = self.submitted[attempt_id]
        fn = pickle.loads(fn_payload)
        args, kwargs = pickle.loads(args_payload)
        try:
            value = fn(*args, **kwargs)
        except KillWorker:
            self.lose(attempt_id, "process exited with code 9")
            return
        except Exception as exc:
            self.fail(attempt_id, exc)
            return
        self.finish(attempt_id, value)

    def finish(self, attempt_id: int, value: Any) -> None:
        assert self.events is not None
        self.events.on_result(self, attempt_id, True, cloudpickle.dumps(value), 0.001)

    def fail(self, attempt_id: int, exc: BaseException) -> None:
        assert self.events is not None
        # Encoded as every worker runtime encodes a failure (the shared outcome codec).
        payload = outcome_codec.dumps_failure(exc, outcome_codec.STAGE_RUNNING)
        self.events.on_result(self, attempt_id, False, payload, 0.001)

    def time_out(self, attempt_id: int, ran: float) -> None:
        """Report the attempt killed for running past its time limit (as the agent does)."""
        assert self.events is not None
        self.events.on_attempt_timeout(self, attempt_id, ran)

    def lose(self, attempt_id: int, reason: str) -> None:
        assert self.events is not None
        self.events.on_attempt_lost(self, attempt_id, reason)

    def down(self, reason: str) -> None:
        assert self.events is not None
        self.events.on_link_down(self, reason)


class KillWorker(Exception):
    """Raised by a task to make the fake link report its process as dead."""


class FakePool:
    def __init__(self, *names: str, slots: int = 1, auto: bool = False) -> None:
        self.specs = [HostSpec(name=n, host=n, slots=slots) for n in names]
        self.auto = auto
        self.cond = threading.Condition()
        self.links: dict[str, list[FakeLink]] = {}
        self.attempts: list[tuple[str, int]] = []
        self.connect_errors: dict[str, str | BaseException] = {}
        self.connect_failures: dict[str, int] = {}
        self.connect_gates: dict[str, threading.Event] = {}

    def factory(self, spec: HostSpec) -> FakeLink:
        link = FakeLink(spec, self)
        with self.cond:
            self.links.setdefault(spec.name, []).append(link)
        return link

    def link(self, name: str) -> FakeLink:
        return self.links[name][-1]

    def wait(self, predicate: Callable[[], bool], what: str) -> None:
        with self.cond:
            assert self.cond.wait_for(predicate, WAIT), f"timed out waiting for {what}"

    def wait_attempts(self, n: int) -> list[tuple[str, int]]:
        self.wait(lambda: len(self.attempts) >= n, f"{n} attempts")
        return list(self.attempts)


def wait_until(executor: RemoteExecutor, predicate: Callable[[], bool], what: str) -> None:
    """Poll a condition on the scheduler thread (no state is read from another thread)."""
    deadline = time.monotonic() + WAIT
    while not executor._scheduler.call(predicate):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)
