"""Starting an agent: the ``python -c`` bootstrap program, the blob of the agent's source and
argv that it reads from stdin, and reading and checking the agent's HELLO (skipping, and
explaining, what a noisy remote shell printed first)."""

from __future__ import annotations

import base64
import logging
import sys
import time
from pathlib import Path
from typing import Any

from parallelize.ext import outcome_codec

from . import _wire
from ._agent_base import _LinkBase
from ._blobs import zstd_version
from ._errors import HostErrorKind, HostUnavailableError
from ._link import HostSpec

__all__ = ["bootstrap_code", "check_hello"]

log = logging.getLogger("remote.link")

_NOISE_KEEP = 4096  # bytes of a noisy shell's output kept for the error message

_BOOTSTRAP = """
import os, sys, json, types
def _parallelize_read(n):
    data = b""
    while len(data) < n:
        chunk = os.read(0, n - len(data))
        if not chunk:
            raise SystemExit("parallelize agent: connection closed during bootstrap")
        data += chunk
    return data
_blob = json.loads(_parallelize_read(int.from_bytes(_parallelize_read(4), "big")).decode())
for _name, _source in _blob["modules"]:
    _module = types.ModuleType(_name)
    _module.__file__ = "<" + _name + ">"
    sys.modules[_name] = _module
    exec(compile(_source, _module.__file__, "exec"), _module.__dict__)
sys.modules["parallelize_agent"].main(_blob["argv"])
"""


def bootstrap_code() -> str:
    """A one-line ``python -c`` program (shell-safe characters only) that reads the agent's
    source from stdin and runs it."""
    encoded = base64.b64encode(_BOOTSTRAP.encode()).decode()
    return f'import base64;exec(base64.b64decode("{encoded}"))'


_sources: list[tuple[str, str]] = []


def _agent_blob(
    name: str,
    slots: int,
    silence_limit: float = 0.0,
    max_tasks: int = 0,
    max_memory: int = 0,
    compress_results: bool = False,
) -> bytes:
    """The length-prefixed JSON the bootstrap reads: the agent's modules and its argv
    (display name, slots, controller-silence limit in seconds, attempts and resident bytes
    per slot process before it is recycled; 0 = none; whether this controller reads
    zstd-compressed results)."""
    import json

    if not _sources:
        here = Path(__file__).parent
        _sources.extend(
            [
                ("parallelize_agent_outcome", Path(outcome_codec.__file__).read_text()),
                ("parallelize_agent_wire", (here / "_wire.py").read_text()),
                ("parallelize_agent", (here / "worker.py").read_text()),
            ]
        )
    argv = [
        name,
        str(slots),
        repr(float(silence_limit)),
        str(max_tasks),
        str(max_memory),
        "1" if compress_results else "0",
    ]
    data = json.dumps({"modules": _sources, "argv": argv}).encode()
    return len(data).to_bytes(4, "big") + data


def _reads_compressed_results(spec: HostSpec) -> bool:
    """Whether to let this host's agent compress large results: where zstd can pay (not
    over local pipes, not switched off in the pool file) and this side can read them."""
    return not spec.is_local and spec.compression != "none" and zstd_version() is not None


def check_hello(spec: HostSpec, info: dict[str, Any]) -> None:
    """Raise HostUnavailableError unless the agent can run this controller's bundles."""
    where = f"host {spec.name!r} ({spec.host})"
    python = info.get("executable") or spec.python
    if info.get("error"):
        raise HostUnavailableError(
            f"{where}: the worker agent cannot start with {python}: {info['error']}. "
            f"Fix: install cloudpickle there (`{spec.python} -m pip install cloudpickle`) or "
            f"point `python = ...` for this host in the pool file at an interpreter that has it.",
            kind=HostErrorKind.VERSION,
            host=spec.name,
        )
    if info.get("protocol") != _wire.PROTOCOL:
        raise HostUnavailableError(
            f"{where}: its worker agent speaks protocol {info.get('protocol', 1)}, this "
            f"controller protocol {_wire.PROTOCOL}. Fix: let the link start the agent (it "
            "ships its own source), not an agent started by hand from another version.",
            kind=HostErrorKind.AGENT_START,
            host=spec.name,
        )
    remote = str(info.get("python", "?"))
    local = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if remote.split(".")[:2] != local.split("."):
        raise HostUnavailableError(
            f"{where} runs Python {remote} ({python}) but the controller runs Python "
            f"{sys.version.split()[0]}: pickled functions only work between the same major.minor "
            f'version. Fix: set `python = "/path/to/python{local}"` for this host in the pool '
            f"file (or install Python {local} there).",
            kind=HostErrorKind.VERSION,
            host=spec.name,
        )
    import cloudpickle

    theirs, ours = str(info.get("cloudpickle")), str(cloudpickle.__version__)
    if theirs.split(".")[:1] != ours.split(".")[:1]:
        log.warning(
            "%s has cloudpickle %s, the controller has %s; pickles may not load",
            where,
            theirs,
            ours,
        )


class _Handshake(_LinkBase):
    """The part of a link that reads the agent's HELLO during ``connect``."""

    def _read_hello(self, deadline: float) -> dict[str, Any]:
        """Read up to the agent's HELLO: skip (and report) what the remote shell printed before
        the agent's MAGIC marker; raise HostUnavailableError naming what went wrong."""
        noise = bytearray()  # everything before MAGIC
        found = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._hello_failure(
                    noise,
                    found,
                    f"the worker agent did not start within {self.connect_timeout:g} s"
                    f"{self._stderr_summary()}",
                    f"the agent did not start within {self.connect_timeout:g} s",
                )
            try:
                data = self._read(remaining)
            except TimeoutError:
                continue
            except OSError as exc:
                data = b""
                self._down_reason = str(exc)
            if not data:
                detail = self._failure_detail()
                time.sleep(0.05)  # let the stderr thread catch the agent's last words
                raise self._hello_failure(
                    noise,
                    found,
                    f"the worker agent exited before saying hello ({detail or 'stream closed'}) "
                    f"when started as {self.spec.python!r}{self._stderr_summary()}. Fix: check "
                    "that `python` for this host names a Python 3 interpreter with cloudpickle.",
                    f"no agent started ({detail or 'stream closed'})",
                )
            if not found:
                noise += data
                at = noise.find(_wire.MAGIC)
                if at < 0:
                    if len(noise) > _NOISE_KEEP + len(_wire.MAGIC):  # keep the head and a tail
                        del noise[_NOISE_KEEP : len(noise) - len(_wire.MAGIC)]  # to find MAGIC
                    continue
                found = True
                data = bytes(noise[at + len(_wire.MAGIC) :])
                del noise[at:]
                if noise:
                    log.warning(
                        "host %r: the remote shell printed %d bytes before the worker agent "
                        "started (ignored): %r. Make the shell startup files print nothing "
                        "for non-interactive shells.",
                        self.spec.name,
                        len(noise),
                        bytes(noise[:200]),
                    )
            try:
                frames = self._frames.feed(data)
            except _wire.ProtocolError as exc:
                raise HostUnavailableError(
                    f"host {self.spec.name!r}: garbled agent output ({exc})",
                    kind=HostErrorKind.AGENT_START,
                    host=self.spec.name,
                ) from None
            if frames:
                kind, body = frames[0]
                if kind != _wire.HELLO:
                    raise HostUnavailableError(
                        f"host {self.spec.name!r}: unexpected {_wire.message_name(kind)} "
                        "from the worker agent before HELLO",
                        kind=HostErrorKind.AGENT_START,
                        host=self.spec.name,
                    )
                if len(frames) > 1:
                    raise HostUnavailableError(
                        f"host {self.spec.name!r}: garbled agent output",
                        kind=HostErrorKind.AGENT_START,
                        host=self.spec.name,
                    )
                return _wire.decode_hello(body)

    def _hello_failure(
        self, noise: bytearray, found: bool, plain: str, noisy: str
    ) -> HostUnavailableError:
        """The error for a missing HELLO: *plain*, or, when the remote shell printed text and
        the agent never announced itself, a message that says so and how to fix it."""
        where = f"host {self.spec.name!r} ({self.spec.host})"
        if found or not noise.strip():
            return HostUnavailableError(
                f"{where}: {plain}", kind=HostErrorKind.AGENT_START, host=self.spec.name
            )
        text = bytes(noise[:_NOISE_KEEP]).decode("utf-8", "replace").strip()
        if len(text) > 300:
            text = text[:300] + "..."
        return HostUnavailableError(
            f"{where}: the remote shell printed text before the agent started, and {noisy}: "
            f"{text!r}{self._stderr_summary()}. Fix: make the shell startup files on that host "
            "(~/.bashrc, ~/.profile, ~/.zshenv, ...) print nothing for non-interactive "
            "shells, e.g. start ~/.bashrc with `[[ $- == *i* ]] || return`.",
            kind=HostErrorKind.NOISY_SHELL,
            host=self.spec.name,
        )
