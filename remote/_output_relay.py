"""Task output of the embedded pool's PROCESS workers, passed on line by line with the
host's name in front (``[local] ...``), as REMOTE does for every host.

The workers of one link share two pipes (stdout, stderr). A worker flushes its
streams before it writes a result, and lines are written whole (block-buffered
stdout, line-buffered stderr), so lines of different workers never mix within a
line. One thread copies both pipes to this process's ``sys.stdout`` and
``sys.stderr``; the link calls :meth:`OutputRelay.drain_stdout` before it posts
a result, so what a call printed is out before its future completes. ``_lock``
guards the partial-line buffers and is held while reading and writing lines
only (both non-blocking).
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import threading

__all__ = ["OutputRelay"]

_CHUNK = 1 << 16


class OutputRelay:
    def __init__(self, name: str) -> None:
        self._prefix = f"[{name}] "
        out_r, self.out_w = os.pipe()
        err_r, self.err_w = os.pipe()
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
        self._reads = {out_r: b"", err_r: b""}  # read end -> partial line
        self._out_r, self._err_r = out_r, err_r
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"remote-output-{name}", daemon=True)
        self._thread.start()

    @property
    def fds(self) -> tuple[int, int]:
        """The write ends, for the workers' stdout and stderr."""
        return self.out_w, self.err_w

    def drain_stdout(self) -> None:
        """Pass on what is in the stdout pipe now (called before a result is posted)."""
        self._pump(self._out_r)

    def _pump(self, fd: int) -> bool:
        """Copy what can be read from *fd* without blocking; False at end of file."""
        with self._lock:
            if fd not in self._reads:
                return False
            chunks = [self._reads[fd]]
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
            data = b"".join(chunks)
            lines = data.split(b"\n")
            tail = lines.pop()
            if eof and tail:
                lines.append(tail)
                tail = b""
            if eof:
                del self._reads[fd]
                os.close(fd)
            else:
                self._reads[fd] = tail
            if lines:
                stream = sys.stdout if fd == self._out_r else sys.stderr
                text = "".join(f"{self._prefix}{line.decode(errors='replace')}\n" for line in lines)
                with contextlib.suppress(Exception):
                    stream.write(text)
                    stream.flush()
            return not eof

    def _run(self) -> None:
        while True:
            with self._lock:
                fds = list(self._reads)
            if not fds:
                return
            try:
                ready, _, _ = select.select(fds, [], [])
            except (OSError, ValueError):  # an fd closed by drain_stdout at its end: look again
                continue
            for fd in ready:
                self._pump(fd)

    def close(self) -> None:
        """Close our write ends: the thread stops once every worker has ended too."""
        for fd in (self.out_w, self.err_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
