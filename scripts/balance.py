#!/usr/bin/env python3
"""How evenly do worker processes share persistent connections?

Method
------
A node with ``--worker-processes=2`` (``--workers``) is started on loopback.
Each trial opens 400 (``--connections``) connections to its HTTP port at once
(all non-blocking connects fired back to back, so they pile up in the listen
queue the way a restarting tracker farm's do), sends ``GET /`` on each and
reads the answer, so every connection is accepted, served and left open
(keep-alive).  Then each connection is attributed to the worker holding it:
the server side of each connection is a socket inode in ``/proc/net/tcp``
(local port = the HTTP port), and exactly one worker has that inode among its
``/proc/<pid>/fd`` links.  The trial's figure is max/min of the per-worker
counts (1.00 = perfectly even).  All connections are then closed and the next
trial starts once the workers hold none.

Printed: each trial's counts and ratio, then min / median / max of the ratio
over ``--trials`` (9) trials.  ``--nginx`` measures nginx the same way
(``worker_processes 2``, default accept settings) for comparison.
"""
from __future__ import annotations

import argparse
import os
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.1"
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def established_inodes(port: int) -> set[int]:
    """Inodes of established sockets whose local port is ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == "01":
                inodes.add(int(f[9]))
    return inodes


def socket_inodes(pid: int) -> set[int]:
    found = set()
    fd_dir = f"/proc/{pid}/fd"
    for name in os.listdir(fd_dir):
        try:
            target = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(int(target[8:-1]))
    return found


def per_worker(port: int, workers: list[int]) -> list[int]:
    conns = established_inodes(port)
    return [len(conns & socket_inodes(pid)) for pid in workers]


def open_burst(port: int, n: int, timeout: float = 30.0) -> list[socket.socket]:
    """``n`` connections started at once; returns them once each got a response."""
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((HOST, port))
        socks.append(s)
        sel.register(s, selectors.EVENT_WRITE)
    pending = n
    deadline = time.monotonic() + timeout
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{pending} of {n} connections got no response")
        for key, events in sel.select(1.0):
            s = key.fileobj
            if events & selectors.EVENT_WRITE:
                s.send(REQUEST)
                sel.modify(s, selectors.EVENT_READ)
            else:
                data = s.recv(65536)
                if not data:
                    raise ConnectionError("closed before answering")
                if b"\r\n\r\n" in data:
                    sel.unregister(s)
                    pending -= 1
    sel.close()
    return socks


def trial(port: int, workers: list[int], n: int) -> list[int]:
    socks = open_burst(port, n)
    counts = per_worker(port, workers)
    for s in socks:
        s.close()
    deadline = time.monotonic() + 10
    while sum(per_worker(port, workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    return counts


class Mogstored:
    def __init__(self, root: Path, workers: int) -> None:
        (root / "dev1").mkdir()
        self.port = free_port()
        env = dict(os.environ, MOG_IOSTAT_CMD="sleep 86400")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mogstored", f"--docroot={root}", f"--httplisten={HOST}:{self.port}",
             f"--mgmtlisten={HOST}:{free_port()}", f"--worker-processes={workers}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGQUIT)
        self.proc.wait(30)


class Nginx:
    def __init__(self, root: Path, workers: int) -> None:
        self.port = free_port()
        conf = root / "nginx.conf"
        conf.write_text(f"""
worker_processes {workers};
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_timeout 600s;
    keepalive_requests 1000000;
    server {{ listen {HOST}:{self.port}; root {root}; }}
}}
""")
        (root / "index.html").write_text("hi\n")
        self.proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(root)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGQUIT)
        self.proc.wait(30)


def measure(server: Mogstored | Nginx, nworkers: int, trials: int, n: int) -> list[float]:
    wait_port(server.port)
    deadline = time.monotonic() + 10
    while len(workers := children(server.proc.pid)) < nworkers:
        if time.monotonic() > deadline:
            raise RuntimeError("workers did not start")
        time.sleep(0.05)
    time.sleep(0.5)  # every worker's acceptor is waiting in accept4
    ratios = []
    for i in range(trials):
        counts = trial(server.port, workers, n)
        ratio = max(counts) / max(1, min(counts))
        ratios.append(ratio)
        print(f"  trial {i + 1}: per worker {counts}  max/min {ratio:.2f}", flush=True)
    return ratios


def summary(name: str, ratios: list[float]) -> None:
    print(f"{name}: max/min over {len(ratios)} trials: min {min(ratios):.2f}  "
          f"median {statistics.median(ratios):.2f}  max {max(ratios):.2f}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--connections", type=int, default=400)
    ap.add_argument("--trials", type=int, default=9)
    ap.add_argument("--nginx", action="store_true", help="also measure nginx")
    args = ap.parse_args()
    kinds: list[type[Mogstored] | type[Nginx]] = [Mogstored]
    if args.nginx and shutil.which("nginx"):
        kinds.append(Nginx)
    for kind in kinds:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"{kind.__name__.lower()}, {args.workers} workers, {args.connections} connections:", flush=True)
            server = kind(Path(tmp), args.workers)
            try:
                ratios = measure(server, args.workers, args.trials, args.connections)
            finally:
                server.stop()
            summary(kind.__name__.lower(), ratios)
    return 0


if __name__ == "__main__":
    sys.exit(main())
