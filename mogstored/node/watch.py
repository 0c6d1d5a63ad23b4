"""``watch`` subscribers: every iostat report goes to each, without ever
blocking on one.  A watcher whose socket is full skips blocks until its pending
bytes drain (§4.5), so a slow tracker costs nobody else anything."""
from __future__ import annotations

import socket
import threading
from collections.abc import Mapping
from typing import Protocol

from mogstored.node.scan import Device


def watch_block(devices: Mapping[int, Device], utils: dict[int, str]) -> bytes:
    """One block for a service's watchers: ``<devid>\t<util>\n`` ... ``.\n``
    (``utils`` by st_dev; ``-`` where iostat has no figure)."""
    lines = [f"{devid}\t{utils.get(dev.st_dev, '-')}\n" for devid, dev in sorted(devices.items())]
    lines.append(".\n")
    return "".join(lines).encode()


class Watcher(Protocol):
    sock: socket.socket


class Watchers:
    """The watchers of one service and their unsent bytes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[Watcher, bytes] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, client: Watcher) -> None:
        with self._lock:
            self._pending[client] = b""

    def discard(self, client: Watcher) -> None:
        """Called before the client's socket is closed, so broadcast never
        writes to a closed (or reused) descriptor."""
        with self._lock:
            self._pending.pop(client, None)

    def broadcast(self, block: bytes) -> None:
        with self._lock:
            for client, pending in self._pending.items():
                if pending:
                    pending = self._send(client, pending)
                    if pending:
                        self._pending[client] = pending
                        continue  # still behind: skip this block
                self._pending[client] = self._send(client, block)

    @staticmethod
    def _send(client: Watcher, data: bytes) -> bytes:
        try:
            n = client.sock.send(data, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        except BlockingIOError:
            return data
        except OSError:
            # A write error ends the watcher: its epoll worker sees EOF and closes it.
            try:
                client.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return b""
        return data[n:]

    def disconnect_all(self) -> None:
        with self._lock:
            for client in self._pending:
                try:
                    client.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
