"""REMOTE execution: run calls on worker slots of a pool of hosts reached over SSH.

``RemoteExecutor`` is a :class:`concurrent.futures.Executor`; each call is sent as
a *bundle* (the cloudpickled function and arguments) to a slot chosen by a
:class:`SelectionPolicy`, retried elsewhere on infrastructure failures, backed
up on another host when it straggles, and poisoned after ``max_attempts``
failures. Without a pool file, the embedded default pool runs local agents.
"""

from __future__ import annotations

import logging
from typing import Any

from ._bundle import AttemptState, BundleState
from ._default import register
from ._errors import HostErrorKind, HostUnavailableError, IllegalTransitionError, deprecated_alias
from ._executor import RemoteExecutor
from ._link import HostSpec
from ._policies import RoundRobinPolicy, SelectionPolicy, WeightedRandomPolicy
from ._pool_config import PoolConfig, PoolConfigError, embedded_pool, load_pool

__all__ = [
    "AttemptState",
    "BundleState",
    "HostErrorKind",
    "HostSpec",
    "HostUnavailableError",
    "IllegalTransitionError",
    "PoolConfig",
    "PoolConfigError",
    "RemoteExecutor",
    "RoundRobinPolicy",
    "SelectionPolicy",
    "WeightedRandomPolicy",
    "embedded_pool",
    "load_pool",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
register()


def __getattr__(name: str) -> Any:
    if name == "RemoteExecutorException":  # deprecated alias, kept for old code
        return deprecated_alias(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
