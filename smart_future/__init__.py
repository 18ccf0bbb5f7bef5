"""Smart futures: futures that can be used as the values they will hold.

``SmartFuture`` wraps a ``concurrent.futures.Future``; using it as a value
(``f(1) + f(2)``, ``len(sf)``, ``sf.attr``, ...) blocks until the task is done
and then acts on the task's value, re-raising the task's exception if it
failed.  ``repr()`` never blocks.

``wait_any()`` yields futures as they complete, ``wait_all()`` waits for all
of them; neither raises task exceptions, both log failed tasks.  With
``progress=True`` (or ``"auto"``) they show a tqdm progress bar.

``register_status_provider()`` registers a callable whose short text (say a
remote pool's heartbeat summary) is shown in every open progress bar.

``register_interrupt_hook()`` registers a callback run when Ctrl-C
interrupts any of these waits; waited futures that had not started are
cancelled at that point too.

Logging goes to the ``smart_future`` logger, which has a NullHandler.
"""

import logging

from smart_future._interrupt import register_interrupt_hook
from smart_future._smart_future import SmartFuture
from smart_future._status import register_status_provider
from smart_future._stoppable import StoppableFuture
from smart_future._wait import wait_all, wait_any

__all__ = [
    "SmartFuture",
    "StoppableFuture",
    "register_interrupt_hook",
    "register_status_provider",
    "wait_all",
    "wait_any",
]

logging.getLogger("smart_future").addHandler(logging.NullHandler())
