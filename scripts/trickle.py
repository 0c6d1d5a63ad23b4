#!/usr/bin/env python3
"""Server CPU seconds per request head: trickled (a few bytes per write) vs sent whole.

Starts mogstored from a checkout (--tree, default: this one) on loopback with an
HTTP listener only, has --clients connections each send one --head-size byte GET
head (one long header value, answered 404), once in --chunk byte writes issued
round-robin over all connections as fast as the node takes them, once in a single
write each, and prints the node's CPU time (utime + stime of all its threads, from
/proc/PID/stat) per head for both.  A parser that rescans the buffered head on
every read makes the trickled figure grow with the square of the head size;
--shape lines (many short header lines) shows it most.

    python scripts/trickle.py                       # this checkout
    python scripts/trickle.py --tree /path/to/other/checkout
    python scripts/trickle.py --parser-only --shape lines --head-size 16384
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.1"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def make_head(size: int, shape: str) -> bytes:
    """`value`: one long header value; `lines`: 16-byte header lines (the §3.2 example)."""
    if shape == "lines":
        start = b"GET /dev1/missing HTTP/1.1\r\n"
        lines = b"X-Hello: World\r\n" * ((size - len(start) - 2) // 16)
        pad = size - len(start) - len(lines) - 2
        return start + (b"X: " + b"a" * (pad - 5) + b"\r\n" if pad >= 6 else b"") + lines + b"\r\n"
    start, end = b"GET /dev1/missing HTTP/1.1\r\nX-Pad: ", b"\r\n\r\n"
    return start + b"a" * (size - len(start) - len(end)) + end


def connect(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection((HOST, port), timeout=30)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(s)
    return socks


def await_answers(socks: list[socket.socket]) -> None:
    for s in socks:
        s.setblocking(True)
        s.settimeout(600)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                raise SystemExit(f"connection closed before an answer: {data!r}")
            data += chunk
        if not data.startswith(b"HTTP/1.1 404 "):
            raise SystemExit(f"unexpected answer: {data[:60]!r}")
        s.close()


def send_trickled(socks: list[socket.socket], head: bytes, chunk: int) -> None:
    view = memoryview(head)
    sent = [0] * len(socks)
    for s in socks:
        s.setblocking(False)
    left = len(socks)
    while left:
        left = 0
        for i, s in enumerate(socks):
            pos = sent[i]
            if pos >= len(head):
                continue
            try:
                sent[i] = pos + s.send(view[pos : pos + chunk])
            except BlockingIOError:
                pass
            left += sent[i] < len(head)


def send_whole(socks: list[socket.socket], head: bytes) -> None:
    for s in socks:
        s.sendall(head)


def measure(pid: int, port: int, clients: int, head: bytes, chunk: int | None) -> float:
    socks = connect(port, clients)
    time.sleep(0.2)  # accepted and settled before the clock starts
    t0 = cpu_seconds(pid)
    if chunk is None:
        send_whole(socks, head)
    else:
        send_trickled(socks, head, chunk)
    await_answers(socks)
    return (cpu_seconds(pid) - t0) / clients


def parser_only(tree: Path, head: bytes) -> float:
    """CPU seconds for the tree's parser to take `head` one byte per call, as the
    connection code calls it (checkouts before the incremental parser: parse_head)."""
    sys.path.insert(0, str(tree.resolve()))
    import importlib  # noqa: PLC0415

    http_parser = None
    for name in ("mogstored.http.head", "mogstored.http.parser", "mogstored.http_parser"):  # newest layout first
        try:
            http_parser = importlib.import_module(name)
            break
        except ImportError:
            continue
    assert http_parser is not None

    parser = http_parser.HeadParser() if hasattr(http_parser, "HeadParser") else None
    buf = bytearray()
    t0 = time.process_time()
    for i in range(len(head)):
        buf += head[i : i + 1]
        done = parser.parse(buf, 0) if parser is not None else http_parser.parse_head(buf, 0)
    assert done is not None
    return time.process_time() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent,
                    help="checkout whose mogstored package is run (default: this one)")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--head-size", type=int, default=65535)
    ap.add_argument("--chunk", type=int, default=1, help="bytes per write when trickling")
    ap.add_argument("--shape", choices=("value", "lines"), default="value")
    ap.add_argument("--parser-only", action="store_true",
                    help="no server: CPU of the parser alone, one byte per call")
    args = ap.parse_args()
    head = make_head(args.head_size, args.shape)
    if args.parser_only:
        print(f"tree={args.tree} head={len(head)} bytes shape={args.shape}: parser CPU s per head "
              f"fed byte by byte {parser_only(args.tree, head):.3f}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "dev1").mkdir()
        port = free_port()
        env = dict(os.environ, PYTHONPATH=str(args.tree.resolve()))
        proc = subprocess.Popen([sys.executable, "-m", "mogstored", f"--docroot={tmp}",
                                 f"--httplisten={HOST}:{port}"], cwd=tmp, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection((HOST, port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise SystemExit("mogstored did not start")
                    time.sleep(0.05)
            whole = measure(proc.pid, port, args.clients, head, None)
            trickled = measure(proc.pid, port, args.clients, head, args.chunk)
        finally:
            proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    print(f"tree={args.tree} clients={args.clients} head={len(head)} bytes shape={args.shape} chunk={args.chunk}")
    print(f"server CPU s per head: whole {whole:.4f}  trickled {trickled:.4f}  "
          f"ratio {trickled / whole if whole else float('inf'):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
