"""Worker processes (§6.6) and graceful shutdown (§6.5), with real processes and signals."""
from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import (HOST, QUIET_IOSTAT as IOSTAT, Daemon, alive, children, quit_blocked, read_all, read_until,
                      wait_for)

def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def refused(port: int) -> bool:
    """True once nothing listens on ``port``. A reset means the probe raced the
    listener's close (it was in the backlog when the socket went): not yet known."""
    try:
        socket.create_connection((HOST, port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False
    return False


def usage_ok(d: Daemon) -> bool:
    with d.conn() as c:
        return c.request(b"GET /dev1/usage HTTP/1.0\r\n\r\n").status == 200


@pytest.fixture
def master(tmp_path: Path) -> Iterator[tuple[Daemon, list[int]]]:
    """A node with two workers and a pidfile; yields it with the worker PIDs."""
    d = Daemon(tmp_path, args=("--worker-processes=2", f"--pidfile={tmp_path / 'pid'}"), env=IOSTAT)
    wait_for(lambda: len(children(d.pid)) == 2, what="2 workers")
    workers = children(d.pid)
    yield d, workers
    if d.proc.poll() is None:
        d.stop()
    for pid in workers + children(d.pid):
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_master_forks_exactly_n_workers_and_serves_nothing(master: tuple[Daemon, list[int]], tmp_path: Path) -> None:
    d, workers = master
    assert (tmp_path / "pid").read_text() == f"{d.pid}\n"
    assert (d.docroot / "dev1" / "usage").exists()
    wait_for(lambda: all(len(children(w)) == 1 for w in workers), what="each worker's iostat")
    assert children(d.pid) == workers  # iostat children belong to the workers
    listening_fds = {os.readlink(f"/proc/{d.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{d.pid}/fd")}
    assert any(t.startswith("socket:") for t in listening_fds)  # holds the listeners for respawns
    assert usage_ok(d)
    assert d.mgmt_cmd(b"\r\n") == b"\r\n"


def test_worker_killed_is_respawned(master: tuple[Daemon, list[int]]) -> None:
    d, workers = master
    os.kill(workers[0], signal.SIGKILL)
    wait_for(lambda: not alive(workers[0]), 2, "the dead worker to be reaped")
    wait_for(lambda: len(children(d.pid)) == 2 and workers[0] not in children(d.pid), what="a new worker")
    assert workers[1] in children(d.pid)
    assert f"worker[0] PID:{workers[0]} died with status=9, respawning" in d.stderr()
    assert usage_ok(d)


def test_worker_quit_exits_zero_and_is_respawned(master: tuple[Daemon, list[int]]) -> None:
    d, workers = master
    os.kill(workers[1], signal.SIGQUIT)
    wait_for(lambda: workers[1] not in children(d.pid) and len(children(d.pid)) == 2, what="a new worker")
    assert f"worker[1] PID:{workers[1]} died with status=0, respawning" in d.stderr()


def test_usr2_to_a_worker_is_ignored(master: tuple[Daemon, list[int]], tmp_path: Path) -> None:
    d, workers = master
    os.kill(workers[0], signal.SIGUSR2)
    time.sleep(0.5)
    assert children(d.pid) == workers
    assert not (tmp_path / "pid.oldbin").exists()
    assert usage_ok(d)


@pytest.mark.parametrize("how", ["QUIT", "TERM", "INT", "shutdown"])
def test_stop_master_stops_every_worker(master: tuple[Daemon, list[int]], tmp_path: Path, how: str) -> None:
    d, workers = master
    if how == "shutdown":  # received by one worker, passed on to the master
        d.mgmt_cmd(b"shutdown\r\n")
    else:
        d.proc.send_signal(getattr(signal, f"SIG{how}"))
    assert d.proc.wait(10) == 0
    assert not any(alive(w) for w in workers)
    assert not (tmp_path / "pid").exists()
    assert refused(d.http_port)


def test_orphaned_workers_exit(master: tuple[Daemon, list[int]]) -> None:
    d, workers = master
    d.proc.kill()
    d.proc.wait()
    for w in workers:
        wait_for(lambda: not alive(w), 5, f"orphan {w} to exit")
    assert f"parent={d.pid} abandoned us, dying" in d.stderr()


@pytest.mark.parametrize("pinned", [False, True], ids=["affinity", "taskset-c0"])
def test_worker_processes_auto_is_one_per_allowed_cpu(tmp_path: Path, pinned: bool) -> None:
    """``--worker-processes=auto``: one worker per CPU the node may run on (its
    affinity); pinned to one CPU it is still a master and one worker."""
    want = 1 if pinned else len(os.sched_getaffinity(0))
    d = Daemon(tmp_path, args=("--worker-processes=auto",), env=IOSTAT,
               wrap=("taskset", "-c", "0") if pinned else ())
    workers: list[int] = []
    try:
        wait_for(lambda: len(children(d.pid)) == want, what=f"{want} workers")
        workers = children(d.pid)
        assert usage_ok(d)  # served by the workers; the master forked them all before
        assert children(d.pid) == workers
        assert all(os.sched_getaffinity(w) == os.sched_getaffinity(d.pid) for w in workers)
        assert d.stop() == 0
    finally:
        d.kill()
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_signal_during_start_up_takes_effect(tmp_path: Path) -> None:
    """§9: QUIT while starting is held back, then honoured once serving."""
    d = Daemon(tmp_path, env=IOSTAT, wait=False)
    deadline = time.monotonic() + 10
    while not quit_blocked(d.pid):  # a tight loop: start-up lasts only tens of ms
        assert time.monotonic() < deadline, "start-up never began"
    d.proc.send_signal(signal.SIGQUIT)
    assert d.proc.wait(10) == 0
    d.kill()


# -- graceful shutdown: everything in flight completes (§6.5) --------------------------

@pytest.fixture(params=[0, 2], ids=["single", "workers"])
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Daemon]:
    args = (f"--pidfile={tmp_path / 'pid'}",)
    if request.param:
        args += (f"--worker-processes={request.param}",)
    d = Daemon(tmp_path, args=args, env=IOSTAT)
    if request.param:
        wait_for(lambda: len(children(d.pid)) == request.param, what="workers")
    yield d
    pids = children(d.pid)
    d.kill()
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def serving_pid(d: Daemon, sock: socket.socket) -> int:
    """The process holding our connection's server side: the node itself or a worker."""
    port = sock.getsockname()[1]
    for pid in [d.pid, *children(d.pid)]:
        out = subprocess.run(["ss", "-tnpH", "state", "established", f"dport = :{port}"],
                             capture_output=True, text=True).stdout
        if f"pid={pid}," in out:
            return pid
    raise AssertionError("connection not found")


def quit_and_check_stopping(d: Daemon, held: socket.socket) -> int:
    """SIGQUIT the node; the process serving ``held`` shows the shutdown title and
    the listeners refuse new connections while ``held`` is still being served."""
    pid = serving_pid(d, held)
    d.proc.send_signal(signal.SIGQUIT)
    wait_for(lambda: "cmogstored, shutting down" in cmdline(pid), 2, "the shutdown title (§6.5)")
    wait_for(lambda: refused(d.http_port) and refused(d.mgmt_port), 2, "listeners closed")
    return pid


def assert_clean_exit(d: Daemon) -> None:
    assert d.proc.wait(15) == 0
    assert not (d.root / "pid").exists()


def test_quit_during_large_get_completes_it(node: Daemon) -> None:
    data = os.urandom(1 << 20) * 64  # 64 MiB: far more than the socket buffers hold
    (node.docroot / "dev1" / "big.fid").write_bytes(data)
    with node.conn() as idle, node.conn() as c:
        assert idle.request(b"GET /dev1/usage HTTP/1.1\r\nHost: x\r\n\r\n").status == 200
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        c.send(b"GET /dev1/big.fid HTTP/1.1\r\nHost: x\r\n\r\n")
        read_until(c.sock, b"\r\n\r\n")  # the body is under way
        time.sleep(0.2)
        quit_and_check_stopping(node, c.sock)
        assert idle.at_eof(5)  # idle between requests: closed at once
        c.buf = b""
        rest = read_all(c.sock, timeout=30)
        body = rest[rest.index(b"\r\n\r\n") + 4:] if b"\r\n\r\n" in rest else rest
    assert len(body) <= len(data) and data.endswith(body) and len(body) > len(data) // 2
    assert_clean_exit(node)


def test_quit_during_put_body_and_pipelined_requests(node: Daemon) -> None:
    body = os.urandom(8 << 20)
    with node.conn() as partial, node.conn() as c:
        c.send(b"PUT /dev1/up.fid HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:4096])
        partial.send(b"GET /dev1/usage HTTP/1.1\r\nHo")  # a partial request head
        time.sleep(0.2)
        quit_and_check_stopping(node, c.sock)
        c.send(body[4096:])
        assert c.response().status == 201
        assert c.at_eof(10)
        # the head completed, and a request pipelined behind it in the same segment
        partial.send(b"st: x\r\n\r\nHEAD /dev1/up.fid HTTP/1.1\r\nHost: x\r\n\r\n")
        assert partial.response().status == 200
        head = partial.response(head_only=True)
        assert head.status == 200 and head.header("Content-Length") == str(len(body)).encode()
        assert partial.at_eof(10)
    assert (node.docroot / "dev1" / "up.fid").read_bytes() == body
    assert_clean_exit(node)


def test_quit_during_digest_and_watch(node: Daemon) -> None:
    data = os.urandom(1 << 20) * 150
    (node.docroot / "dev2" / "big.fid").write_bytes(data)
    with node.mgmt() as watcher, node.mgmt() as s:
        watcher.sendall(b"watch\r\n")
        time.sleep(0.1)
        s.sendall(b"MD5 /dev2/big.fid\r\n")
        time.sleep(0.1)
        quit_and_check_stopping(node, s)
        assert read_all(s, timeout=30) == f"/dev2/big.fid MD5={hashlib.md5(data).hexdigest()}\r\n".encode()
        read_all(watcher, timeout=10)  # watchers are disconnected
    assert_clean_exit(node)


def test_quit_with_only_idle_clients_is_immediate(node: Daemon) -> None:
    with node.conn() as c:
        assert c.request(b"GET /dev1/usage HTTP/1.1\r\nHost: x\r\n\r\n").status == 200
        node.proc.send_signal(signal.SIGQUIT)
        assert c.at_eof(5)
    assert_clean_exit(node)


def test_quit_with_a_get_that_sent_a_body_exits_at_once(node: Daemon) -> None:
    """Issue 7 item 1: the body of a GET is the start of the next request, which cannot be
    one (§3.2): answered 400 + close at once, so it never holds up the shutdown."""
    (node.docroot / "dev1" / "f").write_bytes(b"file")
    with node.conn() as c:
        r = c.request(b"GET /dev1/f HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nabcde")
        assert r.status == 200 and r.body == b"file"
        r = c.response()
        assert r.status == 400 and r.header("Connection") == b"close"
        assert c.at_eof(1)
        t0 = time.monotonic()
        node.proc.send_signal(signal.SIGQUIT)
        assert node.proc.wait(1) == 0
        assert time.monotonic() - t0 < 1
    assert not (node.root / "pid").exists()


def test_quit_completes_request_pipelined_after_put_body(node: Daemon) -> None:
    """§6.5 item 4: the start of the next request arrived with the last body byte; the
    node waits for the rest of it and answers it before closing, without a reset."""
    body = os.urandom(1 << 20)
    with node.conn() as c:
        c.send(b"PUT /dev1/p.fid HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:-1])
        time.sleep(0.2)
        quit_and_check_stopping(node, c.sock)
        c.send(body[-1:] + b"GET")
        assert c.response().status == 201
        time.sleep(0.3)  # the rest of the request line trickles in later
        c.send(b" /dev1/p.fid HTTP/1.1\r\n")
        time.sleep(0.1)
        c.send(b"Host: x\r\n\r\n")
        r = c.response()
        assert r.status == 200 and r.body == body
        assert c.at_eof(10)
    assert_clean_exit(node)
