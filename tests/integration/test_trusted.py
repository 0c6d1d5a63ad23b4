"""``--trusted``: over real sockets, a client bound to 127.0.0.2 is an untrusted host
and one bound to 127.0.0.1 a trusted one (the daemon listens on 127.0.0.1)."""
from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    HOST,
    HttpConn,
    free_port,
    read_all,
    read_until,
    wait_for,
    wait_port,
)
from test_http_methods import generic
from test_metrics import metrics_daemon, scrape, value

TRUSTED, UNTRUSTED = "127.0.0.1", "127.0.0.2"
FORBIDDEN = generic(b"403 Forbidden", b"close")
REFUSED_LINE = re.compile(r"refused \S+(?: connection)? from untrusted 127\.0\.0\.2 on \w+")


def connect(src: str, port: int) -> socket.socket:
    """A connection from ``src`` (bound before connecting) to the daemon's ``port``."""
    s = socket.socket()
    s.bind((src, 0))
    s.settimeout(10)
    s.connect((HOST, port))
    return s


def files(dev: Path) -> list[str]:
    """Everything below a device but its usage file (rewritten on its own schedule)."""
    return sorted(str(p.relative_to(dev)) for p in dev.rglob("*") if p.name != "usage")


def refused_total(samples, listener: str) -> float | None:
    return value(samples, "mogstored_refused_total", listener=listener)


@pytest.fixture
def node(tmp_path: Path):
    """One process; trust, and a GET-only port, from a key = value config file."""
    get_port = free_port()
    config = tmp_path / "mogstored.conf"
    config.write_text(f"httpgetlisten = {HOST}:{get_port}\ntrusted = {TRUSTED}, ::1  # trackers\n")
    d, metrics_port = metrics_daemon(tmp_path, f"--config={config}")
    wait_port(get_port, proc=d.proc)
    (d.docroot / "dev1" / "f").write_bytes(b"data")
    try:
        yield d, get_port, metrics_port
    finally:
        d.kill()


@pytest.mark.parametrize("request_bytes", [
    b"PUT /dev1/new/dir/g HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
    b"PUT /dev1/new/dir/g HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"DELETE /dev1/f HTTP/1.1\r\n\r\n",
    b"MKCOL /dev1/new/ HTTP/1.1\r\n\r\n",
])
def test_untrusted_writes_get_403_close_and_touch_nothing(node, request_bytes: bytes) -> None:
    d, _, metrics_port = node
    before = files(d.docroot / "dev1")
    for port in (d.http_port, node[1]):  # the GET-only port refuses them as untrusted too
        with HttpConn(connect(UNTRUSTED, port)) as c:
            assert c.request(request_bytes).norm() == FORBIDDEN
            assert c.at_eof()
    assert files(d.docroot / "dev1") == before == ["f"]  # no directory, no temp file
    assert (d.docroot / "dev1" / "f").read_bytes() == b"data"
    samples = scrape(metrics_port)
    assert (refused_total(samples, "http"), refused_total(samples, "httpget")) == (1, 1)
    method = request_bytes.split(b" ")[0].decode()
    assert value(samples, "mogstored_http_requests_total", method=method, status="403") == 2


def test_untrusted_reads_are_served_on_both_ports(node) -> None:
    d, get_port, _ = node
    for port in (d.http_port, get_port):
        with HttpConn(connect(UNTRUSTED, port)) as c:
            assert c.request(b"GET /dev1/f HTTP/1.1\r\n\r\n").body == b"data"
            assert c.request(b"HEAD /dev1/f HTTP/1.1\r\n\r\n", head_only=True).status == 200
            # a write on the same keep-alive connection is refused, then the connection closes
            c.send(b"GET /dev1/f HTTP/1.1\r\n\r\nDELETE /dev1/f HTTP/1.1\r\n\r\nGET /dev1/f HTTP/1.1\r\n\r\n")
            assert c.response().body == b"data"
            assert c.response().norm() == FORBIDDEN
            assert c.at_eof()  # the GET after the refused DELETE is not answered
    assert (d.docroot / "dev1" / "f").read_bytes() == b"data"


def test_trusted_peer_writes(node) -> None:
    d, _, _ = node
    with HttpConn(connect(TRUSTED, d.http_port)) as c:
        assert c.request(b"PUT /dev1/new/g HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc").status == 201
        assert c.request(b"MKCOL /dev1/new/ HTTP/1.1\r\n\r\n").status == 400  # as always (§3.7)
        assert c.request(b"DELETE /dev1/f HTTP/1.1\r\n\r\n").status == 204
    assert (d.docroot / "dev1" / "new" / "g").read_bytes() == b"abc"
    assert not (d.docroot / "dev1" / "f").exists()


def test_untrusted_sidechannel_closed_unread_and_unanswered(node) -> None:
    d, _, metrics_port = node
    with connect(UNTRUSTED, d.mgmt_port) as s:  # closed at once: EOF without sending anything
        assert read_all(s) == b""
    with connect(UNTRUSTED, d.mgmt_port) as s:
        try:
            s.sendall(b"shutdown\r\n")
            reply = read_all(s)
        except (ConnectionResetError, BrokenPipeError):  # closed with our command unread
            reply = b""
    assert reply == b""
    with connect(TRUSTED, d.mgmt_port) as s:
        s.sendall(b"size /dev1/f\r\n")
        assert read_until(s, b"\r\n") == b"/dev1/f 4\r\n"
    assert d.proc.poll() is None  # the untrusted shutdown did nothing
    assert refused_total(scrape(metrics_port), "mgmt") == 2


def test_metrics_listener_unaffected_and_each_peer_logged_once(node) -> None:
    d, _, metrics_port = node
    for _ in range(3):
        with HttpConn(connect(UNTRUSTED, d.http_port)) as c:
            assert c.request(b"DELETE /dev1/f HTTP/1.1\r\n\r\n").status == 403
        with connect(UNTRUSTED, d.mgmt_port) as s:
            assert read_all(s) == b""
    with HttpConn(connect(UNTRUSTED, metrics_port)) as c:
        assert c.request(b"GET /metrics HTTP/1.1\r\n\r\n").status == 200
    samples = scrape(metrics_port)
    assert (refused_total(samples, "http"), refused_total(samples, "mgmt")) == (3, 3)
    assert len(REFUSED_LINE.findall(d.stderr())) == 1, d.stderr()


def test_off_by_default_everyone_may_write(tmp_path: Path) -> None:
    d, metrics_port = metrics_daemon(tmp_path)
    try:
        with HttpConn(connect(UNTRUSTED, d.http_port)) as c:
            assert c.request(b"PUT /dev1/g HTTP/1.1\r\nContent-Length: 1\r\n\r\nx").status == 201
        with connect(UNTRUSTED, d.mgmt_port) as s:
            s.sendall(b"size /dev1/g\r\n")
            assert read_until(s, b"\r\n") == b"/dev1/g 1\r\n"
        assert refused_total(scrape(metrics_port), "http") == 0
    finally:
        d.kill()


def test_worker_processes_yaml_list_and_command_line_wins(tmp_path: Path) -> None:
    """The YAML config trusts only the untrusted address; the command line replaces that."""
    config = tmp_path / "mogstored.yaml"
    config.write_text(f"trusted:\n  - {UNTRUSTED}\n  - 10.0.0.0/8\n")
    d, metrics_port = metrics_daemon(tmp_path, f"--config={config}", f"--trusted={TRUSTED}",
                                     "--worker-processes=2")
    try:
        n = 20
        for i in range(n):
            with HttpConn(connect(UNTRUSTED, d.http_port)) as c:
                assert c.request(b"PUT /dev2/g%d HTTP/1.1\r\nContent-Length: 1\r\n\r\nx" % i).norm() == FORBIDDEN
                assert c.at_eof()
            with connect(UNTRUSTED, d.mgmt_port) as s:
                assert read_all(s) == b""
        with HttpConn(connect(TRUSTED, d.http_port)) as c:
            assert c.request(b"PUT /dev2/ok HTTP/1.1\r\nContent-Length: 1\r\n\r\nx").status == 201
        with connect(TRUSTED, d.mgmt_port) as s:
            s.sendall(b"size /dev2/ok\r\n")
            assert read_until(s, b"\r\n") == b"/dev2/ok 1\r\n"
        assert files(d.docroot / "dev2") == ["ok"]
        # workers publish their counters once a second: the node's total is all of them
        wait_for(lambda: (refused_total(s := scrape(metrics_port), "http"), refused_total(s, "mgmt")) == (n, n),
                 what="refusals of every worker in the node's total")
        assert 1 <= len(REFUSED_LINE.findall(d.stderr())) <= 2  # once a minute per peer in each worker
    finally:
        d.kill()


@pytest.mark.parametrize("where", ["command line", "config", "yaml"])
def test_malformed_entry_is_a_startup_error(tmp_path: Path, where: str) -> None:
    (tmp_path / "dev1").mkdir()
    args = [f"--docroot={tmp_path}", f"--httplisten={HOST}:{free_port()}"]
    if where == "command line":
        args.append("--trusted=127.0.0.1,127.0.0.300")
    else:
        config = tmp_path / ("m.conf" if where == "config" else "m.yaml")
        config.write_text("trusted = 127.0.0.1,127.0.0.300\n" if where == "config"
                          else "trusted: [127.0.0.1, 127.0.0.300]\n")
        args.append(f"--config={config}")
    r = subprocess.run([sys.executable, "-m", "mogstored", *args], capture_output=True, text=True, timeout=30,
                       check=False)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    first = r.stderr.splitlines()[0]
    assert first.startswith("mogstored: failed to parse trusted=127.0.0.1,127.0.0.300: `127.0.0.300'"), r.stderr
