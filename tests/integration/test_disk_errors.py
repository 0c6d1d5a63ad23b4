"""Failing disks (issue 15): every disk-error path of HTTP and the sidechannel,
on a FUSE filesystem that fails on demand (tests/faultfs.py) and an ext4
remounted read-only.

One node serves three devices for the whole module: dev1 a plain directory,
dev2 the FUSE mount, dev3 a loop-mounted ext4; a second node with
``--durable`` serves the same FUSE mount through a symlinked dev2.  After
each test the faults are cleared and the node must serve dev2 again with an
idle pool and as many descriptors as before.
"""
from __future__ import annotations

import contextlib
import ctypes.util
import errno
import importlib.util
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import (HOST, Daemon, children, client_failures, free_port, mounted, read_lines, scrape, value,
                      wait_for, wait_port)

from mogstored.store.iopool import BUFFER_SIZE

FAULTFS = Path(__file__).resolve().parent.parent / "faultfs.py"


def _fuse_missing() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if importlib.util.find_spec("mfusepy") is None or not (
            ctypes.util.find_library("fuse3") or ctypes.util.find_library("fuse")):
        return "mfusepy or libfuse is not installed (.ci/run and the test extras install them)"
    return None


_MISSING = _fuse_missing()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")


class FaultFS:
    """tests/faultfs.py mounted at ``mountpoint`` over ``backing``, in a process of its own."""

    def __init__(self, backing: Path, mountpoint: Path, work: Path) -> None:
        backing.mkdir(parents=True, exist_ok=True)
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.mountpoint = mountpoint
        ctl = work / "faultfs.sock"
        self.log = work / "faultfs.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, str(FAULTFS), str(backing), str(mountpoint), str(ctl)],
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        try:
            wait_for(lambda: os.path.ismount(mountpoint) or self.proc.poll() is not None, what="the FUSE mount")
            assert self.proc.poll() is None, self.log.read_text()
            self.ctl = socket.socket(socket.AF_UNIX)
            self.ctl.connect(str(ctl))
            self.ctl_file = self.ctl.makefile("rwb")
        except BaseException:
            self.stop()
            raise

    def _call(self, msg: dict[str, Any]) -> list[dict[str, Any]]:
        self.ctl_file.write(json.dumps(msg).encode() + b"\n")
        self.ctl_file.flush()
        fired: list[dict[str, Any]] = json.loads(self.ctl_file.readline())["fired"]
        return fired

    def set(self, *faults: dict[str, Any]) -> None:
        self._call({"cmd": "set", "faults": list(faults)})

    def clear(self) -> None:
        self._call({"cmd": "clear"})

    def fired(self) -> list[dict[str, Any]]:
        return self._call({"cmd": "fired"})

    def stop(self) -> None:
        if (os.path.ismount(self.mountpoint)
                and subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True).returncode):
            subprocess.run(["umount", "-l", str(self.mountpoint)], check=True)
        try:
            self.proc.wait(10)  # its main loop ends with the mount
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(AttributeError):
            self.ctl.close()


@dataclass
class Node:
    d: Daemon
    fs: FaultFS
    metrics: int
    backing: Path  # dev2's files, seen past the faults
    dev3: Path
    mark: int = 0  # stderr read so far
    fds: int = 0  # descriptors when idle

    def log(self) -> str:
        """What the daemon logged since the test began."""
        return self.d.stderr_path.read_bytes()[self.mark:].decode(errors="replace")

    def errors(self, name: str, device: str = "dev2") -> float:
        return value(scrape(self.metrics), "mogstored_io_errors_total", device=device, errno=name) or 0.0


def start_node(root: Path, devices: tuple[int, ...], *args: str) -> tuple[Daemon, int]:
    port = free_port()
    d = Daemon(root, devices=devices, args=(f"--metricslisten={HOST}:{port}", *args))
    wait_port(port, proc=d.proc)
    return d, port


def open_fds(pid: int) -> int:
    """Descriptors other than sockets (files, directories, pipes): the clients'
    sockets come and go with the test's own connections."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile
            n += not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return n


def settle(node: Node, fds: bool = True) -> None:
    """The node serves dev2, its pool is idle and (``fds``) its descriptors are back."""
    with node.d.conn() as c:
        resp = c.request(b"GET /dev2/ok.fid HTTP/1.1\r\nHost: x\r\n\r\n")
    assert resp.status == 200 and resp.body == b"fine"

    def idle() -> bool:
        s = scrape(node.metrics)
        return value(s, "mogstored_io_busy", device="dev2") == 0 and value(s, "mogstored_io_waiting", device="dev2") == 0
    wait_for(idle, what="dev2's pool idle")
    if fds:
        wait_for(lambda: open_fds(node.d.pid) == node.fds,
                 what=f"descriptors back to {node.fds} (now {open_fds(node.d.pid)})")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    root = tmp_path_factory.mktemp("disk")
    docroot = root / "docroot"
    with contextlib.ExitStack() as stack:
        fs = FaultFS(root / "backing2", docroot / "dev2", root)
        stack.callback(fs.stop)
        dev3 = stack.enter_context(mounted(docroot / "dev3", "ext4", root, 16))
        (root / "backing2" / "ok.fid").write_bytes(b"fine")
        d, port = start_node(root, (1, 2, 3))
        stack.callback(d.kill)
        n = Node(d, fs, port, root / "backing2", dev3)
        # Descriptors the node keeps: the usage pass has run, iostat (a pipe) is started.
        wait_for(lambda: (dev3 / "usage").exists() and children(d.pid), what="the usage pass and iostat")
        settle_fds(n)
        yield n
        assert not client_failures(d.stderr())


def settle_fds(n: Node) -> None:
    """Take the idle descriptor count once every kind of request has run once and
    the pool is idle (its start-up sweep, holding directories open, is over)."""
    with n.d.conn() as c:
        assert c.request(b"GET /dev2/ok.fid HTTP/1.1\r\nHost: x\r\n\r\n").status == 200
    if n.d.mgmt_port is not None:
        assert n.d.mgmt_cmd(b"size /dev2/ok.fid\r\n") == b"/dev2/ok.fid 4\r\n"
    settle(n, fds=False)
    n.fds = open_fds(n.d.pid)


@contextlib.contextmanager
def no_faults_then_whole(node: Node) -> Iterator[Node]:
    """``node`` with no fault set; afterwards, faults cleared, it must be whole again."""
    node.fs.clear()
    node.mark = node.d.stderr_path.stat().st_size
    try:
        yield node
    finally:
        node.fs.clear()
    settle(node)
    assert not client_failures(node.log())


@pytest.fixture
def faults(node: Node) -> Iterator[Node]:
    with no_faults_then_whole(node) as n:
        yield n


def logged_once(log: str, path: str, err: int) -> None:
    """One line names ``path`` (so its device) and the errno's text."""
    lines = [line for line in log.splitlines() if path in line and os.strerror(err) in line]
    assert len(lines) == 1, log


def fired(node: Node, op: str, errname: str) -> list[dict[str, Any]]:
    hits = [f for f in node.fs.fired() if f["op"] == op and f["errno"] == errname]
    assert hits, node.fs.fired()
    return hits


def no_temp(directory: Path) -> None:
    assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


# -- GET and HEAD ------------------------------------------------------------------------
@pytest.mark.parametrize("method, op", [("GET", "open"), ("GET", "getattr"), ("HEAD", "getattr")])
def test_get_head_open_or_stat_error_is_500_and_keeps_the_connection(faults: Node, method: str, op: str) -> None:
    (faults.backing / "g.fid").write_bytes(b"data")
    before = faults.errors("EIO")
    faults.fs.set({"op": op, "path": "/g.fid", "errno": "EIO"})
    with faults.d.conn() as c:
        resp = c.request(f"{method} /dev2/g.fid HTTP/1.1\r\nHost: x\r\n\r\n".encode(), head_only=True)
        assert resp.status == 500 and resp.header("Connection") == b"keep-alive"
        assert c.request(b"GET /dev1/missing HTTP/1.1\r\nHost: x\r\n\r\n").status == 404  # still served
    fired(faults, op, "EIO")
    assert faults.errors("EIO") == before + 1
    logged_once(faults.log(), "/dev2/g.fid", 5)


def test_get_fstat_error_after_a_good_open_is_500(faults: Node) -> None:
    """The lookup's getattr passes, the fstat's (the next one) fails."""
    (faults.backing / "s.fid").write_bytes(b"data")
    before = faults.errors("EIO")
    faults.fs.set({"op": "getattr", "path": "/s.fid", "errno": "EIO", "skip": 1})
    with faults.d.conn() as c:
        assert c.request(b"GET /dev2/s.fid HTTP/1.1\r\nHost: x\r\n\r\n").status == 500
    assert {f["op"] for f in faults.fs.fired()} == {"getattr"}
    assert faults.errors("EIO") == before + 1
    logged_once(faults.log(), "/dev2/s.fid", 5)


@pytest.mark.parametrize("size, after", [(4000, 0), (3 << 20, 1 << 20)], ids=["small", "large"])
def test_get_read_error_part_way_closes_before_content_length(faults: Node, size: int, after: int) -> None:
    """A small body is read on the event thread only from the page cache (RWF_NOWAIT,
    which FUSE refuses: EOPNOTSUPP), after a lookup from the dentry cache (none here:
    entry_timeout=0); a failing read there is only a miss, and the pool's sendfile
    reads it, as it does a large body.  So both sizes end in the pool's sendfile."""
    body = os.urandom(size)
    (faults.backing / "r.fid").write_bytes(body)
    before = faults.errors("EIO")
    faults.fs.set({"op": "read", "path": "/r.fid", "errno": "EIO", "after": after})
    with faults.d.conn() as c:
        c.send(b"GET /dev2/r.fid HTTP/1.1\r\nHost: x\r\n\r\n")
        head = c.response(head_only=True)
        assert head.status == 200 and head.header("Content-Length") == str(size).encode()
        c.at_eof()  # reads to EOF (a timeout if the node kept the connection)
        got = bytes(c.buf[c.pos:])
    # Closed short of Content-Length, after what was read before the failing read
    # (the kernel reads ahead in requests of up to 128 KiB: the failing one began before ``after``).
    first = min(f["offset"] for f in fired(faults, "read", "EIO"))
    assert got == body[:len(got)] and first <= len(got) <= after
    assert faults.errors("EIO") == before + 1
    logged_once(faults.log(), "/dev2/r.fid", 5)


# -- PUT ---------------------------------------------------------------------------------
PUT_FAULTS = [
    ("create", "EIO", 500), ("create", "ENOSPC", 507), ("create", "EDQUOT", 507),
    ("write", "EIO", 500), ("write", "ENOSPC", 507), ("write", "EFBIG", 507), ("write", "EDQUOT", 507),
    ("rename", "EIO", 500), ("fsync", "EIO", None),  # without --durable nothing is synced
]


@pytest.mark.parametrize("op, errname, status", PUT_FAULTS, ids=[f"{o}-{e}" for o, e, _ in PUT_FAULTS])
def test_put_error_keeps_the_old_file_and_leaves_no_temp(faults: Node, op: str, errname: str,
                                                        status: int | None) -> None:
    target = faults.backing / "p.fid"
    target.write_bytes(b"old")
    body = os.urandom(300_000)
    before = faults.errors(errname)
    fault = {"op": op, "path": "/p.fid*", "errno": errname}
    faults.fs.set({**fault, "after": 128 << 10} if op == "write" else fault)
    with faults.d.conn() as c:
        resp = c.request(b"PUT /dev2/p.fid HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        if status is None:
            assert resp.status == 201 and not faults.fs.fired()
            assert target.read_bytes() == body
            return
        assert resp.status == status and resp.header("Connection") == b"close"
        assert c.at_eof()
    assert target.read_bytes() == b"old"
    no_temp(faults.backing)
    fired(faults, op, errname)
    assert faults.errors(errname) == before + 1
    logged_once(faults.log(), "/dev2/p.fid", getattr(errno, errname))


def test_put_mkdir_error_is_500_and_creates_nothing(faults: Node) -> None:
    before = faults.errors("EIO")
    faults.fs.set({"op": "mkdir", "path": "/new", "errno": "EIO"})
    with faults.d.conn() as c:
        resp = c.request(b"PUT /dev2/new/m.fid HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        assert resp.status == 500 and c.at_eof()
    assert not (faults.backing / "new").exists()
    fired(faults, "mkdir", "EIO")
    assert faults.errors("EIO") == before + 1
    logged_once(faults.log(), "/dev2/new/m.fid", 5)


def test_content_range_put_write_error_keeps_what_was_written(faults: Node) -> None:
    """A Content-Range PUT writes into the target itself (§3.6.4): what was written stays."""
    target = faults.backing / "cr.fid"
    target.write_bytes(b"o" * 400_000)
    body = os.urandom(300_000)
    before = faults.errors("EIO")
    faults.fs.set({"op": "write", "path": "/cr.fid", "errno": "EIO", "after": 128 << 10})
    with faults.d.conn() as c:
        resp = c.request(b"PUT /dev2/cr.fid HTTP/1.1\r\nHost: x\r\nContent-Range: bytes 0-%d/*\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body) - 1, len(body), body))
        assert resp.status == 500 and c.at_eof()
    first = min(f["offset"] for f in fired(faults, "write", "EIO"))
    data = target.read_bytes()
    assert data[:first] == body[:first] and data[128 << 10:] == b"o" * (400_000 - (128 << 10))
    assert faults.errors("EIO") == before + 1
    logged_once(faults.log(), "/dev2/cr.fid", 5)


# -- DELETE ------------------------------------------------------------------------------
def test_delete_unlink_error_is_500_keeps_the_file_and_the_connection(faults: Node) -> None:
    (faults.backing / "del.fid").write_bytes(b"keep")
    before = faults.errors("EIO")
    faults.fs.set({"op": "unlink", "path": "/del.fid", "errno": "EIO"})
    with faults.d.conn() as c:
        resp = c.request(b"DELETE /dev2/del.fid HTTP/1.1\r\nHost: x\r\n\r\n")
        assert resp.status == 500 and resp.header("Connection") == b"keep-alive"
        assert c.request(b"GET /dev2/ok.fid HTTP/1.1\r\nHost: x\r\n\r\n").status == 200
    assert (faults.backing / "del.fid").read_bytes() == b"keep"
    fired(faults, "unlink", "EIO")
    assert faults.errors("EIO") == before + 1
    logged_once(faults.log(), "/dev2/del.fid", 5)


# -- the sidechannel -----------------------------------------------------------------------
@pytest.mark.parametrize("alg", ["MD5", "SHA-1"])
@pytest.mark.parametrize("reason", ["", " fsck"], ids=["plain", "fsck"])
def test_digest_read_error_part_way(faults: Node, alg: str, reason: str) -> None:
    """The digest reads BUFFER_SIZE at a time: the second read fails."""
    (faults.backing / "h.fid").write_bytes(os.urandom(BUFFER_SIZE * 5 // 2))
    before = faults.errors("EIO")
    faults.fs.set({"op": "read", "path": "/h.fid", "errno": "EIO", "after": BUFFER_SIZE})
    with faults.d.mgmt() as s:
        s.sendall(f"{alg} /dev2/h.fid{reason}\r\nsize /dev2/ok.fid\r\n".encode())
        assert read_lines(s, 2) == [f"ERR read /dev2/h.fid at {BUFFER_SIZE} failed\r\n".encode(),
                                    b"/dev2/ok.fid 4\r\n"]
    fired(faults, "read", "EIO")
    assert faults.errors("EIO") == before + 1
    logged_once(faults.log(), "/dev2/h.fid", 5)


@pytest.mark.parametrize("alg", ["MD5", "SHA-1"])
@pytest.mark.parametrize("reason", ["", " fsck"], ids=["plain", "fsck"])
def test_digest_open_error_is_minus_one(faults: Node, alg: str, reason: str) -> None:
    (faults.backing / "o.fid").write_bytes(b"abc")
    before = faults.errors("EIO")
    faults.fs.set({"op": "open", "path": "/o.fid", "errno": "EIO"})
    assert faults.d.mgmt_cmd(f"{alg} /dev2/o.fid{reason}\r\n".encode()) == f"/dev2/o.fid {alg}=-1\r\n".encode()
    fired(faults, "open", "EIO")
    assert faults.errors("EIO") == before + 1
    logged_once(faults.log(), "/dev2/o.fid", 5)


def test_size_stat_error_is_minus_one(faults: Node) -> None:
    (faults.backing / "z.fid").write_bytes(b"abc")
    before = faults.errors("EIO")
    faults.fs.set({"op": "getattr", "path": "/z.fid", "errno": "EIO"})
    assert faults.d.mgmt_cmd(b"size /dev2/z.fid\r\n") == b"/dev2/z.fid -1\r\n"
    fired(faults, "getattr", "EIO")
    assert faults.errors("EIO") == before + 1
    logged_once(faults.log(), "/dev2/z.fid", 5)


# -- ext4 read-only ------------------------------------------------------------------------
def test_read_only_ext4_refuses_writes_and_serves_reads(faults: Node) -> None:
    dev3 = faults.dev3
    (dev3 / "ro.fid").write_bytes(b"abc")
    before = faults.errors("EROFS", device="dev3")
    subprocess.run(["mount", "-o", "remount,ro", str(dev3)], check=True)
    try:
        d = faults.d
        with d.conn() as c:
            resp = c.request(b"PUT /dev3/ro.fid HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nnew")
            assert resp.status == 500 and c.at_eof()
        with d.conn() as c:
            resp = c.request(b"GET /dev3/ro.fid HTTP/1.1\r\nHost: x\r\n\r\n")
            assert resp.status == 200 and resp.body == b"abc"
            resp = c.request(b"DELETE /dev3/ro.fid HTTP/1.1\r\nHost: x\r\n\r\n")
            assert resp.status == 500 and resp.header("Connection") == b"keep-alive"
        assert d.mgmt_cmd(b"size /dev3/ro.fid\r\n") == b"/dev3/ro.fid 3\r\n"
        assert d.mgmt_cmd(b"MD5 /dev3/ro.fid\r\n") == b"/dev3/ro.fid MD5=900150983cd24fb0d6963f7d28e17f72\r\n"
        assert (dev3 / "ro.fid").read_bytes() == b"abc"
        assert faults.errors("EROFS", device="dev3") == before + 2  # the PUT's open, the DELETE's unlink
        log = faults.log()
        logged_once(log, "path=/dev3/ro.fid", 30)
        logged_once(log, "DELETE /dev3/ro.fid", 30)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(dev3)], check=True)
    no_temp(dev3)


# -- --durable -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def durable(node: Node, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A ``--durable`` node whose dev2 is a symlink to the FUSE mount (no sidechannel:
    the first node writes the usage files)."""
    root = tmp_path_factory.mktemp("durable")
    (root / "docroot").mkdir()
    (root / "docroot" / "dev2").symlink_to(node.d.docroot / "dev2")
    (node.backing / "dur").mkdir()
    port = free_port()
    d = Daemon(root, devices=(), args=(f"--metricslisten={HOST}:{port}", "--durable"), mgmt=False)
    try:
        wait_port(port, proc=d.proc)
        n = Node(d, node.fs, port, node.backing, node.dev3)
        settle_fds(n)
        yield n
    finally:
        d.kill()
    assert not client_failures(d.stderr())


@pytest.fixture
def durable_faults(durable: Node) -> Iterator[Node]:
    with no_faults_then_whole(durable) as n:
        yield n


def put(node: Node, path: bytes, body: bytes) -> int:
    with node.d.conn() as c:
        return c.request(b"PUT %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (path, len(body), body)).status


def test_durable_fdatasync_error_links_nothing(durable_faults: Node) -> None:
    n = durable_faults
    before = n.errors("EIO")
    n.fs.set({"op": "fdatasync", "path": "/dur/f.fid.*.tmp", "errno": "EIO"})
    assert put(n, b"/dev2/dur/f.fid", b"new") == 500
    assert not (n.backing / "dur" / "f.fid").exists()
    no_temp(n.backing / "dur")
    fired(n, "fdatasync", "EIO")
    assert n.errors("EIO") == before + 1
    logged_once(n.log(), "/dev2/dur/f.fid", 5)
    n.fs.clear()
    assert put(n, b"/dev2/dur/f.fid", b"again") == 201
    assert (n.backing / "dur" / "f.fid").read_bytes() == b"again"


def test_durable_directory_fsync_error_is_500_after_the_rename(durable_faults: Node) -> None:
    n = durable_faults
    (n.backing / "dur" / "g.fid").write_bytes(b"old")
    before = n.errors("EIO")
    n.fs.set({"op": "fsyncdir", "path": "/dur", "errno": "EIO"})
    assert put(n, b"/dev2/dur/g.fid", b"new") == 500
    # The new file has its name; only its directory entry's sync failed.
    assert (n.backing / "dur" / "g.fid").read_bytes() == b"new"
    no_temp(n.backing / "dur")
    fired(n, "fsyncdir", "EIO")
    assert n.errors("EIO") == before + 1
    log = n.log()
    logged_once(log, "/dev2/dur/g.fid", 5)
    assert "Failed to unlink" not in log, log  # the rename consumed the temp name


def test_durable_fsync_of_a_new_directory_error_is_500_and_names_no_file(durable_faults: Node) -> None:
    n = durable_faults
    before = n.errors("EIO")
    n.fs.set({"op": "fsyncdir", "path": "/dur", "errno": "EIO"})  # the parent of the new directory
    assert put(n, b"/dev2/dur/newdir/f.fid", b"new") == 500
    assert (n.backing / "dur" / "newdir").is_dir() and not list((n.backing / "dur" / "newdir").iterdir())
    fired(n, "fsyncdir", "EIO")
    assert n.errors("EIO") == before + 1
    logged_once(n.log(), "/dev2/dur/newdir/f.fid", 5)


def test_durable_delete_directory_fsync_error_is_500_after_the_unlink(durable_faults: Node) -> None:
    n = durable_faults
    (n.backing / "dur" / "x.fid").write_bytes(b"old")
    before = n.errors("EIO")
    n.fs.set({"op": "fsyncdir", "path": "/dur", "errno": "EIO"})
    with n.d.conn() as c:
        resp = c.request(b"DELETE /dev2/dur/x.fid HTTP/1.1\r\nHost: x\r\n\r\n")
        assert resp.status == 500 and resp.header("Connection") == b"keep-alive"
    assert not (n.backing / "dur" / "x.fid").exists()
    fired(n, "fsyncdir", "EIO")
    assert n.errors("EIO") == before + 1
    logged_once(n.log(), "/dev2/dur/x.fid", 5)
