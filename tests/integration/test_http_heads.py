"""GET/HEAD over real sockets: byte-exact heads (§3.5, §3.5.1, §3.8.1), Connection rules
(§3.3), the `/` probe, status codes for directories and missing files, and the Range table."""
from __future__ import annotations

import email.utils
import os
import time

import pytest
import requests

from conftest import EPOCH, Daemon, check_http_date

BODY666 = bytes(range(256)) * 2 + bytes(range(154))
assert len(BODY666) == 666
MTIME = 1_700_000_000  # Tue, 14 Nov 2023 22:13:20 GMT
MTIME_DATE = b"Tue, 14 Nov 2023 22:13:20 GMT"


@pytest.fixture(scope="module")
def d(shared_daemon: Daemon) -> Daemon:
    """The module daemon with a 666-byte file, an empty file, a 6-byte file and a directory."""
    dev1 = shared_daemon.docroot / "dev1"
    for name, data in (("f666", BODY666), ("empty", b""), ("hello", b"hello\n")):
        (dev1 / name).write_bytes(data)
        os.utime(dev1 / name, (MTIME, MTIME))
    (dev1 / "dir").mkdir()
    usage = shared_daemon.docroot / "dev2" / "usage"
    deadline = time.monotonic() + 10
    while not usage.exists() and time.monotonic() < deadline:  # written at start-up
        time.sleep(0.05)
    return shared_daemon


def file_head(length: int, ranges: bytes, conn: bytes = b"keep-alive", status: bytes = b"200 OK",
              mtime: bytes = MTIME_DATE) -> bytes:
    """Expected 200/206 head with the Date replaced by the epoch."""
    return (b"HTTP/1.1 %s\r\nStatus: %s\r\nDate: %s\r\nLast-Modified: %s\r\nContent-Length: %d\r\n"
            b"Content-Type: application/octet-stream\r\n%s\r\nConnection: %s\r\n\r\n"
            % (status, status, EPOCH, mtime, length, ranges, conn))


def generic_head(status: bytes, conn: bytes = b"keep-alive", extra: bytes = b"") -> bytes:
    """Expected §3.8.1 head with the Date replaced by the epoch."""
    return (b"HTTP/1.1 %s\r\nStatus: %s\r\nDate: %s\r\nContent-Length: 0\r\n"
            b"Content-Type: text/plain\r\n%sConnection: %s\r\n\r\n" % (status, status, EPOCH, extra, conn))


def test_get_200_byte_exact(d: Daemon) -> None:
    with d.conn() as c:
        r = c.request(b"GET /dev1/hello HTTP/1.1\r\n\r\n")
        assert r.norm() == file_head(6, b"Accept-Ranges: bytes")
        assert r.body == b"hello\n"
        # HEAD: same head, no body; the connection is still usable after it.
        h = c.request(b"HEAD /dev1/hello HTTP/1.1\r\n\r\n", head_only=True)
        assert h.norm() == r.norm()
        assert c.request(b"GET /dev1/f666 HTTP/1.1\r\n\r\n").body == BODY666


def test_http10_get_closes_after_body(d: Daemon) -> None:
    with d.conn() as c:
        r = c.request(b"GET /dev1/hello HTTP/1.0\r\n\r\n")
        assert r.norm() == file_head(6, b"Accept-Ranges: bytes", b"close")
        assert r.body == b"hello\n"
        assert c.at_eof()


def test_date_is_now(d: Daemon) -> None:
    """The Date header is a well-formed current date (generous bound, not a timing test)."""
    with d.conn() as c:
        r = c.request(b"GET /dev1/missing HTTP/1.1\r\n\r\n")
    date = r.header("Date")
    check_http_date(date)
    assert abs(email.utils.mktime_tz(email.utils.parsedate_tz(date.decode())) - time.time()) < 300


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
@pytest.mark.parametrize("path", [b"/", b"//", b"http://x/", b"http://../"])
def test_root_probe(d: Daemon, method: bytes, path: bytes) -> None:
    """`GET /` answers 200 with an epoch Last-Modified whatever the docroot holds."""
    with d.conn() as c:
        r = c.request(b"%s %s HTTP/1.0\r\n\r\n" % (method, path), head_only=True)
        assert r.norm() == file_head(0, b"Accept-Ranges: bytes", b"close", mtime=EPOCH)
        assert c.at_eof()


def test_root_with_requests_and_double_slash_usage(d: Daemon) -> None:
    """What `mogadm check` does: GET / then GET //devN/usage."""
    assert requests.get(d.url("/"), timeout=10).status_code == 200
    r = requests.get(d.url("//dev2/usage"), timeout=10)
    assert r.status_code == 200
    assert all(b"\n%s: " % k in b"\n" + r.content for k in (b"available", b"device", b"disk"))
    assert requests.get(d.url("//dev1/hello"), timeout=10).content == b"hello\n"


@pytest.mark.parametrize("rng", [b"bytes=0-1", b"bytes=-0", b"bytes=5-"])
def test_root_range_is_416(d: Daemon, rng: bytes) -> None:
    """§8: 1.2.1 aborts on `GET /` with a Range; the clone answers 416 for an empty file."""
    with d.conn() as c:
        r = c.request(b"GET / HTTP/1.1\r\nRange: %s\r\n\r\n" % rng)
        assert r.norm() == generic_head(b"416 Requested Range Not Satisfiable", extra=b"Content-Range: bytes */0\r\n")
        assert c.request(b"HEAD / HTTP/1.1\r\n\r\n", head_only=True).status == 200


@pytest.mark.parametrize("path,status", [
    (b"/dev1/missing", b"404 Not Found"),
    (b"/dev1", b"403 Forbidden"),
    (b"/dev1/dir", b"403 Forbidden"),
    (b"/dev1/dir/", b"403 Forbidden"),
    (b"/dev1/../dev1/hello", b"403 Forbidden"),
    (b"/dev1/a..b", b"403 Forbidden"),
    (b"/dev1/hello/x", b"500 Internal Server Error"),  # ENOTDIR
    (b"/dev9/x", b"404 Not Found"),
])
@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_error_statuses_keep_alive(d: Daemon, path: bytes, status: bytes, method: bytes) -> None:
    with d.conn() as c:
        r = c.request(b"%s %s HTTP/1.1\r\n\r\n" % (method, path), head_only=True)
        assert r.norm() == generic_head(status)
        assert c.request(b"GET /dev1/hello HTTP/1.1\r\n\r\n").body == b"hello\n"


@pytest.mark.parametrize("version,connection,expect", [
    (b"1.0", [], b"close"),
    (b"1.0", [b"keep-alive"], b"keep-alive"),
    (b"1.0", [b"Keep-Alive, keep-alive"], b"keep-alive"),
    (b"1.0", [b"KEEP-ALIVE"], b"keep-alive"),
    (b"1.0", [b"Upgrade, keep-alive"], b"close"),
    (b"1.0", [b"keep-alive", b"close"], b"close"),
    (b"1.0", [b"close", b"keep-alive"], b"keep-alive"),
    (b"1.1", [], b"keep-alive"),
    (b"1.1", [b"close"], b"close"),
    (b"1.1", [b"closed"], b"close"),
    (b"1.1", [b"Close"], b"close"),
    (b"1.1", [b"TE, close"], b"keep-alive"),
])
@pytest.mark.parametrize("path", [b"/dev1/hello", b"/dev1/missing"])
def test_connection_table(d: Daemon, version: bytes, connection: list[bytes], expect: bytes,
                          path: bytes) -> None:
    """§3.3: the Connection header states the decision, and the socket follows it."""
    head = b"GET %s HTTP/%s\r\n" % (path, version)
    head += b"".join(b"Connection: %s\r\n" % v for v in connection) + b"\r\n"
    with d.conn() as c:
        r = c.request(head)
        assert r.header("Connection") == expect
        if expect == b"close":
            assert c.at_eof()
        else:
            assert c.request(b"HEAD / HTTP/1.1\r\n\r\n", head_only=True).status == 200


def test_tracker_monitor_request(d: Daemon) -> None:
    """The monitor's exact HTTP/1.0 usage request stays persistent (§5.2)."""
    req = (b"GET /dev2/usage HTTP/1.0\r\nKeep-Alive: 300\r\nConnection: Keep-Alive, keep-alive\r\n"
           b"Host: 127.0.0.1:7500\r\nUser-Agent: MogileFS::Connection::HTTP/2.73\r\n\r\n")
    with d.conn() as c:
        for _ in range(3):
            r = c.request(req)
            assert r.status == 200 and r.header("Connection") == b"keep-alive"
            assert r.body.startswith(b"available: ")


@pytest.mark.parametrize("rng,first,last", [
    (b"bytes=66-70", 66, 70),
    (b"bytes=66-", 66, 665),
    (b"bytes=-66", 600, 665),
    (b"bytes=5-6666", 5, 665),
    (b"bytes=0-0", 0, 0),
    (b"bytes=665-665", 665, 665),
    (b"bytes=-666", 0, 665),
    (b"bytes=-1", 665, 665),
    (b"bytes=0-", 0, 665),
])
def test_range_206(d: Daemon, rng: bytes, first: int, last: int) -> None:
    cr = b"Content-Range: bytes %d-%d/666" % (first, last)
    with d.conn() as c:
        r = c.request(b"GET /dev1/f666 HTTP/1.1\r\nRange: %s\r\n\r\n" % rng)
        assert r.norm() == file_head(last - first + 1, cr, status=b"206 Partial Content")
        assert r.body == BODY666[first:last + 1]
        h = c.request(b"HEAD /dev1/f666 HTTP/1.0\r\nRange: %s\r\n\r\n" % rng, head_only=True)
        assert h.norm() == file_head(last - first + 1, cr, b"close", b"206 Partial Content")
        assert c.at_eof()


@pytest.mark.parametrize("path,rng,size", [
    (b"/dev1/f666", b"bytes=666-666", 666),
    (b"/dev1/f666", b"bytes=666-", 666),
    (b"/dev1/f666", b"bytes=6666-", 666),
    (b"/dev1/f666", b"bytes=70-66", 666),
    (b"/dev1/f666", b"bytes=-", 666),
    (b"/dev1/f666", b"bytes=-0", 666),
    (b"/dev1/empty", b"bytes=0-0", 0),
    (b"/dev1/empty", b"bytes=0-", 0),
    (b"/dev1/empty", b"bytes=-0", 0),
])
@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_range_416_keeps_alive(d: Daemon, path: bytes, rng: bytes, size: int, method: bytes) -> None:
    with d.conn() as c:
        r = c.request(b"%s %s HTTP/1.1\r\nRange: %s\r\n\r\n" % (method, path, rng), head_only=True)
        assert r.norm() == generic_head(b"416 Requested Range Not Satisfiable",
                                        extra=b"Content-Range: bytes */%d\r\n" % size)
        assert c.request(b"GET /dev1/hello HTTP/1.1\r\n\r\n").body == b"hello\n"


@pytest.mark.parametrize("path,rng,body", [
    (b"/dev1/f666", b"bytes=-667", BODY666),
    (b"/dev1/empty", b"bytes=-1", b""),
])
def test_range_suffix_longer_than_file_is_200(d: Daemon, path: bytes, rng: bytes, body: bytes) -> None:
    with d.conn() as c:
        r = c.request(b"GET %s HTTP/1.1\r\nRange: %s\r\n\r\n" % (path, rng))
        assert r.norm() == file_head(len(body), b"Accept-Ranges: bytes")
        assert r.body == body


def test_last_range_header_wins(d: Daemon) -> None:
    with d.conn() as c:
        r = c.request(b"GET /dev1/f666 HTTP/1.1\r\nRange: bytes=0-0\r\nRange: bytes=1-2\r\n\r\n")
        assert r.header("Content-Range") == b"bytes 1-2/666" and r.body == BODY666[1:3]


def test_range_with_requests(d: Daemon) -> None:
    """What LWP/ClientHTTPFile do: ordinary client Range reads."""
    r = requests.get(d.url("/dev1/f666"), headers={"Range": "bytes=100-199"}, timeout=10)
    assert r.status_code == 206 and r.content == BODY666[100:200]
    assert r.headers["Content-Range"] == "bytes 100-199/666"
    assert "Accept-Ranges" not in r.headers


def test_large_file_body(d: Daemon) -> None:
    """Bodies beyond one sendfile chunk arrive whole (and after fadvise for > 256 KiB)."""
    data = os.urandom(5 << 20)
    (d.docroot / "dev1" / "big").write_bytes(data)
    r = requests.get(d.url("/dev1/big"), timeout=30)
    assert r.status_code == 200 and r.content == data
    r = requests.get(d.url("/dev1/big"), headers={"Range": "bytes=1000000-"}, timeout=30)
    assert r.status_code == 206 and r.content == data[1000000:]


def test_fifo_is_403_without_blocking(d: Daemon) -> None:
    """Opening a FIFO for reading must not wait for a writer (it would pin an I/O thread)."""
    os.mkfifo(d.docroot / "dev1" / "fifo")
    with d.conn() as c:
        for method in (b"GET", b"HEAD"):
            r = c.request(b"%s /dev1/fifo HTTP/1.1\r\n\r\n" % method, head_only=True)
            assert r.norm() == generic_head(b"403 Forbidden")
