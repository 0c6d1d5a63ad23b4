#!/usr/bin/env python3
"""Benchmark mogstored against nginx and against other revisions, side by side.

Why ratios
----------
The machine is shared and noisy, so absolute figures move from run to run.
Every server is therefore measured in the same run, on the same files, with
the same load generator, in alternating rounds, and the figures that matter
are ratios: ``ours / nginx``, ``ours / base`` (another git revision of this
project, ``--baseline REF``) and ``variant / ours`` (our daemon with other
arguments, ``--variant NAME=ARGS``).  A ``--dry-run`` puts a second nginx in
place of ours: its ratios should be ~1.00 and their spread shows the noise.

Modes
-----
pinned     every server on CPU ``--server-cpu`` (1), nginx with ONE worker;
           the load generator on ``--client-cpu`` (0).  Shows the cost of
           one request on one CPU.
unpinned   servers free to use every CPU, as operators run them (nginx with
           ``worker_processes auto``, or ``--nginx-workers``, or the number
           given to ours' ``--worker-processes``; ours as
           ``--mogstored-args`` says, e.g. ``--worker-processes=auto``); the
           load generator still on CPU 0.  For a Python server this shows what
           the interpreter lock costs when threads bounce between CPUs.
Both run by default, each with freshly started servers; the last table
gives ``unpinned / pinned`` per server.

Scenarios
---------
small_get   GET of one 4 KiB file, 50 keep-alive connections; req/s.
large_get   GET of one 256 MiB file, 4 parallel keep-alive connections;
            MB/s (10^6 bytes/s) received, counted as bytes arrive.
put_64k     PUT of 64 KiB bodies, 16 keep-alive connections overwriting
            pre-created files under /dev1/<n>/000/000/; req/s.
put_16m     PUT of 16 MiB bodies, 4 parallel connections; MB/s of bodies of
            COMPLETED PUTs.
mgmt_size   sidechannel ``size`` of the 4 KiB file, 4 connections, one
            command in flight per connection; commands/s.  nginx has no
            sidechannel, so only our revisions run it.
mgmt_pipe   the same with 64-deep pipelines (64 commands per write).
mgmt_md5    sidechannel ``MD5`` of a 1 MiB file, 4 connections; commands/s.
idle_rss    resident memory: the RSS right after start-up, and the KiB each
            of 5000 idle connections adds (lower is better for both).

Besides the figure, each round records where the server's time went: its
user and system CPU time per request (``usr us``, ``sys us``: every thread
of every process of its session, so nginx's workers and ours, and our
worker processes, count too), and wrk's p50/p99 latency.  A PNG beside the
tables plots the ratios and that split (``--plot``; needs matplotlib, the
``bench`` extra: ``pip install -e '.[bench]'``; skipped with a message
without it).

Method
------
* HTTP load comes from ``wrk`` (C, epoll, ``--wrk-threads`` threads, 1 by
  default) with a Lua ``done()`` hook for exact counters; PUT requests are
  pre-built per wrk thread.  Sidechannel load comes from this script run as
  a child (``--mgmt-load``), one thread multiplexing its connections with
  selectors, on the client CPU.
* All servers serve the SAME docroot (a temp dir with ``dev1/``) on /dev/shm
  (tmpfs) by default, so figures are about the servers; ``--tmpdir
  /var/tmp`` puts the disk in (use it for ``--variant durable=--durable``).
* Per scenario: a short warm-up per server, then ``--rounds`` timed rounds
  per server of ``--seconds`` each, the order reversed every round (ABBA)
  so a linear drift hits all alike.  A figure is the mean of its rounds.
* Before timing, each server is checked once: GETs return the exact bytes,
  a PUT of a new file in a new directory gives 201 and round-trips, an
  overwrite round-trips too.  A failure aborts the run (exit status 1); a
  round with socket errors or non-2xx answers is flagged ``!!`` and makes
  the exit status 1.
* ``--variant NAME=ARGS``: ARGS may hold ``{metrics}``, replaced by a free
  127.0.0.1 port; the script then GETs ``/metrics`` there once a second
  during that server's rounds (the cost of being scraped is in its figure).
* Every process started here is stopped by PID (nginx: SIGQUIT; ours:
  SIGTERM; then SIGKILL of its own session) and the temp dir and the
  baseline worktree are removed, also on Ctrl-C, SIGTERM and errors.

Usage: see scripts/README.md, or ``python scripts/bench.py --help``.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import itertools
import json
import os
import re
import resource
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
KIB = 1024
MIB = 1024 * 1024
SMALL_PATH = "/dev1/0/000/000/0000000001.fid"  # MogileFS paths: at most 37 bytes
LARGE_PATH = "/dev1/0/000/000/0000000002.fid"
MD5_PATH = "/dev1/0/000/000/0000000003.fid"
MD5_SIZE = 1 * MIB
IDLE_CONNECTIONS = 5000
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
CHECKS = itertools.count()  # a new directory for every check_server PUT


def log(msg: str) -> None:
    """Progress goes to stderr so that --json output stays clean."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """A failure that aborts the run (server won't start, wrong bytes...)."""


# --------------------------------------------------------------------------
# Scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str            # "wrk", "mgmt" or "idle"
    unit: str
    connections: int
    method: str = "GET"  # wrk: "GET" or "PUT"
    path: str = ""       # GET / mgmt: the file used
    body_size: int = 0   # PUT: bytes per request
    files_per_thread: int = 0  # PUT: distinct paths cycled by each wrk thread
    command: str = ""    # mgmt: "size" or "MD5"
    depth: int = 1       # mgmt: commands in flight per connection

    @property
    def large(self) -> bool:
        return self.body_size >= MIB or self.path == LARGE_PATH

    @property
    def nginx_can(self) -> bool:
        return self.kind != "mgmt"

    def put_prefix(self) -> str:
        return f"/dev1/{list(SCENARIOS).index(self.name)}/000/000"

    def put_paths(self, threads: int) -> list[str]:
        return [f"{self.put_prefix()}/t{t}-{i}.fid"
                for t in range(threads) for i in range(self.files_per_thread)]


SCENARIOS: dict[str, Scenario] = {
    s.name: s for s in (
        Scenario("small_get", "wrk", "req/s", 50, path=SMALL_PATH),
        Scenario("large_get", "wrk", "MB/s", 4, path=LARGE_PATH),
        Scenario("put_64k", "wrk", "req/s", 16, method="PUT",
                 body_size=64 * KIB, files_per_thread=64),
        Scenario("put_16m", "wrk", "MB/s", 4, method="PUT",
                 body_size=16 * MIB, files_per_thread=4),
        Scenario("mgmt_size", "mgmt", "cmd/s", 4, path=SMALL_PATH, command="size"),
        Scenario("mgmt_pipe", "mgmt", "cmd/s", 4, path=SMALL_PATH, command="size",
                 depth=64),
        Scenario("mgmt_md5", "mgmt", "cmd/s", 4, path=MD5_PATH, command="MD5"),
        Scenario("idle_rss", "idle", "KiB/conn", IDLE_CONNECTIONS),
    )
}


# --------------------------------------------------------------------------
# Fixtures: the files every server serves


@dataclass
class Fixtures:
    small: bytes
    large_sha256: str = ""
    large_size: int = 0


def write_random_file(path: Path, size: int) -> str:
    """Write `size` random bytes to `path`; return their SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 4 * MIB))
            digest.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def make_fixtures(docroot: Path, scenarios: list[Scenario],
                  wrk_threads: int) -> Fixtures:
    small = os.urandom(4 * KIB)
    (docroot / SMALL_PATH.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    (docroot / SMALL_PATH.lstrip("/")).write_bytes(small)
    write_random_file(docroot / MD5_PATH.lstrip("/"), MD5_SIZE)
    fixtures = Fixtures(small=small)
    if any(s.name == "large_get" for s in scenarios):
        log("writing the 256 MiB file")
        fixtures.large_size = 256 * MIB
        fixtures.large_sha256 = write_random_file(
            docroot / LARGE_PATH.lstrip("/"), fixtures.large_size)
    for s in scenarios:  # pre-create PUT targets: every timed PUT overwrites
        for p in s.put_paths(wrk_threads):
            target = docroot / p.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as f:
                f.truncate(s.body_size)
    return fixtures


# --------------------------------------------------------------------------
# Server processes


@dataclass
class ServerSpec:
    """What to start: nginx, or one revision of ours with some arguments."""
    name: str            # "nginx", "ours", "base" or a variant's name
    kind: str            # "nginx" or "mogstored"
    cmd: str = ""        # mogstored: the command, run in `cwd`
    cwd: Path = REPO_ROOT
    args: str = ""


@dataclass
class Server:
    spec: ServerSpec
    label: str
    port: int
    mgmt_port: int | None
    proc: subprocess.Popen
    log_path: Path
    stop_signal: int
    metrics_url: str | None = None
    rss_start_kib: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        """Every live process of this server's session (start_new_session)."""
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == self.proc.pid:  # session id
                out.append(int(entry))
        return out

    def cpu_times(self) -> tuple[float, float]:
        """(user, system) CPU seconds of every process of the session.  A
        process's /proc/PID/stat is the sum over all its threads, those that
        have exited included (pool threads leave after 10 s idle), which the
        live /proc/PID/task/*/stat entries alone would miss."""
        ticks = os.sysconf("SC_CLK_TCK")
        user = system = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            user += int(fields[11])  # utime
            system += int(fields[12])  # stime
        return user / ticks, system / ticks

    def rss_kib(self) -> int:
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/statm") as f:
                    total += int(f.read().split()[1]) * PAGE_KIB
            except OSError:
                continue
        return total

    def open_fds(self) -> int:
        total = 0
        for pid in self.pids():
            try:
                total += len(os.listdir(f"/proc/{pid}/fd"))
            except OSError:
                continue
        return total


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pin_to(cpu: int | None):
    """preexec_fn for Popen: pin the child (and all it starts) to one CPU."""
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def nginx_binary() -> str:
    path = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if not path:
        raise BenchError("nginx not found: apt-get install -y nginx-light")
    return path


def nginx_config(workdir: Path, docroot: Path, port: int, workers: int | str) -> str:
    user = "user root;" if os.geteuid() == 0 else ""
    tmp = workdir / "tmp"
    return f"""\
{user}
daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile {4 * IDLE_CONNECTIONS};
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections {2 * IDLE_CONNECTIONS}; }}
http {{
    access_log off;
    default_type application/octet-stream;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 600s;
    server {{
        listen 127.0.0.1:{port};
        root {docroot};
        dav_methods PUT DELETE MKCOL;
        create_full_put_path on;
        client_max_body_size 0;
    }}
}}
"""


def start_nginx(spec: ServerSpec, workdir: Path, docroot: Path, workers: int | str,
                cpu: int | None) -> Server:
    """Start nginx in the foreground (daemon off) so that we own its PID."""
    workdir.mkdir(parents=True)
    (workdir / "tmp").mkdir()
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_config(workdir, docroot, port, workers))
    cmd = [nginx_binary(), "-p", str(workdir), "-c", str(conf),
           "-e", str(workdir / "error.log")]
    log_path = workdir / "stderr.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=pin_to(cpu))
    return Server(spec, f"nginx (worker_processes {workers})", port,
                  None, proc, log_path, signal.SIGQUIT)


def start_mogstored(spec: ServerSpec, workdir: Path, docroot: Path,
                    cpu: int | None) -> Server:
    workdir.mkdir(parents=True)
    port, mgmt_port = free_port(), free_port()
    metrics_url = None
    args = spec.args
    if spec.name == "base":  # it may predate --worker-processes=auto: the number it means
        cpus = 1 if cpu is not None else len(os.sched_getaffinity(0))
        args = re.sub(r"(--worker-processes[= ])auto\b", rf"\g<1>{cpus}", args)
    if "{metrics}" in args:
        metrics_port = free_port()
        args = args.replace("{metrics}", f"127.0.0.1:{metrics_port}")
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    argv = shlex.split(spec.cmd) + [f"--docroot={docroot}",
                                    f"--httplisten=127.0.0.1:{port}",
                                    f"--mgmtlisten=127.0.0.1:{mgmt_port}"]
    argv += shlex.split(args)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(spec.cwd), env.get("PYTHONPATH", "")) if p)
    log_path = workdir / "stderr.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(argv, cwd=spec.cwd, env=env,
                                stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=pin_to(cpu))
    where = "" if spec.cwd == REPO_ROOT else f" (in {spec.cwd})"
    label = " ".join(shlex.quote(a) for a in argv[len(shlex.split(spec.cmd)) + 3:])
    return Server(spec, f"mogstored{where} {label}".rstrip(), port, mgmt_port,
                  proc, log_path, signal.SIGTERM, metrics_url)


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_ready(server: Server, timeout: float) -> None:
    """Wait until the server accepts TCP connections on its HTTP port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise BenchError(
                f"{server.name} exited with status {server.proc.returncode} "
                f"at start-up:\n{log_tail(server.log_path)}")
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"{server.name} did not listen on port {server.port} "
                     f"within {timeout:.0f}s:\n{log_tail(server.log_path)}")


def stop_server(server: Server, grace: float = 10.0) -> None:
    """Stop one server by its PID; SIGKILL its own process group if needed."""
    proc = server.proc
    if proc.poll() is None:
        try:
            os.kill(proc.pid, server.stop_signal)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log(f"{server.name} (pid {proc.pid}) did not stop; killing it")
        except ProcessLookupError:
            pass
    # start_new_session made pid == pgid: this only reaches processes we
    # started (the server and any workers it forked).
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        log(f"{server.name} (pid {proc.pid}) still alive after SIGKILL")


# --------------------------------------------------------------------------
# Correctness check, once per server, before any timing


def http_request(conn: http.client.HTTPConnection, method: str, path: str,
                 body: bytes | None = None) -> tuple[int, bytes]:
    headers = {"Content-Length": str(len(body))} if body is not None else {}
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.read()


def check_large_get(server: Server, fixtures: Fixtures) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    try:
        conn.request("GET", LARGE_PATH)
        resp = conn.getresponse()
        digest, size = hashlib.sha256(), 0
        while chunk := resp.read(4 * MIB):
            digest.update(chunk)
            size += len(chunk)
        if resp.status != 200 or size != fixtures.large_size \
                or digest.hexdigest() != fixtures.large_sha256:
            raise BenchError(f"{server.name}: GET {LARGE_PATH} -> {resp.status}, "
                             f"{size} bytes, wrong content or size")
    finally:
        conn.close()


def check_server(server: Server, docroot: Path, fixtures: Fixtures) -> None:
    """GET returns the right bytes; PUT (new, then overwrite) round-trips;
    the sidechannel answers `size`."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        status, body = http_request(conn, "GET", SMALL_PATH)
        if status != 200 or body != fixtures.small:
            raise BenchError(f"{server.name}: GET {SMALL_PATH} -> {status}, "
                             f"{len(body)} bytes, expected 200 and the file")
        path = f"/dev1/9/{server.name[:8]}/{next(CHECKS):03d}/new.fid"
        for attempt, expected in (("new", (201,)), ("overwrite", (200, 201, 204))):
            payload = os.urandom(64 * KIB)
            status, _ = http_request(conn, "PUT", path, payload)
            if status not in expected:
                raise BenchError(f"{server.name}: PUT ({attempt}) {path} -> "
                                 f"{status}, expected {expected}")
            status, body = http_request(conn, "GET", path)
            if status != 200 or body != payload:
                raise BenchError(f"{server.name}: GET after PUT ({attempt}) "
                                 f"{path} -> {status}, content differs")
            if (docroot / path.lstrip("/")).read_bytes() != payload:
                raise BenchError(f"{server.name}: PUT ({attempt}) {path} did "
                                 f"not write the body under the docroot")
    finally:
        conn.close()
    if server.mgmt_port:
        with socket.create_connection(("127.0.0.1", server.mgmt_port), timeout=10) as s:
            s.sendall(f"size {SMALL_PATH}\r\n".encode())
            reply = s.recv(4096)
        if reply != f"{SMALL_PATH} {4 * KIB}\r\n".encode():
            raise BenchError(f"{server.name}: sidechannel size -> {reply!r}")
    if fixtures.large_size:
        check_large_get(server, fixtures)


# --------------------------------------------------------------------------
# Load generators: wrk for HTTP, this script (--mgmt-load) for the sidechannel


@dataclass
class LoadResult:
    requests: int
    bytes_read: int
    seconds: float
    errors: dict[str, int]
    p50_ms: float
    p99_ms: float

    def value(self, scenario: Scenario) -> float:
        if scenario.unit == "MB/s":
            if scenario.method == "PUT":
                return self.requests * scenario.body_size / self.seconds / 1e6
            return self.bytes_read / self.seconds / 1e6
        return self.requests / self.seconds

    def error_count(self) -> int:
        return sum(self.errors.values())


LUA_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d bytes=%d duration_us=%d connect=%d read=%d "
    .. "write=%d status=%d timeout=%d p50_us=%d p99_us=%d\\n",
    summary.requests, summary.bytes, summary.duration, e.connect, e.read,
    e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""

LUA_PUT = """
local next_id = 0
function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
end

local reqs, n, i = {}, %(files)d, 0
function init(args)
  local body = string.rep("m", %(size)d)
  for k = 0, n - 1 do
    reqs[k + 1] = wrk.format("PUT",
      string.format("%(prefix)s/t%%d-%%d.fid", tid, k), nil, body)
  end
end

function request()
  i = i %% n + 1
  return reqs[i]
end
"""


def write_lua(workdir: Path, scenario: Scenario) -> Path:
    script = LUA_DONE
    if scenario.method == "PUT":
        script = LUA_PUT % {"files": scenario.files_per_thread,
                            "size": scenario.body_size,
                            "prefix": scenario.put_prefix()} + script
    path = workdir / f"{scenario.name}.lua"
    path.write_text(script)
    return path


def parse_result(output: str) -> LoadResult:
    match = re.search(r"^BENCH_RESULT (.*)$", output, re.MULTILINE)
    if not match:
        raise BenchError(f"unexpected load generator output:\n{output}")
    f = {k: int(v) for k, v in (kv.split("=") for kv in match.group(1).split())}
    return LoadResult(
        requests=f["requests"], bytes_read=f["bytes"],
        seconds=f["duration_us"] / 1e6,
        errors={k: f[k] for k in ("connect", "read", "write", "status", "timeout")},
        p50_ms=f["p50_us"] / 1e3, p99_ms=f["p99_us"] / 1e3)


def run_load(server: Server, scenario: Scenario, workdir: Path, seconds: int,
             args: argparse.Namespace) -> LoadResult:
    """One round of load from the client CPU."""
    if scenario.kind == "wrk":
        threads = min(args.wrk_threads, scenario.connections)
        timeout = 60 if scenario.large else 10
        cmd = ["wrk", f"-t{threads}", f"-c{scenario.connections}", f"-d{seconds}s",
               f"--timeout={timeout}s", "-s", str(write_lua(workdir, scenario)),
               server.base_url + (scenario.path or "/")]
    else:
        timeout = 10
        cmd = [sys.executable, __file__, "--mgmt-load",
               f"127.0.0.1:{server.mgmt_port}", f"{scenario.command} {scenario.path}",
               str(scenario.depth), str(scenario.connections), str(seconds)]
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          timeout=seconds + timeout + 30,
                          preexec_fn=pin_to(args.client_cpu))
    if proc.returncode != 0:
        raise BenchError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr}{proc.stdout}")
    return parse_result(proc.stdout)


def mgmt_load(target: str, command: str, depth: int, conns: int,
              seconds: float) -> None:
    """Child process: keep `conns` sidechannel connections busy with batches
    of `depth` commands; print a BENCH_RESULT line like the wrk hook's."""
    host, port = target.rsplit(":", 1)
    batch = f"{command}\r\n".encode() * depth
    sel = selectors.DefaultSelector()
    latencies: list[float] = []
    sent_at: dict[socket.socket, float] = {}
    pending: dict[socket.socket, int] = {}
    done = errors = 0
    for _ in range(conns):
        s = socket.create_connection((host, int(port)))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        s.sendall(batch)
        sent_at[s], pending[s] = time.perf_counter(), depth
    start = time.perf_counter()
    deadline = start + seconds
    while (now := time.perf_counter()) < deadline:
        for key, _ in sel.select(deadline - now):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            data = s.recv(1 << 16)
            if not data:
                errors += 1
                sel.unregister(s)
                continue
            lines = data.count(b"\n")
            done += lines
            pending[s] -= lines
            if pending[s] <= 0:
                t = time.perf_counter()
                latencies.append(t - sent_at[s])
                s.sendall(batch)
                sent_at[s], pending[s] = t, depth
    elapsed = time.perf_counter() - start
    latencies.sort()
    def pct(p: float) -> int:
        return int(1e6 * latencies[int(p * (len(latencies) - 1))]) if latencies else 0
    print(f"BENCH_RESULT requests={done} bytes=0 duration_us={int(elapsed * 1e6)} "
          f"connect=0 read={errors} write=0 status=0 timeout=0 "
          f"p50_us={pct(0.5)} p99_us={pct(0.99)}")


def measure_idle(server: Server, connections: int) -> dict:
    """RSS added by `connections` idle clients (connected, nothing sent)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = connections + 256
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(need, hard), max(need, hard)))
    before_kib, fds_before = server.rss_kib(), server.open_fds()
    socks = []
    try:
        for _ in range(connections):
            socks.append(socket.create_connection(("127.0.0.1", server.port)))
        deadline = time.monotonic() + 30
        while server.open_fds() < fds_before + connections and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        after_kib = server.rss_kib()
        held = server.open_fds() - fds_before
    finally:
        for s in socks:
            s.close()
    if held < connections:
        log(f"{server.name}: only {held} of {connections} idle connections accepted")
    return {"value": (after_kib - before_kib) / connections,
            "rss_start_kib": server.rss_start_kib, "rss_before_kib": before_kib,
            "rss_after_kib": after_kib, "held": held, "errors": {},
            "cpu_us": None, "p50_ms": None, "p99_ms": None}


class Scraper:
    """GET the metrics URL once a second while a round runs."""

    def __init__(self, url: str | None) -> None:
        self.url, self.count, self.failures = url, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Scraper:
        if self.url:
            self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self.url:
            self._thread.join()

    def _run(self) -> None:
        host, rest = self.url.removeprefix("http://").split(":", 1)
        port, path = rest.split("/", 1)
        while not self._stop.wait(1.0):
            try:
                conn = http.client.HTTPConnection(host, int(port), timeout=5)
                status, _ = http_request(conn, "GET", "/" + path)
                conn.close()
                self.count += 1
                self.failures += status != 200
            except OSError:
                self.failures += 1


# --------------------------------------------------------------------------
# Rounds and results


@dataclass
class ScenarioResult:
    mode: str
    scenario: Scenario
    rounds: dict[str, list[dict]] = field(default_factory=dict)

    def values(self, server: str) -> list[float]:
        return [r["value"] for r in self.rounds.get(server, [])]

    def mean(self, server: str, key: str = "value") -> float | None:
        values = [r[key] for r in self.rounds.get(server, []) if r.get(key) is not None]
        return statistics.fmean(values) if values else None

    def spread(self, server: str) -> float | None:
        """(max - min) / mean of a server's rounds: the noise you can see."""
        values = self.values(server)
        if len(values) < 2 or not statistics.fmean(values):
            return None
        return (max(values) - min(values)) / statistics.fmean(values)

    def ratio(self, a: str, b: str) -> float | None:
        x, y = self.mean(a), self.mean(b)
        return x / y if x is not None and y else None

    def errors(self, server: str) -> int:
        return sum(sum(r["errors"].values()) for r in self.rounds.get(server, []))


def round_order(servers: list[Server], rounds: int) -> list[Server]:
    """ABBA ABBA...: reverse the order every round so drift cancels."""
    order: list[Server] = []
    for r in range(rounds):
        order += servers if r % 2 == 0 else list(reversed(servers))
    return order


def run_scenario(mode: str, scenario: Scenario, servers: list[Server],
                 workdir: Path, args: argparse.Namespace) -> ScenarioResult:
    result = ScenarioResult(mode, scenario)
    servers = [s for s in servers if scenario.nginx_can or s.spec.kind != "nginx"]
    if scenario.kind == "idle":
        for server in servers:
            result.rounds[server.name] = [measure_idle(server, scenario.connections)]
            log(f"{mode:8s} {scenario.name:10s} {server.name:8s} "
                f"{result.rounds[server.name][0]['value']:10.2f} KiB/conn, "
                f"RSS at start {server.rss_start_kib / 1024:.1f} MiB")
        return result
    if args.warmup > 0:
        for server in servers:
            run_load(server, scenario, workdir, args.warmup, args)
    for server in round_order(servers, args.rounds):
        user0, sys0 = server.cpu_times()
        with Scraper(server.metrics_url) as scraper:
            res = run_load(server, scenario, workdir, args.seconds, args)
        user1, sys1 = server.cpu_times()
        value = res.value(scenario)
        if scraper.failures:
            res.errors["scrape"] = scraper.failures
        per = 1e6 / res.requests if res.requests else None
        user_us = None if per is None else (user1 - user0) * per
        sys_us = None if per is None else (sys1 - sys0) * per
        cpu_us = None if per is None else (user1 - user0 + sys1 - sys0) * per
        flag = f"  ERRORS {res.errors}" if res.error_count() else ""
        log(f"{mode:8s} {scenario.name:10s} {server.name:8s} {value:12.1f} "
            f"{scenario.unit}  (p99 {res.p99_ms:.2f} ms, cpu "
            f"{user_us or 0:.1f} usr + {sys_us or 0:.1f} sys us/op){flag}")
        result.rounds.setdefault(server.name, []).append(
            {"value": value, "cpu_us": cpu_us, "user_us": user_us, "sys_us": sys_us,
             "scrapes": scraper.count, **asdict(res)})
    return result


def fmt(value: float | None, width: int, precision: int = 1,
        suffix: str = "") -> str:
    text = "-" if value is None else f"{value:.{precision}f}{suffix}"
    return text.rjust(width)


def print_tables(results: list[ScenarioResult], names: list[str],
                 labels: dict[str, dict[str, str]], args: argparse.Namespace) -> None:
    print(f"\n{args.rounds} round(s) x {args.seconds}s per server and scenario, "
          f"ABBA order, wrk -t{args.wrk_threads}, load generator on CPU "
          f"{args.client_cpu}, docroot under {args.tmpdir or tempfile.gettempdir()}. "
          f"Figures are means of rounds; '±' is the (max-min)/mean spread of rounds; "
          f"usr/sys = the server's user/system CPU time per request (all its processes "
          f"and threads).")
    refs = [n for n in ("nginx", "ours", "base") if n in names]
    for mode in args.mode_list:
        print(f"\n== {mode} " + ("(servers on CPU %d)" % args.server_cpu
                                 if mode == "pinned" else "(servers unpinned)"))
        for name in names:
            print(f"  {name:8s} = {labels[mode].get(name, '-')}")
        header = (f"{'scenario':10s} {'unit':>8s} {'server':8s} {'figure':>11s} "
                  f"{'±':>4s} {'p99 ms':>7s} {'usr us':>7s} {'sys us':>7s}"
                  + "".join(f" {'/' + r:>7s}" for r in refs))
        print(header)
        print("-" * len(header))
        for r in (r for r in results if r.mode == mode):
            first = True
            for name in names:
                if name not in r.rounds:
                    continue
                spread = r.spread(name)
                errs = r.errors(name)
                print(f"{r.scenario.name if first else '':10s} "
                      f"{r.scenario.unit if first else '':>8s} {name:8s} "
                      f"{fmt(r.mean(name), 11)} "
                      f"{fmt(None if spread is None else 100 * spread, 4, 0, '%')} "
                      f"{fmt(r.mean(name, 'p99_ms'), 7, 2)} "
                      f"{fmt(r.mean(name, 'user_us'), 7)} {fmt(r.mean(name, 'sys_us'), 7)}"
                      + "".join(f" {fmt(r.ratio(name, ref), 7, 2)}" for ref in refs)
                      + (f"   !! {errs} errors" if errs else ""))
                first = False
        idle = [r for r in results if r.mode == mode and r.scenario.kind == "idle"]
        for r in idle:
            print("RSS at start (MiB): " + ", ".join(
                f"{n} {r.rounds[n][0]['rss_start_kib'] / 1024:.1f}"
                for n in names if n in r.rounds))
    if {"pinned", "unpinned"} <= set(args.mode_list):
        print("\n== unpinned / pinned (same server, same scenario)")
        for r in (r for r in results if r.mode == "unpinned"):
            pinned = next((p for p in results if p.mode == "pinned"
                           and p.scenario == r.scenario), None)
            if pinned is None or r.scenario.kind == "idle":
                continue
            cells = []
            for name in names:
                a, b = r.mean(name), pinned.mean(name)
                if a is not None and b:
                    cells.append(f"{name} {a / b:.2f}")
            print(f"{r.scenario.name:10s} " + ", ".join(cells))


def json_report(results: list[ScenarioResult], labels: dict[str, dict[str, str]],
                args: argparse.Namespace) -> dict:
    return {
        "settings": {k: getattr(args, k) for k in (
            "seconds", "rounds", "warmup", "wrk_threads", "dry_run", "baseline",
            "variant", "mode_list", "server_cpu", "client_cpu")},
        "servers": labels,
        "scenarios": [{
            "mode": r.mode, "scenario": r.scenario.name, "unit": r.scenario.unit,
            "connections": r.scenario.connections,
            "means": {n: r.mean(n) for n in r.rounds},
            "rounds": r.rounds,
        } for r in results],
    }


def ratio_pairs(names: list[str]) -> list[tuple[str, str]]:
    """(server, reference) pairs worth a ratio: ours and the baseline against
    nginx, ours against the baseline, each variant against ours and nginx."""
    pairs = [("ours", "nginx"), ("ours", "base"), ("base", "nginx")]
    pairs += [(v, ref) for v in names if v not in ("nginx", "ours", "base")
              for ref in ("ours", "nginx")]
    return [(a, b) for a, b in pairs if a in names and b in names]


def plot(results: list[ScenarioResult], names: list[str], args: argparse.Namespace) -> None:
    """The PNG beside the tables: per mode, the ratios per scenario (higher is
    better) and each server's user + system CPU time per request."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log(f"plot skipped ({args.plot}): matplotlib is not installed "
            f"(pip install -e '.[bench]')")
        return
    pairs = ratio_pairs(names)
    modes = args.mode_list
    fig, axes = plt.subplots(len(modes), 2, figsize=(15, 4.5 * len(modes)), squeeze=False)
    for row, mode in zip(axes, modes):
        timed = [r for r in results if r.mode == mode and r.scenario.kind != "idle"]
        ratio_ax, cpu_ax = row
        width = 0.8 / max(1, len(pairs))
        for k, (a, b) in enumerate(pairs):
            xs = [i + k * width for i, r in enumerate(timed) if r.ratio(a, b) is not None]
            ys = [r.ratio(a, b) for r in timed if r.ratio(a, b) is not None]
            ratio_ax.bar(xs, ys, width, label=f"{a} / {b}")
        ratio_ax.axhline(1.0, color="black", linewidth=0.8)
        ratio_ax.set_xticks([i + 0.4 - width / 2 for i in range(len(timed))],
                            [r.scenario.name for r in timed], rotation=30, ha="right")
        ratio_ax.set_title(f"{mode}: ratios of figures (higher is better)")
        ratio_ax.legend(fontsize="small")
        # Where the time goes, for the request-rate scenarios: bulk transfers and
        # digests cost 10-1000 times more per request and would flatten the rest.
        timed = [r for r in timed if r.scenario.unit in ("req/s", "cmd/s") and r.scenario.command != "MD5"]
        width = 0.8 / max(1, len(names))
        for k, name in enumerate(names):
            xs = [i + k * width for i in range(len(timed))]
            user = [r.mean(name, "user_us") or 0.0 for r in timed]
            system = [r.mean(name, "sys_us") or 0.0 for r in timed]
            bars = cpu_ax.bar(xs, user, width, label=f"{name} user")
            cpu_ax.bar(xs, system, width, bottom=user, label=f"{name} system",
                       color=bars.patches[0].get_facecolor() if bars.patches else None,
                       alpha=0.45)
        cpu_ax.set_xticks([i + 0.4 - width / 2 for i in range(len(timed))],
                          [r.scenario.name for r in timed], rotation=30, ha="right")
        cpu_ax.set_title(f"{mode}: server CPU us per request (user, then system above it)")
        cpu_ax.legend(fontsize="x-small", ncol=2)
    fig.tight_layout()
    fig.savefig(args.plot, dpi=90)
    plt.close(fig)
    log(f"plot written to {args.plot}")


# --------------------------------------------------------------------------
# Main


def worker_count(args: argparse.Namespace) -> int | str:
    """nginx workers when unpinned: --nginx-workers, else the number given to
    ours' --worker-processes/-W, else "auto" (one per CPU, as ours' auto)."""
    if args.nginx_workers:
        return int(args.nginx_workers) if args.nginx_workers.isdigit() else args.nginx_workers
    tokens = shlex.split(args.mogstored_args)
    for i, tok in enumerate(tokens):
        m = re.fullmatch(r"(?:--worker-processes=|-W)(\d+)", tok)
        if m:
            return int(m.group(1))
        if tok in ("--worker-processes", "-W") and i + 1 < len(tokens) and tokens[i + 1].isdigit():
            return int(tokens[i + 1])
    return "auto"


def default_tmpdir() -> str | None:
    """/dev/shm (tmpfs) if it has room, else the system's temp dir."""
    try:
        st = os.statvfs("/dev/shm")
        if st.f_bavail * st.f_frsize > 2 * 1024 * MIB and os.access("/dev/shm", os.W_OK):
            return "/dev/shm"
    except OSError:
        pass
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark mogstored against nginx and other revisions; "
                    "prints ratios.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--only", default=",".join(SCENARIOS),
                   help="comma-separated scenarios to run")
    p.add_argument("--modes", default="pinned,unpinned",
                   help="pinned and/or unpinned (see the docstring)")
    p.add_argument("--seconds", type=int, default=4,
                   help="length of one timed round (whole seconds, wrk's unit)")
    p.add_argument("--rounds", type=int, default=2,
                   help="timed rounds per server and scenario (ABBA order)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed seconds per server before each scenario (0: none)")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk -t")
    p.add_argument("--server-cpu", type=int, default=1,
                   help="the CPU servers are pinned to in pinned mode")
    p.add_argument("--client-cpu", type=int, default=0,
                   help="the CPU the load generators run on (both modes)")
    p.add_argument("--servers", default="nginx,ours",
                   help="nginx and/or ours (a --baseline and --variants are added)")
    p.add_argument("--baseline", metavar="REF",
                   help="also run git revision REF of this project (from a "
                        "temporary worktree) as server 'base'")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                   help="also run ours with extra ARGS as server NAME "
                        "(repeatable; {metrics} in ARGS: a port to scrape)")
    p.add_argument("--mogstored-cmd", default=f"{sys.executable} -m mogstored",
                   help="command that starts our daemon (run from the repo root)")
    p.add_argument("--mogstored-args", default="",
                   help="extra arguments for every revision of our daemon")
    p.add_argument("--nginx-workers", default="",
                   help="nginx worker_processes when unpinned, a number or auto "
                        "(default: the number given to ours' --worker-processes/-W, "
                        "else auto); pinned: always 1")
    p.add_argument("--plot", default="bench.png", metavar="PNG",
                   help="where to write the plot of ratios and CPU split "
                        "(needs matplotlib; '' for none)")
    p.add_argument("--dry-run", action="store_true",
                   help="run a second nginx in place of ours (tests this script; "
                        "ratios show the noise floor)")
    p.add_argument("--startup-timeout", type=float, default=20.0)
    p.add_argument("--tmpdir", default=default_tmpdir(),
                   help="where to create the temp dir holding the docroot "
                        "(~0.5 GiB); /dev/shm by default so that the figures "
                        "are about the servers, not the disk")
    p.add_argument("--json", action="store_true",
                   help="print a JSON report on stdout instead of the tables")
    p.add_argument("--mgmt-load", nargs=5, metavar=("HOST:PORT", "CMD", "DEPTH",
                                                    "CONNS", "SECONDS"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.mgmt_load:
        return args
    args.only_list = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.only_list if s not in SCENARIOS]
    if unknown or not args.only_list:
        p.error(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.mode_list or set(args.mode_list) - {"pinned", "unpinned"}:
        p.error(f"--modes takes pinned and/or unpinned, got {args.modes!r}")
    args.server_list = [s.strip() for s in args.servers.split(",") if s.strip()]
    if set(args.server_list) - {"nginx", "ours"}:
        p.error(f"--servers takes nginx and/or ours, got {args.servers!r}")
    for v in args.variant:
        if "=" not in v or v.split("=", 1)[0] in ("nginx", "ours", "base", ""):
            p.error(f"--variant takes NAME=ARGS with a new NAME, got {v!r}")
    if args.nginx_workers and not (args.nginx_workers.isdigit() or args.nginx_workers == "auto"):
        p.error(f"--nginx-workers takes a number or auto, got {args.nginx_workers!r}")
    if min(args.seconds, args.rounds, args.wrk_threads) < 1:
        p.error("--seconds, --rounds and --wrk-threads must be >= 1")
    return args


def server_specs(args: argparse.Namespace, base_src: Path | None) -> list[ServerSpec]:
    specs = []
    if "nginx" in args.server_list:
        specs.append(ServerSpec("nginx", "nginx"))
    if "ours" in args.server_list:
        specs.append(ServerSpec("ours", "nginx") if args.dry_run else
                     ServerSpec("ours", "mogstored", args.mogstored_cmd,
                                REPO_ROOT, args.mogstored_args))
    if base_src is not None:
        specs.append(ServerSpec("base", "mogstored", f"{sys.executable} -m mogstored",
                                base_src, args.mogstored_args))
    for v in args.variant:
        name, extra = v.split("=", 1)
        specs.append(ServerSpec(name, "mogstored", args.mogstored_cmd, REPO_ROOT,
                                f"{args.mogstored_args} {extra}"))
    return specs


def start_servers(specs: list[ServerSpec], mode: str, args: argparse.Namespace,
                  workdir: Path, docroot: Path, servers: list[Server]) -> None:
    """Start every server for one mode, appending each to `servers` at once so
    the caller's cleanup sees it even if a later start fails."""
    cpu = args.server_cpu if mode == "pinned" else None
    workers = 1 if mode == "pinned" else worker_count(args)
    for spec in specs:
        where = workdir / f"{mode}-{spec.name}"
        if spec.kind == "nginx":
            server = start_nginx(spec, where, docroot, workers, cpu)
        else:
            server = start_mogstored(spec, where, docroot, cpu)
        servers.append(server)
        log(f"{mode}: started {spec.name} (pid {server.proc.pid}, port "
            f"{server.port}): {server.label}")
        wait_ready(server, args.startup_timeout)
        time.sleep(0.5)
        server.rss_start_kib = server.rss_kib()


def add_baseline(ref: str, base: Path) -> Path:
    src = base / "baseline-src"
    proc = subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach",
                           str(src), ref], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"git worktree add {ref}: {proc.stderr.strip()}")
    log(f"baseline {ref} checked out in {src}")
    return src


def run(args: argparse.Namespace, base: Path, servers: list[Server],
        base_src: Path | None) -> int:
    if shutil.which("wrk") is None:
        raise BenchError("wrk not found: apt-get install -y wrk")
    scenarios = [SCENARIOS[name] for name in args.only_list]
    docroot = base / "docroot"
    (docroot / "dev1").mkdir(parents=True)
    fixtures = make_fixtures(docroot, scenarios, args.wrk_threads)
    specs = server_specs(args, base_src)
    results: list[ScenarioResult] = []
    labels: dict[str, dict[str, str]] = {}
    for mode in args.mode_list:
        start_servers(specs, mode, args, base, docroot, servers)
        for server in servers:
            check_server(server, docroot, fixtures)
        log(f"{mode}: every server's GET, PUT and size are correct")
        labels[mode] = {s.name: s.label for s in servers}
        results += [run_scenario(mode, s, servers, base, args) for s in scenarios]
        while servers:  # main() stops whatever is left here on errors
            stop_server(servers.pop())
    names = [s.name for s in specs]
    if args.json:
        print(json.dumps(json_report(results, labels, args), indent=2, default=str))
    else:
        print_tables(results, names, labels, args)
    if args.plot:
        plot(results, names, args)
    return 1 if any(r.errors(n) for r in results for n in names) else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.mgmt_load:
        target, command, depth, conns, seconds = args.mgmt_load
        mgmt_load(target, command, int(depth), int(conns), float(seconds))
        return 0
    # SIGTERM/SIGHUP unwind like Ctrl-C, so the finally block below runs.
    def _terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if inherited ignored
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)

    base = Path(tempfile.mkdtemp(prefix="mogbench-", dir=args.tmpdir))
    log(f"working in {base}")
    servers: list[Server] = []
    base_src: Path | None = None
    try:
        if args.baseline:
            base_src = add_baseline(args.baseline, base)
        return run(args, base, servers, base_src)
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        for server in reversed(servers):
            stop_server(server)
        if base_src is not None:
            subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "remove",
                            "--force", str(base_src)], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
