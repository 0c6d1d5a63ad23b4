#!/usr/bin/env python3
"""Fuzz both parsers: generated and mutated inputs in-process (the properties of
tests/parsecheck.py), then against a live daemon over loopback sockets (random
splits and pauses, pipelined requests, half-closes and resets), checking that every
connection is answered or closed, the daemon never dies, a control request is served
throughout, and its descriptor count and RSS come back to where they were.  Bounded
counts: it stops by itself.  ``--atheris N``: a coverage-guided run instead (if atheris
is installed).  See scripts/README.md.
"""
from __future__ import annotations

import argparse
import collections
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
HOST = "127.0.0.1"  # loopback only, and the daemon binds nothing else

# The vocabulary is tests/parsecheck.py's; imported in main(), after atheris may have
# set up its instrumentation.
pc: Any = None


class Findings:
    """Failures by kind (their first line); the first input of each kind is saved."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.kinds: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()

    def add(self, kind: str, data: bytes, detail: str) -> None:
        with self.lock:
            self.kinds[kind] += 1
            if self.kinds[kind] == 1:
                self.directory.mkdir(parents=True, exist_ok=True)
                name = re.sub(r"[^A-Za-z0-9]+", "-", kind)[:60]
                (self.directory / f"{len(self.kinds):03d}-{name}.txt").write_text(
                    f"{kind}\n{detail}\ninput: {data!r}\n")
                print(f"FINDING {kind}: {detail[:300]}\n  input: {data[:300]!r}", flush=True)


# -- generated and mutated inputs --------------------------------------------------------------

class Gen:
    """Inputs from the grammar of §3.2/§4.2 and its near misses, and their mutations."""

    FILES = (b"/dev1/f", b"/dev1/0/000/000/0000000001.fid", b"/dev1/a/b", b"//dev1/usage", b"/dev1/f.fid")

    def __init__(self, rng: random.Random, clean: bool = False) -> None:
        self.rng = rng
        self.clean = clean  # only valid requests (near misses off), on a few real paths

    def pick(self, valid: tuple[bytes, ...], near: tuple[bytes, ...] = (), p_near: float = 0.15) -> bytes:
        return self.rng.choice(near if near and not self.clean and self.rng.random() < p_near else valid)

    def path(self) -> bytes:
        r = self.rng
        if self.clean:
            return r.choice(self.FILES)
        alphabet = pc.PATH_ALPHABET + (pc.PATH_NEAR if r.random() < 0.1 else "")
        body = "".join(r.choice(alphabet) for _ in range(r.randrange(0, 40 if r.random() < 0.2 else 25)))
        path = b"/" * r.choice((1, 1, 1, 2, 3)) + body.encode("latin-1")
        if r.random() < 0.1:
            path = b"http://" + r.choice([b"host", b"h:80", b"", b".."]) + path
        return path

    def header(self) -> bytes:
        r = self.rng
        name = self.pick(pc.HEADER_NAMES, pc.NEAR_NAMES, 0.05)
        values = pc.VALUES.get(name.lower())
        if values and (self.clean or r.random() < 0.8):
            value = r.choice(values)
        elif r.random() < 0.5 and not self.clean:
            value = r.choice(pc.NEAR_VALUES)
        else:
            value = bytes(r.randrange(33, 127) for _ in range(r.randrange(1, 12)))
        if self.clean and name.lower() in (b"content-md5", b"content-range"):  # not of the body sent
            name = b"X-Foo"
        if self.clean and name.lower() == b"content-length":
            value = r.choice((b"0", b"5", b"007", b"64"))  # bodies that are sent whole
        return (name + self.pick(pc.SEPARATORS, pc.NEAR_SEPARATORS, 0.05) + value
                + r.choice([b"", b"", b"", b" ", b"\t"]) + self.pick(pc.EOLS, pc.NEAR_EOLS, 0.03))

    def head(self) -> bytes:
        r = self.rng
        lines = [self.header() for _ in range(r.randrange(0, 7))]
        if r.random() < 0.7:
            lines.insert(0, b"Host: x\r\n")
        return (self.pick(pc.METHODS, pc.NEAR_METHODS, 0.05) + b" " + self.path() + b" "
                + self.pick(pc.VERSIONS, pc.NEAR_VERSIONS, 0.05) + b"\r\n" + b"".join(lines)
                + self.pick(pc.EOLS, pc.NEAR_EOLS, 0.03))

    def chunked(self) -> bytes:
        r = self.rng
        out = b""
        for _ in range(r.randrange(0, 4)):
            data = r.randbytes(r.randrange(1, 30))
            out += (r.choice([b"%x", b"%X", b"0%x"]) % len(data) + r.choice(pc.CHUNK_EXTENSIONS) + b"\r\n"
                    + data + r.choice([b"\r\n", b"\r\n", b"\r\n", b""]))
        trailers = r.choice([b"", b"", b"X-Other: v\r\n"] + ([] if self.clean else
                                                            [b"Content-MD5: " + pc.MD5_VALUE + b"\r\n"]))
        return out + b"0" + r.choice(pc.CHUNK_EXTENSIONS) + b"\r\n" + trailers + b"\r\n"

    def request(self) -> bytes:
        """A head, with the body its framing asks for (or not quite)."""
        head = self.head()
        if b"chunked" in head.lower():
            return head + self.chunked()
        m = re.search(rb"(?i)content-length:[ \t]*([0-9]{1,4})[ \t]*\r\n", head)
        if m is not None:
            n = int(m.group(1)) + (0 if self.clean else self.rng.choice((0, 0, 0, -1, 1)))
            return head + self.rng.randbytes(max(0, n))
        return head

    def mgmt(self) -> bytes:
        r = self.rng
        lines = [r.choice(pc.MGMT_LINES) for _ in range(r.randrange(1, 6))]
        if r.random() < 0.05:
            lines.append(b"size /" + b"x" * r.randrange(480, 520))
        return b"".join(line + r.choice([b"\r\n", b"\r\n", b"\n", b"\r"]) for line in lines)

    def mutate(self, data: bytes) -> bytes:
        r = self.rng
        buf = bytearray(data)
        for _ in range(r.randrange(1, 5)):
            at = r.randrange(0, len(buf) + 1)
            kind = r.randrange(6)
            byte = r.choice(pc.MUTATION_BYTES) if r.random() < 0.7 else r.randrange(256)
            if kind == 0 or at == len(buf):
                buf[at:at] = bytes([byte])
            elif kind == 1:
                buf[at] = byte
            elif kind == 2:
                del buf[at: at + r.randrange(1, 8)]
            elif kind == 3:  # repeat a span
                end = min(len(buf), at + r.randrange(1, 16))
                buf[at:at] = buf[at:end] * r.randrange(1, 4)
            elif kind == 4:  # a token of the grammar
                buf[at:at] = r.choice(pc.SEPARATORS + pc.NEAR_EOLS + pc.METHODS + pc.HEADER_NAMES + (b"\r\n",))
            else:  # flip a bit
                buf[at] ^= 1 << r.randrange(8)
        return bytes(buf)

    def any(self) -> bytes:
        r = self.rng
        kind = r.random()
        if kind < 0.45:
            data = self.request()
            while r.random() < 0.2:  # pipelined
                data += self.request()
        elif kind < 0.65:
            data = self.chunked() + r.choice([b"", b"GET / HTTP/1.1\r\n\r\n"])
        elif kind < 0.9:
            data = self.mgmt()
        else:
            return r.randbytes(r.randrange(0, 300))
        return self.mutate(data) if r.random() < 0.5 else data

    def cuts(self, n: int) -> list[int]:
        return [self.rng.randrange(0, n + 1) for _ in range(self.rng.randrange(0, 8))]


# -- in-process -----------------------------------------------------------------------------

def check_one(data: bytes, cuts: list[int], prefix: bytes, linear: bool, stats: collections.Counter[str]) -> None:
    """Every property of tests/parsecheck.py on one input, against both parsers."""
    outcome = pc.check_head(data, cuts, prefix)
    stats["head " + ("error" if outcome[0] == "error" else "incomplete" if outcome[1] is None else "request")] += 1
    if pc.check_h11(data):
        stats["head accepted by h11 too, compared"] += 1
    outcome = pc.check_chunked(data, cuts)
    stats["chunked " + ("error" if outcome[0] == "error" else "done" if outcome[2] else "incomplete")] += 1
    if pc.check_h11_chunked(data):
        stats["chunked decoded by h11 too, compared"] += 1
    commands, end = pc.check_lines(data, cuts)
    stats["sidechannel commands"] += len(commands)
    stats["sidechannel line too long" if end == "too long" else "sidechannel ended"] += 1
    if linear:
        pc.check_head_linear(data)
        pc.check_chunked_linear(data)
        pc.check_lines_linear(data)
        stats["linear-work checks"] += 1


def run_in_process(n: int, seed: int, findings: Findings) -> None:
    gen = Gen(random.Random(seed))
    stats: collections.Counter[str] = collections.Counter()
    prefixes = (b"", b"", b"GET /a HTTP/1.1\r\n\r\n")
    started = time.monotonic()
    for i in range(n):
        data = gen.any()
        cuts = gen.cuts(len(data))
        try:
            check_one(data, cuts, gen.rng.choice(prefixes), i % 50 == 0, stats)
        except AssertionError as e:
            findings.add(f"in-process: {str(e).splitlines()[0][:80]}", data, f"{e} (cuts {sorted(cuts)})")
        except Exception as e:  # noqa: BLE001  # a parser raised something else: the finding
            findings.add(f"in-process: {type(e).__name__}: {e}"[:100], data, f"{e!r} (cuts {sorted(cuts)})")
        if (i + 1) % 100000 == 0:
            print(f"  in-process: {i + 1} inputs, {time.monotonic() - started:.0f} s", flush=True)
    print(f"in-process: {n} inputs in {time.monotonic() - started:.0f} s")
    for key, count in sorted(stats.items()):
        print(f"  {key}: {count}")


def run_atheris(runs: int, seed: int, work: Path) -> None:
    """Coverage-guided (libFuzzer through atheris): the same checks, inputs from its corpus."""
    import atheris

    def one_input(raw: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(raw)
        cuts = [fdp.ConsumeIntInRange(0, 600) for _ in range(fdp.ConsumeIntInRange(0, 6))]
        data = fdp.ConsumeBytes(fdp.remaining_bytes())
        check_one(data, cuts, b"", len(data) < 200, collections.Counter())

    # Seeds from the generator and the grammar's tokens as a dictionary: libFuzzer
    # starts from valid requests instead of growing them from single bytes.
    (work / "corpus").mkdir(parents=True, exist_ok=True)
    gen = Gen(random.Random(seed))
    for i in range(300):
        (work / "corpus" / str(i)).write_bytes(b"\0" + gen.any()[:599])  # no cuts
    tokens = {*pc.METHODS, *pc.HEADER_NAMES, *pc.SEPARATORS, *pc.VERSIONS, *pc.NEAR_EOLS, *pc.MGMT_LINES,
              b"chunked", b"close", b"keep-alive", b"bytes=", b"http://", b"\r\n"}
    (work / "dict").write_text("".join('"' + "".join("\\x%02x" % b for b in t) + '"\n' for t in tokens if t))
    print(f"atheris: corpus (grown as it runs) and dictionary in {work}", flush=True)
    atheris.Setup([sys.argv[0], f"-runs={runs}", "-max_len=600", f"-dict={work / 'dict'}",
                   str(work / "corpus")], one_input)
    atheris.Fuzz()


# -- over sockets ---------------------------------------------------------------------------

class Node:
    """The daemon under test: one process on loopback, in a temporary docroot."""

    def __init__(self, root: Path, args: list[str]) -> None:
        self.docroot = root / "docroot"
        for dev in ("dev1", "dev2"):
            (self.docroot / dev).mkdir(parents=True)
        self.control_name = "ctl" + "".join(random.choice("qwxz") for _ in range(12))  # never generated
        (self.docroot / "dev2" / self.control_name).write_bytes(b"control")
        self.ports = [_free_port() for _ in range(2)]
        self.stderr_path = root / "stderr.log"
        env = dict(os.environ, MOG_IOSTAT_CMD="sleep 86400", PYTHONPATH=str(ROOT))
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mogstored", f"--docroot={self.docroot}",
             f"--httplisten={HOST}:{self.ports[0]}", f"--mgmtlisten={HOST}:{self.ports[1]}", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr, env=env)
        deadline = time.monotonic() + 20
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the daemon did not start:\n{self.stderr_path.read_text()}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            return self.control_get() and self.control_size()
        except OSError:
            return False

    def control_get(self) -> bool:
        with socket.create_connection((HOST, self.ports[0]), timeout=5) as s:
            s.sendall(b"GET /dev2/%s HTTP/1.0\r\n\r\n" % self.control_name.encode())
            return _read_to_eof(s, 5).endswith(b"\r\n\r\ncontrol")

    def control_size(self) -> bool:
        with socket.create_connection((HOST, self.ports[1]), timeout=5) as s:
            s.sendall(b"size /dev2/%s\r\n" % self.control_name.encode())
            want = b"/dev2/%s 7\r\n" % self.control_name.encode()
            got = b""
            while len(got) < len(want):
                chunk = s.recv(100)
                if not chunk:
                    break
                got += chunk
            return got == want

    def pids(self) -> list[int]:
        """The daemon and its children (worker processes, the iostat child)."""
        pid = self.proc.pid
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [pid, *map(int, f.read().split())]

    def _each(self, measure: Callable[[int], int]) -> int:
        total = 0
        for pid in self.pids():
            try:
                total += measure(pid)
            except FileNotFoundError:  # a child that just exited
                pass
        return total

    def fds(self) -> int:
        """Descriptors of the daemon and its children."""
        return self._each(lambda pid: len(os.listdir(f"/proc/{pid}/fd")))

    def rss_kib(self) -> int:
        """Resident memory of the daemon and its children."""
        def rss(pid: int) -> int:
            with open(f"/proc/{pid}/status") as f:
                return int(next(line for line in f if line.startswith("VmRSS:")).split()[1])
        return self._each(rss)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()
        return self.proc.returncode


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _read_to_eof(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


_SHUTDOWN = re.compile(rb"(?m)^[ \t]*shutdown")  # the one command the fuzzer must not send
_STATUS = re.compile(rb"HTTP/1\.1 ([0-9]{3}) ")


def send_one(node: Node, gen: Gen, findings: Findings, stats: collections.Counter[str]) -> None:
    """One connection: an input in random pieces with random pauses, then a half-close
    (the node must answer and close), or a reset mid-way (it must just cope)."""
    r = gen.rng
    mgmt = r.random() < 0.3
    clean = not mgmt and r.random() < 0.3
    if clean:  # valid requests, pipelined: each must be answered
        gen.clean = True
        data = b"".join(gen.request() for _ in range(r.randrange(1, 5)))
        gen.clean = False
    else:
        data = gen.mutate(gen.mgmt()) if mgmt and r.random() < 0.5 else gen.mgmt() if mgmt else gen.any()
    if mgmt:
        data = _SHUTDOWN.sub(b"", data)
    reset = r.random() < 0.05
    try:
        with socket.create_connection((HOST, node.ports[1 if mgmt else 0]), timeout=10) as s:
            for piece in pc.pieces(data, gen.cuts(len(data))):
                s.sendall(piece)
                if r.random() < 0.1:
                    time.sleep(r.random() * 0.003)
            if reset:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                stats["reset by the client"] += 1
                return
            s.shutdown(socket.SHUT_WR)
            reply = _read_to_eof(s, 20)
    except TimeoutError:
        findings.add("socket: not answered or closed within 20 s of a half-close", data, "")
        return
    except OSError:  # ECONNRESET, EPIPE, ENOTCONN: it closed with our bytes unread (after an error answer)
        stats["reset by the node"] += 1
        return
    if mgmt:
        stats["sidechannel connections"] += 1
        return
    statuses = _STATUS.findall(reply)
    if reply and not reply.startswith(b"HTTP/1.1 "):
        findings.add("socket: reply is not HTTP/1.1", data, repr(reply[:200]))
    for status in statuses:
        stats[f"HTTP {status.decode()}"] += 1
    if not reply:
        stats["closed without an answer"] += 1
        if clean:
            findings.add("socket: valid requests closed without an answer", data, "")
    if clean:
        stats["valid pipelined requests answered"] += len(statuses)


def run_sockets(n: int, seed: int, clients: int, minutes: float, findings: Findings, args: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="mogstored-fuzz-") as tmp:
        node = Node(Path(tmp), args)
        try:
            _drive(node, n, seed, clients, minutes, findings)
        finally:
            code = node.stop()
            log = node.stderr_path.read_text(errors="replace")
            for line in re.findall(r"^.*(?:client fd=\d+ failed|Traceback).*$", log, re.MULTILINE):
                findings.add(f"socket: the node logged: {line[:60]}", b"", line)
            print(f"daemon exit status after SIGQUIT: {code}")
            if code != 0:
                findings.add("socket: the daemon did not stop cleanly", b"", f"exit {code}\n{log[-2000:]}")


def _settle(node: Node) -> int:
    """The descriptor count once it has not changed for a second (every client closed,
    no file open), or after 30 s."""
    deadline = time.monotonic() + 30
    fds, same_since = node.fds(), time.monotonic()
    while time.monotonic() - same_since < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
        now = node.fds()
        if now != fds:
            fds, same_since = now, time.monotonic()
    return fds


def _drive(node: Node, n: int, seed: int, clients: int, minutes: float, findings: Findings) -> None:
    stats: collections.Counter[str] = collections.Counter()
    warmup = Gen(random.Random(seed - 1))
    for _ in range(2000):  # pools, caches and allocator arenas reach their working size first
        send_one(node, warmup, findings, collections.Counter())
    base_fds, base_rss = _settle(node), node.rss_kib()
    print(f"sockets: baseline {base_fds} descriptors, RSS {base_rss} KiB", flush=True)
    counter = iter(range(n))
    lock = threading.Lock()
    done = [0]
    stop_at = time.monotonic() + minutes * 60
    running = threading.Event()
    running.set()

    def client(k: int) -> None:
        gen = Gen(random.Random(seed * 1000 + k))
        while running.is_set() and time.monotonic() < stop_at:
            with lock:
                if next(counter, None) is None:
                    return
            send_one(node, gen, findings, stats)
            with lock:
                done[0] += 1

    def control() -> None:
        checks: list[tuple[str, Callable[[], bool]]] = [("GET", node.control_get), ("size", node.control_size)]
        while running.is_set():
            for what, check in checks:
                t0 = time.monotonic()
                try:
                    ok = check()
                except OSError as e:
                    ok = False
                    what += f" ({e})"
                took = time.monotonic() - t0
                stats["control requests"] += 1
                stats["control max ms"] = max(stats["control max ms"], int(took * 1000))
                if not ok:
                    findings.add(f"socket: control {what.split()[0]} not served", b"", what)
            if node.proc.poll() is not None:
                findings.add("socket: the daemon died", b"", f"exit {node.proc.returncode}")
                running.clear()
            time.sleep(0.5)

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    watcher = threading.Thread(target=control, daemon=True)
    watcher.start()
    for t in threads:
        t.start()
    last = 0
    while any(t.is_alive() for t in threads):
        time.sleep(1)
        if done[0] - last >= 10000:
            last = done[0] - done[0] % 10000
            print(f"  sockets: {done[0]} connections, {time.monotonic() - started:.0f} s, "
                  f"{node.fds()} descriptors, RSS {node.rss_kib()} KiB", flush=True)
    running.clear()
    watcher.join()
    elapsed = time.monotonic() - started
    node.control_size()  # restore a pool size an input may have changed (server aio_threads)
    with socket.create_connection((HOST, node.ports[1]), timeout=5) as s:
        s.sendall(b"server aio_threads = 10\r\n")
        s.recv(10)
    fds, rss = _settle(node), node.rss_kib()
    print(f"sockets: {done[0]} connections in {elapsed:.0f} s"
          + ("" if done[0] == n else f" (stopped by the {minutes:g}-minute limit, {n} asked)"))
    print(f"  descriptors {base_fds} -> {fds}, RSS {base_rss} -> {rss} KiB")
    for key, count in sorted(stats.items()):
        print(f"  {key}: {count}")
    if fds != base_fds:
        findings.add("socket: descriptors did not come back", b"", f"{base_fds} -> {fds}")
    if rss > base_rss * 1.25 + 4096:
        findings.add("socket: RSS did not come back", b"", f"{base_rss} -> {rss} KiB")


def main() -> int:
    global pc
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--in-process", type=int, default=1_000_000, metavar="N", help="inputs fed to the parsers")
    ap.add_argument("--sockets", type=int, default=100_000, metavar="N", help="connections to a live daemon")
    ap.add_argument("--minutes", type=float, default=30, help="stop the socket run after this long")
    ap.add_argument("--clients", type=int, default=8, help="concurrent client connections")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--daemon-args", default="", help="more mogstored options, e.g. --worker-processes=2")
    ap.add_argument("--findings", type=Path, default=Path("fuzz-findings"), help="where failing inputs go")
    ap.add_argument("--atheris", type=int, default=0, metavar="RUNS", help="only a coverage-guided run")
    opts = ap.parse_args()
    findings = Findings(opts.findings)
    if opts.atheris:
        import atheris

        with atheris.instrument_imports(include=["mogstored"]):
            import parsecheck
        pc = parsecheck
        run_atheris(opts.atheris, opts.seed, opts.findings / "atheris")  # libFuzzer exits the process when done
    import parsecheck

    pc = parsecheck
    if opts.in_process:
        run_in_process(opts.in_process, opts.seed, findings)
    if opts.sockets:
        run_sockets(opts.sockets, opts.seed, opts.clients, opts.minutes, findings, opts.daemon_args.split())
    print("findings:" if findings.kinds else "findings: none")
    for kind, count in findings.kinds.most_common():
        print(f"  {count:7d}  {kind}")
    return 1 if findings.kinds else 0


if __name__ == "__main__":
    sys.exit(main())
