"""Ray tests run inside a network namespace that has loopback only.

Ray's processes (gcs_server, raylet, workers) talk to each other through the
machine's primary address even when every address given to them is 127.0.0.1;
the suite may send traffic only to loopback and to namespaces it creates. So the
Ray tests run in a namespace this module creates with ``ip netns add`` and whose
only interface is ``lo``: there is no other address and no route, so nothing
can leave it, whatever Ray decides to connect to.

How (one namespace per test session, only if a Ray test was collected):

* Outside the namespace, a test marked ``ray`` is not run in this process. The
  first one to run starts ONE inner pytest, inside the namespace (``ip netns
  exec``), on every ``ray`` test of the session; each outer test then reports
  the outcome of its inner twin (failure text, skip reason and output included).
* Inside (``PARALLELIZE_RAY_NETNS`` names the namespace), the tests run as
  written: ``ray start --head`` and the driver (this pytest) share the namespace.
* Afterwards every process still in the namespace (there should be none: the
  inner fixtures stop their Ray cluster) is reported as a failure and killed by
  pid, and the namespace is deleted.

Needs root and ``ip`` (iproute2); where they are missing the Ray tests are
skipped, except with CI=true where they fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

NETNS_ENV = "PARALLELIZE_RAY_NETNS"  # set inside: the namespace this process runs in
REPORT_ENV = "PARALLELIZE_RAY_NETNS_REPORT"  # inside: where to write the outcomes
MARK = "ray"
INNER_TIMEOUT = 600.0  # the whole inner session, a generous guard
HERE = Path(__file__).resolve().parent


def inside() -> str | None:
    """The namespace this process runs in (set by the outer session), or None."""
    return os.environ.get(NETNS_ENV) or None


def unavailable() -> str | None:
    """None if a loopback-only namespace can be made here, else why not."""
    if inside():
        return None
    if os.geteuid() != 0:
        return "Ray tests run in a network namespace, which needs root (ip netns add)"
    if shutil.which("ip") is None:
        return "Ray tests run in a network namespace, which needs `ip` (apt install iproute2)"
    return None


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


class LoopbackNamespace:
    """A network namespace whose only interface is ``lo`` (up)."""

    def __init__(self) -> None:
        self.name = f"pz-ray-{os.getpid()}-{secrets.token_hex(3)}"

    def create(self) -> LoopbackNamespace:
        _ip("netns", "add", self.name)
        _ip("-n", self.name, "link", "set", "lo", "up")
        return self

    def interfaces(self) -> list[str]:
        lines = _ip("-n", self.name, "-o", "link", "show").splitlines()
        return [line.split(":")[1].strip().split("@")[0] for line in lines if line.strip()]

    def routes(self) -> list[str]:
        """Every IPv4 and IPv6 route of the namespace's main table (none: loopback only)."""
        out = _ip("-n", self.name, "route", "show") + _ip("-n", self.name, "-6", "route", "show")
        return [line for line in out.splitlines() if line.strip()]

    def pids(self) -> list[int]:
        return [int(p) for p in _ip("netns", "pids", self.name).split()]

    def exec_args(self, args: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def kill_all(self, timeout: float = 5.0) -> list[int]:
        """Signal every process left in the namespace (by pid); return those found."""
        found = self.pids()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + timeout
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.05)
            if not self.pids():
                break
        return found

    def delete(self) -> None:
        _ip("netns", "del", self.name)

    def exists(self) -> bool:
        return self.name in _ip("netns", "list").split()


# -- outside: run the ray tests once, in the namespace -----------------------------


@dataclass
class _Outcome:
    outcome: str  # passed, failed, skipped
    text: str = ""
    output: str = ""


class _InnerRun:
    def __init__(self, config: pytest.Config, nodeids: list[str]) -> None:
        self.config = config
        self.nodeids = nodeids
        self.outcomes: dict[str, _Outcome] = {}
        self.problem = ""  # a failure that concerns every ray test (setup, leftovers)

    def run(self) -> None:
        work = Path(tempfile.mkdtemp(prefix="pz-ray-run-"))
        report = work / "report.json"
        log = work / "inner.log"
        namespace = LoopbackNamespace()
        try:
            namespace.create()
        except (RuntimeError, OSError) as exc:
            self.problem = f"could not create a network namespace for the Ray tests: {exc}"
            return
        try:
            if namespace.interfaces() != ["lo"] or namespace.routes():
                self.problem = (
                    f"namespace {namespace.name} is not loopback-only: "
                    f"{namespace.interfaces()} {namespace.routes()}"
                )
                return
            args = [sys.executable, "-m", "pytest", *self.nodeids, "-p", "no:cacheprovider"]
            timeout = self.config.getoption("timeout", None) or self.config.getini("timeout")
            args += ["-q", "-o", "addopts=", "--timeout", str(timeout)]
            if getattr(self.config.option, "benchmark_disable", False):
                args.append("--benchmark-disable")
            env = {
                **os.environ,
                NETNS_ENV: namespace.name,
                REPORT_ENV: str(report),
                "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
            }
            with open(log, "wb") as out:
                try:
                    subprocess.run(
                        namespace.exec_args(args),
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=env,
                        cwd=self.config.rootpath,
                        timeout=INNER_TIMEOUT,
                    )
                except subprocess.TimeoutExpired:
                    self.problem = f"the Ray tests took over {INNER_TIMEOUT:.0f} s"
            if report.exists():
                for nodeid, row in json.loads(report.read_text()).items():
                    self.outcomes[nodeid] = _Outcome(**row)
            missing = [n for n in self.nodeids if n not in self.outcomes]
            if missing and not self.problem:
                tail = log.read_text(errors="replace")[-4000:]
                self.problem = f"the inner pytest reported nothing for {missing}:\n{tail}"
        finally:
            left = namespace.kill_all()
            namespace.delete()
            if left:
                self.problem += f"\nprocesses left running in {namespace.name}: {left}"
            shutil.rmtree(work, ignore_errors=True)


_runs: dict[int, _InnerRun] = {}  # id(session) -> its one inner run


def collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give the outer ``ray`` tests the inner run's time budget (the first one waits for it)."""
    if inside():
        return
    for item in items:
        if item.get_closest_marker(MARK) is not None:
            item.add_marker(pytest.mark.timeout(INNER_TIMEOUT + 60))


def pyfunc_call(item: pytest.Function) -> bool | None:
    """Outside the namespace: report the inner twin's outcome instead of running the test."""
    if inside() or item.get_closest_marker(MARK) is None:
        return None
    reason = unavailable()
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    run = _runs.get(id(item.session))
    if run is None:
        ids = [i.nodeid for i in item.session.items if i.get_closest_marker(MARK) is not None]
        run = _runs[id(item.session)] = _InnerRun(item.config, ids)
        run.run()
    if run.problem:
        pytest.fail(run.problem, pytrace=False)
    outcome = run.outcomes[item.nodeid]
    if outcome.output:
        sys.stdout.write(outcome.output)
    if outcome.outcome == "skipped":
        pytest.skip(outcome.text)
    if outcome.outcome == "failed":
        pytest.fail(f"(in network namespace)\n{outcome.text}", pytrace=False)
    return True


# -- inside: write each test's outcome for the outer session -------------------------


class Reporter:
    """Collects each test's outcome (worst phase wins) and writes them at the end."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.rows: dict[str, dict[str, Any]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        row = self.rows.setdefault(report.nodeid, {"outcome": "passed", "text": "", "output": ""})
        if report.when == "call":
            row["output"] = report.capstdout
        if report.failed:
            row["outcome"] = "failed"
            row["text"] += f"[{report.when}] {report.longreprtext}\n"
        elif report.skipped and row["outcome"] == "passed":
            row["outcome"] = "skipped"
            longrepr = report.longrepr
            row["text"] = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)

    def pytest_sessionfinish(self) -> None:
        Path(self.path).write_text(json.dumps(self.rows))


def configure(config: pytest.Config) -> None:
    """Register the ``ray`` marker; inside the namespace, the outcome reporter."""
    config.addinivalue_line("markers", f"{MARK}: runs in a loopback-only network namespace")
    path = os.environ.get(REPORT_ENV)
    if inside() and path and not config.pluginmanager.has_plugin("ray-netns-reporter"):
        config.pluginmanager.register(Reporter(path), "ray-netns-reporter")
