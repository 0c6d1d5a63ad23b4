"""Who may change data and command the node: ``--trusted`` (config key ``trusted``).

MogileFS has no authentication.  Off by default (every peer is trusted, as
cmogstored does); given a list of networks, a peer outside all of them may only
read: its HTTP PUT, DELETE and MKCOL get 403, its sidechannel connections are
closed unread.  The decision is taken once per connection, when it is accepted.

Refused peers are counted per listener and each is logged at most once a minute
per process; the table behind that is bounded, so a scanner from many addresses
cannot grow it.
"""
from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterable

from mogstored import counters, log

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOG_INTERVAL = 60.0  # seconds between two log lines about the same peer
MAX_LOGGED_PEERS = 1024  # peers remembered as logged within the last interval


class Trusted:
    """The trusted networks (IPv4 and IPv6; a single address is a /32 or /128)."""

    __slots__ = ("networks",)

    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks = tuple(networks)

    def __str__(self) -> str:
        return ",".join(map(str, self.networks))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Trusted) and self.networks == other.networks

    def __hash__(self) -> int:
        return hash(self.networks)

    def admits(self, host: str) -> bool:
        """Whether the peer address ``host`` (as getpeername gives it) is in a trusted network;
        an IPv4-mapped IPv6 peer counts as its IPv4 address."""
        try:
            addr = ipaddress.ip_address(host.partition("%")[0])  # no scope id on a link-local peer
        except ValueError:
            return False  # no address (the peer was gone at accept): nothing to trust
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.networks)


def parse_trusted(text: str | Iterable[str]) -> Trusted:
    """``a[,b...]`` (or the entries as a list, YAML's form) -> Trusted.

    Each entry is an address or a network; ValueError naming the first bad one (empty,
    not an address, or a network with host bits set, e.g. ``10.1.2.3/8``)."""
    entries = text.split(",") if isinstance(text, str) else list(text)
    networks = []
    for entry in entries:
        stripped = entry.strip()
        if not stripped:
            raise ValueError("empty entry")
        try:
            networks.append(ipaddress.ip_network(stripped))
        except ValueError as e:
            raise ValueError(f"`{stripped}': {e}") from None
    return Trusted(networks)


class _RefusalLog:
    """When each refused peer was last logged, oldest first (bounded)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # acceptor threads (sidechannel) and the epoll worker (HTTP)
        self._logged: dict[str, float] = {}  # peer -> when logged; insertion order is time order
        self._full_logged = -LOG_INTERVAL  # when "too many to log each" was last logged

    def refuse(self, host: str, listener: str, what: str, now: float) -> str | None:
        """Count one refusal; the line to log, if this peer (or the overflow) is due one."""
        with self._lock:
            counters.refused[listener] += 1
            logged = self._logged
            while logged:
                oldest = next(iter(logged))
                if now - logged[oldest] < LOG_INTERVAL:
                    break
                del logged[oldest]
            if host in logged:
                return None
            if len(logged) < MAX_LOGGED_PEERS:
                logged[host] = now
                return f"refused {what} from untrusted {host} on {listener} (logged once a minute per peer)"
            if now - self._full_logged < LOG_INTERVAL:
                return None
            self._full_logged = now
            return f"refused {what} from untrusted {host} on {listener}; more than {MAX_LOGGED_PEERS} " \
                   "untrusted peers this minute, not logging each (see mogstored_refused_total)"


_log = _RefusalLog()


def refused(host: str, listener: str, what: str) -> None:
    """An untrusted peer was refused ``what`` (a method, or a sidechannel connection)."""
    line = _log.refuse(host, listener, what, time.monotonic())
    if line is not None:
        log.warning(line)
