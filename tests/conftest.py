"""Test harness: the daemon as a real subprocess on loopback, driven over sockets."""
from __future__ import annotations

import calendar
import contextlib
import email.utils
import fcntl
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

HOST = "127.0.0.1"
# Every daemon these tests start (``python -m mogstored`` from a temporary
# directory) runs this checkout's package, not whichever one pip installed.
REPO = str(Path(__file__).resolve().parent.parent)
os.environ["PYTHONPATH"] = os.pathsep.join([REPO, *filter(None, [os.environ.get("PYTHONPATH")])])

# Daemons started by the tests (cwd elsewhere) import this checkout's package, not whatever
# checkout an editable install points at.
REPO_ROOT = Path(__file__).resolve().parent.parent
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
)


QUIET_IOSTAT = {"MOG_IOSTAT_CMD": "sleep 86400"}  # no output; tests that watch set their own


def fake_iostat(tmp: Path, body: str, interval: float = 0.1, count: int = 0) -> str:
    """A MOG_IOSTAT_CMD printing sysstat-12 style reports every ``interval`` s."""
    script = tmp / "fake_iostat.sh"
    loop = f"i=0; while [ $i -lt {count} ]; do i=$((i+1));" if count else "while :; do"
    script.write_text(
        "#!/bin/sh\n"
        "printf 'Linux 6.1 (host) \\t11/26/26 \\t_x86_64_\\t(2 CPU)\\n\\n'\n"
        f"{loop} printf 'Device            r/s     w/s  %%util\\n{body}\\n'; sleep {interval}; done\n")
    script.chmod(0o755)
    return str(script)


def wait_for(pred: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    """Poll until ``pred()`` is true; returns its value."""
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
    return value


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# A named temp file of mogstored.store.atomic: <name>.<8 hex digits>.<writer pid>.tmp
_TEMP_NAME = re.compile(r"(.+)\.[0-9a-f]{8}\.([0-9]+)\.tmp")


def usage_being_replaced(p: Path) -> bool:
    """A live node's usage pass is replacing ``p``'s usage file right now: it
    links the new file under a temp name and renames that over ``usage``, so a
    directory listing may catch the temp name at any time."""
    m = _TEMP_NAME.fullmatch(p.name)
    return m is not None and m.group(1) == "usage" and alive(int(m.group(2)))


def stray_temps(root: Path) -> list[Path]:
    """Temp files below ``root``, but for usage files a live node is replacing."""
    return [p for p in root.rglob("*.tmp") if not usage_being_replaced(p)]


def quit_blocked(pid: int) -> bool:
    """SIGQUIT is in the main thread's blocked mask: the node's own start-up code
    runs (it holds the lifecycle signals first thing).  Before that the
    interpreter is still starting, and a SIGQUIT kills it (the default action)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigBlk:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGQUIT - 1)))
    return False


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return sorted(int(p) for p in out.split())


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"port {port} not accepting")


def read_until(sock: socket.socket, marker: bytes, timeout: float = 10.0) -> bytes:
    """Read until ``marker`` has arrived (or EOF); returns everything read."""
    sock.settimeout(timeout)
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def read_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Read to EOF."""
    sock.settimeout(timeout)
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


EPOCH = b"Thu, 01 Jan 1970 00:00:00 GMT"
_DATE_LINE = re.compile(rb"^Date: (.{29})\r\n", re.M)


def check_http_date(value: bytes) -> None:
    """Assert ``value`` is a 29-byte IMF-fixdate (weekday consistent with the date)."""
    assert len(value) == 29, value
    parsed = email.utils.parsedate(value.decode())
    assert parsed is not None, value
    assert email.utils.formatdate(calendar.timegm(parsed), usegmt=True).encode() == value


@dataclass
class Response:
    """One HTTP response as read off the wire."""

    head: bytes  # status line through the empty line
    body: bytes

    @property
    def status(self) -> int:
        return int(self.head.split(b" ", 2)[1])

    def header(self, name: str) -> bytes | None:
        m = re.search(rb"^" + re.escape(name.encode()) + rb": ([^\r]*)\r\n", self.head, re.M | re.I)
        return m.group(1) if m else None

    def norm(self) -> bytes:
        """The head with its (format-checked) Date value replaced by the epoch."""
        m = _DATE_LINE.search(self.head)
        assert m is not None, self.head
        check_http_date(m.group(1))
        return self.head[: m.start(1)] + EPOCH + self.head[m.end(1):]


class HttpConn:
    """A raw client connection that splits pipelined responses by Content-Length."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.pos = 0  # start of unread data in buf (cheap for thousands of pipelined responses)

    def __enter__(self) -> "HttpConn":
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> "HttpConn":
        self.sock.sendall(data)
        return self

    def _fill(self) -> bool:
        chunk = self.sock.recv(1 << 20)
        if self.pos:
            del self.buf[: self.pos]
            self.pos = 0
        self.buf += chunk
        return bool(chunk)

    def response(self, head_only: bool = False) -> Response:
        """Read one response; its body is Content-Length bytes unless ``head_only`` (HEAD)."""
        while (end := self.buf.find(b"\r\n\r\n", self.pos)) < 0:
            assert self._fill(), f"EOF before a complete head: {bytes(self.buf[self.pos:])!r}"
        resp = Response(bytes(self.buf[self.pos: end + 4]), b"")
        self.pos = end + 4
        length = 0 if head_only else int(resp.header("Content-Length") or 0)
        while len(self.buf) - self.pos < length:
            assert self._fill(), "EOF inside a body"
        resp.body = bytes(self.buf[self.pos: self.pos + length])
        self.pos += length
        return resp

    def request(self, data: bytes, head_only: bool = False) -> Response:
        return self.send(data).response(head_only)

    def at_eof(self, timeout: float = 10.0) -> bool:
        """True if the server closes the connection with nothing more to say."""
        self.sock.settimeout(timeout)
        try:
            while self._fill():
                pass
        except ConnectionResetError:
            pass
        return self.pos == len(self.buf)


def read_lines(sock: socket.socket, n: int, timeout: float = 10.0) -> list[bytes]:
    """Exactly ``n`` CRLF-terminated reply lines (each with its CRLF), nothing more."""
    sock.settimeout(timeout)
    data = b""
    while data.count(b"\r\n") < n:
        chunk = sock.recv(65536)
        assert chunk, f"EOF after {data!r}"
        data += chunk
    lines = data.split(b"\r\n")
    assert lines[n:] == [b""], data
    return [line + b"\r\n" for line in lines[:n]]


def http_get(d: "Daemon", path: str) -> tuple[int, bytes]:
    """(status code, body) of an HTTP/1.0 GET on a fresh connection."""
    with d.http() as s:
        s.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        head, _, body = read_all(s, timeout=30).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


class Daemon:
    """One mogstored process with its own docroot and ports."""

    def __init__(self, root: Path, devices: tuple[int, ...] = (1, 2), args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, http: bool = True, mgmt: bool = True,
                 wait: bool = True, wrap: tuple[str, ...] = ()) -> None:
        """``wrap``: a command the daemon runs under (e.g. strace ... --)."""
        self.root = root
        self.docroot = root / "docroot"
        self.docroot.mkdir(parents=True, exist_ok=True)
        for d in devices:
            (self.docroot / f"dev{d}").mkdir(exist_ok=True)
        self.stderr_path = root / "stderr.log"
        full_env = dict(os.environ)
        full_env.update(QUIET_IOSTAT)
        full_env.update(env or {})
        # A free port may be taken by another process (another test's free_port) before the
        # daemon binds it: the daemon then exits saying so, and gets other ports.
        for attempt in range(3):
            self.http_port = free_port() if http else None
            self.mgmt_port = free_port() if mgmt else None
            cmd = [*wrap, sys.executable, "-m", "mogstored", f"--docroot={self.docroot}"]
            if http:
                cmd.append(f"--httplisten={HOST}:{self.http_port}")
            if mgmt:
                cmd.append(f"--mgmtlisten={HOST}:{self.mgmt_port}")
            cmd += args
            self._stderr = open(self.stderr_path, "wb")
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=self._stderr, env=full_env, cwd=root)
            if not wait:
                return
            try:
                wait_port(self.http_port or self.mgmt_port, proc=self.proc)
                return
            except RuntimeError as e:
                self._stderr.close()
                if attempt == 2 or "Address already in use" not in self.stderr():
                    raise RuntimeError(f"{e}: {self.stderr()}") from None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.http_port}{path}"

    def http(self) -> socket.socket:
        s = socket.create_connection((HOST, self.http_port), timeout=10)
        return s

    def conn(self) -> HttpConn:
        return HttpConn(self.http())

    def mgmt(self) -> socket.socket:
        return socket.create_connection((HOST, self.mgmt_port), timeout=10)

    def mgmt_cmd(self, line: bytes) -> bytes:
        with self.mgmt() as s:
            s.sendall(line)
            return read_until(s, b"\r\n")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGQUIT, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("daemon did not stop in time")
        self._stderr.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """Every sample of one scrape of a ``--metricslisten`` port, parsed by prometheus_client."""
    with HttpConn(socket.create_connection((HOST, port), timeout=10)) as conn:
        resp = conn.request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert resp.status == 200, resp.head
    assert resp.header("Content-Type") == b"text/plain; version=0.0.4"
    samples: Samples = {}
    for family in text_string_to_metric_families(resp.body.decode()):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


# What the event core logs when a step raised: always a bug, whatever the test checks.
CLIENT_FAILED = re.compile(r"^.*\b(?:client|closing) fd=\d+ failed.*$", re.M)


def client_failures(log_text: str) -> list[str]:
    return CLIENT_FAILED.findall(log_text)


def _no_client_failures(d: Daemon) -> None:
    failures = client_failures(d.stderr())
    assert not failures, "the daemon logged failed clients:\n" + "\n".join(failures)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon for one test; the test fails if a client step raised in it."""
    d = Daemon(tmp_path)
    try:
        yield d
    finally:
        d.kill()
    _no_client_failures(d)


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for a module's tests that do not disturb each other; checked
    for failed clients after each of them (_shared_daemon_clean) and at the end."""
    d = Daemon(tmp_path_factory.mktemp("shared"))
    try:
        yield d
    finally:
        d.kill()
    _no_client_failures(d)


@pytest.fixture(autouse=True)
def _shared_daemon_clean(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "shared_daemon" in request.fixturenames:
        _no_client_failures(request.getfixturevalue("shared_daemon"))


@contextlib.contextmanager
def mounted(path: Path, fstype: str, image_dir: Path, size_mb: int = 64) -> Iterator[Path]:
    """A real filesystem on ``path`` for the block: ``ext4`` on a loop device
    (an image file in ``image_dir``) or a ``tmpfs``; unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    if fstype == "ext4":
        image = image_dir / f"{path.name}.ext4"
        with open(image, "wb") as f:
            f.truncate(size_mb << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(path)], check=True)
    else:
        subprocess.run(["mount", "-t", fstype, "-o", f"size={size_mb}m", fstype, str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)
        if fstype == "ext4":
            image.unlink()


def remount_cold(path: Path, image_dir: Path) -> None:
    """Unmount and mount again an ext4 ``mounted(path, "ext4", image_dir)``: the kernel
    forgets its dentries and pages, so the next lookup and read must go to the disk."""
    subprocess.run(["umount", str(path)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image_dir / f"{path.name}.ext4"), str(path)], check=True)


def named_threads(pid: int, name: str) -> int:
    """Threads of ``pid`` whose OS name is ``name`` (pool threads are named
    ``io:devN`` / ``io:shared``, epoll workers ``epoll``)."""
    n = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                n += f.read().strip() == name
        except OSError:
            pass  # exited meanwhile
    return n


class BlockedOpens:
    """Content-Range PUTs stuck in ``open(O_RDWR)`` of files we hold a read
    lease on (F_SETLEASE): a real blocking file-system call, one pool thread
    each, until we let go of the leases (the kernel would give up after
    /proc/sys/fs/lease-break-time, 45 s by default)."""

    def __init__(self, d: "Daemon", dev: int, n: int) -> None:
        self._old_sigio = signal.signal(signal.SIGIO, signal.SIG_IGN)  # lease-break notices
        self.leases = []
        for i in range(n):
            path = d.docroot / f"dev{dev}" / f"leased{i}"
            path.write_bytes(b"old")
            fd = os.open(path, os.O_RDONLY)
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
            self.leases.append(fd)
        self.results: list[int] = []
        self.threads = [threading.Thread(target=self._put, args=(d, f"/dev{dev}/leased{i}")) for i in range(n)]
        for t in self.threads:
            t.start()

    def _put(self, d: "Daemon", path: str) -> None:
        r = requests.put(d.url(path), data=b"new", headers={"Content-Range": "bytes 0-2/*"}, timeout=60)
        self.results.append(r.status_code)

    def release(self) -> None:
        for fd in self.leases:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
            os.close(fd)
        self.leases = []
        for t in self.threads:
            t.join(30)
        signal.signal(signal.SIGIO, self._old_sigio)
