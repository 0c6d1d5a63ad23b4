"""PUT over real sockets (§3.6, §1.8): framing, chunked bodies split anywhere, Content-MD5
headers and trailers, Content-Range, parent creation, errors, atomic replacement, premature EOF."""
from __future__ import annotations

import base64
import hashlib
import os
import re
import socket
import struct
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from conftest import EPOCH, Daemon, HttpConn, stray_temps, usage_being_replaced

CREATED = (b"HTTP/1.1 201 Created\r\nStatus: 201 Created\r\nDate: %s\r\nContent-Length: 0\r\n"
           b"Content-Type: text/plain\r\nConnection: keep-alive\r\n\r\n" % EPOCH)
BAD_CLOSE = (b"HTTP/1.1 400 Bad Request\r\nStatus: 400 Bad Request\r\nDate: %s\r\nContent-Length: 0\r\n"
             b"Content-Type: text/plain\r\nConnection: close\r\n\r\n" % EPOCH)
MD5_ABCDE = b"q1a02StAcTrMWviZhdS3hg=="
MD5_BANG = b"kDPg4wXyR8DDyA0MeEjIsw=="  # the monitor's test-md5 digest (of "!")


def b64md5(data: bytes) -> bytes:
    return base64.b64encode(hashlib.md5(data).digest())


@pytest.fixture(scope="module")
def d(shared_daemon: Daemon) -> Daemon:
    return shared_daemon


@pytest.fixture(autouse=True)
def no_temp_files(d: Daemon) -> Iterator[None]:
    """Whatever a test did, no temp file may be left behind once its responses are in."""
    yield
    assert not stray_temps(d.docroot)


def dev1(d: Daemon, rel: str) -> Path:
    return d.docroot / "dev1" / rel


def put(c: HttpConn, path: bytes, body: bytes, headers: bytes = b"", version: bytes = b"1.1"):
    """Send one identity PUT (with Content-Length) and read its response."""
    return c.request(b"PUT %s HTTP/%s\r\nContent-Length: %d\r\n%s\r\n%s"
                     % (path, version, len(body), headers, body))


def assert_closed_with(c: HttpConn, status: int) -> None:
    r = c.response()
    assert r.status == status and r.header("Connection") == b"close"
    assert c.at_eof()


def test_put_content_length_byte_exact(d: Daemon) -> None:
    with d.conn() as c:
        r = put(c, b"/dev1/cl", b"hello")
        assert r.norm() == CREATED and len(r.head) == 151
        assert dev1(d, "cl").read_bytes() == b"hello"
        assert c.request(b"GET /dev1/cl HTTP/1.1\r\n\r\n").body == b"hello"
    umask = os.umask(0)
    os.umask(umask)
    assert dev1(d, "cl").stat().st_mode & 0o777 == 0o666 & ~umask


def test_put_without_length_creates_empty_file(d: Daemon) -> None:
    with d.conn() as c:
        assert c.request(b"PUT /dev1/nolen HTTP/1.1\r\n\r\n").norm() == CREATED
        assert dev1(d, "nolen").read_bytes() == b""


def test_put_with_requests_and_parents(d: Daemon) -> None:
    """A FID path: missing parents below devN are created."""
    data = os.urandom(100_000)
    r = requests.put(d.url("/dev1/0/000/000/0000000123.fid"), data=data, timeout=10)
    assert r.status_code == 201 and r.content == b""
    assert dev1(d, "0/000/000/0000000123.fid").read_bytes() == data


def test_put_missing_device_is_404_and_not_created(d: Daemon) -> None:
    with d.conn() as c:
        c.send(b"PUT /dev9/0/x HTTP/1.1\r\nContent-Length: 1\r\n\r\nx")
        assert_closed_with(c, 404)
    assert not (d.docroot / "dev9").exists()


def test_replicator_put_http10_keepalive_with_md5(d: Daemon) -> None:
    """The replicate worker's exact PUT (§5.4): lowercase Content-length, HTTP/1.0 keep-alive."""
    with d.conn() as c:
        for i in range(2):
            r = put(c, b"/dev1/repl%d" % i, b"abcde", b"Connection: keep-alive\r\nContent-MD5: %s\r\n" % MD5_ABCDE,
                    b"1.0")
            assert r.status == 201 and r.header("Connection") == b"keep-alive"
        r = c.request(b"PUT /dev1/repl2 HTTP/1.0\r\nContent-length: 2\r\n\r\nab")
        assert r.status == 201 and r.header("Connection") == b"close"
        assert c.at_eof()
    assert dev1(d, "repl2").read_bytes() == b"ab"


def test_content_md5_mismatch_keeps_connection_and_no_file(d: Daemon) -> None:
    """The monitor's test-md5 PUT (§5.2 d) must be refused so it sets reject_bad_md5."""
    with d.conn() as c:
        r = put(c, b"/dev1/test-write/test-md5", b".", b"Content-MD5: %s\r\n" % MD5_BANG)
        assert r.status == 400 and r.header("Connection") == b"keep-alive"
        assert not dev1(d, "test-write/test-md5").exists()
        assert put(c, b"/dev1/test-write/test-md5", b"!", b"Content-MD5: %s\r\n" % MD5_BANG).status == 201
    assert dev1(d, "test-write/test-md5").read_bytes() == b"!"


def test_md5_mismatch_leaves_old_file(d: Daemon) -> None:
    dev1(d, "keep").write_bytes(b"old")
    with d.conn() as c:
        assert put(c, b"/dev1/keep", b"new", b"Content-MD5: %s\r\n" % MD5_ABCDE).status == 400
    assert dev1(d, "keep").read_bytes() == b"old"


@pytest.mark.parametrize("value", [b"ab56b4d92b40713acc5af89985d4b786", b"q1a02StAcTrMWviZhdS3hg=", b"q1a02StAcTrMWviZhdS3h==="])
def test_malformed_content_md5_is_400_close(d: Daemon, value: bytes) -> None:
    with d.conn() as c:
        c.send(b"PUT /dev1/badmd5 HTTP/1.1\r\nContent-Length: 5\r\nContent-MD5: %s\r\n\r\nabcde" % value)
        assert_closed_with(c, 400)
    assert not dev1(d, "badmd5").exists()


CHUNKED_BODY = (b"5;name=value;x=\"q\"\r\nabcde\r\n3;y\r\nfgh\r\nA\r\n0123456789\r\n0;last=1\r\n"
                b"X-Foo: bar\r\nContent-MD5: %s\r\n\r\n" % b64md5(b"abcdefgh0123456789"))


def test_chunked_split_at_every_offset(d: Daemon) -> None:
    """Each split point of a body with extensions and trailers; a GET pipelined after the trailers."""
    head = b"PUT /dev1/chunked%d HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTrailer: Content-MD5\r\n\r\n"
    with d.conn() as c:
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(CHUNKED_BODY) + 1):
            c.send(head % i + CHUNKED_BODY[:i])
            c.send(CHUNKED_BODY[i:] + b"GET /dev1/chunked%d HTTP/1.1\r\n\r\n" % i)
            assert c.response().norm() == CREATED
            assert c.response().body == b"abcdefgh0123456789"
    assert len(list(d.docroot.joinpath("dev1").glob("chunked*"))) == len(CHUNKED_BODY) + 1


def test_chunked_split_on_fresh_connections(d: Daemon) -> None:
    """The same body, each split on its own HTTP/1.0 connection (ends in close, then EOF)."""
    for i in range(0, len(CHUNKED_BODY) + 1, 7):
        with d.conn() as c:
            c.send(b"PUT /dev1/fresh HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED_BODY[:i])
            r = c.send(CHUNKED_BODY[i:]).response()
            assert r.status == 201 and r.header("Connection") == b"close"
            assert c.at_eof()
        assert dev1(d, "fresh").read_bytes() == b"abcdefgh0123456789"


def test_chunked_large_extension_and_lowercase_hex(d: Daemon) -> None:
    body = b"a;" + b"x" * (3 << 20) + b"\r\n0123456789\r\nf\r\n" + b"F" * 15 + b"\r\n0\r\n\r\n"
    with d.conn() as c:
        r = c.request(b"PUT /dev1/ext HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
        assert r.status == 201
    assert dev1(d, "ext").read_bytes() == b"0123456789" + b"F" * 15


def test_chunked_wins_over_content_length(d: Daemon) -> None:
    with d.conn() as c:
        r = c.request(b"PUT /dev1/cw HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"5\r\nabcde\r\n0\r\n\r\n")
        assert r.status == 201
        assert c.request(b"GET /dev1/cw HTTP/1.1\r\n\r\n").body == b"abcde"


@pytest.mark.parametrize("headers,trailers,status", [
    (b"Trailer: Content-MD5\r\n", b"Content-MD5: %s\r\n" % MD5_ABCDE, 201),
    (b"Trailer: content-md5, Foo\r\n", b"Content-MD5: %s\r\n" % MD5_ABCDE, 201),
    (b"Trailer: Content-MD5\r\n", b"Content-MD5: %s\r\n" % MD5_BANG, 400),
    (b"Trailer: Content-MD5\r\n", b"", 400),
    (b"Trailer: Content-MD5\r\n", b"X-Other: 1\r\n", 400),
    (b"Content-MD5: %s\r\n" % MD5_ABCDE, b"Content-MD5: %s\r\n" % MD5_BANG, 400),
    (b"Content-MD5: %s\r\n" % MD5_BANG, b"Content-MD5: %s\r\n" % MD5_ABCDE, 201),
    (b"Content-MD5: %s\r\n" % MD5_BANG, b"", 400),
    (b"Content-MD5: %s\r\n" % MD5_ABCDE, b"", 201),
    (b"", b"Content-MD5: %s\r\n" % MD5_BANG, 201),
    (b"Trailer: Foo, Content-MD5\r\n", b"Content-MD5: %s\r\n" % MD5_BANG, 201),
])
def test_md5_trailers(d: Daemon, headers: bytes, trailers: bytes, status: int) -> None:
    """§3.6.3: which digest is compared; a mismatch is 400 keep-alive and leaves no file."""
    path = dev1(d, "trailer")
    path.unlink(missing_ok=True)
    with d.conn() as c:
        r = c.request(b"PUT /dev1/trailer HTTP/1.1\r\nTransfer-Encoding: chunked\r\n%s\r\n"
                      b"5\r\nabcde\r\n0\r\n%s\r\n" % (headers, trailers))
        assert r.status == status and r.header("Connection") == b"keep-alive"
        assert c.request(b"HEAD /dev1/trailer HTTP/1.1\r\n\r\n", head_only=True).status == (
            200 if status == 201 else 404)
    assert path.exists() == (status == 201)


def test_trailer_of_any_size_is_skipped(d: Daemon) -> None:
    """§3.6.3 (issue 7 item 5): a 100 KB trailer line is skipped like an extension, and a
    Content-MD5 trailer after it is still checked, with its grammar."""
    big = b"X-Foo: " + b"f" * 100_000 + b"\r\n"
    head = b"PUT /dev1/bigtrailer HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTrailer: Content-MD5\r\n\r\n"
    with d.conn() as c:
        r = c.request(head + b"5\r\nabcde\r\n0\r\n" + big + b"Content-MD5: %s\r\n\r\n" % MD5_ABCDE)
        assert r.status == 201 and r.header("Connection") == b"keep-alive"
        assert c.request(b"GET /dev1/bigtrailer HTTP/1.1\r\n\r\n").body == b"abcde"
        c.send(head + b"5\r\nabcde\r\n0\r\n" + big + b"Content-MD5: %s\r\n\r\n" % MD5_ABCDE[:-2])
        assert_closed_with(c, 400)


@pytest.mark.parametrize("body,status", [
    (b"x\r\nabc\r\n0\r\n\r\n", 400),
    (b"5\nabcde\r\n0\r\n\r\n", 400),
    (b"\r\n\r\n", 400),
    (b"5\r\nabcde\r\n0\r\nBad Trailer\r\n\r\n", 400),
    (b"5\r\nabcde\r\n0\r\nContent-MD5: abc\r\n\r\n", 400),
    (b"8000000000000000\r\n", 507),
    (b"10000000000000000\r\nx", 507),
])
def test_bad_chunking_closes_without_file(d: Daemon, body: bytes, status: int) -> None:
    with d.conn() as c:
        c.send(b"PUT /dev1/badchunk HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
        assert_closed_with(c, status)
    assert not dev1(d, "badchunk").exists()


def test_content_range_writes_at_offset(d: Daemon) -> None:
    with d.conn() as c:
        r = put(c, b"/dev1/cr/new", b"hello", b"Content-Range: bytes 5-9/*\r\n")
        assert r.norm() == CREATED
        assert dev1(d, "cr/new").read_bytes() == b"\0" * 5 + b"hello"
        assert put(c, b"/dev1/cr/new", b"XY", b"Content-Range: bytes  1-2/*\r\n").status == 201
        assert dev1(d, "cr/new").read_bytes() == b"\0XY\0\0hello"
        # Content-Range forms other than "/*" are ignored: a whole-file PUT.
        assert put(c, b"/dev1/cr/new", b"ab", b"Content-Range: bytes 0-1/2\r\n").status == 201
        assert dev1(d, "cr/new").read_bytes() == b"ab"


@pytest.mark.parametrize("head,status", [
    (b"Content-Range: bytes 0-4/*\r\n", 400),  # no Content-Length counts as 0
    (b"Content-Range: bytes 0-4/*\r\nContent-Length: 4\r\n", 400),
    (b"Content-Range: bytes 4-0/*\r\nContent-Length: 0\r\n", 400),
    (b"Content-Range: bytes */*\r\nContent-Length: 1\r\n", 400),
    (b"Content-Range: bytes 0-4/*\r\nTransfer-Encoding: chunked\r\n", 400),
    (b"Content-Range: bytes 0-%d/*\r\nTransfer-Encoding: chunked\r\n" % 2**63, 507),
    (b"Content-Length: %d\r\n" % 2**63, 507),
    (b"Content-Length: %d\r\n" % 2**64, 507),
    (b"Content-Length: 5x\r\n", 400),
    (b"Content-Length: +5\r\n", 400),
])
def test_bad_framing_closes_without_file(d: Daemon, head: bytes, status: int) -> None:
    with d.conn() as c:
        c.send(b"PUT /dev1/frame/x HTTP/1.1\r\n%s\r\n" % head)
        assert_closed_with(c, status)
    assert not dev1(d, "frame").exists()


@pytest.mark.parametrize("path", [b"/foo", b"/dev1/x/", b"/dev1", b"/dev", b"/de", b"/dev1/../dev1/x",
                                  b"/dev1/a..b", b"/dev1//", b"/devx/a"])
def test_bad_put_paths_are_400_close(d: Daemon, path: bytes) -> None:
    # The node's start-up pass writes the usage files before its first answer, but
    # the listeners accept before that: a first test of the module must wait for it.
    assert d.mgmt_cmd(b"\r\n") == b"\r\n"

    def listing() -> list[Path]:  # a usage pass's temp name comes and goes meanwhile
        return sorted(p for p in d.docroot.rglob("*") if not usage_being_replaced(p))

    before = listing()
    with d.conn() as c:
        c.send(b"PUT %s HTTP/1.1\r\nContent-Length: 1\r\n\r\nx" % path)
        assert_closed_with(c, 400)
    assert listing() == before


def test_put_single_char_name_and_collapsed_slashes(d: Daemon) -> None:
    with d.conn() as c:
        assert put(c, b"//dev1//a", b"1").status == 201
        assert put(c, b"http://h.example//dev1/b", b"2").status == 201
    assert dev1(d, "a").read_bytes() == b"1" and dev1(d, "b").read_bytes() == b"2"


def test_put_onto_directory_and_through_file(d: Daemon) -> None:
    dev1(d, "isdir").mkdir()
    dev1(d, "isfile").write_bytes(b"f")
    for path, status in ((b"/dev1/isdir", 500), (b"/dev1/isfile/x", 500)):
        with d.conn() as c:
            c.send(b"PUT %s HTTP/1.1\r\nContent-Length: 1\r\n\r\nx" % path)
            assert_closed_with(c, status)
    assert dev1(d, "isdir").is_dir() and dev1(d, "isfile").read_bytes() == b"f"


def test_overwrite_is_atomic_replacement(d: Daemon) -> None:
    """A reader of the old file keeps the old inode; new readers see the new content."""
    dev1(d, "ow").write_bytes(b"old content")
    with open(dev1(d, "ow"), "rb") as old:
        ino = os.fstat(old.fileno()).st_ino
        r = requests.put(d.url("/dev1/ow"), data=b"new", headers={"Connection": "TE, close"}, timeout=10)
        assert r.status_code == 201 and r.headers["Connection"] == "keep-alive"
        assert old.read() == b"old content"
    assert dev1(d, "ow").read_bytes() == b"new" and dev1(d, "ow").stat().st_ino != ino


def test_requests_pipelined_after_put_body(d: Daemon) -> None:
    with d.conn() as c:
        c.send(b"PUT /dev1/pipe HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /dev1/pipe HTTP/1.1\r\n\r\n"
               b"PUT /dev1/pipe HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nxyHEAD /dev1/pipe HTTP/1.0\r\n\r\n")
        assert c.response().status == 201
        assert c.response().body == b"abc"
        assert c.response().status == 201
        assert c.response(head_only=True).header("Content-Length") == b"2"
        assert c.at_eof()


def premature(d: Daemon, path: bytes, head: bytes, body: bytes) -> tuple[int, str]:
    """Send a PUT cut short, wait for the server's EOF; return (client port, daemon stderr)."""
    with d.conn() as c:
        port = c.sock.getsockname()[1]
        c.send(b"PUT %s HTTP/1.1\r\n%s\r\n%s" % (path, head, body))
        c.sock.shutdown(socket.SHUT_WR)
        assert c.at_eof()  # no response at all
    return port, d.stderr()


@pytest.mark.parametrize("path,logged,head,body,done", [
    (b"/dev1/eof/cl", "/dev1/eof/cl", b"Content-Length: 666\r\n", b"abcde", 5),
    (b"http://x//dev1/eof/ch", "/dev1/eof/ch", b"Transfer-Encoding: chunked\r\n", b"666\r\nf", 1),
    (b"/dev1/eof/none", "/dev1/eof/none", b"Content-Length: 10\r\n", b"", 0),
])
def test_premature_eof_logs_and_leaves_no_file(d: Daemon, path: bytes, logged: str, head: bytes,
                                               body: bytes, done: int) -> None:
    port, err = premature(d, path, head, body)
    pid = d.pid
    assert re.search(rf"^cmogstored\[{pid}\]: PUT {re.escape(logged)} failed from 127\.0\.0\.1:{port} "
                     rf"after {done} bytes: premature EOF\n"
                     rf"cmogstored\[{pid}\]: last_data_recv=\d+ms from 127\.0\.0\.1:{port} for PUT "
                     rf"{re.escape(logged)}$", err, re.M), err
    assert not d.docroot.joinpath(logged.lstrip("/")).exists()


def test_premature_eof_content_range_keeps_written_bytes(d: Daemon) -> None:
    port, err = premature(d, b"/dev1/eof/cr", b"Content-Range: bytes 10-19/*\r\nContent-Length: 10\r\n", b"abc")
    assert f"PUT /dev1/eof/cr failed from 127.0.0.1:{port} after 13 bytes: premature EOF" in err
    assert dev1(d, "eof/cr").read_bytes() == b"\0" * 10 + b"abc"


def test_reset_mid_body_logs_strerror(d: Daemon) -> None:
    """A reset instead of a FIN: the first line ends in the error text instead (§1.8)."""
    s = d.http()
    port = s.getsockname()[1]
    s.sendall(b"PUT /dev1/eof/rst HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc")
    assert requests.get(d.url("/"), timeout=10).status_code == 200  # the PUT is under way
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    pattern = re.compile(rf"PUT /dev1/eof/rst failed from 127\.0\.0\.1:{port} after \d bytes: "
                         rf"Connection reset by peer\n.*: last_data_recv=\d+ms from 127\.0\.0\.1:{port} for PUT ")
    deadline = time.monotonic() + 10
    while not pattern.search(d.stderr()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pattern.search(d.stderr()), d.stderr()
    assert not dev1(d, "eof/rst").exists()
