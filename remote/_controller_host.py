"""Whether a pool host is this machine (the controller): see ``remote/_pool_config.py``
for the rule and why loopback addresses other than ``localhost`` count as remote."""

from __future__ import annotations

import contextlib
import ipaddress
import socket

__all__ = ["is_controller_host"]


def _local_addresses() -> set[str]:
    """This machine's non-loopback interface addresses (Linux /proc; name lookup elsewhere)."""
    found: set[str] = set()
    try:
        with open("/proc/net/fib_trie") as handle:
            last = ""
            for line in handle:
                parts = line.split()
                if len(parts) >= 2 and parts[0] in ("|--", "+--"):
                    last = parts[1]
                elif "/32 host LOCAL" in line and last:
                    found.add(last)
    except OSError:
        pass
    try:
        with open("/proc/net/if_inet6") as handle:
            for line in handle:
                raw = line.split()[0]
                found.add(str(ipaddress.IPv6Address(int(raw, 16))))
    except (OSError, ValueError, IndexError):
        pass
    if not found:
        try:
            for info in socket.getaddrinfo(socket.gethostname(), None):
                found.add(str(info[4][0]))
        except OSError:
            pass
    result = set()
    for text in found:
        try:
            address = ipaddress.ip_address(text.split("%")[0])
        except ValueError:
            continue
        if not address.is_loopback:
            result.add(str(address))
    return result


def is_controller_host(host: str) -> bool:
    """True when *host* names this machine (see the module doc for the exact rule)."""
    name = host.lower().rstrip(".")
    names = {"localhost", socket.gethostname().lower()}
    with contextlib.suppress(OSError):
        names.add(socket.getfqdn().lower())
    if name in names:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return not address.is_loopback and str(address) in _local_addresses()
