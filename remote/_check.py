"""``python -m remote check [POOL_FILE]``: can every host of the pool run REMOTE calls?

The pool is read like :class:`~remote.RemoteExecutor` reads it (the argument, else
``PARALLELIZE_POOL_FILE``, else the default location, else the embedded local pool).
Every host is connected to in parallel, each within the pool's connect timeout, exactly
as the executor would (same links, same HELLO check); a connected host is pinged
(:data:`PINGS` times) for its round-trip latency, then closed.

The result is a table (host, address, reachable, remote Python, cloudpickle, slots,
median latency, status) followed by one line per problem naming the fix.
Exit codes: 0 every host is usable, 1 at least one is not, 2 the pool file is invalid.
"""

from __future__ import annotations

import contextlib
import getpass
import re
import statistics
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TextIO

from ._errors import HostErrorKind, HostUnavailableError
from ._link import Delivered, HostLink, HostSpec
from ._pool_config import ENV_VAR, PoolConfig, PoolConfigError, default_pool_path, load_pool

__all__ = ["PINGS", "HostReport", "check_host", "check_pool", "classify", "format_report", "run"]

PINGS = 20

EXIT_OK = 0
EXIT_UNUSABLE = 1
EXIT_BAD_POOL = 2

_PYTHON_RE = re.compile(r"runs Python (\S+) ")


@dataclass(frozen=True)
class HostReport:
    """What checking one host found."""

    spec: HostSpec
    address: str
    reachable: bool
    usable: bool
    python: str | None = None
    cloudpickle: str | None = None
    latency_ms: float | None = None
    problem: str = ""  # short label ("unreachable", "python mismatch", ...); "" when fine
    fix: str = ""
    detail: str = ""  # the full error message from the link
    warning: str = ""  # usable, but worth knowing (e.g. a cloudpickle major version differs)


class _NoEvents:
    """Link events of a check: no task is ever submitted, so nothing needs handling."""

    def on_result(
        self,
        link: HostLink,
        attempt_id: int,
        ok: bool,
        payload: bytes | Delivered,
        duration: float,
    ) -> None:
        pass

    def on_attempt_lost(self, link: HostLink, attempt_id: int, reason: str) -> None:
        pass

    def on_attempt_timeout(self, link: HostLink, attempt_id: int, ran: float) -> None:
        pass

    def on_link_down(self, link: HostLink, reason: str) -> None:
        pass

    def on_link_health(self, link: HostLink, suspect: bool, silent: float) -> None:
        pass


def _local_major_minor() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def address_of(spec: HostSpec) -> str:
    """``user@host:port`` (``local`` for the embedded pool), plus the gateway if any."""
    if spec.is_local:
        return "local (pipes)"
    text = f"{spec.user or getpass.getuser()}@{spec.host}:{spec.port}"
    return f"{text} via {spec.gateway}" if spec.gateway else text


def _ssh_command(spec: HostSpec) -> str:
    port = "" if spec.port == 22 else f"-p {spec.port} "
    identity = f"-i {spec.identity_file} " if spec.identity_file else ""
    jump = f"-J {spec.gateway} " if spec.gateway else ""
    return f"ssh {port}{identity}{jump}{spec.user or getpass.getuser()}@{spec.host}"


def classify(
    spec: HostSpec, message: str, kind: HostErrorKind | None = None
) -> tuple[bool, str, str]:
    """(reachable, problem, fix) for a failed connect, from the error's *kind*; the
    *message* only adds detail (which Python the host runs)."""
    local = _local_major_minor()
    key = spec.host if spec.port == 22 else f"[{spec.host}]:{spec.port}"
    if kind is HostErrorKind.HOST_KEY_MISMATCH:
        return (
            True,
            "host key changed",
            f"verify the host's new key, then remove the old one with `ssh-keygen -R '{key}'`",
        )
    if kind is HostErrorKind.HOST_KEY_UNKNOWN:
        return (
            True,
            "unknown host key",
            f"ssh to it once to accept its key (`{_ssh_command(spec)}`), or set "
            "strict_host_key_checking = false for test pools",
        )
    if kind is HostErrorKind.AUTH:
        return (
            True,
            "authentication failed",
            "add your public key to ~/.ssh/authorized_keys on the host or set identity_file "
            "(or load the key into ssh-agent with `ssh-add`)",
        )
    if kind is HostErrorKind.VERSION:
        found = _PYTHON_RE.search(message)
        if found is None:
            return (
                True,
                "cloudpickle missing",
                f"pip install cloudpickle on the host (`{spec.python} -m pip install "
                "cloudpickle`), or set python = to an interpreter that has it",
            )
        return (
            True,
            f"python mismatch (the host runs {found.group(1)})",
            f'set python = to an interpreter matching {local} (e.g. python = "python{local}")',
        )
    if kind is HostErrorKind.NOISY_SHELL:
        return (
            True,
            "shell prints at login",
            "make the shell's startup files print nothing for non-interactive sessions",
        )
    if kind in (HostErrorKind.AGENT_START, HostErrorKind.CONFIG):
        if "os.fork is missing" in message:
            return True, "not a POSIX host", "use a Linux or macOS host"
        if "did not start within" in message:
            return (
                True,
                "agent start timed out",
                "check that the host is not overloaded, or raise connect_timeout in [defaults]",
            )
        return (
            True,
            "python not runnable",
            f"set python = to a Python {local} interpreter with cloudpickle that exists on "
            f"the host (now {spec.python!r})",
        )
    if spec.is_local:
        return False, "local agent failed", "see the message above"
    return (
        False,
        "unreachable",
        f"check the host is up and `{_ssh_command(spec)}` works"
        + (" (and that the gateway can reach it)" if spec.gateway else ""),
    )


def _default_link(spec: HostSpec, connect_timeout: float) -> HostLink:
    from ._executor import default_link_factory

    return default_link_factory(spec, connect_timeout=connect_timeout)


def check_host(
    spec: HostSpec,
    connect_timeout: float,
    *,
    pings: int = PINGS,
    link_factory: Callable[[HostSpec, float], HostLink] = _default_link,
) -> HostReport:
    """Connect to *spec* like the executor does, ping it *pings* times, close it."""
    address = address_of(spec)
    link: HostLink | None = None
    try:
        link = link_factory(spec, connect_timeout)
        link.connect(_NoEvents())
    except Exception as exc:
        if link is not None:
            _close(link)
        message = str(exc) or type(exc).__name__
        kind = exc.kind if isinstance(exc, HostUnavailableError) else None
        reachable, problem, fix = classify(spec, message, kind)
        python = None
        found = _PYTHON_RE.search(message)
        if found:
            python = found.group(1)
        return HostReport(
            spec,
            address,
            reachable=reachable,
            usable=False,
            python=python,
            cloudpickle="missing" if problem == "cloudpickle missing" else None,
            problem=problem,
            fix=fix,
            detail=message,
        )
    try:
        hello: dict[str, Any] = dict(getattr(link, "hello", {}) or {})
        latency: float | None = None
        warning = ""
        ping = getattr(link, "ping", None)
        if ping is not None and pings > 0:
            try:
                times = [float(ping()) for _ in range(pings)]
                latency = statistics.median(times) * 1e3
            except Exception as exc:
                warning = f"ping failed: {exc}"
        theirs = hello.get("cloudpickle")
        if theirs is not None:
            import cloudpickle

            ours = str(cloudpickle.__version__)
            if str(theirs).split(".")[:1] != ours.split(".")[:1]:
                warning = (
                    f"cloudpickle {theirs} on the host, {ours} here: pickles may not load. "
                    f"Fix: install cloudpickle {ours.split('.')[0]}.x on the host"
                )
        return HostReport(
            spec,
            address,
            reachable=True,
            usable=True,
            python=str(hello["python"]) if hello.get("python") else None,
            cloudpickle=str(theirs) if theirs is not None else None,
            latency_ms=latency,
            warning=warning,
        )
    finally:
        _close(link)


def _close(link: HostLink) -> None:
    with contextlib.suppress(Exception):
        link.close()


def check_pool(
    config: PoolConfig,
    *,
    pings: int = PINGS,
    link_factory: Callable[[HostSpec, float], HostLink] = _default_link,
) -> list[HostReport]:
    """Check every host of *config* in parallel; reports in pool order."""
    hosts = config.hosts
    with ThreadPoolExecutor(
        max_workers=max(1, min(len(hosts), 64)), thread_name_prefix="remote-check"
    ) as pool:
        futures = [
            pool.submit(
                check_host,
                spec,
                config.connect_timeout,
                pings=pings,
                link_factory=link_factory,
            )
            for spec in hosts
        ]
        return [future.result() for future in futures]


def format_report(reports: Sequence[HostReport]) -> str:
    """The table, then one ``host: problem`` line with its fix per problem."""
    header = ("HOST", "ADDRESS", "REACHABLE", "PYTHON", "CLOUDPICKLE", "SLOTS", "LATENCY", "STATUS")
    rows: list[tuple[str, ...]] = [header]
    for r in reports:
        rows.append(
            (
                r.spec.name,
                r.address,
                "yes" if r.reachable else "no",
                r.python or "?",
                r.cloudpickle or "?",
                str(r.spec.slots),
                f"{r.latency_ms:.2f} ms" if r.latency_ms is not None else "-",
                "ok" if r.usable else r.problem,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    problems = [r for r in reports if not r.usable]
    warnings = [r for r in reports if r.usable and r.warning]
    if problems:
        lines.append("")
        lines.append("Problems:")
        for r in problems:
            lines.append(f"  {r.spec.name}: {r.problem}. Fix: {r.fix}.")
            detail = r.detail.split(" Fix: ")[0].rstrip(". ")  # the fix is on the line above
            if detail:
                lines.append(f"    ({detail})")
    if warnings:
        lines.append("")
        lines.append("Warnings:")
        for r in warnings:
            lines.append(f"  {r.spec.name}: {r.warning}")
    usable = sum(r.usable for r in reports)
    lines.append("")
    slots = sum(r.spec.slots for r in reports if r.usable)
    lines.append(f"{usable}/{len(reports)} host(s) usable, {slots} slot(s) available.")
    return "\n".join(lines)


def run(
    path: str | None = None,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    pings: int = PINGS,
) -> int:
    """Load the pool, check it, print the report; returns the exit code."""
    stream: TextIO = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    try:
        config = load_pool(path)
    except PoolConfigError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_BAD_POOL
    if config is None:
        from ._pool_config import embedded_pool

        config = embedded_pool()
        print(
            f"No pool configured (no POOL_FILE argument, ${ENV_VAR} unset, no "
            f"{default_pool_path()}): checking the embedded local pool "
            "(local agents on this machine).",
            file=stream,
        )
    else:
        print(
            f"Pool file {config.path}: {len(config.hosts)} host(s), "
            f"connect timeout {config.connect_timeout:g} s.",
            file=stream,
        )
    stream.flush()
    reports = check_pool(config, pings=pings)
    print(format_report(reports), file=stream, flush=True)
    return EXIT_OK if all(r.usable for r in reports) else EXIT_UNUSABLE
