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


def test_shutting_down_answers_what_was_sent_then_closes() -> None:
    """The graceful-quit rule every connection shares (event/stream.py): a command
    already sent is read and answered; with nothing buffered, a read that finds
    nothing closes."""
    c, peer = client_pair()
    c.svc.process.quitting = True
    peer.sendall(b"hello\r\n")
    assert c.step(None) is Next.READ  # that recv drained the socket: one per wake-up
    assert peer.recv(100) == b"ERROR: unknown command: hello\r\n"
    assert c.step(None) is Next.CLOSE  # woken again: nothing came
    c.close()


# -- the disk states, with a real docroot and fsck queue ---------------------------
import hashlib  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from mogstored.mgmt import connection as mgmt  # noqa: E402
from mogstored.store.fs import Docroot  # noqa: E402
from mogstored.store.fsck import FsckQueues  # noqa: E402

from conftest import mounted, read_until, remount_cold  # noqa: E402


class _Pool:
    def __init__(self) -> None:
        self.submitted: list[object] = []

    def submit(self, client: object) -> None:
        self.submitted.append(client)


@pytest.fixture
def disk_pair(tmp_path: Path):
    (tmp_path / "dev1").mkdir()
    (tmp_path / "dev1" / "f").write_bytes(b"hello")
    pool = _Pool()
    svc = SimpleNamespace(docroot=Docroot(str(tmp_path)), watchers=set(), fsck=FsckQueues(),
                          ioq=SimpleNamespace(for_path=lambda docroot, path: pool, shared=None),
                          process=SimpleNamespace(quitting=False))
    made: list[tuple[MgmtConnection, socket.socket]] = []

    def make() -> tuple[MgmtConnection, socket.socket]:
        ours, peer = socket.socketpair()
        ours.setblocking(False)
        peer.settimeout(5)
        made.append((MgmtConnection(ours, svc), peer))  # type: ignore[arg-type]
        return made[-1]

    yield make, pool
    for c, peer in made:
        c.close()
        peer.close()
    os.close(svc.docroot.fd)


def test_states_are_listed_once() -> None:
    names = [s.name for s in mgmt.STATES]
    assert len(set(names)) == len(names) == 6
    assert {s.name for s in mgmt.STATES if s.on_pool} == {"sizing", "opening", "digesting", "fsck-waiting"}


def test_cached_size_is_answered_on_the_event_thread(disk_pair) -> None:
    make, pool = disk_pair
    c, peer = make()
    assert not os.path.exists(os.path.join(c.svc.docroot.path, "dev1", "nothing"))  # a negative dentry now
    peer.sendall(b"size /dev1/f\r\nsize /dev1/nothing\r\nsize /dev1/f\r\n")
    assert c.step(None) is Next.READ and c.state is mgmt.READING
    assert pool.submitted == []
    assert read_until(peer, b"/dev1/nothing -1\r\n/dev1/f 5\r\n") == b"/dev1/f 5\r\n/dev1/nothing -1\r\n/dev1/f 5\r\n"


def test_size_not_in_the_dentry_cache_runs_in_the_pool(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with mounted(root / "dev1", "ext4", tmp_path, 16) as dev1:
        (dev1 / "f").write_bytes(b"hello")
        remount_cold(dev1, tmp_path)
        pool = _Pool()
        svc = SimpleNamespace(docroot=Docroot(str(root)), watchers=set(), process=SimpleNamespace(quitting=False),
                              ioq=SimpleNamespace(for_path=lambda docroot, path: pool, shared=None))
        ours, peer = socket.socketpair()
        ours.setblocking(False)
        c = MgmtConnection(ours, svc)  # type: ignore[arg-type]
        try:
            peer.sendall(b"size /dev1/f\r\n")
            assert c.step(None) is Next.RUN and c.state is mgmt.SIZING and c.pool is pool
            assert c.step(pool) is Next.ACTIVE and c.state is mgmt.READING
            assert c.step(None) is Next.READ
            assert peer.recv(100) == b"/dev1/f 5\r\n"
        finally:
            c.close()
            peer.close()
            os.close(svc.docroot.fd)


def test_digest_opens_then_hashes(disk_pair) -> None:
    make, pool = disk_pair
    c, peer = make()
    peer.sendall(b"MD5 /dev1/f\r\n")
    assert c.step(None) is Next.RUN and c.state is mgmt.OPENING
    assert c.step(pool) is Next.ACTIVE and c.state is mgmt.READING
    assert c.step(None) is Next.READ
    assert peer.recv(100) == b"/dev1/f MD5=" + hashlib.md5(b"hello").hexdigest().encode() + b"\r\n"


def test_second_fsck_on_a_filesystem_waits_parked_until_the_first_is_done(disk_pair) -> None:
    make, pool = disk_pair
    first, first_peer = make()
    second, second_peer = make()
    for c, peer in ((first, first_peer), (second, second_peer)):
        peer.sendall(b"MD5 /dev1/f fsck\r\n")
        assert c.step(None) is Next.RUN
    slice_ = mgmt.DIGEST_SLICE
    try:
        mgmt.DIGEST_SLICE = 1  # one read per step: the first stays in DIGESTING a while
        assert first.step(pool) is Next.ACTIVE and first.state is mgmt.DIGESTING
        assert second.step(pool) is Next.PARKED and second.state is mgmt.FSCK_WAITING
        assert pool.submitted == []
        while first.state is mgmt.DIGESTING:
            first.step(pool)
    finally:
        mgmt.DIGEST_SLICE = slice_
    assert pool.submitted == [second]  # resumed by the one that finished
    assert second.step(pool) is Next.ACTIVE and second.state is mgmt.READING
    assert second.step(None) is Next.READ
    expected = b"/dev1/f MD5=" + hashlib.md5(b"hello").hexdigest().encode() + b"\r\n"
    assert first.step(None) is Next.READ
    assert first_peer.recv(100) == expected and second_peer.recv(100) == expected
