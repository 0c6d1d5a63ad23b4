"""Request-head parsing over real sockets (§3.2, §8): size limit, strict syntax, paths,
absolute URIs, header value grammar.  Every rejection is 400 (or 507) and closes."""
from __future__ import annotations

import socket
import time

import pytest

from conftest import EPOCH, Daemon, HttpConn

BAD_CLOSE = (b"HTTP/1.1 400 Bad Request\r\nStatus: 400 Bad Request\r\nDate: %s\r\nContent-Length: 0\r\n"
             b"Content-Type: text/plain\r\nConnection: close\r\n\r\n" % EPOCH)


@pytest.fixture(scope="module")
def d(shared_daemon: Daemon) -> Daemon:
    (shared_daemon.docroot / "dev1" / "f").write_bytes(b"file")
    return shared_daemon


def assert_rejected(c: HttpConn, status: int = 400) -> None:
    """The answer is the error with Connection: close, then EOF (pipelined bytes discarded)."""
    r = c.response()
    if status == 400:
        assert r.norm() == BAD_CLOSE
    assert r.status == status and r.header("Connection") == b"close"
    assert c.at_eof()


def head_of_size(n: int) -> bytes:
    """A GET head of exactly n bytes (padding in one header value)."""
    start, end = b"GET /dev1/missing HTTP/1.1\r\nX-Pad: ", b"\r\n\r\n"
    return start + b"a" * (n - len(start) - len(end)) + end


def test_head_of_65535_bytes_is_parsed(d: Daemon) -> None:
    with d.conn() as c:
        r = c.request(head_of_size(65535))
        assert r.status == 404 and r.header("Connection") == b"keep-alive"
        assert c.request(b"GET /dev1/f HTTP/1.1\r\n\r\n").body == b"file"


def test_head_of_65536_bytes_is_400(d: Daemon) -> None:
    with d.conn() as c:
        c.send(head_of_size(65536))
        assert_rejected(c)


@pytest.mark.parametrize("lines,status", [(4094, 404), (4095, 400)])
def test_reference_example_many_header_lines(d: Daemon, lines: int, status: int) -> None:
    """The §3.2 example, sent one line per write."""
    with d.conn() as c:
        c.send(b"GET /hello-world HTTP/1.1\r\n")
        for _ in range(lines):
            c.send(b"X-Hello: World\r\n")
        r = c.send(b"\r\n").response()
        assert r.status == status


def test_limit_enforced_before_head_ends(d: Daemon) -> None:
    """The 400 comes once 65535 bytes are buffered, without waiting for the end of the head."""
    with d.conn() as c:
        c.send(b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * (65535 - 23))
        assert_rejected(c)


@pytest.mark.parametrize("raw", [
    b"GET / HTTP/1.1\n\n",
    b"GET / HTTP/1.1\r\nHost: x\n\r\n",
    b"GET / HTTP/1.1\r\n\n",
    b"\r\nGET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.2\r\n\r\n",
    b"GET / HTTP/2.0\r\n\r\n",
    b"GET / HTTP/1.1 \r\n\r\n",
    b"GET / http/1.1\r\n\r\n",
    b"GET /\r\n\r\n",
    b"GET  / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nX-Foo : a\r\n\r\n",
    b"GET / HTTP/1.1\r\nX_Foo: a\r\n\r\n",
    b"GET / HTTP/1.1\r\n: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
    b"GET / HTTP/1.1\r\nX-Foo: a\tb\r\n\r\n",
    b"GET / HTTP/1.1\r\nX-Foo: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nX-Foo: a\x7f\r\n\r\n",
    b"GET / HTTP/1.1\r\nX-Foo: a\r\n b\r\n\r\n",
    b"GET / HTTP/1.1\r\nRange: bytes = 1-2\r\n\r\n",
    b"GET / HTTP/1.1\r\nRange: BYTES=1-2\r\n\r\n",
    b"GET / HTTP/1.1\r\nRange: bytes=0-1,2-3\r\n\r\n",
    b"GET / HTTP/1.1\r\nRange: bytes=-5-5\r\n\r\n",
    b"GET / HTTP/1.1\r\nRange: items=1-2\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: 0x5\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
])
def test_bad_syntax_400_close(d: Daemon, raw: bytes) -> None:
    with d.conn() as c:
        c.send(raw + b"GET / HTTP/1.1\r\n\r\n")
        assert_rejected(c)


@pytest.mark.parametrize("target", [
    b"/dev1/f?x=1", b"/dev1/f#x", b"/dev1/f_x", b"/dev1/f%20", b"/dev1/f+x", b"/dev1/~f", b"/dev1/\xc3\xa9",
    b"dev1/f", b"../foo", b"*", b"http://host", b"https://host/dev1/f", b"ftp://host/dev1/f",
    b"http:/host/dev1/f", b"/dev16777215/0/000/000/0123456789.fidx",
    b"http://" + b"h" * 250 + b"/dev1/f", b"/" * 260 + b"dev1/f",
])
@pytest.mark.parametrize("method", [b"GET", b"DELETE"])
def test_bad_targets_400_close(d: Daemon, target: bytes, method: bytes) -> None:
    with d.conn() as c:
        c.send(b"%s %s HTTP/1.1\r\n\r\n" % (method, target))
        assert_rejected(c)
    assert (d.docroot / "dev1" / "f").exists()


@pytest.mark.parametrize("target,status", [
    (b"/dev16777215/0/000/000/0123456789.fid", 404),  # the longest legal path: 37 bytes
    (b"http://host/dev1/f", 200),
    (b"http://h%20st:99/dev1/f", 200),
    (b"http://../", 200),
    (b"http://h///dev1/f", 200),
    (b"/" * 200 + b"dev1/f", 200),
])
def test_accepted_targets(d: Daemon, target: bytes, status: int) -> None:
    with d.conn() as c:
        for version in (b"1.1", b"1.0"):
            r = c.request(b"GET %s HTTP/%s\r\nConnection: keep-alive\r\n\r\n" % (target, version))
            assert r.status == status
            if status == 200 and target != b"http://../":
                assert r.body == b"file"


@pytest.mark.parametrize("header", [
    b"X: v",  # one-character name (clone accepts, §8)
    b"X-Foo:",  # empty value (clone accepts, §8)
    b"X-Foo: \t ",
    b"X-Foo:\r\n folded",
    b"X-Foo: caf\xc3\xa9 \xff",
    b"X-Foo: a b  c \t",
    b"Host: x\r\nHost: y",
    b"Expect: 100-continue",
    b"If-Modified-Since: Thu, 01 Jan 2099 00:00:00 GMT",
    b"Content-Length: 0\r\nContent-Length: 0",
    b"Transfer-Encoding: gzip",
])
def test_accepted_headers(d: Daemon, header: bytes) -> None:
    with d.conn() as c:
        r = c.request(b"GET /dev1/f HTTP/1.1\r\n%s\r\n\r\n" % header)
        assert r.status == 200 and r.body == b"file" and r.header("Connection") == b"keep-alive"


def test_header_names_case_insensitive(d: Daemon) -> None:
    with d.conn() as c:
        r = c.request(b"GET /dev1/f HTTP/1.1\r\nrAnGe: bytes=1-2\r\n\r\n")
        assert r.status == 206 and r.body == b"il"
        r = c.request(b"GET /dev1/f HTTP/1.1\r\nCONNECTION: CLOSE\r\n\r\n")
        assert r.header("Connection") == b"close" and c.at_eof()


def test_duplicate_equal_content_length_put(d: Daemon) -> None:
    with d.conn() as c:
        r = c.request(b"PUT /dev1/dup HTTP/1.1\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\nabc")
        assert r.status == 201
        r = c.request(b"PUT /dev1/dup HTTP/1.1\r\nContent-Length: 2 9\r\n\r\nxy")
        assert r.status == 201
    assert (d.docroot / "dev1" / "dup").read_bytes() == b"xy"


def test_conflicting_content_length_put_400(d: Daemon) -> None:
    """§8: 1.2.1 concatenated the digits (waiting for 55 bytes); the clone refuses."""
    with d.conn() as c:
        c.send(b"PUT /dev1/conflict HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5 \r\n"
               b"Content-Length: 55\r\n\r\nabcde")
        assert_rejected(c)
    assert not (d.docroot / "dev1" / "conflict").exists()


def test_unknown_transfer_encoding_is_identity(d: Daemon) -> None:
    """`gzip, chunked` is not chunked: a 0-byte PUT, then the body parses as a request (400)."""
    with d.conn() as c:
        r = c.request(b"PUT /dev1/te HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n")
        assert r.status == 201
        assert_rejected(c)
    assert (d.docroot / "dev1" / "te").read_bytes() == b""


def test_body_of_get_is_next_request(d: Daemon) -> None:
    """Bodies of non-PUT requests are not read: they are the next request."""
    with d.conn() as c:
        c.send(b"GET /dev1/f HTTP/1.1\r\nContent-Length: 27\r\n\r\nGET /dev1/f HTTP/1.0\r\n\r\n\r\n")
        assert c.response().body == b"file"
        assert c.response().header("Connection") == b"close"
        assert c.at_eof()


def test_content_length_overflow_on_get_is_507(d: Daemon) -> None:
    with d.conn() as c:
        c.send(b"GET /dev1/f HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n")
        assert_rejected(c, 507)


def test_head_split_across_writes(d: Daemon) -> None:
    """A head trickling in byte by byte (with an obs-fold at the split) is parsed normally."""
    raw = b"GET /dev1/f HTTP/1.1\r\nConnection:\r\n close\r\nRange: bytes=0-1\r\n\r\n"
    with d.conn() as c:
        for i in range(len(raw)):
            c.send(raw[i:i + 1])
        r = c.response()
        assert r.status == 206 and r.body == b"fi" and r.header("Connection") == b"close"
        assert c.at_eof()


@pytest.mark.parametrize("raw", [
    b"abcde",  # the body of a GET sent with Content-Length
    b"get /dev1/f",
    b"MOVE",
    b"GET /dev1/f\r",  # bare CR
    b"GET /dev1/f HTTP/1.1\r\nX: a\rb",
    b"\x00",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)),  # TLS ClientHello
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # HTTP/2 preface
    bytes(range(0x80, 0x100)),
])
def test_impossible_prefix_is_400_at_once(d: Daemon, raw: bytes) -> None:
    """§3.2, issue 7 item 1: no line end needed; the 400 and the close come at once
    while the client keeps the connection open and sends nothing more."""
    with d.conn() as c:
        c.sock.settimeout(2)
        c.send(raw)
        assert_rejected(c)


def test_get_body_bytes_400_right_after_the_response(d: Daemon) -> None:
    with d.conn() as c:
        c.sock.settimeout(2)
        c.send(b"GET /dev1/f HTTP/1.1\r\nContent-Length: 5\r\n\r\nabcde")
        r = c.response()
        assert r.status == 200 and r.body == b"file" and r.header("Connection") == b"keep-alive"
        assert_rejected(c)


def test_valid_prefix_is_waited_for(d: Daemon) -> None:
    with d.conn() as c:
        for part in (b"GE", b"T /dev1/f HT"):
            c.send(part)
            c.sock.settimeout(0.3)
            with pytest.raises(TimeoutError):
                c.sock.recv(1)
        c.sock.settimeout(10)
        assert c.request(b"TP/1.1\r\n\r\n").body == b"file"


SHAPES = [
    b"GET /dev1/f HTTP/1.1\r\n\r\n",
    b"GET /dev1/f HTTP/1.0\r\nConnection: keep-alive\r\nRange: bytes=1-\r\n\r\n",
    b"HEAD //dev1/f HTTP/1.1\r\nHost: example\r\nUser-Agent: x y  z\t\r\n\r\n",
    b"GET http://host:7500/dev1/f HTTP/1.1\r\nX-Fold:\r\n \t value\r\n\r\n",
    b"PUT /dev1/shape HTTP/1.1\r\nContent-Length: 5\r\nContent-MD5: q1a02StAcTrMWviZhdS3hg==\r\n\r\nabcde",
    b"PUT /dev1/shape HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTrailer: Content-MD5\r\n\r\n"
    b"2;ext=1\r\nab\r\n3\r\ncde\r\n0\r\nX-Foo: bar\r\nContent-MD5: q1a02StAcTrMWviZhdS3hg==\r\n\r\n",
    b"PUT /dev1/shape HTTP/1.1\r\nContent-Range: bytes 0-4/*\r\nContent-Length: 5\r\n\r\nabcde",
    b"DELETE /dev1/gone HTTP/1.1\r\n\r\n",
    b"MKCOL /dev1/dir HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nexpect: 100-continue\r\nX: \x80\xff\r\n\r\n",
]


@pytest.mark.parametrize("raw", SHAPES)
def test_byte_at_a_time_heads_of_every_shape(d: Daemon, raw: bytes) -> None:
    """Every valid request shape sent one byte per write gets the same answer as sent whole."""
    head_only = raw.startswith(b"HEAD")
    (d.docroot / "dev1" / "gone").write_bytes(b"x")
    with d.conn() as c:
        whole = c.request(raw, head_only)
    (d.docroot / "dev1" / "gone").write_bytes(b"x")
    with d.conn() as c:
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(raw)):
            c.send(raw[i:i + 1])
            time.sleep(0.0005)
        trickled = c.response(head_only)
    assert trickled.status == whole.status and trickled.status in (200, 201, 204, 206, 400)
    assert trickled.norm() == whole.norm() and trickled.body == whole.body
