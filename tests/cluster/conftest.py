"""Real Dask and Ray clusters, one of each per test session (see ``engines.py``).

``dask_cluster``: ``dask scheduler`` + two one-thread ``dask worker`` processes named w0
and w1 on loopback (scheduler ``allowed-failures`` 2, so a call that kills its worker is
given up after 3 attempts). ``ray_cluster``: ``ray start --head`` with 2 CPUs, and this
process connected to it once (``ray.init``), so every Ray test reuses one runtime. Both
are torn down at the end of the session and must leave no process running.

Ray tests (marked ``ray``) run in a loopback-only network namespace: see ``ray_netns.py``
(the hooks below hand them to it). Outside the namespace ``ray_cluster`` starts nothing.

``dask`` / ``ray`` fixtures point the default executor of the method at the cluster.
Without the extras installed the tests are skipped, except with CI=true where they fail.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray_netns
from engines import DaskCluster, RayCluster

import parallelize


def pytest_configure(config: pytest.Config) -> None:
    ray_netns.configure(config)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ray_netns.collection_modifyitems(config, items)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    return ray_netns.pyfunc_call(pyfuncitem)


def _require(module: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        message = f"{module} is not installed: pip install -e '.[{extra}]'"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    _require("distributed", "dask")
    cluster = DaskCluster(tmp_path_factory.mktemp("dask"), 2).start()
    try:
        yield cluster
    finally:
        cluster.stop()
    assert cluster.alive() == [], "dask processes left running"


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster | None]:
    if ray_netns.inside() is None:
        yield None  # the test runs in the namespace's own session (ray_netns.pyfunc_call)
        return
    _require("ray", "ray")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # as the cluster (see engines._env)
    import ray

    # Ray's unix socket paths must stay short: a temp dir directly under /tmp.
    temp_dir = Path(tempfile.mkdtemp(prefix="pray", dir="/tmp"))
    cluster = RayCluster(temp_dir, num_cpus=2).start()
    try:
        ray.init(
            address=cluster.address,
            _node_ip_address="127.0.0.1",
            logging_level="ERROR",
            log_to_driver=False,
        )
        yield cluster
    finally:
        ray.shutdown()
        cluster.stop()
    assert cluster.alive() == [], "ray processes left running"


@pytest.fixture
def dask(dask_cluster: DaskCluster) -> Iterator[DaskCluster]:
    """The default DASK executor talks to the session's cluster."""
    parallelize.configure(dask_address=dask_cluster.address)
    yield dask_cluster


@pytest.fixture
def ray_runtime(ray_cluster: RayCluster | None) -> RayCluster | None:
    """The default RAY executor uses the session's Ray runtime."""
    return ray_cluster
