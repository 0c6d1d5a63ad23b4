"""Sidechannel (mgmt) framing, grammar and reply formatting (protocol §4.1, §4.2, §4.7).

Sans-IO: the connection code feeds received bytes into a :class:`LineBuffer`, turns each
line into a command with :func:`parse_command` and writes the bytes built here.

Commands are one frozen dataclass per kind (no shared ``kind`` field): dispatch with
``match``/``isinstance``.  Text is decoded as latin-1 so every byte a client sent survives
the round trip into an echoed reply unchanged (paths are echoed exactly as received).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_LINE = 496
"""Longest request line accepted, terminator included (§4.1)."""

_MAX_PATH = 37
"""Paths of 38 bytes or more get the ``..`` error (§4.3); longest valid FID path is 37."""


class LineTooLong(Exception):
    """MAX_LINE bytes arrived without a complete line: close without replying (§4.1)."""


class LineBuffer:
    """Reassembles request lines from arbitrarily fragmented and pipelined input."""

    __slots__ = ("_buf", "_scanned")

    def __init__(self, buf: bytearray | None = None) -> None:
        self._buf = bytearray() if buf is None else buf  # a connection's input buffer, or its own
        self._scanned = 0  # bytes of _buf already known to hold no "\n"

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_line(self) -> bytes | None:
        """Pop one complete line (EOL and a CR right before it removed), or None."""
        buf = self._buf
        if not buf:
            return None
        end = buf.find(b"\n", self._scanned, MAX_LINE)
        if end < 0:
            if len(buf) >= MAX_LINE:
                raise LineTooLong(f"{len(buf)} bytes without a newline")
            self._scanned = len(buf)
            return None
        line = bytes(buf[: end - 1 if end and buf[end - 1] == 0x0D else end])
        del buf[: end + 1]  # O(1) amortised: bytearray trims its head in place
        self._scanned = 0
        return line


@dataclass(frozen=True)
class Size:
    path: str


@dataclass(frozen=True)
class Digest:
    alg: str  # "MD5" or "SHA-1", also the reply's label
    path: str
    reason: str | None  # "fsck" selects the per-filesystem fsck queue (§4.6)


@dataclass(frozen=True)
class Watch:
    pass


@dataclass(frozen=True)
class AioThreads:
    n: int  # unchecked: only 1..100 is applied (§4.7); the reply is BLANK_REPLY anyway


@dataclass(frozen=True)
class Shutdown:
    graceful: bool  # cmogstored shuts down gracefully either way (§4.7)


@dataclass(frozen=True)
class Blank:
    pass


@dataclass(frozen=True)
class Unknown:
    token: str


@dataclass(frozen=True)
class BadPath:
    path: str


Command = Size | Digest | Watch | AioThreads | Shutdown | Blank | Unknown | BadPath

_PATH = rb"(/[A-Za-z0-9/.\-]*)"
_SIZE = re.compile(rb"size " + _PATH)
_DIGEST = re.compile(rb"(MD5|SHA-1) " + _PATH + rb"(?: ([A-Za-z0-9_]+))?")
_AIO = re.compile(rb"(?i:server aio_threads) ?= ?([0-9]+)")
_SHUTDOWN = re.compile(rb"shutdown(?: +(graceful))?")
_BLANK = re.compile(rb"[ \t]*")
_TOKEN = re.compile(rb"[ \t]*([^ \t\r]*)")

_WATCH = Watch()
_BLANK_CMD = Blank()


def _path_cmd(path: bytes, ok: Size | Digest) -> Command:
    if len(path) > _MAX_PATH or b".." in path:
        return BadPath(path.decode("latin-1"))
    return ok


def parse_command(line: bytes) -> Command:
    """Parse one line as returned by :meth:`LineBuffer.next_line` (§4.2, §4.7)."""
    if line == b"watch":
        return _WATCH
    if m := _SIZE.fullmatch(line):
        path = m[1]
        return _path_cmd(path, Size(path.decode("latin-1")))
    if m := _DIGEST.fullmatch(line):
        path, reason = m[2], m[3]
        return _path_cmd(path, Digest(m[1].decode("latin-1"), path.decode("latin-1"),
                                      reason.decode("latin-1") if reason else None))
    if m := _AIO.fullmatch(line):
        return AioThreads(int(m[1]))
    if m := _SHUTDOWN.fullmatch(line):
        return Shutdown(m[1] is not None)
    if _BLANK.fullmatch(line):
        return _BLANK_CMD
    # May be empty, e.g. for " \rx": the first run after spaces/tabs stops at the CR.
    m = _TOKEN.match(line)
    assert m is not None  # the token may be empty: it always matches
    return Unknown(m[1].decode("latin-1"))


def resolve_path(path: str) -> str:
    """Docroot-relative form of a sidechannel PATH.

    All leading slashes go, so ``//etc/passwd`` stays inside the docroot (1.2.1 defect, §8).
    """
    return path.lstrip("/")


def _enc(text: str) -> bytes:
    return text.encode("latin-1")


BAD_PATH_REPLY = b"ERROR: uri invalid (contains ..)\r\n"
BLANK_REPLY = b"\r\n"  # blank line and `server aio_threads` (§4.7)


def size_reply(path: str, size: int) -> bytes:
    """``<PATH> <size>\\r\\n``; pass -1 when the path cannot be stat'ed (§4.3)."""
    return _enc(f"{path} {size}\r\n")


def digest_reply(path: str, alg: str, hexdigest: str | None) -> bytes:
    """``<PATH> <alg>=<hex>\\r\\n``, ``=-1`` when the file cannot be opened (§4.4)."""
    return _enc(f"{path} {alg}={hexdigest if hexdigest is not None else -1}\r\n")


def read_error_reply(path: str, offset: int) -> bytes:
    """Reply when reading fails after ``offset`` bytes were digested (§4.4)."""
    return _enc(f"ERR read {path} at {offset} failed\r\n")


def unknown_reply(token: str) -> bytes:
    return _enc(f"ERROR: unknown command: {token}\r\n")
