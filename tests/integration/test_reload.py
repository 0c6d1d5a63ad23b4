"""SIGHUP reload: the config file read again and applied live, with real
processes, sockets and signals.  A client hammers the node throughout the
reloads and must see every request answered."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    HOST,
    QUIET_IOSTAT,
    HttpConn,
    alive,
    children,
    client_failures,
    free_port,
    mounted,
    read_all,
    wait_for,
)


def request(port: int, data: bytes) -> int:
    """The status of one request on a fresh connection (HTTP/1.0: closed after)."""
    with socket.create_connection((HOST, port), timeout=30) as s:
        s.sendall(data)
        return int(read_all(s, timeout=30).split(b" ", 2)[1])


def put(port: int, path: str, body: bytes = b"x") -> int:
    return request(port, f"PUT {path} HTTP/1.0\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)


def get(port: int, path: str) -> int:
    return request(port, f"GET {path} HTTP/1.0\r\n\r\n".encode())


def refused(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


class Node:
    """mogstored started on a config file (no listener on its command line)."""

    def __init__(self, root: Path, conf: str, args: tuple[str, ...] = (), wrap: tuple[str, ...] = (),
                 exec_wrap: tuple[str, ...] = ()) -> None:
        """``wrap``: a command the daemon runs as a child of (strace ... --);
        ``exec_wrap``: one that becomes the daemon (prlimit ... --)."""
        self.root = root
        self.docroot = root / "docroot"
        (self.docroot / "dev1").mkdir(parents=True, exist_ok=True)
        self.conf = root / "mogstored.conf"
        self.http, self.mgmt, self.other = free_port(), free_port(), free_port()
        self.write(conf)
        self.stderr_path = root / "stderr.log"
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen([*wrap, *exec_wrap, sys.executable, "-m", "mogstored",
                                          f"--config={self.conf}", *args],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                         env=dict(os.environ, **QUIET_IOSTAT), cwd=root)
        wait_for(lambda: self.proc.poll() is not None or not refused(self.http), what="the HTTP port")
        assert self.proc.poll() is None, self.stderr()
        self.pid = children(self.proc.pid)[0] if wrap else self.proc.pid

    def write(self, conf: str) -> None:
        self.conf.write_text(conf.format(docroot=self.docroot, http=self.http, mgmt=self.mgmt,
                                         other=self.other, host=HOST))

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, kill_if_stuck: bool = False) -> None:
        """SIGQUIT, then wait for the process (after 15 s: TimeoutExpired, or SIGKILL with
        ``kill_if_stuck``) and for every worker it had (a worker outlives its master by at
        most a second)."""
        workers = children(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                if not kill_if_stuck:
                    raise
                self.proc.kill()
                self.proc.wait()
        for pid in workers:
            wait_for(lambda pid=pid: not alive(pid), 15, f"worker {pid} to exit")

    def reload(self, conf: str | None = None) -> None:
        """Rewrite the config file (if given), SIGHUP, and wait for the outcome's log line."""
        if conf is not None:
            self.write(conf)
        before = self.stderr().count("reloaded: ") + self.stderr().count("reload failed")
        os.kill(self.pid, signal.SIGHUP)
        wait_for(lambda: self.stderr().count("reloaded: ") + self.stderr().count("reload failed") > before,
                 what="the reload")


BASE = "docroot = {docroot}\nhttplisten = {host}:{http}\nmgmtlisten = {host}:{mgmt}\n"


@pytest.fixture(params=[0, 2], ids=["single", "workers"])
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Node]:
    args = (f"--worker-processes={request.param}",) if request.param else ()
    n = Node(tmp_path, BASE, args)
    n.nworkers = request.param  # type: ignore[attr-defined]
    if request.param:
        wait_for(lambda: len(children(n.proc.pid)) == request.param, what="workers")
    try:
        yield n
        assert not client_failures(n.stderr()) and "respawning" not in n.stderr()
    finally:
        n.stop(kill_if_stuck=True)


def workers_replaced(n: Node, old: list[int]) -> bool:
    now = children(n.proc.pid)
    return len(now) == n.nworkers and not set(now) & set(old)  # type: ignore[attr-defined]


def test_no_failed_request_across_reloads(node: Node) -> None:
    """PUT and GET in a loop on fresh connections (and, single process, on one
    keep-alive connection) while the node reloads five times."""
    stop = threading.Event()
    answered = [0]
    failures: list[str] = []

    def fresh(i: int) -> None:
        while not stop.is_set():
            try:
                statuses = (put(node.http, f"/dev1/f{i}", b"abc"), get(node.http, f"/dev1/f{i}"))
            except (OSError, ValueError, IndexError) as e:
                failures.append(repr(e))
                continue
            if statuses != (201, 200):
                failures.append(f"statuses {statuses}")
            answered[0] += 2

    def keep_alive() -> None:
        with HttpConn(socket.create_connection((HOST, node.http), timeout=30)) as c:
            while not stop.is_set():
                statuses = (c.request(b"PUT /dev1/k HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nkk").status,
                            c.request(b"GET /dev1/k HTTP/1.1\r\nHost: x\r\n\r\n").status)
                if statuses != (201, 200):
                    failures.append(f"keep-alive statuses {statuses}")
                answered[0] += 2

    threads = [threading.Thread(target=fresh, args=(i,)) for i in range(2)]
    if not node.nworkers:  # type: ignore[attr-defined]
        # With workers, a replaced worker closes its idle keep-alive connections, as
        # at a graceful stop; a client then reconnects.  A single process keeps them.
        threads.append(threading.Thread(target=keep_alive))
    for t in threads:
        t.start()
    try:
        for _ in range(5):
            old = children(node.proc.pid)
            seen = answered[0]
            node.reload()
            if node.nworkers:  # type: ignore[attr-defined]
                wait_for(lambda old=old: workers_replaced(node, old), 15, "the workers replaced")
            wait_for(lambda seen=seen: answered[0] > seen + 20, what="requests answered after the reload")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    print(f"{answered[0]} requests answered across 5 reloads, {len(failures)} failed")
    assert not failures and all(not t.is_alive() for t in threads)
    assert node.stderr().count("reloaded: ") == 5


def test_listeners_open_and_close_and_in_flight_requests_complete(node: Node) -> None:
    body = b"0123456789"
    with socket.create_connection((HOST, node.http), timeout=30) as s:
        s.sendall(b"PUT /dev1/inflight HTTP/1.0\r\nContent-Length: 10\r\n\r\n01234")  # half a body
        old = children(node.proc.pid)
        node.reload("docroot = {docroot}\nhttplisten = {host}:{other}\nmgmtlisten = {host}:{mgmt}\n")
        assert put(node.other, "/dev1/new") == 201  # the new HTTP listener
        s.sendall(body[5:])
        assert int(read_all(s).split(b" ", 2)[1]) == 201  # accepted before the reload: completed
    wait_for(lambda: refused(node.http), 15, "the old HTTP listener closed")
    assert get(node.other, "/dev1/inflight") == 200
    assert (node.docroot / "dev1" / "inflight").read_bytes() == body
    if node.nworkers:  # type: ignore[attr-defined]
        wait_for(lambda: workers_replaced(node, old), 15, "the workers replaced")
    node.reload(BASE)  # and back
    assert get(node.http, "/dev1/new") == 200
    wait_for(lambda: refused(node.other), 15, "the second HTTP listener closed")


def test_get_only_listener_added(node: Node) -> None:
    node.reload(BASE + "httpgetlisten = {host}:{other}\n")
    assert put(node.http, "/dev1/a") == 201
    assert get(node.other, "/dev1/a") == 200
    assert put(node.other, "/dev1/b") == 405


def test_bad_config_keeps_the_running_one(node: Node) -> None:
    node.reload("docroot = {docroot}\nhttplisten = {host}:{other}\nmaxconns = lots\n")
    err = node.stderr()
    assert "reload: failed to parse maxconns=lots" in err
    assert f"reload: failed to load config={node.conf}: parser error" in err
    assert "reload failed, the running configuration is kept" in err
    assert put(node.http, "/dev1/a") == 201 and refused(node.other)
    # a listener that cannot be bound: nothing of the new configuration is taken
    with socket.socket() as busy:
        busy.bind((HOST, node.other))
        busy.listen()
        node.reload(BASE.replace("{http}", "{other}"))
        assert f"reload: addr={HOST}:{node.other} failed to bind+listen: Address already in use" in node.stderr()
    assert put(node.http, "/dev1/b") == 201
    assert node.stderr().count("reload failed") == 2
    assert node.proc.poll() is None


def test_docroot_and_pidfile_are_kept(node: Node, tmp_path: Path) -> None:
    other = tmp_path / "other"
    (other / "dev1").mkdir(parents=True)
    node.reload(BASE.replace("{docroot}", str(other)) + f"pidfile = {tmp_path}/pid\n")
    err = node.stderr()
    assert f"reload: docroot={other} cannot change live, keeping {node.docroot}" in err
    assert f"reload: pidfile={tmp_path}/pid cannot change live, keeping None" in err
    assert put(node.http, "/dev1/a") == 201
    assert (node.docroot / "dev1" / "a").exists() and not (other / "dev1" / "a").exists()
    assert not (tmp_path / "pid").exists()


def test_mountcheck_and_metricslisten_apply_live(node: Node) -> None:
    """dev1 is a plain directory on the docroot's filesystem: with mountcheck it
    takes no PUT and advertises no usage."""
    usage = node.docroot / "dev1" / "usage"
    wait_for(usage.exists, what="the usage file")
    old = children(node.proc.pid)
    node.reload(BASE + "mountcheck = 1\nmetricslisten = {host}:{other}\n")
    if node.nworkers:  # type: ignore[attr-defined]
        wait_for(lambda: workers_replaced(node, old), 15, "the workers replaced")
    wait_for(lambda: not usage.exists(), what="the usage file removed")  # in the device's pool
    assert put(node.http, "/dev1/a") == 507
    assert get(node.http, "/dev1/usage") == 404
    assert get(node.other, "/metrics") == 200
    old = children(node.proc.pid)
    node.reload(BASE)
    if node.nworkers:  # type: ignore[attr-defined]
        wait_for(lambda: workers_replaced(node, old), 15, "the workers replaced")
    assert put(node.http, "/dev1/a") == 201
    wait_for(usage.exists, what="the usage file again")
    wait_for(lambda: refused(node.other), 15, "the metrics listener closed")


def test_workers_are_replaced_and_counters_carried(tmp_path: Path) -> None:
    n = Node(tmp_path, BASE + "metricslisten = {host}:{other}\n", ("--worker-processes=2",))
    try:
        wait_for(lambda: len(children(n.proc.pid)) == 2, what="workers")
        for i in range(10):
            assert put(n.http, f"/dev1/{i}") == 201
        old = children(n.proc.pid)
        n.nworkers = 2  # type: ignore[attr-defined]
        n.reload()
        wait_for(lambda: workers_replaced(n, old), 15, "the workers replaced")
        assert "reload: 2 new workers, 2 old ones finishing their requests" in n.stderr()

        def puts_counted() -> float:
            with socket.create_connection((HOST, n.other), timeout=30) as s:
                s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                text = read_all(s).decode()
            return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith('mogstored_http_requests_total{method="PUT",status="201"}'))

        wait_for(lambda: puts_counted() == 10, what="the old workers' PUTs carried")
    finally:
        n.stop()


def limits(pid: int) -> int:
    """The soft RLIMIT_NOFILE of a process."""
    with open(f"/proc/{pid}/limits") as f:
        return int(next(line for line in f if line.startswith("Max open files")).split()[3])


def test_maxconns_raises_the_descriptor_limit(tmp_path: Path) -> None:
    """maxconns only ever raises the limit (§1.1.2): 1000 leaves the 1024 we start with."""
    conf = BASE + "maxconns = {maxconns}\n"
    n = Node(tmp_path, conf.replace("{maxconns}", "1000"), exec_wrap=("prlimit", "--nofile=1024:8192", "--"))
    try:
        assert limits(n.pid) == 1024
        n.reload(conf.replace("{maxconns}", "3000"))
        assert limits(n.pid) == 3000
        n.reload(conf.replace("{maxconns}", "2000"))  # never lowered
        assert limits(n.pid) == 3000
    finally:
        n.proc.send_signal(signal.SIGQUIT)
        n.proc.wait(15)


def test_durable_applies_live(tmp_path: Path) -> None:
    """fdatasync (strace) only once a reload turned durable on."""
    log = tmp_path / "strace.log"
    n = Node(tmp_path, BASE, wrap=("strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=fdatasync", "-o", str(log),
                                   "--"))
    try:
        assert put(n.http, "/dev1/a", b"before") == 201
        assert "fdatasync" not in log.read_text()
        n.reload(BASE + "durable = 1\n")
        assert put(n.http, "/dev1/b", b"after") == 201
        wait_for(lambda: "fdatasync" in log.read_text(), what="fdatasync traced")
    finally:
        os.kill(n.pid, signal.SIGQUIT)
        n.proc.wait(30)  # strace exits once the traced daemon has


def test_stallseconds_applies_live(node: Node, tmp_path: Path) -> None:
    """A frozen disk is reported stalled after the reloaded 1 s, not the 600 s the node started with."""
    node.reload(BASE + "stallseconds = 600\n")
    with mounted(node.docroot / "dev2", "ext4", tmp_path, size_mb=16) as dev2:
        old = children(node.proc.pid)
        node.reload(BASE + "stallseconds = 1\n")
        if node.nworkers:  # type: ignore[attr-defined]
            wait_for(lambda: workers_replaced(node, old), 15, "the workers replaced")
        wait_for(lambda: get(node.http, "/dev2/usage") == 200, what="dev2 found")  # it has its pool
        subprocess.run(["fsfreeze", "-f", str(dev2)], check=True)
        result: list[int] = []
        try:
            t = threading.Thread(target=lambda: result.append(put(node.http, "/dev2/frozen", b"w" * 65536)))
            t.start()
            wait_for(lambda: "device dev2 stalled" in node.stderr(), what="dev2 stalled")
            assert "(stallseconds=1)" in node.stderr()
        finally:
            subprocess.run(["fsfreeze", "-u", str(dev2)], check=True)
        t.join(30)
        assert result == [201]
        wait_for(lambda: "device dev2 no longer stalled" in node.stderr(), what="dev2 no longer stalled")


def test_worker_count_changes_live(tmp_path: Path) -> None:
    """worker_processes from the config file: the master starts the new number;
    to or from no workers at all cannot change live."""
    n = Node(tmp_path, BASE + "worker_processes = 2\n")
    try:
        wait_for(lambda: len(children(n.proc.pid)) == 2, what="2 workers")
        for count in (3, 1):
            old = children(n.proc.pid)
            n.nworkers = count  # type: ignore[attr-defined]
            n.reload(BASE + f"worker_processes = {count}\n")
            wait_for(lambda: workers_replaced(n, old), 15, f"{count} new workers")  # noqa: B023
            assert put(n.http, "/dev1/a") == 201
        n.reload(BASE)  # no workers
        assert "reload: worker-processes=0 cannot change live to or from 0, keeping 1" in n.stderr()
        wait_for(lambda: len(children(n.proc.pid)) == 1, what="still a worker")
        assert put(n.http, "/dev1/b") == 201
    finally:
        n.stop()


def put_from(src: str, port: int, path: str) -> int:
    """The status of a PUT sent from ``src`` (the client socket bound to it)."""
    with socket.socket() as s:
        s.bind((src, 0))
        s.settimeout(30)
        s.connect((HOST, port))
        s.sendall(f"PUT {path} HTTP/1.0\r\nContent-Length: 1\r\n\r\nx".encode())
        return int(read_all(s, timeout=30).split(b" ", 2)[1])


def test_trusted_changes_live(node: Node) -> None:
    """``trusted`` set, widened and removed by reloads: each applies to the connections
    accepted after it (127.0.0.2 plays an untrusted host)."""
    # With workers, old ones accept until their SIGQUIT reaches them, after 'reloaded:'.
    node.reload(BASE + "trusted = 127.0.0.1\n")
    wait_for(lambda: put_from("127.0.0.2", node.http, "/dev1/a") == 403, what="127.0.0.2 untrusted")
    assert put_from("127.0.0.2", node.http, "/dev1/new/a") == 403
    assert put_from("127.0.0.1", node.http, "/dev1/a") == 201
    assert not (node.docroot / "dev1" / "new").exists()  # a 403 creates no directory
    node.reload(BASE + "trusted = 127.0.0.0/8\n")
    wait_for(lambda: put_from("127.0.0.2", node.http, "/dev1/b") == 201, what="127.0.0.2 trusted")
    node.reload(BASE + "trusted = 10.0.0.0/8\n")
    wait_for(lambda: put_from("127.0.0.1", node.http, "/dev1/c") == 403, what="127.0.0.1 untrusted")
    node.reload(BASE)
    wait_for(lambda: put_from("127.0.0.2", node.http, "/dev1/d") == 201, what="everyone trusted again")
    assert node.stderr().count("reload failed") == 0
