"""Command line (GNU argp conventions, as cmogstored) merged with config files into Options.

Reference §1.1 (options and messages), §1.2.4 (combining with config files) and §1.5
(``--daemonize`` validation).  Errors are raised, never printed here, except warnings,
which cmogstored prints while parsing.
"""
from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from mogstored import __version__
from mogstored.config.daemonize import validate_daemonize
from mogstored.config.file import (
    ConfigFile,
    Warn,
    check_server,
    cpus_allowed,
    parse_listen,
    read_config,
)
from mogstored.config.options import (
    DEFAULT_MAXCONNS,
    DEFAULT_STALL_SECONDS,
    Listen,
    Options,
    Service,
    StartupError,
)
from mogstored.trust import Trusted, parse_trusted

__all__ = [
    "EarlyExit", "Listen", "Options", "Service", "StartupError", "UsageError",
    "load_options", "parse_listen",
]

PROGRAM = "mogstored"
DEFAULT_DOCROOT = "/var/mogdata"
DEFAULT_HTTPLISTEN = Listen("0.0.0.0", 7500)
DEFAULT_MGMTLISTEN = Listen("0.0.0.0", 7501)
UINT_MAX = 2**32 - 1
ULONG_MAX = 2**64 - 1
T = TypeVar("T")

HELP_TEXT = f"""\
Usage: {PROGRAM} [OPTION...]
{PROGRAM} -- MogileFS storage node, a drop-in replacement for cmogstored

      --config=<file>        Set config file (no default, unlike Perl
                             mogstored)
  -d, --daemonize            Daemonize
      --docroot=<path>       Docroot above device mount points.  Defaults to
                             /var/mogdata
      --durable              Answer PUT and DELETE only once on stable storage
      --httplisten=<ip:port> IP/Port HTTP server listens on
      --maxconns=<number>    Number of simultaneous clients to serve. Default
                             10000
      --metricslisten=<ip:port>   IP/Port of the Prometheus /metrics endpoint
      --mgmtlisten=<ip:port> IP/Port management/sidechannel listens on
      --mountcheck           Refuse writes to a device that is not a mount
                             point
      --pidfile=<path>       path to PID file
      --stallseconds=<n>     A device whose disk call runs longer is stalled.
                             Defaults to 10
  -t, --test-config          Check the command line and config files, then exit
      --trusted=<cidr>[,<cidr>...]   Only these peers may PUT, DELETE, MKCOL
                             and use the sidechannel.  Default: everyone
  -?, --help                 give this help list
      --usage                give a short usage message
  -V, --version              print program version
"""

USAGE_TEXT = f"""\
Usage: {PROGRAM} [-dt?V] [--config=<file>] [--daemonize] [--docroot=<path>]
            [--durable] [--httplisten=<ip:port>] [--maxconns=<number>]
            [--metricslisten=<ip:port>] [--mgmtlisten=<ip:port>] [--mountcheck]
            [--pidfile=<path>] [--stallseconds=<n>] [--test-config]
            [--trusted=<cidr>[,<cidr>...]] [--help] [--usage] [--version]
"""

TRY_TEXT = f"Try '{PROGRAM} --help' or '{PROGRAM} --usage' for more information.\n"

# Long option → takes an argument.  Order matters: it is the order getopt lists
# ambiguous candidates in.  Hidden options (server, multi, worker-processes,
# skipconfig) take part in prefix matching like the documented ones.
LONG_OPTIONS: dict[str, bool] = {
    "config": True,
    "daemonize": False,
    "docroot": True,
    "durable": False,
    "httplisten": True,
    "maxconns": True,
    "metricslisten": True,
    "mgmtlisten": True,
    "mountcheck": False,
    "pidfile": True,
    "stallseconds": True,
    "test-config": False,
    "trusted": True,
    "server": True,
    "multi": False,
    "worker-processes": True,
    "skipconfig": False,
    "help": False,
    "usage": False,
    "version": False,
}
SHORT_OPTIONS = {"d": "daemonize", "s": "skipconfig", "t": "test-config", "?": "help", "V": "version"}


class UsageError(Exception):
    """Command-line usage error (exit 64).  ``str(e)`` is the complete text for stderr."""


class EarlyExit(Exception):
    """``--help``/``--usage``/``--version``: print ``text`` on stdout, exit with ``code``."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


@dataclass
class _CommandLine:
    """Option values as given on the command line; config files already read."""

    configs: list[ConfigFile] = field(default_factory=list)
    daemonize: bool = False
    docroot: str | None = None
    httplisten: Listen | None = None
    mgmtlisten: Listen | None = None
    maxconns: int = 0
    pidfile: str | None = None
    server: str | None = None
    multi: bool = False
    worker_processes: int | None = None
    metricslisten: Listen | None = None
    stallseconds: int | None = None
    durable: bool = False
    mountcheck: bool = False
    test_config: bool = False
    trusted: Trusted | None = None


def load_options(argv: list[str], argv0: str, environ: Mapping[str, str]) -> Options:
    """Parse ``argv`` (without the program name), read config files, validate, merge.

    Raises UsageError (exit 64), StartupError (exit 1) or EarlyExit.  Warnings are
    printed on stderr as ``<argv0>: W: ...`` while parsing, as cmogstored does.
    """

    def warn(message: str) -> None:
        sys.stderr.write(f"{argv0}: {message}\n")
        sys.stderr.flush()

    cmd = _parse(argv, argv0, warn)
    multi = cmd.multi and bool(cmd.configs)
    if multi:
        _check_multi(cmd)
    elif len(cmd.configs) > 1:
        raise StartupError("--multi must be set if using multiple --config/-c switches")
    single = None if multi or not cmd.configs else cmd.configs[0]

    daemonize = cmd.daemonize or any(c.daemonize for c in cmd.configs)
    pidfile = _first([cmd.pidfile, *(c.pidfile for c in cmd.configs)])
    if daemonize:
        config_paths = [
            pair for c in cmd.configs
            for pair in (("config", c.path), ("pidfile", c.pidfile), ("docroot", c.docroot))
        ]
        docroot = _first([cmd.docroot, single.docroot if single else None]) or DEFAULT_DOCROOT
        validate_daemonize(config_paths, [("pidfile", pidfile), ("docroot", docroot)], environ)

    if multi:
        services = _multi_services(cmd, cmd.configs)
    else:
        services = [_single_service(cmd, single)]
    _check_pidfiles([cmd.pidfile, *(c.pidfile for c in cmd.configs)])

    server = cmd.server or _first(c.server for c in cmd.configs) or "perlbal"
    maxconns = cmd.maxconns + sum(c.maxconns for c in cmd.configs)
    metricslisten = _first([cmd.metricslisten, *(c.metricslisten for c in cmd.configs)])
    _check_metricslisten(metricslisten, services)
    stallseconds = _first([cmd.stallseconds, *(c.stallseconds for c in cmd.configs)])
    workers = _first([cmd.worker_processes, *(c.worker_processes for c in cmd.configs)])
    return Options(
        services=services,
        daemonize=daemonize and "CMOGSTORED_FD" not in environ,
        pidfile=None if pidfile is None else _canonical_pidfile(pidfile),
        maxconns=maxconns or DEFAULT_MAXCONNS,
        worker_processes=workers or 0,
        server=server,
        iostat=all(c.iostat for c in cmd.configs),
        metricslisten=metricslisten,
        stallseconds=DEFAULT_STALL_SECONDS if stallseconds is None else stallseconds,
        test_config=cmd.test_config,
    )


def _first(values: Iterable[T | None]) -> T | None:
    return next((v for v in values if v is not None), None)


def _check_metricslisten(addr: Listen | None, services: list[Service]) -> None:
    """Metrics are never served on an HTTP or sidechannel port."""
    if addr is None:
        return
    for s in services:
        for other in (s.httplisten, s.mgmtlisten, s.httpgetlisten):
            if other is not None and other.port == addr.port and (
                    other.host == addr.host or "0.0.0.0" in (other.host, addr.host)):
                raise StartupError(f"metricslisten={addr} is also a listener of docroot={s.docroot}")


# --- command-line parsing ------------------------------------------------------------


def _parse(argv: list[str], argv0: str, warn: Warn) -> _CommandLine:
    """Walk argv like getopt_long with argp: options act in order, operands are collected."""
    cmd = _CommandLine()
    positional: list[str] = []
    seen_configs: set[str] = set()
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            positional.extend(argv[i:])
            break
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            option = _match_long(name, arg, argv0)
            if LONG_OPTIONS[option]:
                if not eq:
                    if i == len(argv):
                        raise _usage_error(argv0, f"option '--{option}' requires an argument")
                    value = argv[i]
                    i += 1
                _apply(cmd, option, value, seen_configs, warn)
            elif eq:
                raise _usage_error(argv0, f"option '--{option}' doesn't allow an argument")
            else:
                _apply(cmd, option, None, seen_configs, warn)
        elif arg.startswith("-") and arg != "-":
            for letter in arg[1:]:
                if letter not in SHORT_OPTIONS:
                    raise _usage_error(argv0, f"invalid option -- '{letter}'")
                _apply(cmd, SHORT_OPTIONS[letter], None, seen_configs, warn)
        else:
            positional.append(arg)
    if positional:
        raise UsageError(USAGE_TEXT)
    return cmd


def _match_long(name: str, arg: str, argv0: str) -> str:
    """Exact name, else the only option it is a prefix of."""
    if name in LONG_OPTIONS:
        return name
    candidates = [o for o in LONG_OPTIONS if o.startswith(name)] if name else []
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise _usage_error(argv0, f"unrecognized option '{arg}'")
    listed = " ".join(f"'--{c}'" for c in candidates)
    raise _usage_error(argv0, f"option '--{name}' is ambiguous; possibilities: {listed}")


def _usage_error(argv0: str, message: str) -> UsageError:
    return UsageError(f"{argv0}: {message}\n{TRY_TEXT}")


def _apply(cmd: _CommandLine, option: str, value: str | None, seen_configs: set[str], warn: Warn) -> None:
    """Act on one option; a later occurrence overrides an earlier one."""
    if option == "config":
        assert value is not None
        real = _resolve(value)
        if real in seen_configs:
            raise StartupError(f"invalid (or duplicate) config={value}")
        seen_configs.add(real)
        cmd.configs.append(read_config(value, warn))
    elif option in ("httplisten", "mgmtlisten", "metricslisten"):
        try:
            setattr(cmd, option, parse_listen(value or ""))
        except ValueError:
            raise StartupError(f"failed to parse {option}={value}") from None
    elif option == "maxconns":
        cmd.maxconns = _parse_number("maxconns", value or "", ULONG_MAX)
    elif option == "stallseconds":
        cmd.stallseconds = _parse_number("stallseconds", value or "", UINT_MAX)
        if cmd.stallseconds == 0:
            raise StartupError("--stallseconds must be at least 1")
    elif option == "trusted":
        try:
            cmd.trusted = parse_trusted(value or "")
        except ValueError as e:
            raise StartupError(f"failed to parse trusted={value}: {e}") from None
    elif option == "worker-processes":
        cmd.worker_processes = (cpus_allowed() if value == "auto"
                                else _parse_number("worker-processes", value or "", UINT_MAX))
    elif option == "server":
        cmd.server = check_server(value or "", warn)
    elif option in ("docroot", "pidfile"):
        setattr(cmd, option, value)
    elif option in ("daemonize", "multi", "durable", "mountcheck"):
        setattr(cmd, option, True)
    elif option == "test-config":
        cmd.test_config = True
    elif option == "help":
        raise EarlyExit(0, HELP_TEXT)
    elif option == "usage":
        raise EarlyExit(0, USAGE_TEXT)
    elif option == "version":
        raise EarlyExit(0, f"{PROGRAM} {__version__}\n")
    # skipconfig: accepted for Perl compatibility, no effect


def _parse_number(name: str, value: str, maximum: int) -> int:
    """Decimal digits (strtoul-like: empty is 0) up to ``maximum``."""
    bad = re.search(r"[^0-9]", value)
    if bad:
        raise StartupError(f"failed to parse --{name}={value} (invalid character: {bad.group()})")
    number = int(value) if value else 0
    if number > maximum:
        raise StartupError(f"--{name} exceeded (max={maximum})")
    return number


# --- combining with config files (§1.2.4) ----------------------------------------------


def _check_multi(cmd: _CommandLine) -> None:
    for name in ("docroot", "httplisten", "mgmtlisten"):
        if getattr(cmd, name) is not None:
            raise StartupError(f"--{name} may not be used with multiple --config files")
    for c in cmd.configs:
        if c.docroot is None:
            raise StartupError(f"no docroot in --config={c.path}")
        if not c.has_listener:
            raise StartupError(f"no listeners in --config={c.path}")


def _multi_services(cmd: _CommandLine, configs: list[ConfigFile]) -> list[Service]:
    """Each config file is an independent service; docroots must differ.
    ``--durable``/``--mountcheck`` apply to all of them, ``--trusted`` replaces each one's."""
    services: list[Service] = []
    for c in configs:
        assert c.docroot is not None
        docroot = _resolve_docroot(c.docroot)
        if any(s.docroot == docroot for s in services):
            raise StartupError(f"failed to load svc from docroot={c.docroot}")
        services.append(Service(docroot, c.httplisten, c.mgmtlisten, c.httpgetlisten,
                                cmd.durable or c.durable, cmd.mountcheck or c.mountcheck,
                                cmd.trusted or c.trusted))
    return services


def _single_service(cmd: _CommandLine, cfg: ConfigFile | None) -> Service:
    """Command-line listeners win, the config fills the rest; defaults only if none at all."""
    cfg = cfg or ConfigFile("")
    docroot = cmd.docroot
    if docroot is None:
        docroot = cfg.docroot if cfg.docroot is not None else DEFAULT_DOCROOT
    elif cfg.docroot is not None:
        _check_same("docroot", docroot, cfg.docroot, _resolve)
    http = cmd.httplisten or cfg.httplisten
    mgmt = cmd.mgmtlisten or cfg.mgmtlisten
    httpget = cfg.httpgetlisten
    if not (http or mgmt or httpget):
        http, mgmt = DEFAULT_HTTPLISTEN, DEFAULT_MGMTLISTEN
    return Service(_resolve_docroot(docroot), http, mgmt, httpget,
                   cmd.durable or cfg.durable, cmd.mountcheck or cfg.mountcheck, cmd.trusted or cfg.trusted)


def _check_pidfiles(values: list[str | None]) -> None:
    """Every pidfile given (command line first, then config files) must name the same file."""
    given = [v for v in values if v is not None]
    for other in given[1:]:
        _check_same("pidfile", given[0], other, _canonical_pidfile)


def _check_same(name: str, first: str, other: str, canonical: Callable[[str], str]) -> None:
    if canonical(first) != canonical(other):
        raise StartupError(f"conflicting path values for {name}: `{first}' != `{other}'")


def _resolve(path: str) -> str:
    """realpath that must exist (symlinks resolved), with cmogstored's error text."""
    try:
        if not path:  # realpath(3) refuses "", Python would return the cwd
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
        return os.path.realpath(path, strict=True)
    except OSError as e:
        raise StartupError(f"`{path}' failed to resolve: {e.strerror}") from None


def _resolve_docroot(path: str) -> str:
    real = _resolve(path)
    if not os.path.isdir(real):
        raise StartupError(f"docroot={path} is not a directory")
    return real


def _canonical_pidfile(path: str) -> str:
    """Absolute pidfile path: the directory resolved, the last component kept as is."""
    directory, name = os.path.split(path)
    return os.path.join(_resolve(directory or "."), name)
