"""LocalLink: the embedded default pool's link, a local worker agent over pipes.

It starts the same agent, with the same bootstrap and protocol, as SSHLink
does on remote hosts, only as a child process of the controller
(``PYTHON -c BOOTSTRAP`` with stdin/stdout/stderr pipes, in its own session so
a Ctrl-C in the terminal reaches the controller only). When the controller
dies, the agent reads EOF on stdin and exits with its slots.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from ._agent_client import AgentLink, LinkTiming, bootstrap_code
from ._errors import HostErrorKind, HostUnavailableError
from ._link import HostSpec

__all__ = ["LocalLink"]


class LocalLink(AgentLink):
    """A :class:`~remote._link.HostLink` to an agent running on this machine."""

    def __init__(
        self,
        spec: HostSpec,
        *,
        connect_timeout: float = 10.0,
        timing: LinkTiming | None = None,
        on_stderr: Callable[[AgentLink, str], None] | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {}
        if on_stderr is not None:
            kwargs["on_stderr"] = on_stderr
        super().__init__(spec, connect_timeout=connect_timeout, timing=timing, **kwargs)
        self._proc: subprocess.Popen[bytes] | None = None
        self._shutdown_lock = threading.Lock()
        self._shut = False

    def _python(self) -> str:
        python = self.spec.python
        if python in ("", "python3", "python") or python == os.path.basename(sys.executable):
            return sys.executable
        found = shutil.which(os.path.expanduser(python))
        if found is None:
            raise HostUnavailableError(
                f"host {self.spec.name!r} (local): Python interpreter {python!r} not found. "
                "Fix: set `python` to an existing interpreter.",
                kind=HostErrorKind.CONFIG,
                host=self.spec.name,
            )
        return found

    def _open(self, deadline: float) -> None:
        try:
            self._proc = subprocess.Popen(
                [self._python(), "-c", bootstrap_code()],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
                start_new_session=True,
            )
        except OSError as exc:
            raise HostUnavailableError(
                f"host {self.spec.name!r} (local): cannot start the worker agent: {exc}",
                kind=HostErrorKind.AGENT_START,
                host=self.spec.name,
            ) from None
        stderr = self._proc.stderr
        assert stderr is not None
        fd = stderr.fileno()
        self._start_thread(lambda: self._stderr_pump(lambda: os.read(fd, 65536)), "stderr")

    def _read(self, timeout: float | None) -> bytes:
        proc = self._proc
        if proc is None or proc.stdout is None:
            return b""
        fd = proc.stdout.fileno()
        if timeout is not None:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                raise TimeoutError
        try:
            return os.read(fd, 1 << 20)
        except (OSError, ValueError):
            return b""

    def _write(self, data: bytes) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise OSError("not connected")
        fd = proc.stdin.fileno()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
            if view:
                self._progress()

    def _failure_detail(self) -> str:
        proc = self._proc
        if proc is not None and proc.poll() is not None:
            code = proc.returncode
            if code < 0:
                return f"the agent was killed by signal {-code}"
            return f"the agent exited with code {code}"
        return ""

    def _shutdown_transport(self) -> None:
        with self._shutdown_lock:
            if self._shut:
                return
            self._shut = True
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()  # EOF: the agent kills its slots and exits
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, 9)
            proc.wait()

    def _release(self) -> None:
        proc = self._proc
        if proc is not None:
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
