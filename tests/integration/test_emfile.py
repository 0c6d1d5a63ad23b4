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

from conftest import HOST, QUIET_IOSTAT as IOSTAT, HttpConn, free_port, wait_port

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
        while not _closed(idle[0]):
            assert len(fresh) < 20
            c = HttpConn(socket.create_connection((HOST, http), timeout=10))
            fresh.append(c)
            # A blocking accept4 reserves a descriptor while it waits: let the
            # acceptor get back into it before the GET's open (on the event
            # thread for a cached file) competes for the last one.
            time.sleep(0.05)
            r = c.request(b"GET /dev1/f HTTP/1.1\r\n\r\n")
            assert (r.status, r.body) == (200, b"payload")
            time.sleep(0.05)  # the server closes the file just after the body is out
        for c in idle:
            assert c.at_eof(5)
    finally:
        for c in idle + fresh:
            c.sock.close()
        proc.send_signal(signal.SIGQUIT)
        err = proc.communicate(timeout=20)[1].decode()
    assert proc.returncode == 0
    assert "open() failed with: Too many open files" in err
    assert "accept4() failed" not in err
    assert re.search(r"expired 4 idle connections", err)


def _closed(c: HttpConn) -> bool:
    """The server has closed this connection (EOF is waiting), without blocking."""
    c.sock.settimeout(0)
    try:
        return c.sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    finally:
        c.sock.settimeout(10)
