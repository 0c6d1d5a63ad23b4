"""``watch``: iostat utilisation streamed to trackers (§4.5, §4.5.1)."""
from __future__ import annotations

import os
import re
import socket
import sys
import time
from pathlib import Path

import requests

from conftest import Daemon, fake_iostat, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from mogstored.store.devices import read_mounts  # noqa: E402

BLOCK = re.compile(rb"((?:\d+\t[^\t\n]+\n)*)\.\n")


def iostat_name(docroot: Path) -> str | None:
    """The kernel name iostat uses for the disk holding ``docroot``, if it has one."""
    mount = read_mounts().get(os.stat(docroot).st_dev)
    if mount is None or not mount.source.startswith("/dev/"):
        return None
    return mount.source[len("/dev/"):]


def read_blocks(sock: socket.socket, n: int, timeout: float = 10.0) -> list[bytes]:
    sock.settimeout(timeout)
    data = b""
    while data.count(b".\n") < n:
        chunk = sock.recv(65536)
        assert chunk, f"EOF after {data!r}"
        data += chunk
    blocks = [m.group(1) for m in BLOCK.finditer(data)]
    assert b"".join(m.group(0) for m in BLOCK.finditer(data)) == data[: data.rindex(b".\n") + 2]
    return blocks[:n]


def watcher(d: Daemon) -> socket.socket:
    s = d.mgmt()
    s.sendall(b"watch\n")
    return s


def test_watch_streams_utilisation_per_device(tmp_path: Path) -> None:
    docroot = tmp_path / "docroot"
    docroot.mkdir()
    name = iostat_name(docroot)
    lines = "loop0 0.00 0.00 1.00\\n" + (f"{name} 1.00 2.00 12.30\\n" if name else "")
    d = Daemon(tmp_path, devices=(1, 2), env={"MOG_IOSTAT_CMD": fake_iostat(tmp_path, lines)})
    try:
        s = watcher(d)
        blocks = read_blocks(s, 3)
        util = b"12.30" if name else b"-"  # a disk iostat does not list shows "-"
        # The first block may come before the rescan, later ones list every device.
        assert blocks[2] == b"1\t" + util + b"\n2\t" + util + b"\n"
        # A device directory created while watching appears (watch triggers rescans
        # and the periodic pass keeps finding new ones).
        (d.docroot / "dev3").mkdir()
        s2 = watcher(d)
        assert read_blocks(s2, 2)[1] == b"1\t" + util + b"\n2\t" + util + b"\n3\t" + util + b"\n"
        s.close()
        s2.close()
    finally:
        d.kill()


def test_four_hundred_watchers_and_a_stalled_one(tmp_path: Path) -> None:
    d = Daemon(tmp_path, devices=(1,), env={"MOG_IOSTAT_CMD": fake_iostat(tmp_path, "vdz 1.00 1.00 50.00\\n", 0.02)})
    try:
        stalled = watcher(d)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # never read: it falls behind
        socks = [watcher(d) for _ in range(400)]
        for s in socks:
            assert read_blocks(s, 2) == [b"1\t-\n", b"1\t-\n"]
        time.sleep(1.0)  # the stalled watcher's buffers fill up meanwhile
        # Still serving everyone else.
        assert d.mgmt_cmd(b"size /dev1\r\n").startswith(b"/dev1 ")
        assert requests.get(d.url("/"), timeout=10).status_code == 200
        for s in socks[:20]:
            assert read_blocks(s, 2)
        for s in socks:
            s.close()
        # The stalled watcher got whole blocks only, and resumes once it reads.
        stalled.settimeout(10)
        assert read_blocks(stalled, 40)
        stalled.close()
    finally:
        d.kill()


def test_watch_input_ignored_and_eof_at_shutdown(tmp_path: Path) -> None:
    d = Daemon(tmp_path, devices=(1,), env={"MOG_IOSTAT_CMD": fake_iostat(tmp_path, "vdz 1 2.00\\n")})
    try:
        s = watcher(d)
        s.sendall(b"size /dev1\r\n")  # write-only after watch: never answered
        blocks = read_blocks(s, 2)
        assert blocks == [b"1\t-\n", b"1\t-\n"]
        assert d.stop() == 0
        s.settimeout(5)
        rest = b""
        while chunk := s.recv(65536):
            rest += chunk
        assert b"/dev1 " not in rest and (rest == b"" or rest.endswith(b".\n"))
        s.close()
    finally:
        d.kill()


def test_iostat_restarted_when_it_exits(tmp_path: Path) -> None:
    d = Daemon(tmp_path, devices=(1,), env={"MOG_IOSTAT_CMD": fake_iostat(tmp_path, "vdz 1 7.00\\n", 0.05, count=2)})
    try:
        s = watcher(d)
        assert len(read_blocks(s, 6, timeout=15)) == 6  # more than one run's worth of reports
        s.close()
    finally:
        d.kill()


def test_iostat_missing(tmp_path: Path) -> None:
    d = Daemon(tmp_path, devices=(1,), env={"MOG_IOSTAT_CMD": "/nonexistent/iostat -dx 1 30"})
    try:
        # Until its shell has failed, iostat counts as running: subscribe after that.
        wait_for(lambda: re.search(r"iostat done \(pid=\d+, status=127\), will retry in 10s", d.stderr()),
                 10, "the failed iostat")
        s = watcher(d)
        s.settimeout(1.5)
        try:
            data = s.recv(100)
        except socket.timeout:
            data = None
        assert data is None  # subscription accepted; no ERR line, nothing until iostat works
        assert d.mgmt_cmd(b"size /dev1\r\n").startswith(b"/dev1 ")
        assert "iostat(1) not available/running" in d.stderr()
        s.close()
    finally:
        d.kill()
