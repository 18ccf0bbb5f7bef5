"""The progress bar of ``wait_any(..., progress=True)`` and ``wait_all(..., progress=True)``.

The bar is a ``tqdm.auto`` bar: a widget in a Jupyter kernel (with
ipywidgets installed), a text bar on stderr elsewhere.  Its total is the
number of futures waited for; the postfix counts failed and cancelled tasks
and shows the strings of the status providers (:mod:`smart_future._status`).

No thread is started per bar: the waiting loop wakes at least every
``REFRESH_INTERVAL`` seconds and calls :meth:`WaitProgress.tick`, which
refreshes the status strings and redraws the bar.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import time
from concurrent.futures import Future
from typing import Any, Literal, TypeAlias

from smart_future._status import collect_status

__all__ = ["REFRESH_INTERVAL", "ProgressOption", "WaitProgress", "wants_progress"]

ProgressOption: TypeAlias = bool | Literal["auto"]

# Seconds between refreshes of the status providers (read at call time; tests patch it).
REFRESH_INTERVAL = 1.0


def wants_progress(progress: object) -> bool:
    """Whether to show a bar for the ``progress`` argument; raise for a bad value."""
    if progress is False or progress is None:
        return False
    if progress is True:
        return True
    if progress == "auto":
        return stderr_is_terminal() or in_jupyter_kernel()
    raise ValueError(f"progress must be True, False or 'auto', not {progress!r}")


def stderr_is_terminal() -> bool:
    stream = sys.stderr
    if stream is None:
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def in_jupyter_kernel() -> bool:
    """True inside an IPython kernel (Jupyter, VS Code notebooks); never imports IPython."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    get_ipython = getattr(ipython, "get_ipython", None)
    if get_ipython is None:
        return False
    try:
        shell = get_ipython()
    except Exception:
        return False
    return shell is not None and getattr(shell, "kernel", None) is not None


def _has_ipywidgets() -> bool:
    return importlib.util.find_spec("ipywidgets") is not None


def _tqdm_class() -> Any:
    # In a kernel without ipywidgets, tqdm.auto's notebook bar would warn
    # "IProgress not found" on every bar: use the text bar quietly instead.
    name = "tqdm.auto"
    if in_jupyter_kernel() and not _has_ipywidgets():
        name = "tqdm.std"
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise ImportError(
            "progress=True needs tqdm: pip install 'tqdm>=4.60' (a dependency of parallelize)"
        ) from exc
    return module.tqdm


class WaitProgress:
    """One open progress bar over ``total`` futures."""

    __slots__ = ("_bar", "_cancelled", "_failed", "_status", "next_refresh")

    def __init__(self, total: int, desc: str | None) -> None:
        tqdm = _tqdm_class()
        self._failed = 0
        self._cancelled = 0
        self._status: list[str] = []
        self._bar: Any = tqdm(total=total, desc=desc, unit="task", dynamic_ncols=True)
        self.next_refresh = 0.0
        self.tick(time.monotonic())

    def task_done(self, future: Future[Any]) -> None:
        """Count one finished future (it must be done)."""
        if future.cancelled():
            self._cancelled += 1
            self._set_postfix()
        elif future.exception(0) is not None:
            self._failed += 1
            self._set_postfix()
        self._bar.update(1)

    def tick(self, now: float) -> None:
        """Refresh the status strings and redraw, if ``REFRESH_INTERVAL`` has passed."""
        if now < self.next_refresh:
            return
        self.next_refresh = now + REFRESH_INTERVAL
        status = collect_status()
        if status != self._status:
            self._status = status
            self._set_postfix()
        self._bar.refresh()

    def close(self) -> None:
        # A last refresh: the bar stays on screen, so its status must not be
        # one taken before the work finished (short jobs refresh only once).
        self.next_refresh = 0.0
        self.tick(time.monotonic())
        self._bar.close()

    def _set_postfix(self) -> None:
        parts: list[str] = []
        if self._failed:
            parts.append(f"failed={self._failed}")
        if self._cancelled:
            parts.append(f"cancelled={self._cancelled}")
        parts.extend(self._status)
        self._bar.set_postfix_str(", ".join(parts), refresh=False)
