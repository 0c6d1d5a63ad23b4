#!/usr/bin/env python3
"""Benchmark mogstored against nginx, side by side, on loopback.

Why ratios
----------
The machine is shared and noisy, so absolute figures move from run to run.
Both servers are therefore measured in the same run, on the same files, with
the same load generator, in alternating rounds, and the figure that matters is
the ratio ``ours / nginx`` (1.00 = as fast as nginx, 0.50 = half as fast; for
every scenario higher is better).  A ``--dry-run`` puts a second nginx in
place of ours: its ratios should be ~1.00 and their spread shows the noise.

Scenarios
---------
small_get  GET of one 4 KiB file over ``--connections`` (50) keep-alive
           connections; figure: requests/s.
large_get  GET of one 256 MiB file, repeated, over ``--large-connections``
           (4) PARALLEL keep-alive connections; figure: MB/s (10^6 bytes/s)
           of response bytes received, counted as they arrive, so downloads
           cut off by the end of the round still count.
put_64k    PUT of 64 KiB bodies over ``--connections`` keep-alive
           connections, each wrk thread cycling over its own 64 files under
           /dev1/<n>/000/000/ (all pre-created: every PUT overwrites);
           figure: requests/s.
put_16m    PUT of 16 MiB bodies over ``--large-connections`` parallel
           keep-alive connections, 4 files per wrk thread under
           /dev1/<n>/000/000/ (pre-created); figure: MB/s of request bodies
           of COMPLETED PUTs (an upload cut off by the end of the round is not
           counted; that biases both servers alike and by at most
           connections x 16 MiB per round).

Method
------
* The load generator is ``wrk`` (C, epoll, ``--wrk-threads`` threads) for all
  four scenarios: it keeps connections alive, never blocks on a GIL, reads
  large bodies without storing them, and reports exact counters through a
  Lua ``done()`` hook.  PUT requests are pre-built in each wrk thread's Lua
  state (``wrk.format``) so the per-request cost in wrk is one memcpy.
  curl was not used: it handles one transfer per process, so parallel
  transfers mean several processes and start-up costs inside the timing,
  and it sends ``Expect: 100-continue`` on large uploads.
* Both servers serve the SAME docroot (a temp dir with ``dev1/``), so they
  read identical files and write to identical paths.  The temp dir is on
  /dev/shm (tmpfs) by default: on this machine's ext4 (mounted with
  ``discard``) PUT figures are bound by the filesystem, which would squash
  the ratios towards 1; ``--tmpdir /tmp`` measures with the disk included.
* For each scenario: a short warm-up per server, then ``--rounds`` timed
  rounds per server of ``--seconds`` each, in ABBA order (nginx, ours, ours,
  nginx, ...) so a linear drift of the machine's speed hits both alike.
  A server's figure is the mean of its rounds; the ratio is mean/mean.
* Before any timing each server is checked once: GETs return the exact bytes
  (4 KiB and 256 MiB, by SHA-256), a PUT of a new file in a new directory
  returns 201 and round-trips through GET and onto the disk, an overwrite
  PUT round-trips too.  Any failure aborts the run.  A round with wrk socket
  errors or non-2xx/3xx answers is flagged and makes the exit status 1.
* nginx runs with ``worker_processes`` equal to ours (taken from
  ``--worker-processes``/``-W`` in ``--mogstored-args``), else
  ``--nginx-workers`` (default 2).  With 2 CPUs the load generator shares
  the cores with the server under test; that is the same for both servers.
* Every process started here is stopped by PID (nginx: SIGQUIT; ours:
  SIGTERM; then SIGKILL of its own process group if it lingers) and the temp
  dir is removed, also on Ctrl-C, SIGTERM and errors.

Usage: see scripts/README.md, or ``python scripts/bench.py --help``.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
KIB = 1024
MIB = 1024 * 1024
SMALL_PATH = "/dev1/0/000/000/0000000001.fid"  # MogileFS paths: at most 37 bytes
LARGE_PATH = "/dev1/0/000/000/0000000002.fid"
SERVER_ORDER = ("nginx", "ours")


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
    method: str          # "GET" or "PUT"
    unit: str            # "req/s" or "MB/s"
    large: bool          # uses --large-connections instead of --connections
    path: str = ""       # GET: the file fetched
    body_size: int = 0   # PUT: bytes per request
    files_per_thread: int = 0  # PUT: distinct paths cycled by each wrk thread

    def put_prefix(self) -> str:
        return f"/dev1/{list(SCENARIOS).index(self.name)}/000/000"

    def put_paths(self, threads: int) -> list[str]:
        return [f"{self.put_prefix()}/t{t}-{i}.fid"
                for t in range(threads) for i in range(self.files_per_thread)]


SCENARIOS: dict[str, Scenario] = {
    s.name: s for s in (
        Scenario("small_get", "GET", "req/s", False, path=SMALL_PATH),
        Scenario("large_get", "GET", "MB/s", True, path=LARGE_PATH),
        Scenario("put_64k", "PUT", "req/s", False,
                 body_size=64 * KIB, files_per_thread=64),
        Scenario("put_16m", "PUT", "MB/s", True,
                 body_size=16 * MIB, files_per_thread=4),
    )
}


# --------------------------------------------------------------------------
# Fixtures: the files both servers serve


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
    fixtures = Fixtures(small=small)
    if any(s.name == "large_get" for s in scenarios):
        log("writing the 256 MiB file")
        fixtures.large_size = 256 * MIB
        fixtures.large_sha256 = write_random_file(
            docroot / LARGE_PATH.lstrip("/"), fixtures.large_size)
    for s in scenarios:  # pre-create PUT targets: every timed PUT overwrites
        if s.method == "PUT":
            for p in s.put_paths(wrk_threads):
                target = docroot / p.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "wb") as f:
                    f.truncate(s.body_size)
    return fixtures


# --------------------------------------------------------------------------
# Server processes


@dataclass
class Server:
    name: str            # "nginx" or "ours"
    label: str           # what actually runs, for the report
    port: int
    proc: subprocess.Popen
    log_path: Path
    stop_signal: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nginx_binary() -> str:
    """Wait a little for a background install of nginx-light, then give up."""
    for _ in range(120):
        path = shutil.which("nginx") or (
            "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
        if path:
            return path
        time.sleep(1)
    raise BenchError("nginx not found: apt-get install -y nginx-light")


def nginx_config(workdir: Path, docroot: Path, port: int, workers: int) -> str:
    user = "user root;" if os.geteuid() == 0 else ""
    tmp = workdir / "tmp"
    return f"""\
{user}
daemon off;
master_process on;
worker_processes {workers};
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 4096; }}
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
    server {{
        listen 127.0.0.1:{port};
        root {docroot};
        dav_methods PUT DELETE MKCOL;
        create_full_put_path on;
        client_max_body_size 0;
    }}
}}
"""


def start_nginx(name: str, workdir: Path, docroot: Path, workers: int) -> Server:
    """Start nginx in the foreground (daemon off) so that we own its PID."""
    workdir.mkdir(parents=True)
    (workdir / "tmp").mkdir()
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_config(workdir, docroot, port, workers))
    binary = nginx_binary()
    cmd = [binary, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")]
    log_path = workdir / "stderr.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return Server(name, f"nginx ({workers} workers)", port, proc, log_path,
                  signal.SIGQUIT)


def start_mogstored(cmd: str, extra_args: str, workdir: Path,
                    docroot: Path) -> Server:
    workdir.mkdir(parents=True)
    port, mgmt_port = free_port(), free_port()
    argv = shlex.split(cmd) + [f"--docroot={docroot}",
                               f"--httplisten=127.0.0.1:{port}",
                               f"--mgmtlisten=127.0.0.1:{mgmt_port}"]
    argv += shlex.split(extra_args)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    log_path = workdir / "stderr.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return Server("ours", " ".join(shlex.quote(a) for a in argv), port, proc,
                  log_path, signal.SIGTERM)


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
    """GET returns the right bytes; PUT (new, then overwrite) round-trips."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        status, body = http_request(conn, "GET", SMALL_PATH)
        if status != 200 or body != fixtures.small:
            raise BenchError(f"{server.name}: GET {SMALL_PATH} -> {status}, "
                             f"{len(body)} bytes, expected 200 and the file")
        path = f"/dev1/9/{server.name}/{os.getpid() % 1000:03d}/new.fid"
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
    if fixtures.large_size:
        check_large_get(server, fixtures)


# --------------------------------------------------------------------------
# wrk


@dataclass
class WrkResult:
    requests: int
    bytes_read: int
    seconds: float
    errors: dict[str, int]
    p50_ms: float
    p99_ms: float

    def value(self, scenario: Scenario) -> float:
        if scenario.unit == "req/s":
            return self.requests / self.seconds
        if scenario.method == "PUT":
            return self.requests * scenario.body_size / self.seconds / 1e6
        return self.bytes_read / self.seconds / 1e6

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


def parse_wrk(output: str) -> WrkResult:
    match = re.search(r"^BENCH_RESULT (.*)$", output, re.MULTILINE)
    if not match:
        raise BenchError(f"unexpected wrk output:\n{output}")
    f = {k: int(v) for k, v in (kv.split("=") for kv in match.group(1).split())}
    return WrkResult(
        requests=f["requests"], bytes_read=f["bytes"],
        seconds=f["duration_us"] / 1e6,
        errors={k: f[k] for k in ("connect", "read", "write", "status", "timeout")},
        p50_ms=f["p50_us"] / 1e3, p99_ms=f["p99_us"] / 1e3)


def run_wrk(server: Server, scenario: Scenario, lua: Path, connections: int,
            threads: int, seconds: int) -> WrkResult:
    url = server.base_url + (scenario.path or "/")
    timeout = 60 if scenario.large else 10
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s",
           f"--timeout={timeout}s", "-s", str(lua), url]
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          timeout=seconds + timeout + 30)
    if proc.returncode != 0:
        raise BenchError(f"wrk failed ({proc.returncode}): {proc.stderr}{proc.stdout}")
    return parse_wrk(proc.stdout)


def ensure_wrk() -> None:
    if shutil.which("wrk") is None:
        raise BenchError("wrk not found: apt-get install -y wrk")


# --------------------------------------------------------------------------
# Rounds and results


@dataclass
class ScenarioResult:
    scenario: str
    unit: str
    connections: int
    rounds: dict[str, list[dict]] = field(default_factory=dict)

    def mean(self, server: str) -> float | None:
        values = [r["value"] for r in self.rounds.get(server, [])]
        return statistics.fmean(values) if values else None

    def spread(self, server: str) -> float | None:
        """(max - min) / mean of a server's rounds: the noise you can see."""
        values = [r["value"] for r in self.rounds.get(server, [])]
        if len(values) < 2 or not statistics.fmean(values):
            return None
        return (max(values) - min(values)) / statistics.fmean(values)

    def ratio(self) -> float | None:
        ours, nginx = self.mean("ours"), self.mean("nginx")
        return ours / nginx if ours is not None and nginx else None

    def errors(self, server: str) -> int:
        return sum(sum(r["errors"].values()) for r in self.rounds.get(server, []))


def round_order(servers: list[Server], rounds: int) -> list[Server]:
    """ABBA ABBA...: alternate the order every round so drift cancels."""
    order: list[Server] = []
    for r in range(rounds):
        order += servers if r % 2 == 0 else list(reversed(servers))
    return order


def run_scenario(scenario: Scenario, servers: list[Server], workdir: Path,
                 args: argparse.Namespace) -> ScenarioResult:
    connections = args.large_connections if scenario.large else args.connections
    threads = min(args.wrk_threads, connections)
    lua = write_lua(workdir, scenario)
    result = ScenarioResult(scenario.name, scenario.unit, connections)
    if args.warmup > 0:
        for server in servers:
            run_wrk(server, scenario, lua, connections, threads, args.warmup)
    for server in round_order(servers, args.rounds):
        res = run_wrk(server, scenario, lua, connections, threads, args.seconds)
        value = res.value(scenario)
        flag = f"  ERRORS {res.errors}" if res.error_count() else ""
        log(f"{scenario.name:10s} {server.name:6s} {value:12.1f} {scenario.unit}"
            f"  (p50 {res.p50_ms:.2f} ms, p99 {res.p99_ms:.2f} ms){flag}")
        result.rounds.setdefault(server.name, []).append(
            {"value": value, **asdict(res)})
    return result


def fmt(value: float | None, width: int, precision: int = 1,
        suffix: str = "") -> str:
    text = "-" if value is None else f"{value:.{precision}f}{suffix}"
    return text.rjust(width)


def print_table(results: list[ScenarioResult], servers: list[Server],
                args: argparse.Namespace) -> None:
    print(f"\nmogstored vs nginx on loopback: {args.rounds} round(s) x "
          f"{args.seconds}s per server and scenario, ABBA order, "
          f"wrk -t{args.wrk_threads}, docroot under {args.tmpdir or tempfile.gettempdir()}; "
          f"figures are means of rounds, '±' is the (max-min)/mean spread of rounds")
    for s in servers:
        print(f"  {s.name:6s} = {s.label}")
    header = (f"{'scenario':10s} {'conns':>5s} {'unit':>6s} "
              f"{'nginx':>12s} {'±':>5s} {'ours':>12s} {'±':>5s} {'ours/nginx':>10s}")
    print(header)
    print("-" * len(header))
    for r in results:
        errs = [f"{n}: {r.errors(n)} errors" for n in SERVER_ORDER if r.errors(n)]
        spread = {n: fmt(None if r.spread(n) is None else 100 * r.spread(n),
                         5, 0, "%") for n in SERVER_ORDER}
        print(f"{r.scenario:10s} {r.connections:5d} {r.unit:>6s} "
              f"{fmt(r.mean('nginx'), 12)} {spread['nginx']} "
              f"{fmt(r.mean('ours'), 12)} {spread['ours']} "
              f"{fmt(r.ratio(), 10, 2)}"
              + (f"   !! {'; '.join(errs)}" if errs else ""))


def json_report(results: list[ScenarioResult], servers: list[Server],
                args: argparse.Namespace) -> dict:
    return {
        "settings": {k: getattr(args, k) for k in (
            "seconds", "rounds", "warmup", "connections", "large_connections",
            "wrk_threads", "dry_run")},
        "servers": {s.name: s.label for s in servers},
        "scenarios": [{
            "scenario": r.scenario, "unit": r.unit, "connections": r.connections,
            "nginx": r.mean("nginx"), "ours": r.mean("ours"), "ratio": r.ratio(),
            "errors": {n: r.errors(n) for n in SERVER_ORDER},
            "rounds": r.rounds,
        } for r in results],
    }


# --------------------------------------------------------------------------
# Main


def worker_count(args: argparse.Namespace) -> int:
    """nginx workers: ours' --worker-processes/-W if given, else --nginx-workers."""
    if args.nginx_workers:
        return args.nginx_workers
    tokens = shlex.split(args.mogstored_args)
    for i, tok in enumerate(tokens):
        m = re.fullmatch(r"(?:--worker-processes=|-W)(\d+)", tok)
        if m:
            return int(m.group(1))
        if tok in ("--worker-processes", "-W") and i + 1 < len(tokens):
            return int(tokens[i + 1])
    return 2


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
        description="Benchmark mogstored against nginx; prints ours/nginx ratios.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--only", default=",".join(SCENARIOS),
                   help="comma-separated scenarios to run")
    p.add_argument("--seconds", type=int, default=5,
                   help="length of one timed round (whole seconds, wrk's unit)")
    p.add_argument("--rounds", type=int, default=2,
                   help="timed rounds per server and scenario (ABBA order)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed seconds per server before each scenario (0: none)")
    p.add_argument("--connections", type=int, default=50,
                   help="keep-alive connections for small_get and put_64k")
    p.add_argument("--large-connections", type=int, default=4,
                   help="parallel connections for large_get and put_16m")
    p.add_argument("--wrk-threads", type=int, default=2, help="wrk -t")
    p.add_argument("--servers", default="nginx,ours",
                   help="which servers to run: nginx, ours, or both")
    p.add_argument("--mogstored-cmd", default=f"{sys.executable} -m mogstored",
                   help="command that starts our daemon (run from the repo root)")
    p.add_argument("--mogstored-args", default="",
                   help="extra arguments for our daemon")
    p.add_argument("--nginx-workers", type=int, default=0,
                   help="nginx worker_processes (default: ours' "
                        "--worker-processes/-W, else 2)")
    p.add_argument("--dry-run", action="store_true",
                   help="run a second nginx in place of ours (tests this script; "
                        "ratios show the noise floor)")
    p.add_argument("--startup-timeout", type=float, default=20.0)
    p.add_argument("--tmpdir", default=default_tmpdir(),
                   help="where to create the temp dir holding the docroot "
                        "(~0.5 GiB); /dev/shm by default so that the figures "
                        "are about the servers, not the disk: pass e.g. /tmp "
                        "to include a real filesystem")
    p.add_argument("--json", action="store_true",
                   help="print a JSON report on stdout instead of the table")
    args = p.parse_args(argv)
    args.only_list = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.only_list if s not in SCENARIOS]
    if unknown or not args.only_list:
        p.error(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    args.server_list = [s.strip() for s in args.servers.split(",") if s.strip()]
    if not args.server_list or set(args.server_list) - set(SERVER_ORDER):
        p.error(f"--servers takes nginx and/or ours, got {args.servers!r}")
    if min(args.seconds, args.rounds, args.connections,
           args.large_connections, args.wrk_threads) < 1:
        p.error("--seconds, --rounds, --connections, --large-connections and "
                "--wrk-threads must be >= 1")
    return args


def start_servers(args: argparse.Namespace, base: Path,
                  docroot: Path, servers: list[Server]) -> None:
    """Start the requested servers, appending each to `servers` at once so the
    caller's cleanup sees it even if a later start fails."""
    workers = worker_count(args)
    for name in SERVER_ORDER:
        if name not in args.server_list:
            continue
        if name == "nginx":
            server = start_nginx("nginx", base / "nginx", docroot, workers)
        elif args.dry_run:
            server = start_nginx("ours", base / "ours-nginx", docroot, workers)
            server.label = f"DRY RUN: second {server.label}"
        else:
            server = start_mogstored(args.mogstored_cmd, args.mogstored_args,
                                     base / "ours", docroot)
        servers.append(server)
        log(f"started {name} (pid {server.proc.pid}, port {server.port}): "
            f"{server.label}")
        wait_ready(server, args.startup_timeout)


def run(args: argparse.Namespace, base: Path, servers: list[Server]) -> int:
    ensure_wrk()
    scenarios = [SCENARIOS[name] for name in args.only_list]
    docroot = base / "docroot"
    (docroot / "dev1").mkdir(parents=True)
    fixtures = make_fixtures(docroot, scenarios, args.wrk_threads)
    start_servers(args, base, docroot, servers)
    for server in servers:
        check_server(server, docroot, fixtures)
        log(f"{server.name}: GET and PUT round-trips are correct")
    results = [run_scenario(s, servers, base, args) for s in scenarios]
    if args.json:
        print(json.dumps(json_report(results, servers, args), indent=2))
    else:
        print_table(results, servers, args)
    had_errors = any(r.errors(n) for r in results for n in SERVER_ORDER)
    return 1 if had_errors else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM/SIGHUP unwind like Ctrl-C, so the finally block below runs.
    def _terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if inherited ignored
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)

    base = Path(tempfile.mkdtemp(prefix="mogbench-", dir=args.tmpdir))
    log(f"working in {base}")
    servers: list[Server] = []
    try:
        return run(args, base, servers)
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
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
