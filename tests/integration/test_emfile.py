"""Descriptor pressure (§3.10): with RLIMIT_NOFILE = 20, idle HTTP clients are
expired so that clients waiting behind them get served."""
from __future__ import annotations

import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import HOST, QUIET_IOSTAT as IOSTAT, HttpConn, free_port, wait_for, wait_port

from mogstored.process.server import acceptor_threads

REQUEST = b"GET /dev1/usage HTTP/1.1\r\nHost: x\r\n\r\n"


def low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (20, 20))


def answered(c: HttpConn, timeout: float) -> bool:
    c.sock.settimeout(timeout)
    try:
        return c.response().status == 200
    except TimeoutError:
        return False


def test_idle_clients_expire_when_descriptors_run_out(tmp_path: Path) -> None:
    (tmp_path / "dev1").mkdir()
    http, mgmt = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mogstored", f"--docroot={tmp_path}", f"--httplisten={HOST}:{http}",
         f"--mgmtlisten={HOST}:{mgmt}", "--maxconns=500"],
        env=dict(os.environ, **IOSTAT), preexec_fn=low_nofile, close_fds=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    old: list[HttpConn] = []
    try:
        wait_port(http, proc=proc)
        while True:  # keep-alive clients until the node has no descriptor left
            c = HttpConn(socket.create_connection((HOST, http), timeout=10))
            c.send(REQUEST)
            if not answered(c, 1.0):
                waiting = c  # in the listen backlog: not refused, not answered
                break
            old.append(c)
            assert len(old) < 20
        assert len(old) >= 3
        for c in old:
            c.send(b"G")  # idle from here on, mid-request
        start = time.monotonic()
        assert answered(waiting, 15)  # once the idle ones are past 5 s
        assert time.monotonic() - start > 3
        for c in old:  # expired: EOF, not a single byte
            assert c.at_eof(5)
        fresh = [HttpConn(socket.create_connection((HOST, http), timeout=10)) for _ in range(len(old) - 1)]
        for c in fresh:
            assert c.request(REQUEST).status == 200
            c.sock.close()
        waiting.sock.close()
    finally:
        for c in old:
            c.sock.close()
        proc.send_signal(signal.SIGQUIT)
        err = proc.communicate(timeout=20)[1].decode()
    assert proc.returncode == 0
    assert "accept4() failed with: Too many open files" in err
    expired = [int(m) for m in re.findall(r"expired (\d+) idle connections \(>5 sec\)", err)]
    assert sum(expired) == len(old)


def test_file_open_expires_idle_clients_and_retries(tmp_path: Path) -> None:
    """A GET whose open() finds no descriptor left expires idle clients and
    retries, instead of answering 500 (§3.5, §3.6.2 item 4)."""
    (tmp_path / "dev1").mkdir()
    (tmp_path / "dev1" / "f").write_bytes(b"payload")
    http, mgmt = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mogstored", f"--docroot={tmp_path}", f"--httplisten={HOST}:{http}",
         f"--mgmtlisten={HOST}:{mgmt}", "--maxconns=500"],
        env=dict(os.environ, **IOSTAT, MOG_DISK_USAGE_INTERVAL="3600"), preexec_fn=low_nofile,
        close_fds=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    idle: list[HttpConn] = []
    fresh: list[HttpConn] = []
    try:
        wait_port(http, proc=proc)
        for _ in range(4):
            c = HttpConn(socket.create_connection((HOST, http), timeout=10))
            assert c.request(REQUEST).status == 200
            idle.append(c)
        time.sleep(5.5)  # these are past the expiry threshold now
        # Fresh clients take the remaining descriptors one by one; each GETs a
        # file at once, so the open() that finds none left comes before any
        # accept would (an accept4 failure would expire the idle ones itself).
        acceptors = acceptor_threads("http", 0) + acceptor_threads("mgmt", 0)
        f = str(tmp_path / "dev1" / "f")
        while not _closed(idle[0]):
            assert len(fresh) < 20
            # The previous GET's file is closed (just after its body went out).
            wait_for(lambda: f not in fd_targets(proc.pid), what="the file closed")
            c = HttpConn(socket.create_connection((HOST, http), timeout=10))
            fresh.append(c)
            # A blocking accept4 reserves a descriptor while it waits: the
            # acceptor must be back in it, after taking this connection, before
            # the GET's open (on the event thread for a cached file) competes
            # for the last one.
            wait_for(lambda: server_side(c, http) in fd_targets(proc.pid) and in_accept4(proc.pid) == acceptors,
                     what="the connection taken and every acceptor back in accept4")
            r = c.request(b"GET /dev1/f HTTP/1.1\r\n\r\n")
            assert (r.status, r.body) == (200, b"payload")
        for c in idle:
            assert c.at_eof(5)
    finally:
        for c in idle + fresh:
            c.sock.close()
        proc.send_signal(signal.SIGQUIT)
        err = proc.communicate(timeout=20)[1].decode()
    assert proc.returncode == 0
    # The open()'s starvation expired the idle clients: not an accept4's (one
    # while the start-up pass still held descriptors expires nobody, 5 s early).
    lines = err.splitlines()
    starved = [i for i, line in enumerate(lines) if line.endswith("open() failed with: Too many open files")]
    assert starved and lines[starved[0] + 1].endswith("expired 4 idle connections (>5 sec)"), err
    assert not re.search(r"expired [1-9]", "\n".join(lines[:starved[0]])), err


def in_accept4(pid: int) -> int:
    """Threads of ``pid`` asleep in accept4: each holds a descriptor reserved
    for the connection it waits for (the kernel takes it before sleeping)."""
    n = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            n += Path(f"/proc/{pid}/task/{tid}/wchan").read_text() == "inet_csk_accept"
        except OSError:
            pass  # exited meanwhile
    return n


def fd_targets(pid: int) -> list[str]:
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass  # closed meanwhile
    return targets


def server_side(c: HttpConn, port: int) -> str:
    """``socket:[inode]`` of the node's end of ``c`` (from /proc/net/tcp), once it exists."""
    local = f"{c.sock.getsockname()[1]:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[1].endswith(f":{port:04X}") and f[2].endswith(f":{local}"):
            return f"socket:[{f[9]}]"
    return "socket:[none]"


def _closed(c: HttpConn) -> bool:
    """The server has closed this connection (EOF is waiting), without blocking."""
    c.sock.settimeout(0)
    try:
        return c.sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    finally:
        c.sock.settimeout(10)
