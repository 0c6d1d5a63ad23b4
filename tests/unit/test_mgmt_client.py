"""MgmtConnection steps driven directly over a socketpair, with a stub service."""
from __future__ import annotations

import socket
from types import SimpleNamespace

from mogstored.event.step import Next
from mogstored.mgmt.connection import MgmtConnection

POOL = object()  # stands in for a device I/O pool


def client_pair() -> tuple[MgmtConnection, socket.socket]:
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    svc = SimpleNamespace(docroot=SimpleNamespace(path="/nonexistent"), watchers=set(),
                          ioq=SimpleNamespace(for_path=lambda docroot, path: POOL, shared=None),
                          process=SimpleNamespace(quitting=False))
    return MgmtConnection(ours, svc), peer


def test_commands_run_until_a_disk_step() -> None:
    c, peer = client_pair()
    peer.sendall(b"\r\nhello\nMD5 /dev1/x\r\n")
    assert c.step(None) is Next.RUN
    assert c.state.on_pool and c.pool is POOL  # the core hops to the device pool
    assert peer.recv(100) == b"\r\nERROR: unknown command: hello\r\n"
    c.close()


def test_failed_send_closes_without_running_the_rest() -> None:
    """Regression: a write error used to be ignored and the buffered commands run anyway,
    parking the dead connection in a device pool for a digest nobody would read."""
    c, peer = client_pair()
    peer.sendall(b"\r\nMD5 /dev1/x\r\n")
    peer.close()
    assert c.step(None) is Next.CLOSE
    c.close()
