"""The runtime option types: what start-up hands to the serving process.

Kept apart from the argv and config-file parsers, so the serving modules never
import a parser.
"""
from __future__ import annotations

from dataclasses import dataclass

from mogstored.trust import Trusted

DEFAULT_MAXCONNS = 10000  # descriptors wanted when --maxconns is not given (§1.1.2)
DEFAULT_STALL_SECONDS = 10  # --stallseconds


class StartupError(Exception):
    """Fatal start-up error (exit 1).

    ``str(e)`` is the message without the ``<argv0>: `` prefix; when several lines are
    printed they are joined by ``\\n`` and each gets the prefix.
    """


@dataclass(frozen=True)
class Listen:
    """An IPv4 listen address."""

    host: str  # dotted quad, "0.0.0.0" when omitted
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class Service:
    """One docroot with its listeners (one per config file with --multi, else one)."""

    docroot: str  # canonical (realpath) docroot
    httplisten: Listen | None
    mgmtlisten: Listen | None
    httpgetlisten: Listen | None
    durable: bool = False  # 201/204 only once data and directory entry are on disk
    mountcheck: bool = False  # refuse PUTs to a devN that is not a mount point
    # None: every peer is trusted.  Read when a connection is accepted, so assigning a
    # new Trusted here (one attribute) changes it for every connection from then on.
    trusted: Trusted | None = None


@dataclass
class Options:
    """Everything start-up needs, after merging the command line and config files."""

    services: list[Service]
    daemonize: bool  # False when CMOGSTORED_FD is set: an upgraded process already is a daemon
    pidfile: str | None  # absolute
    maxconns: int
    worker_processes: int
    server: str  # "perlbal" or "none" (none: HTTP listeners are not opened)
    iostat: bool
    metricslisten: Listen | None = None  # the Prometheus endpoint, off by default
    stallseconds: int = DEFAULT_STALL_SECONDS  # a disk call running longer marks its device stalled
    test_config: bool = False  # -t: check the configuration, start nothing
