"""Task output of the embedded pool's PROCESS workers, passed on line by line with the
host's name in front (``[local] ...``), as REMOTE does for every host.

Each worker gets its own stdout and stderr pipes (:meth:`OutputRelay.new_pipes`, called
by the PROCESS pool as it starts the worker), so lines of different workers never mix,
even unbuffered (``PYTHONUNBUFFERED``: ``print`` writes the text and the newline
apart). One thread copies every pipe to this process's ``sys.stdout`` and
``sys.stderr`` until the pipe ends with its worker. A worker flushes its streams before
it writes a result, and the PROCESS pool calls :meth:`OutputRelay.drain_stdout` (its
``drain_stdio``) before it delivers a batch of results, so what a call printed is out
before its future completes.

``_lock`` guards the pipe table (read end -> stream, partial line); it is held while
reading (non-blocking) and writing lines, never while waiting.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import threading
from typing import Any

__all__ = ["OutputRelay"]

_CHUNK = 1 << 16


class OutputRelay:
    def __init__(self, name: str) -> None:
        self._prefix = f"[{name}] "
        self._lock = threading.Lock()
        self._pipes: dict[int, list[Any]] = {}  # read end -> [is_stdout, partial line]
        self._wake_r, self._wake_w = os.pipe()  # a new pipe, or close: select again
        os.set_blocking(self._wake_r, False)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"remote-output-{name}", daemon=True)
        self._thread.start()

    def new_pipes(self) -> tuple[int, int]:
        """Pipes for one more worker: returns the write ends of its stdout and stderr."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
        with self._lock:
            self._pipes[out_r] = [True, b""]
            self._pipes[err_r] = [False, b""]
            self._wake()
        return out_w, err_w

    def _wake(self) -> None:
        # under _lock: the thread closes the wake pipe under it too, so never a reused fd
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"w")

    def drain_stdout(self) -> None:
        """Pass on what the workers' stdout pipes hold now (before a result is posted)."""
        with self._lock:
            outs = [fd for fd, entry in self._pipes.items() if entry[0]]
        if not outs:
            return
        try:
            ready, _, _ = select.select(outs, [], [], 0)
        except (OSError, ValueError):  # one ended meanwhile: the thread passes it on
            return
        for fd in ready:
            self._pump(fd)

    def _pump(self, fd: int) -> None:
        """Copy what *fd* holds without blocking; at its end, close it."""
        with self._lock:
            entry = self._pipes.get(fd)
            if entry is None:
                return
            chunks = [entry[1]]
            eof = False
            while True:
                try:
                    data = os.read(fd, _CHUNK)
                except BlockingIOError:
                    break
                except OSError:
                    data = b""
                if not data:
                    eof = True
                    break
                chunks.append(data)
            lines = b"".join(chunks).split(b"\n")
            entry[1] = lines.pop()
            if eof:
                if entry[1]:
                    lines.append(entry[1])
                del self._pipes[fd]
                os.close(fd)
            if lines:
                stream = sys.stdout if entry[0] else sys.stderr
                text = "".join(f"{self._prefix}{line.decode(errors='replace')}\n" for line in lines)
                with contextlib.suppress(Exception):
                    stream.write(text)
                    stream.flush()

    def _run(self) -> None:
        while True:
            with self._lock:
                fds = list(self._pipes)
                if self._closed and not fds:
                    os.close(self._wake_r)
                    os.close(self._wake_w)
                    self._wake_r = self._wake_w = -1
                    return
            try:
                ready, _, _ = select.select([self._wake_r, *fds], [], [])
            except (OSError, ValueError):  # one closed by drain_stdout at its end: again
                continue
            for fd in ready:
                if fd == self._wake_r:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 4096)
                else:
                    self._pump(fd)

    def close(self) -> None:
        """Stop once every worker's pipes have ended (the workers are being killed)."""
        with self._lock:
            self._closed = True
            self._wake()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
