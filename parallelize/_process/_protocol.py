"""Wire format between a :class:`ProcessExecutor` and its worker processes.

Shared by the parent and the worker, so it imports nothing but ``struct``.

Every message is a *frame*: an 8-byte little-endian payload length followed by
the payload. Two pipes connect the parent and each worker (the fds are passed
on the worker's command line):

parent -> worker (the "task pipe"):
    1. one startup frame: ``pickle((sys_path, pythonpath_or_None, shm_threshold_or_None,
       process_title, max_memory_bytes_or_None))``;
    2. then task frames: ``pickle((evict_fids, [(task_id, fid, fn_bytes_or_None, args_bytes,
       layout_or_None), ...]))``. ``fn_bytes`` is sent only the first time this worker sees ``fid``;
       ``evict_fids`` lists functions the worker must forget (the parent mirrors
       the worker's bounded cache). ``args_bytes`` is a nested pickle of
       ``(args, kwargs)`` so that a failure to unpickle it fails only that task.
       A task with a ``layout`` (``((offset, length), ...)``) has its large buffers
       in a shared-memory segment (see ``_shm``): the descriptors of a frame's
       segments, in task order, were sent on the descriptor socket before the frame.
    Closing the task pipe (EOF) tells the worker to exit at once: that is how a
    graceful shutdown ends and also what happens when the parent dies.

worker -> parent (the "result pipe"):
    result frames whose payload starts with ``RESULT_HEAD`` = (kind, task_id,
    duration seconds) followed by a kind-specific pickle. The worker runs its
    tasks one at a time in arrival order and sends one frame per task, so the
    parent can attribute a worker's death to the first unanswered task.
    ``KIND_OK_SHM`` results have their large buffers in a segment whose
    descriptor was sent on the descriptor socket before the frame.

The descriptor socket (a ``SOCK_SEQPACKET`` pair, its worker end's fd is the
fourth command-line argument, ``-1`` when shared memory is off) carries only
segment descriptors, see ``_shm.FdChannel``.
"""

from __future__ import annotations

import struct

__all__ = [
    "CANCEL_POSITIONS",
    "FLAG_RETIRING",
    "FRAME_HEAD",
    "KIND_ERROR",
    "KIND_OK",
    "KIND_OK_SHM",
    "KIND_READY",
    "KIND_SKIPPED",
    "RESULT_HEAD",
    "WORKER_EXIT_ON_EOF",
]

FRAME_HEAD = struct.Struct("<Q")
RESULT_HEAD = struct.Struct("<Bqd")

# Result kinds (first field of RESULT_HEAD).
KIND_READY = 0  # the worker has applied the startup message; no payload
KIND_OK = 1  # payload: pickle of the return value
KIND_ERROR = 2  # payload: a failure of parallelize._outcome (raised, or an unpicklable result)
# (3 was an unpicklable result, now a KIND_ERROR failure: the same codec as REMOTE's.)
KIND_OK_SHM = 4  # payload: _shm.encode_layout(layout) + pickle of the return value
KIND_SKIPPED = 5  # the task was cancelled before the worker started it; no payload

# Cancel flags (see _handles.Worker.skip_if_cancelled): one byte per position; a task's
# position is its number in the worker's stream of tasks, modulo this. Far more than the
# calls a worker is ever sent ahead, so a position is reused only long after its task ended.
CANCEL_POSITIONS = 4096
# Or-ed into a result's kind: the worker is over its memory limit and exits after this
# frame without starting anything else it was sent (the parent re-queues those).
FLAG_RETIRING = 0x80

# Exit status of a worker whose task pipe reached EOF.
WORKER_EXIT_ON_EOF = 0
