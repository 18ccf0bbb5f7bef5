"""Checking one value of the pool file: a PoolConfigError that names the file, the table
(``entry``) and the key (``field``), says what is wrong and how to fix it.

:class:`Checker` validates host names, users, interpreter paths, gateways, key files,
numbers, booleans and memory sizes (:func:`parse_size`, also used for
``RemoteExecutor(max_worker_memory=...)``). Whole tables are parsed in
``remote/_pool_parse.py``.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from typing import Any

from ._errors import PoolConfigError

__all__ = ["Checker", "parse_size"]

_HOST_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")
_USER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9._-]{0,31}$")
_PYTHON_RE = re.compile(r"^(?:~/)?[A-Za-z0-9_./+-]+$")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_size(value: object) -> int:
    """Bytes from an integer or a size string ("2GiB", "500MB", "1.5 GB", "4096");
    ValueError (naming the accepted forms) otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError(f"a memory size must be at least 1 byte, got {value}")
        return value
    if isinstance(value, str) and (match := _SIZE_RE.match(value)):
        number, unit = match.groups()
        factor = _SIZE_UNITS.get(unit.lower())
        if factor is not None:
            size = int(float(number) * factor)
            if size >= 1:
                return size
    raise ValueError(
        f"{value!r} is not a memory size: give a number of bytes or a string such as "
        '"2GiB", "500MB" or "512MiB" (units B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)'
    )


class Checker:
    """Validates values read from the pool file *path*; ``fail`` builds the error."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, entry: str, field: str | None, problem: str, fix: str) -> PoolConfigError:
        where = f"{self.path}: [{entry}]" + (f" field {field!r}" if field else "")
        return PoolConfigError(
            f"{where}: {problem}. Fix: {fix}.", path=self.path, entry=entry, field=field
        )

    def keys(self, table: Mapping[str, Any], allowed: tuple[str, ...], entry: str) -> None:
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
                raise self.fail(entry, key, "unknown key", f"remove it or rename it ({hint})")

    def integer(self, value: Any, entry: str, field: str, low: int, high: int | None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(
                entry, field, f"must be an integer, got {value!r}", f"write e.g. {field} = {low}"
            )
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"between {low} and {high}"
            raise self.fail(entry, field, f"must be {bound}, got {value}", f"use a value {bound}")
        return value

    def positive(self, value: Any, entry: str, field: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(
                entry, field, f"must be a number, got {value!r}", f"write e.g. {field} = 1.0"
            )
        if not (value > 0 and math.isfinite(value)):
            raise self.fail(
                entry, field, f"must be a finite number > 0, got {value}", "use a positive value"
            )
        return float(value)

    def size(self, value: Any, entry: str, field: str) -> int:
        try:
            return parse_size(value)
        except ValueError:
            raise self.fail(
                entry,
                field,
                f"{value!r} is not a memory size",
                f'write a number of bytes or a size string, e.g. {field} = "2GiB" or "500MB" '
                "(units B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)",
            ) from None

    def boolean(self, value: Any, entry: str, field: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(
                entry, field, f"must be true or false, got {value!r}", f"write {field} = true"
            )
        return value

    def string(self, value: Any, entry: str, field: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(
                entry, field, f"must be a non-empty string, got {value!r}", 'quote it: "..."'
            )
        return value

    def host(self, value: Any, entry: str, field: str) -> str:
        text = self.string(value, entry, field)
        if not _is_host(text):
            raise self.fail(
                entry,
                field,
                f"{text!r} is not a valid host name or address",
                "use a DNS name, an IP address or an alias from ~/.ssh/config (letters, digits, "
                "'.', '-', '_' only)",
            )
        return text

    def user(self, value: Any, entry: str, field: str) -> str:
        text = self.string(value, entry, field)
        if not _USER_RE.match(text):
            raise self.fail(
                entry,
                field,
                f"{text!r} is not a valid user name",
                "use letters, digits, '.', '-', '_' (starting with a letter or '_')",
            )
        return text

    def python(self, value: Any, entry: str, field: str) -> str:
        text = self.string(value, entry, field)
        if not _PYTHON_RE.match(text) or text.startswith("-"):
            raise self.fail(
                entry,
                field,
                f"{text!r} is not a plain command name or path (no spaces or shell characters "
                "allowed)",
                'use e.g. "python3" or "/opt/py/bin/python3"',
            )
        return text

    def gateway(self, value: Any, entry: str, field: str) -> str:
        text = self.string(value, entry, field)
        user, host, port_text = _split_gateway(text)
        ok = (
            (user is None or bool(_USER_RE.match(user)))
            and _is_host(host)
            and (port_text is None or (port_text.isdigit() and 1 <= int(port_text) <= 65535))
        )
        if not ok:
            raise self.fail(
                entry,
                field,
                f"{text!r} is not of the form [user@]host[:port]",
                'write e.g. gateway = "bob@bastion.example.com:22"',
            )
        return text

    def identity(self, value: Any, entry: str, field: str) -> str:
        text = self.string(value, entry, field)
        if "\0" in text:
            raise self.fail(entry, field, "contains a NUL character", "give a file path")
        if not os.path.isfile(os.path.expanduser(text)):
            raise self.fail(
                entry,
                field,
                f"the key file {text} does not exist",
                "give the path of an existing private key (e.g. ~/.ssh/id_ed25519)",
            )
        return text


def _split_gateway(text: str) -> tuple[str | None, str, str | None]:
    user: str | None = None
    rest = text
    if "@" in rest:
        user, rest = rest.rsplit("@", 1)
    port: str | None = None
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        if tail:
            port = tail[1:] if tail.startswith(":") else "x"
    elif rest.count(":") == 1:
        host, port = rest.split(":")
    else:
        host = rest
    return user, host, port


def _is_host(text: str) -> bool:
    if _HOST_RE.match(text):
        return True
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
