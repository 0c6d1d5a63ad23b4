"""Config files: the cmogstored/Perl ``key = value`` format and a YAML equivalent.

The key/value reader accepts the union of both programs (reference §1.2.2 **Clone**):
Perl files (``daemonize = 1``, ``iostat = 0``, ``serverbin``, ``config``, ``s``) and
cmogstored files (bare ``daemonize``, ``httpgetlisten``) both load; keys neither knows are
ignored with a warning rather than fatal.  Files named ``*.yaml``/``*.yml`` hold a
mapping with the same keys.

This module also owns the value types shared with the command line (listen
addresses, the ``server`` word, the worker count ``auto``) and the start-up error
every stage raises.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from mogstored.config.options import Listen, StartupError
from mogstored.trust import Trusted, parse_trusted

Warn = Callable[[str], None]


_LISTEN = re.compile(r"(?:([0-9]{1,3}(?:\.[0-9]{1,3}){3})?:)?([0-9]{1,5})")


def parse_listen(text: str) -> Listen:
    """Parse ``PORT``, ``:PORT`` or ``A.B.C.D:PORT`` (decimal dotted quad only)."""
    m = _LISTEN.fullmatch(text)
    if m is None:
        raise ValueError(f"bad listen address: {text!r}")
    host, port = m.group(1), int(m.group(2))
    if port > 65535:
        raise ValueError(f"port out of range: {text!r}")
    if host is None:
        return Listen("0.0.0.0", port)
    octets = [int(o) for o in host.split(".")]
    if any(o > 255 for o in octets):
        raise ValueError(f"octet out of range: {text!r}")
    return Listen(".".join(map(str, octets)), port)


def cpus_allowed() -> int:
    """``worker processes = auto``: one worker per CPU this process may run on (its
    affinity mask, as taskset or a cgroup cpuset leave it), so at least one."""
    return len(os.sched_getaffinity(0))


def check_server(word: str, warn: Warn) -> str:
    """Validate a ``server`` value: ``perlbal`` (served internally, with a warning) or ``none``."""
    if word == "perlbal":
        warn("W: using internal HTTP for 'server = perlbal' instead")
    elif word != "none":
        raise StartupError(f"E: 'server = {word}' not understood by cmogstored")
    return word


@dataclass
class ConfigFile:
    """The values one config file sets (``None``/defaults where it is silent)."""

    path: str  # as given on the command line
    docroot: str | None = None
    pidfile: str | None = None
    httplisten: Listen | None = None
    mgmtlisten: Listen | None = None
    httpgetlisten: Listen | None = None
    maxconns: int = 0
    server: str | None = None
    daemonize: bool = False
    iostat: bool = True
    metricslisten: Listen | None = None
    stallseconds: int | None = None
    worker_processes: int | None = None  # "auto" resolved (cpus_allowed)
    durable: bool = False
    mountcheck: bool = False
    trusted: Trusted | None = None

    @property
    def has_listener(self) -> bool:
        return any((self.httplisten, self.mgmtlisten, self.httpgetlisten))


def read_config(path: str, warn: Warn) -> ConfigFile:
    """Read one config file; the format is chosen by the file name."""
    try:
        with open(path, "rb") as f:
            text = os.fsdecode(f.read())
    except OSError as e:
        raise StartupError(f"failed to load config={path}: {e.strerror}") from None
    entries: Iterable[tuple[str, str | None]]
    if path.endswith((".yaml", ".yml")):
        entries = _yaml_entries(path, text)
    else:
        entries = _key_value_entries(path, text, warn)
    cfg = ConfigFile(path)
    for key, value in entries:
        _apply(cfg, key, value, warn)
    return cfg


def _parser_error(path: str, detail: str | None = None) -> StartupError:
    lines = [detail] if detail else []
    lines.append(f"failed to load config={path}: parser error")
    return StartupError("\n".join(lines))


_LINE = re.compile(r"(\w+)\s*(?:=\s*(.*))?", re.ASCII | re.DOTALL)
# Path-like values may contain "#" (cmogstored: `docroot = /x#c` is "/x#c"), so for them
# only a "#" after whitespace starts a comment; other values cannot contain "#".
_PATH_KEYS = frozenset({"docroot", "pidfile", "serverbin", "config"})
_PATH_COMMENT = re.compile(r"\s#.*", re.DOTALL)


def _key_value_entries(path: str, text: str, warn: Warn) -> Iterator[tuple[str, str | None]]:
    """Split a ``key = value`` file into (key, value) pairs; value None for a bare key.

    A generator, so warnings about lines and about keys come out in file order.
    """
    for number, line in enumerate(text.split("\n"), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _LINE.fullmatch(stripped)
        if m is None:
            warn(f"W: config={path} line {number} not understood, ignored")
            continue
        key, value = m.group(1), m.group(2)
        if value is not None:
            if key in _PATH_KEYS:
                value = "" if value.startswith("#") else _PATH_COMMENT.sub("", value)
            else:
                value = value.split("#", 1)[0]
            value = value.strip()
        yield key, value


def _yaml_entries(path: str, text: str) -> list[tuple[str, str | None]]:
    """Turn a YAML mapping of scalars into (key, value) pairs as the text format yields them."""
    import yaml  # here: only .yaml configs pay its import time and memory (~3 MiB of RSS)

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        raise _parser_error(path) from None
    if data is None:
        return []
    if not isinstance(data, dict):
        raise _parser_error(path)
    entries: list[tuple[str, str | None]] = []
    for key, value in data.items():
        if key == "trusted" and isinstance(value, list) and value:  # a list of networks, or "a, b"
            if not all(isinstance(v, str) for v in value):
                raise _parser_error(path, f"failed to parse trusted={value}: entries must be strings")
            value = ",".join(value)
        if isinstance(value, (dict, list)):
            raise _parser_error(path)
        if isinstance(value, bool):
            value = "1" if value else "0"
        entries.append((str(key), "" if value is None else str(value)))
    return entries


_LISTEN_KEYS = ("httplisten", "mgmtlisten", "httpgetlisten", "metricslisten")
_BOOLEAN_KEYS = ("daemonize", "iostat", "durable", "mountcheck")
_IGNORED_KEYS = ("config", "s")  # Perl accepts them; meaningless inside a config file
_KNOWN_KEYS = frozenset(
    {*_LISTEN_KEYS, *_BOOLEAN_KEYS, *_IGNORED_KEYS, "docroot", "pidfile", "maxconns", "server", "serverbin",
     "stallseconds", "trusted", "worker_processes"}
)


def _apply(cfg: ConfigFile, key: str, value: str | None, warn: Warn) -> None:
    """Store one entry; a later occurrence of a key overrides an earlier one."""
    if key not in _KNOWN_KEYS:
        warn(f"W: unknown key `{key}' in config={cfg.path} ignored")
        return
    if value is not None and "\0" in value:
        raise _parser_error(cfg.path, f"NUL character in `{key}' value")
    if key in _BOOLEAN_KEYS:
        # A bare key (cmogstored style) means true; Perl style is true unless "0" or empty.
        setattr(cfg, key, value is None or value not in ("", "0"))
        return
    if key in _IGNORED_KEYS:
        return
    if key == "trusted":  # never ignored when empty: that would trust everyone
        try:
            cfg.trusted = parse_trusted(value or "")
        except ValueError as e:
            raise _parser_error(cfg.path, f"failed to parse trusted={value or ''}: {e}") from None
        return
    if not value:
        warn(f"W: `{key}' without a value in config={cfg.path} ignored")
        return
    if key in _LISTEN_KEYS:
        try:
            setattr(cfg, key, parse_listen(value))
        except ValueError:
            raise _parser_error(cfg.path, f"failed to parse {key}={value}") from None
    elif key == "maxconns":
        if not re.fullmatch(r"[0-9]+", value):
            raise _parser_error(cfg.path, f"failed to parse maxconns={value}")
        cfg.maxconns = int(value)
    elif key == "stallseconds":
        if not re.fullmatch(r"[0-9]+", value) or int(value) == 0:
            raise _parser_error(cfg.path, f"failed to parse stallseconds={value}")
        cfg.stallseconds = int(value)
    elif key == "worker_processes":
        if value == "auto":
            cfg.worker_processes = cpus_allowed()
        elif re.fullmatch(r"[0-9]+", value) and int(value) < 2**32:
            cfg.worker_processes = int(value)
        else:
            raise _parser_error(cfg.path, f"failed to parse worker_processes={value}")
    elif key == "server":
        cfg.server = check_server(value, warn)
    elif key == "serverbin":
        warn(f"W: serverbin = {value} ignored")
    else:  # docroot, pidfile
        setattr(cfg, key, value)
