"""Listening sockets: bound fresh, or inherited from an upgrading parent
(``CMOGSTORED_FD``) or from systemd (``LISTEN_FDS``), matched by address."""
from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from mogstored import log
from mogstored.config.options import Listen, StartupError

BACKLOG = 1024
_INT_MAX = 2**31 - 1
_ULONG_MAX = 2**64 - 1


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def bind(addr: Listen, inherited: dict[tuple[str, int], socket.socket]) -> socket.socket:
    """A listening socket for ``addr``; an inherited one is reused if it matches."""
    sock = inherited.pop((addr.host, addr.port), None)
    if sock is not None:
        sock.set_inheritable(False)
        os.set_blocking(sock.fileno(), True)
        return sock
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        _tune(sock)
        sock.bind((addr.host, addr.port))
        sock.listen(BACKLOG)
    except OSError as e:
        sock.close()
        raise StartupError(f"addr={addr} failed to bind+listen: {e.strerror}") from None
    return sock


def _parse_fd_list(text: str) -> list[int]:
    """CMOGSTORED_FD: decimal fds separated by commas (§1.6 step 4 messages)."""
    fds = []
    for part in text.split(","):
        if not part:
            continue
        for ch in part:
            if not ch.isdigit() or not ch.isascii():
                raise StartupError(f"CMOGSTORED_FD contained invalid byte: {ord(ch)}")
        n = int(part)
        if n > _ULONG_MAX:
            raise StartupError(f"strtuol failed to parse: {part}: Numerical result out of range")
        if n > _INT_MAX:
            raise StartupError(f"inherited fd={n} is too large")
        fds.append(n)
    return fds


def inherit(environ: Mapping[str, str]) -> dict[tuple[str, int], socket.socket]:
    """Listening sockets handed to us, keyed by their bound address."""
    fds: list[int] = []
    if environ.get("CMOGSTORED_FD"):
        fds += _parse_fd_list(environ["CMOGSTORED_FD"])
    if environ.get("LISTEN_FDS") and environ.get("LISTEN_PID") == str(os.getpid()):
        try:
            count = int(environ["LISTEN_FDS"])
        except ValueError:
            raise StartupError(f"LISTEN_FDS={environ['LISTEN_FDS']} is not a number") from None
        fds += range(3, 3 + count)
    found: dict[tuple[str, int], socket.socket] = {}
    for fd in fds:
        try:
            sock = socket.socket(fileno=fd)
            host, port = sock.getsockname()[:2]
        except OSError as e:
            raise StartupError(f"getsockname(fd={fd}) failed: {e.strerror}") from None
        if (host, port) in found:
            raise StartupError(f"duplicate listener {host}:{port} on fd={fd}")
        log.info(f"inherited {host}:{port} on fd={fd}")
        found[(host, port)] = sock
    return found


def close_unused(inherited: dict[tuple[str, int], socket.socket]) -> None:
    for sock in inherited.values():
        log.info(f"closing unused inherited fd={sock.fileno()}")
        sock.close()
    inherited.clear()
