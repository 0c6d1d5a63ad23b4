"""``--metricslisten``: the Prometheus endpoint, checked against known traffic
with prometheus_client's own parser; worker processes; a frozen disk."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import (HOST, Daemon, HttpConn, Samples, children, fake_iostat, free_port, read_lines, scrape, value,
                      wait_for, wait_port)

from mogstored import __version__


def metrics_daemon(tmp_path: Path, *args: str, **kwargs) -> tuple[Daemon, int]:
    port = free_port()
    d = Daemon(tmp_path, args=(f"--metricslisten={HOST}:{port}", *args), **kwargs)
    wait_port(port, proc=d.proc)
    return d, port


def raw(port: int, request: bytes) -> HttpConn:
    conn = HttpConn(socket.create_connection((HOST, port), timeout=10))
    conn.send(request)
    return conn


def drive_traffic(d: Daemon, gets: int, misses: int, puts: int) -> None:
    """``gets`` GETs of a 100-byte file on dev1, ``misses`` 404s on dev1,
    ``puts`` 1000-byte PUTs on dev2, each on a connection of its own."""
    (d.docroot / "dev1" / "f").write_bytes(b"x" * 100)
    for _ in range(gets):
        with d.conn() as c:
            assert c.request(b"GET /dev1/f HTTP/1.1\r\nHost: x\r\n\r\n").status == 200
    for _ in range(misses):
        with d.conn() as c:
            assert c.request(b"GET /dev1/missing HTTP/1.1\r\nHost: x\r\n\r\n").status == 404
    for i in range(puts):
        with d.conn() as c:
            head = f"PUT /dev2/p{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode()
            assert c.request(head + b"y" * 1000).status == 201


def check_counts(s: Samples, gets: int, misses: int, puts: int, mgmt: dict[str, int]) -> None:
    assert value(s, "mogstored_http_requests_total", method="GET", status="200") == gets
    assert value(s, "mogstored_http_requests_total", method="GET", status="404") == misses
    assert value(s, "mogstored_http_requests_total", method="PUT", status="201") == puts
    assert value(s, "mogstored_http_request_duration_seconds_count", method="GET") == gets + misses
    assert value(s, "mogstored_http_request_duration_seconds_bucket", method="GET", le="+Inf") == gets + misses
    assert value(s, "mogstored_http_request_duration_seconds_count", method="PUT") == puts
    assert value(s, "mogstored_http_sent_bytes_total", device="dev1") == 100 * gets
    assert value(s, "mogstored_http_received_bytes_total", device="dev2") == 1000 * puts
    assert value(s, "mogstored_http_received_bytes_total", device="dev1") == 0
    for command, n in mgmt.items():
        assert value(s, "mogstored_mgmt_commands_total", command=command) == n, command


def mgmt_traffic(d: Daemon) -> dict[str, int]:
    with d.mgmt() as m:
        m.sendall(b"size /dev1/f\r\nsize /dev1/nope\r\nMD5 /dev1/f\r\nSHA-1 /dev1/f\r\nbogus\r\n\r\n")
        read_lines(m, 6)
    return {"size": 2, "md5": 1, "sha1": 1, "watch": 0, "other": 2}


def test_scrape_counts_real_traffic_exactly(tmp_path: Path) -> None:
    d, port = metrics_daemon(tmp_path)
    try:
        drive_traffic(d, gets=7, misses=3, puts=4)
        expected_mgmt = mgmt_traffic(d)
        with d.conn() as bad:
            assert bad.request(b"BREW /dev1/f HTTP/1.1\r\n\r\n").status == 400
        with d.conn() as idle_http, d.mgmt() as idle_mgmt:
            idle_http.request(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", head_only=True)
            assert idle_mgmt.sendall(b"\r\n") is None and read_lines(idle_mgmt, 1) == [b"\r\n"]
            # Connections closed just before (the start-up port probes, the traffic
            # above) leave the table once their EOF is read: wait for that.
            s = wait_for(lambda: (lambda s: s if [value(s, "mogstored_connections", listener=kind)
                                                  for kind in ("http", "mgmt", "metrics")] == [1, 1, 1]
                                  else None)(scrape(port)), what="one connection per listener")  # metrics: this scrape
        check_counts(s, 7, 3, 4, dict(expected_mgmt, other=expected_mgmt["other"] + 1))
        assert value(s, "mogstored_http_requests_total", method="other", status="400") == 1
        assert value(s, "mogstored_http_requests_total", method="HEAD", status="200") == 1
        assert value(s, "mogstored_http_request_duration_seconds_sum", method="GET") > 0
        assert value(s, "mogstored_build_info", version=__version__) == 1
        for dev in ("dev1", "dev2"):
            assert value(s, "mogstored_io_threads", device=dev) == 10
            assert value(s, "mogstored_io_busy", device=dev) == 0
            assert value(s, "mogstored_io_waiting", device=dev) == 0
            assert value(s, "mogstored_io_oldest_call_seconds", device=dev) == 0
            assert value(s, "mogstored_device_stalled", device=dev) == 0
            usage = dict(line.split(": ") for line in (d.docroot / dev / "usage").read_text().splitlines())
            assert value(s, "mogstored_device_bytes", device=dev, kind="total") == int(usage["total"]) * 1024
        assert value(s, "mogstored_io_threads", device="none") == 4
        assert not any(name.startswith("mogstored_worker_") for name, _ in s)  # single process
    finally:
        d.kill()


def test_paths_methods_and_keepalive(tmp_path: Path) -> None:
    d, port = metrics_daemon(tmp_path, http=False)
    try:
        with raw(port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n") as conn:
            head = conn.response(head_only=True)
            assert head.status == 200 and int(head.header("Content-Length")) > 0
            assert head.header("Content-Type") == b"text/plain; version=0.0.4"
            # the same connection goes on: 404 elsewhere, 405 for other methods, then a real scrape
            assert conn.request(b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n").status == 404
            assert conn.request(b"PUT /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").status == 405
            body = conn.request(b"GET /metrics HTTP/1.0\r\n\r\n").body
            assert b"mogstored_build_info" in body
            assert conn.at_eof()  # HTTP/1.0 without keep-alive: closed
        with raw(port, b"GARBAGE\r\n\r\n") as conn:
            assert conn.response().status == 400
            assert conn.at_eof()
    finally:
        d.kill()


def test_io_errors_by_errno(tmp_path: Path) -> None:
    d = None
    dev = tmp_path / "docroot" / "dev3"
    dev.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(dev)], check=True)
    try:
        d, port = metrics_daemon(tmp_path, devices=(1, 3))
        with d.conn() as c:
            head = b"PUT /dev3/big HTTP/1.1\r\nHost: x\r\nContent-Length: 262144\r\n\r\n"
            try:  # the node answers 507 and closes, perhaps before reading the whole body (RST)
                assert c.request(head + b"z" * 262144).status == 507
            except (ConnectionResetError, BrokenPipeError):
                pass
        s = scrape(port)
        assert value(s, "mogstored_io_errors_total", device="dev3", errno="ENOSPC") == 1
        assert value(s, "mogstored_http_requests_total", method="PUT", status="507") == 1
        assert value(s, "mogstored_io_errors_total", device="dev1", errno="ENOSPC") is None
    finally:
        if d is not None:
            d.kill()
        subprocess.run(["umount", str(dev)], check=True)


def test_worker_processes_report_node_totals(tmp_path: Path) -> None:
    d, port = metrics_daemon(tmp_path, "--worker-processes=2")
    try:
        drive_traffic(d, gets=10, misses=4, puts=6)
        expected_mgmt = mgmt_traffic(d)

        def settled() -> Samples | None:
            s = scrape(port)
            ok = value(s, "mogstored_http_requests_total", method="PUT", status="201") == 6 and \
                value(s, "mogstored_mgmt_commands_total", command="size") == 2 and \
                value(s, "mogstored_http_requests_total", method="GET", status="200") == 10 and \
                value(s, "mogstored_io_threads", device="dev1") == 20  # a worker that got no traffic too
            return s if ok else None

        wait_for(settled, timeout=10, what="every worker's snapshot")  # published once a second
        for _ in range(6):  # whichever worker answers, the whole node
            s = scrape(port)
            check_counts(s, 10, 4, 6, expected_mgmt)
            assert value(s, "mogstored_worker_processes") == 2
            assert value(s, "mogstored_worker_restarts_total") == 0
            assert value(s, "mogstored_io_threads", device="dev1") == 20  # two workers' pools
        workers = children(d.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        wait_for(lambda: len(children(d.pid)) == 2 and workers[0] not in children(d.pid), what="respawn")
        s = wait_for(lambda: (lambda s: s if value(s, "mogstored_worker_restarts_total") == 1 else None)(scrape(port)))
        check_counts(s, 10, 4, 6, expected_mgmt)  # not one count lost with the killed worker
        drive_traffic(d, gets=5, misses=0, puts=0)
        wait_for(lambda: value(scrape(port), "mogstored_http_requests_total", method="GET", status="200") == 15,
                 what="counts going on from the respawned worker's slot")
        assert value(scrape(port), "mogstored_http_requests_total", method="GET", status="404") == 4
    finally:
        d.stop()


@pytest.fixture
def loop_dev2(tmp_path: Path):
    """docroot/dev2 on a loop-mounted ext4 image; yields its kernel name."""
    image = tmp_path / "dev2.img"
    subprocess.run(["truncate", "-s", "32M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    mnt = tmp_path / "docroot" / "dev2"
    mnt.mkdir(parents=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    source = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(mnt)], capture_output=True, text=True,
                            check=True).stdout.strip()
    try:
        yield mnt, source.removeprefix("/dev/")
    finally:
        subprocess.run(["fsfreeze", "-u", str(mnt)], capture_output=True)  # in case a test left it frozen
        subprocess.run(["umount", str(mnt)], check=True)


def test_frozen_disk_is_reported_stalled(tmp_path: Path, loop_dev2) -> None:
    mnt, name = loop_dev2
    iostat = fake_iostat(tmp_path, f"{name} 1.00 2.00 42.50\\n", interval=0.2)
    d, port = metrics_daemon(tmp_path, "--stallseconds=2", env={"MOG_IOSTAT_CMD": iostat})
    frozen = False
    results: list[int] = []
    try:
        wait_for(lambda: value(scrape(port), "mogstored_device_utilization_ratio", device="dev2") == 0.425,
                 what="iostat's %util of the loop device")
        subprocess.run(["fsfreeze", "-f", str(mnt)], check=True)
        frozen = True
        puts = [threading.Thread(target=lambda i=i: results.append(_put(d, f"/dev2/frozen{i}"))) for i in range(2)]
        for t in puts:
            t.start()
        first = wait_for(lambda: (lambda s: s if value(s, "mogstored_io_busy", device="dev2") >= 1 else None)(
            scrape(port)), what="PUTs inside a disk call")
        time.sleep(0.5)
        second = scrape(port)
        age = value(second, "mogstored_io_oldest_call_seconds", device="dev2")
        assert age > value(first, "mogstored_io_oldest_call_seconds", device="dev2") > 0
        stalled = wait_for(lambda: (lambda s: s if value(s, "mogstored_device_stalled", device="dev2") == 1
                                    else None)(scrape(port)), timeout=6, what="dev2 stalled")
        assert value(stalled, "mogstored_io_oldest_call_seconds", device="dev2") > 2
        assert value(stalled, "mogstored_device_stalled", device="dev1") == 0
        assert value(stalled, "mogstored_io_busy", device="dev1") == 0
        assert not results  # still frozen
        subprocess.run(["fsfreeze", "-u", str(mnt)], check=True)
        frozen = False
        for t in puts:
            t.join(10)
        assert results == [201, 201]
        after = wait_for(lambda: (lambda s: s if value(s, "mogstored_device_stalled", device="dev2") == 0
                                  else None)(scrape(port)), timeout=5, what="dev2 no longer stalled")
        assert value(after, "mogstored_io_busy", device="dev2") == 0
        assert value(after, "mogstored_io_oldest_call_seconds", device="dev2") == 0
        log = d.stderr()
        assert log.count("device dev2 stalled") == 1, log
        assert log.count("device dev2 no longer stalled") == 1, log
        assert "device dev1" not in log
    finally:
        if frozen:
            subprocess.run(["fsfreeze", "-u", str(mnt)], check=True)
        d.kill()


def _put(d: Daemon, path: str) -> int:
    with d.conn() as c:
        c.sock.settimeout(60)
        head = f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 65536\r\n\r\n".encode()
        return c.request(head + b"w" * 65536).status


def test_upgrade_hands_the_metrics_port_on(tmp_path: Path) -> None:
    """SIGUSR2: the metrics listener goes to the new process with the others."""
    pidfile = tmp_path / "pid"
    d, port = metrics_daemon(tmp_path, f"--pidfile={pidfile}")
    new = None
    try:
        d.proc.send_signal(signal.SIGUSR2)
        new = wait_for(lambda: (lambda t: int(t) if t.strip().isdigit() and int(t) != d.pid else None)(
            pidfile.read_text() if pidfile.exists() else ""), what="the new process's pidfile")
        d.proc.send_signal(signal.SIGQUIT)
        assert d.proc.wait(15) == 0
        drive_traffic(d, gets=2, misses=0, puts=0)  # served by the new process only
        assert value(scrape(port), "mogstored_http_requests_total", method="GET", status="200") == 2
        assert "failed to bind" not in d.stderr()
    finally:
        d.kill()
        if new is not None:
            os.kill(new, signal.SIGQUIT)
            wait_for(lambda: not os.path.exists(f"/proc/{new}") or
                     open(f"/proc/{new}/stat").read().split()[2] == "Z", what="the new process to exit")
