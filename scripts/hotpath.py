#!/usr/bin/env python3
"""The per-request cost of the request path alone, without TCP or epoll.

Drives the real connection code (mogstored.http.connection, mogstored.mgmt.connection)
over a loopback TCP connection in this process, one request at a time, and prints the CPU
time per request (user and system).  It is the quick loop for working on the
hot path: what it shows is ours alone, where scripts/bench.py shows the whole
node against nginx.  Run it on the revision before and after a change:

    python scripts/hotpath.py [--requests N] [--profile]

--profile wraps the loop in cProfile and prints the top functions.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mogstored.config.options import Service  # noqa: E402
from mogstored.event.core import EventQueue  # noqa: E402
from mogstored.http.connection import HttpConnection  # noqa: E402
from mogstored.mgmt.connection import MgmtConnection  # noqa: E402
from mogstored.node.service import ServiceContext  # noqa: E402
from mogstored.store.fsck import FsckQueues  # noqa: E402
from mogstored.store.iopool import IoQueues  # noqa: E402

CASES = {
    "get_4k": (b"GET /dev1/small.fid HTTP/1.1\r\nHost: 127.0.0.1:7500\r\n\r\n", "http"),
    "head": (b"HEAD /dev1/small.fid HTTP/1.1\r\nHost: 127.0.0.1:7500\r\n\r\n", "http"),
    "get_404": (b"GET /dev1/none.fid HTTP/1.1\r\nHost: 127.0.0.1:7500\r\n\r\n", "http"),
    "put_64k": (b"PUT /dev1/put.fid HTTP/1.1\r\nHost: 127.0.0.1:7500\r\nContent-Length: 65536\r\n\r\n"
                + b"m" * 65536, "http"),
    "size": (b"size /dev1/small.fid\r\n", "mgmt"),
}


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """(server side, client side) of a loopback TCP connection; the server side non-blocking."""
    with socket.create_server(("127.0.0.1", 0)) as lst:
        peer = socket.create_connection(lst.getsockname())
        ours, _ = lst.accept()
    ours.setblocking(False)
    return ours, peer


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--only", default=",".join(CASES))
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="hotpath-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    try:
        return run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(args: argparse.Namespace, root: Path) -> int:
    (root / "dev1").mkdir()
    (root / "dev1" / "small.fid").write_bytes(os.urandom(4096))
    queue = EventQueue(0)
    ioq = IoQueues(queue.run)
    control = SimpleNamespace(quitting=False, retry_open=lambda fn: fn())
    svc = ServiceContext(Service(str(root), None, None, None), ioq, FsckQueues(), control)  # type: ignore[arg-type]
    svc.scan()  # dev1 and its pool, as the daemon finds them
    for name in args.only.split(","):
        request, kind = CASES[name]
        ours, peer = tcp_pair()
        conn = HttpConnection(ours, svc, get_only=False) if kind == "http" else MgmtConnection(ours, svc)
        queue.add(conn)  # type: ignore[arg-type]

        def one() -> None:
            """What an epoll worker does for one request; a pool may finish it."""
            peer.sendall(request)
            for fd, _ in queue.ep.poll(1.0, 1):
                queue.run(queue.clients[fd])
            peer.recv(1 << 16)

        for _ in range(200):
            one()
        if args.profile:
            import cProfile
            import pstats
            prof = cProfile.Profile()
            prof.enable()
        t0, c0 = os.times().elapsed, cpu()
        for _ in range(args.requests):
            one()
        t1, c1 = os.times().elapsed, cpu()
        if args.profile:
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(int(os.environ.get("HOTPATH_TOP", "18")))
        per = 1e6 / args.requests
        print(f"{name:8s} {(c1 - c0) * per:7.1f} us CPU/request (both ends), "
              f"{(t1 - t0) * per:7.1f} us wall")
        queue.ep.unregister(conn.fd)
        queue.clients.pop(conn.fd)
        conn.close()
        peer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
