"""Unit tests for the HTTP request grammar (mogstored.http.head, .fields, .chunked) against §3.2-§3.6 and §8 of the protocol reference."""

from __future__ import annotations

import re
import time

import pytest

from mogstored.http import chunked, fields, head
from mogstored.http.chunked import ChunkedDecoder
from mogstored.http.fields import MAX_HEAD, HttpError
from mogstored.http.head import (
    HeadParser,
    Request,
    check_put_framing,
    is_put_path,
    parse_head,
    resolve_range,
)

MD5_ABCDE = b"q1a02StAcTrMWviZhdS3hg=="  # base64(md5(b"abcde"))
MD5_ABCDE_RAW = bytes.fromhex("ab56b4d92b40713acc5af89985d4b786")
BIG = str(2**63).encode()
MAX_OK = str(2**63 - 1).encode()


def parse(head: bytes) -> Request:
    """Parse a complete head and check that the end index is right past the blank line."""
    res = parse_head(head + b"XYZ")
    assert res is not None
    req, end = res
    assert end == len(head)
    return req


def status_of(head: bytes) -> int:
    with pytest.raises(HttpError) as ei:
        parse_head(head)
    return ei.value.status


def hdr(*lines: bytes, method: bytes = b"PUT", path: bytes = b"/dev1/x", version: bytes = b"1.1") -> bytes:
    return b"%s %s HTTP/%s\r\n" % (method, path, version) + b"".join(l + b"\r\n" for l in lines) + b"\r\n"


def feed_bytewise(data: bytes, start: bytes = b"") -> tuple[Request, int] | None:
    """Feed data byte by byte to one HeadParser, as a server reading 1 byte at a time
    (after `start`, the bytes of earlier requests still in the buffer)."""
    buf = bytearray(start)
    parser = HeadParser()
    for i in range(len(data)):
        buf += data[i : i + 1]
        res = parser.parse(buf, len(start))
        if res is not None:
            return res
    return None


# ---------------------------------------------------------------- request line


@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"PUT", b"DELETE", b"MKCOL"])
def test_methods_accepted(method: bytes) -> None:
    req = parse(b"%s /dev1/x HTTP/1.1\r\n\r\n" % method)
    assert req.method == method.decode()
    assert req.path == "/dev1/x"


@pytest.mark.parametrize(
    "line",
    [
        b"POST /dev1/x HTTP/1.1",
        b"OPTIONS /dev1/x HTTP/1.1",
        b"get /dev1/x HTTP/1.1",
        b"MOVE /dev1/x HTTP/1.1",
        b"Get /dev1/x HTTP/1.1",
        b"GET  /dev1/x HTTP/1.1",  # two spaces after the method
        b"GET\t/dev1/x HTTP/1.1",
        b" GET /dev1/x HTTP/1.1",
    ],
)
def test_bad_methods(line: bytes) -> None:
    assert status_of(line + b"\r\n\r\n") == 400


def test_default_request_fields() -> None:
    req = parse(b"GET / HTTP/1.1\r\n\r\n")
    assert req == Request("GET", "/", True, None, False, None, False, None, None)


@pytest.mark.parametrize(
    "target,path",
    [
        (b"/", "/"),
        (b"//dev1/usage", "/dev1/usage"),  # mogadm
        (b"////dev1/f", "/dev1/f"),
        (b"/dev1//f", "/dev1//f"),  # only leading slashes collapse
        (b"http://host/dev1/x", "/dev1/x"),
        (b"http://host//dev1/x", "/dev1/x"),
        (b"http://host/", "/"),
        (b"http://../", "/"),  # host skipped unchecked
        (b"http://%41%42:80/dev1/x", "/dev1/x"),
        (b"http://a.b.c:7500/dev1/0/000/000/0000000001.fid", "/dev1/0/000/000/0000000001.fid"),
        (b"/dev16777215/0/000/000/0123456789.fid", "/dev16777215/0/000/000/0123456789.fid"),
        (b"/dev1/../x", "/dev1/../x"),  # `..` is the caller's business
        (b"/a-b.C9", "/a-b.C9"),
    ],
)
def test_targets(target: bytes, path: str) -> None:
    for version in (b"1.0", b"1.1"):
        assert parse(b"GET %s HTTP/%s\r\n\r\n" % (target, version)).path == path


@pytest.mark.parametrize(
    "target",
    [
        b"http://host",  # no path
        b"http:///dev1/x",  # empty host
        b"https://host/dev1/x",
        b"HTTP://host/dev1/x",
        b"ftp://host/dev1/x",
        b"../foo",
        b"dev1/x",
        b"*",
        b"",
        b"/dev1/x_y",
        b"/dev1/x%20",
        b"/dev1/x?x=1",
        b"/dev1/x#frag",
        b"/dev1/x+y",
        b"/dev1/~x",
        b"/dev1/\xc3\xa9",
        b"/dev1/x\x00",
    ],
)
def test_bad_targets(target: bytes) -> None:
    assert status_of(b"DELETE %s HTTP/1.1\r\n\r\n" % target) == 400


def test_path_length_limit() -> None:
    p37 = b"/" + b"a" * 36
    assert parse(b"GET %s HTTP/1.1\r\n\r\n" % p37).path == p37.decode()
    assert status_of(b"GET %s/ HTTP/1.1\r\n\r\n" % p37) == 400
    # the limit applies after collapsing leading slashes
    assert parse(b"GET //////%s HTTP/1.1\r\n\r\n" % p37[1:]).path == p37.decode()


def test_path_must_end_within_255_bytes() -> None:
    # "GET http://" is 11 bytes, then the host, then "/x": the path ends at 11 + n + 2
    ok = b"GET http://" + b"h" * 242 + b"/x HTTP/1.1\r\n\r\n"
    assert parse(ok).path == "/x"
    assert status_of(b"GET http://" + b"h" * 243 + b"/x HTTP/1.1\r\n\r\n") == 400
    # many leading slashes (§8: 1.2.1 aborts): "GET " + 247 slashes + "dev1" ends at byte 255
    assert parse(b"GET " + b"/" * 247 + b"dev1 HTTP/1.1\r\n\r\n").path == "/dev1"
    assert status_of(b"GET " + b"/" * 248 + b"dev1 HTTP/1.1\r\n\r\n") == 400
    assert status_of(b"GET " + b"/" * 300 + b"dev1 HTTP/1.1\r\n\r\n") == 400


def test_path_limit_counts_from_start_of_request() -> None:
    first = b"GET / HTTP/1.1\r\n\r\n"
    second = b"GET " + b"/" * 247 + b"dev1 HTTP/1.1\r\n\r\n"
    buf = first + second
    req, end = parse_head(buf)
    assert end == len(first)
    req2, end2 = parse_head(buf, end)
    assert req2.path == "/dev1" and end2 == len(buf)


@pytest.mark.parametrize(
    "version,keepalive", [(b"HTTP/1.0", False), (b"HTTP/1.1", True)]
)
def test_versions(version: bytes, keepalive: bool) -> None:
    assert parse(b"GET / %s\r\n\r\n" % version).keepalive is keepalive


@pytest.mark.parametrize(
    "line",
    [
        b"GET /",  # HTTP/0.9
        b"GET / HTTP/1.2",
        b"GET / HTTP/2.0",
        b"GET / HTTP/1.1 ",  # trailing space
        b"GET /  HTTP/1.1",
        b"GET / http/1.1",
        b"GET / HTTP/1",
        b"GET / HTTP/1.10",
    ],
)
def test_bad_versions(line: bytes) -> None:
    assert status_of(line + b"\r\n\r\n") == 400


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\n\n",
        b"GET / HTTP/1.1\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\n",
        b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
        b"\r\nGET / HTTP/1.1\r\n\r\n",  # leading empty line is not skipped
        b"\r\n\r\n",
    ],
)
def test_line_terminators(head: bytes) -> None:
    assert status_of(head) == 400


# ---------------------------------------------------------------- header syntax


@pytest.mark.parametrize(
    "line",
    [
        b"Host: example",
        b"X: v",  # Clone: one-character names
        b"a:b",
        b"X-Foo:",  # Clone: empty values
        b"X-Foo: ",
        b"X-Foo:\t \t",
        b"X-Foo:\tvalue\t ",
        b"X-Foo: a b  c",
        b"X-Foo: \x80\xff\xc3\xa9",
        b"X-Foo:\r\n value",  # obs-fold between colon and value
        b"X-Foo:\r\n\tvalue",
        b"X-Foo: \r\n value",
        b"X-Foo:\r\n \r\n value",
        b"Expect: 100-continue",
        b"User-Agent: LWP",
        b"Keep-Alive: 300",
        b"Content-Type: text/plain",
        b"x-123-abc: v",
    ],
)
def test_header_syntax_ok(line: bytes) -> None:
    parse(hdr(line))


@pytest.mark.parametrize(
    "line",
    [
        b"X-Foo : a",
        b"X_Foo: a",
        b": a",
        b"X-Foo a",
        b"X-Foo: a\tb",  # TAB between value characters
        b"X-Foo: a\x00b",
        b"X-Foo: a\x01",
        b"X-Foo: a\x7fb",
        b"X-Foo: a\x1b",
        b"X-Foo: a\r\n b",  # continuation after a value
        b"X\xc3\xa9: a",
        b"X.Foo: a",
    ],
)
def test_header_syntax_bad(line: bytes) -> None:
    assert status_of(hdr(line)) == 400


def test_continuation_as_first_header_line() -> None:
    assert status_of(b"GET / HTTP/1.1\r\n folded\r\n\r\n") == 400


def test_header_names_case_insensitive() -> None:
    req = parse(hdr(b"cOnTeNt-LeNgTh: 5", b"TRANSFER-ENCODING: chunked", b"rAnGe: bytes=1-2"))
    assert (req.content_length, req.chunked, req.range) == (5, True, (1, 2))


def test_repeated_unknown_headers_fine() -> None:
    parse(hdr(*[b"X-Hello: World"] * 50))


# ---------------------------------------------------------------- Content-Length


@pytest.mark.parametrize(
    "value,n",
    [
        (b"5", 5),
        (b"0", 0),
        (b"5 5", 5),
        (b"5 x", 5),
        (b"  5  ", 5),
        (b"00005", 5),
        (b"0" * 5000 + b"7", 7),
        (MAX_OK, 2**63 - 1),
    ],
)
def test_content_length_ok(value: bytes, n: int) -> None:
    assert parse(hdr(b"Content-Length: " + value)).content_length == n


@pytest.mark.parametrize("value", [b"+5", b"-5", b"0x5", b"123a", b"", b"   ", b"x", b"5,5", b"5\tx"])
def test_content_length_bad(value: bytes) -> None:
    assert status_of(hdr(b"Content-Length: " + value)) == 400


@pytest.mark.parametrize("value", [BIG, str(2**64).encode(), b"9" * 100, BIG + b"x", BIG + b" 1"])
def test_content_length_overflow(value: bytes) -> None:
    assert status_of(hdr(b"Content-Length: " + value)) == 507


def test_content_length_duplicates() -> None:
    assert parse(hdr(b"Content-Length: 5", b"Content-Length: 5")).content_length == 5
    assert parse(hdr(b"Content-Length: 5", b"Content-Length: 005")).content_length == 5
    assert status_of(hdr(b"Content-Length: 5", b"Content-Length: 6")) == 400


def test_content_length_obs_fold() -> None:
    assert parse(hdr(b"Content-Length:\r\n 12")).content_length == 12


def test_content_length_on_any_method_parsed() -> None:
    assert parse(hdr(b"Content-Length: 3", method=b"GET")).content_length == 3
    assert status_of(hdr(b"Content-Length: x", method=b"DELETE")) == 400


# ---------------------------------------------------------------- Transfer-Encoding


@pytest.mark.parametrize(
    "line,chunked",
    [
        (b"Transfer-Encoding: chunked", True),
        (b"Transfer-Encoding: CHUNKED", True),
        (b"transfer-encoding: Chunked  ", True),
        (b"Transfer-Encoding:\r\n chunked", True),
        (b"Transfer-Encoding: gzip, chunked", False),
        (b"Transfer-Encoding: xchunked", False),
        (b"Transfer-Encoding: chunkedx", False),
        (b"Transfer-Encoding: identity", False),
        (b"Transfer-Encoding: foo", False),
        (b"Transfer-Encoding:", False),
    ],
)
def test_transfer_encoding(line: bytes, chunked: bool) -> None:
    assert parse(hdr(line)).chunked is chunked


def test_chunked_and_content_length_both_recorded() -> None:
    for lines in ((b"Content-Length: 5", b"Transfer-Encoding: chunked"),
                  (b"Transfer-Encoding: chunked", b"Content-Length: 5")):  # fmt: skip
        req = parse(hdr(*lines))
        assert req.chunked and req.content_length == 5
        check_put_framing(req)  # chunked wins; no error


# ---------------------------------------------------------------- Trailer / Content-MD5


@pytest.mark.parametrize(
    "value,on",
    [
        (b"Content-MD5", True),
        (b"content-md5", True),
        (b"Content-MD5, Foo", True),
        (b"Foo, Content-MD5", False),
        (b"Foo", False),
        (b"", False),
    ],
)
def test_trailer_header(value: bytes, on: bool) -> None:
    assert parse(hdr(b"Trailer: " + value)).trailer_md5 is on


def test_content_md5_header() -> None:
    assert parse(hdr(b"Content-MD5: " + MD5_ABCDE)).content_md5 == MD5_ABCDE_RAW
    assert parse(hdr(b"content-md5:   " + MD5_ABCDE + b"  ")).content_md5 == MD5_ABCDE_RAW


@pytest.mark.parametrize(
    "value",
    [
        b"ab56b4d92b40713acc5af89985d4b786",  # hex digest
        MD5_ABCDE[:-1],
        MD5_ABCDE[:-2],
        b"A" + MD5_ABCDE,
        b"q1a02StAcTrMWviZhdS3h_==",
        b"q1a02StAcTrMWviZhdS3hg=",
        b"q1a02StAcTrMWviZhdS3hg===",
        b"q1a02StAcTrMWviZhdS3hg== x",
        b"",
    ],
)
def test_content_md5_bad(value: bytes) -> None:
    assert status_of(hdr(b"Content-MD5: " + value)) == 400


# ---------------------------------------------------------------- Content-Range


@pytest.mark.parametrize(
    "value,expected",
    [
        (b"bytes 0-4/*", (0, 4)),
        (b"bytes   10-20/*", (10, 20)),
        (b"bytes 5-1/*", (5, 1)),  # last < first: checked by check_put_framing
        (b"bytes 0-1/2", None),  # other forms ignored
        (b"bytes 0-1", None),
        (b"bytes=0-1/*", None),
        (b"items 0-1/*", None),
        (b"foo", None),
        (b"bytes 0-" + MAX_OK + b"/*", (0, 2**63 - 1)),
    ],
)
def test_content_range(value: bytes, expected: tuple[int, int] | None) -> None:
    assert parse(hdr(b"Content-Range: " + value)).content_range == expected


@pytest.mark.parametrize(
    "value", [b"bytes */*", b"bytes x-1/*", b"bytes 1-x/*", b"bytes 1x-2/*", b"bytes -1/*", b"bytes 1-/*", b""]
)
def test_content_range_bad(value: bytes) -> None:
    assert status_of(hdr(b"Content-Range: " + value)) == 400


@pytest.mark.parametrize(
    "value", [b"bytes " + BIG + b"-1/*", b"bytes 0-" + BIG + b"/*", b"bytes " + BIG + b"-x/*", b"bytes 0-" + BIG + b"/2"]
)
def test_content_range_overflow(value: bytes) -> None:
    assert status_of(hdr(b"Content-Range: " + value)) == 507


def test_chunked_plus_overflowing_content_range_is_507() -> None:
    # §3.6.1 precedence: the overflow is a head parse error, answered before framing checks
    assert status_of(hdr(b"Transfer-Encoding: chunked", b"Content-Range: bytes 0-" + BIG + b"/*")) == 507
    assert status_of(hdr(b"Content-Range: bytes 0-" + BIG + b"/*", b"Transfer-Encoding: chunked")) == 507


def test_overflow_wins_over_later_header_problems() -> None:
    assert status_of(hdr(b"Content-Length: " + BIG, b"Content-Length: 5")) == 507
    assert status_of(hdr(b"Content-Length: " + BIG, b"Content-Range: bytes */*")) == 507


def test_check_put_framing() -> None:
    ok = parse(hdr(b"Content-Range: bytes 10-14/*", b"Content-Length: 5"))
    check_put_framing(ok)
    check_put_framing(parse(hdr(b"Content-Length: 5")))
    check_put_framing(parse(hdr()))
    for lines in [
        (b"Content-Range: bytes 10-14/*",),  # missing Content-Length counts as 0
        (b"Content-Range: bytes 10-14/*", b"Content-Length: 4"),
        (b"Content-Range: bytes 10-14/*", b"Content-Length: 6"),
        (b"Content-Range: bytes 14-10/*", b"Content-Length: 0"),
        (b"Content-Range: bytes 14-10/*", b"Content-Length: 5"),
        (b"Content-Range: bytes 10-14/*", b"Content-Length: 5", b"Transfer-Encoding: chunked"),
        (b"Transfer-Encoding: chunked", b"Content-Range: bytes 0-0/*", b"Content-Length: 1"),
    ]:
        req = parse(hdr(*lines))
        with pytest.raises(HttpError) as ei:
            check_put_framing(req)
        assert ei.value.status == 400
    # a Content-Range PUT of one byte
    check_put_framing(parse(hdr(b"Content-Range: bytes 7-7/*", b"Content-Length: 1")))


# ---------------------------------------------------------------- Range


@pytest.mark.parametrize(
    "value,expected",
    [
        (b"bytes=66-70", (66, 70)),
        (b"bytes=66-", (66, None)),
        (b"bytes=-66", (None, 66)),
        (b"bytes=-", (None, None)),
        (b"bytes=-0", (None, 0)),
        (b"bytes=0-0", (0, 0)),
        (b"bytes=5-1", (5, 1)),
        (b"bytes=1-2  ", (1, 2)),
        (b"bytes=" + MAX_OK + b"-", (2**63 - 1, None)),
    ],
)
def test_range_header(value: bytes, expected: tuple) -> None:
    assert parse(hdr(b"Range: " + value, method=b"GET")).range == expected


@pytest.mark.parametrize(
    "value",
    [b"bytes = 1-2", b"BYTES=1-2", b"Bytes=1-2", b"items=1-2", b"bytes=0-1,2-3", b"bytes=-5-5", b"323",
     b"bytes=", b"bytes=1", b"bytes=1 -2", b"bytes= 1-2", b"bytes=1-2 x", b"bytes=a-b", b""],
)  # fmt: skip
def test_range_header_bad(value: bytes) -> None:
    assert status_of(hdr(b"Range: " + value, method=b"HEAD")) == 400


def test_range_overflow() -> None:
    assert status_of(hdr(b"Range: bytes=" + BIG + b"-", method=b"GET")) == 507
    assert status_of(hdr(b"Range: bytes=0-" + BIG, method=b"GET")) == 507


def test_range_last_wins() -> None:
    assert parse(hdr(b"Range: bytes=1-2", b"Range: bytes=3-", method=b"GET")).range == (3, None)


# ---------------------------------------------------------------- §3.3 persistence


@pytest.mark.parametrize(
    "version,lines,keepalive",
    [
        (b"1.0", [], False),
        (b"1.0", [b"Connection: keep-alive"], True),
        (b"1.0", [b"Connection: Keep-Alive, keep-alive"], True),  # tracker
        (b"1.0", [b"Connection: KEEP-ALIVE"], True),
        (b"1.0", [b"Connection: keep-alive, x"], True),
        (b"1.0", [b"Connection: Upgrade, keep-alive"], False),
        (b"1.0", [b"Connection: keep-alive", b"Connection: close"], False),
        (b"1.0", [b"Connection: close", b"Connection: keep-alive"], True),
        (b"1.0", [b"Connection: keep-alive", b"Connection: foo"], True),
        (b"1.1", [], True),
        (b"1.1", [b"Connection: close"], False),
        (b"1.1", [b"Connection: closed"], False),
        (b"1.1", [b"Connection: Close"], False),
        (b"1.1", [b"Connection: TE, close"], True),  # LWP: ignored
        (b"1.1", [b"Connection:"], True),
        (b"1.1", [b"Connection:\r\n close"], False),
    ],
)
def test_persistence(version: bytes, lines: list[bytes], keepalive: bool) -> None:
    assert parse(hdr(*lines, method=b"GET", version=version)).keepalive is keepalive


# ---------------------------------------------------------------- head size limits


def test_head_limit_example_of_3_2() -> None:
    ok = b"GET /hello-world HTTP/1.1\r\n" + b"X-Hello: World\r\n" * 4094 + b"\r\n"
    assert len(ok) == 65533
    assert parse(ok).path == "/hello-world"
    bad = b"GET /hello-world HTTP/1.1\r\n" + b"X-Hello: World\r\n" * 4095 + b"\r\n"
    assert len(bad) == 65549
    assert status_of(bad) == 400


def _head_of_size(n: int) -> bytes:
    base = b"GET / HTTP/1.1\r\nX-Pad: "
    return base + b"a" * (n - len(base) - 4) + b"\r\n\r\n"


def test_head_limit_65535_vs_65536() -> None:
    h = _head_of_size(MAX_HEAD)
    assert len(h) == 65535
    assert parse(h).path == "/"
    h = _head_of_size(MAX_HEAD + 1)
    assert len(h) == 65536
    assert status_of(h) == 400


def test_head_limit_enforced_while_incomplete() -> None:
    partial = b"GET / HTTP/1.1\r\n" + b"X-Hello: World\r\n" * 4095
    assert parse_head(partial[:MAX_HEAD - 1]) is None
    assert status_of(partial[:MAX_HEAD]) == 400
    # relative to `start` with pipelined data before it
    prefix = b"GET / HTTP/1.1\r\n\r\n"
    assert parse_head(prefix + partial[:MAX_HEAD - 1], len(prefix)) is None
    with pytest.raises(HttpError):
        parse_head(prefix + partial[:MAX_HEAD], len(prefix))


def test_head_limit_ignores_following_pipelined_data() -> None:
    h = _head_of_size(MAX_HEAD)
    req, end = parse_head(h + b"GET / HTTP/1.1\r\n\r\n" * 10)
    assert end == len(h)


# ---------------------------------------------------------------- incremental parsing


def test_incomplete_returns_none() -> None:
    full = hdr(b"Content-Length: 5", b"X-Foo: bar")
    for i in range(len(full)):
        assert parse_head(full[:i]) is None
    assert parse_head(full)[1] == len(full)


BAD_BLOBS = [
    b"abcde",  # body bytes of a GET with Content-Length: the next "request"
    b"get /dev1/f HTTP/1.1\r\n",
    b"OPTIONS * HTTP/1.1\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # TLS ClientHello
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # HTTP/2 preface
    b"\xff\xfe\x80junk",
]


@pytest.mark.parametrize("blob", BAD_BLOBS)
def test_foreign_bytes_rejected_at_once(blob: bytes) -> None:
    """§3.2: no line end needed; the first byte that cannot belong to a head is the 400."""
    with pytest.raises(HttpError):
        parse_head(blob[:1] if blob[0] != 0x50 else blob[:2])  # "P" could begin PUT
    with pytest.raises(HttpError):
        feed_bytewise(blob)


# Each ends with the first byte that makes the head invalid: one byte less is still valid.
BAD_PREFIXES = [
    b"a", b"g", b"Ge", b"PO", b"GETT", b"GET\t", b"\r", b"\n", b"\x00", b"GET \x00",
    b"GET x", b"GET hx", b"GET http:/x", b"GET http:///", b"GET http://host ", b"GET /a_", b"GET /a?",
    b"GET /a\r", b"GET /a  ", b"GET /a HTTP/2", b"GET /a HTTP/1.2", b"GET /a h", b"GET /a HTTP/1.1 ",
    b"GET /a HTTP/1.1\n", b"GET /a HTTP/1.1\r\r",
    b"GET /a HTTP/1.1\r\n ",  # continuation as the first header line
    b"GET /a HTTP/1.1\r\nX_", b"GET /a HTTP/1.1\r\nX-Foo ", b"GET /a HTTP/1.1\r\n:",
    b"GET /a HTTP/1.1\r\nX:\x00", b"GET /a HTTP/1.1\r\nX: a\tb", b"GET /a HTTP/1.1\r\nX: a\x7f",
    b"GET /a HTTP/1.1\r\nX: a\n", b"GET /a HTTP/1.1\r\nX: a\rb",
    b"GET /a HTTP/1.1\r\nX: a\r\n ",  # continuation after a value
    b"GET /a HTTP/1.1\r\n\r\r",
    b"GET /" + b"a" * 37,  # the path can only grow past 37 bytes
    b"GET " + b"/" * 252,  # it can only end beyond byte 255
]


@pytest.mark.parametrize("prefix", BAD_PREFIXES)
def test_invalid_prefix_rejected_at_once(prefix: bytes) -> None:
    assert parse_head(prefix[:-1]) is None and feed_bytewise(prefix[:-1]) is None
    assert status_of(prefix) == 400
    with pytest.raises(HttpError):
        feed_bytewise(prefix)


@pytest.mark.parametrize(
    "prefix",
    [b"G", b"GE", b"GET", b"GET ", b"GET /dev1/f HT", b"DELE", b"MKCOL /", b"HEAD http://h",
     b"PUT /dev1/x HTTP/1.1\r", b"PUT /dev1/x HTTP/1.1\r\nContent-Len", b"GET / HTTP/1.0\r\nX:  a b  ",
     b"GET / HTTP/1.0\r\nX:\r\n", b"GET / HTTP/1.0\r\nX:\r\n\t", b"GET / HTTP/1.1\r\n\r"],
)
def test_valid_prefix_waits(prefix: bytes) -> None:
    assert parse_head(prefix) is None
    assert feed_bytewise(prefix) is None


def test_header_value_errors_at_line_end() -> None:
    assert parse_head(b"PUT /dev1/x HTTP/1.1\r\nContent-Length: 1x") is None  # a valid header line so far
    assert status_of(b"PUT /dev1/x HTTP/1.1\r\nContent-Length: " + BIG + b"\r\n") == 507
    assert status_of(b"PUT /dev1/x HTTP/1.1\r\nContent-Length: 1x\r\n") == 400


def test_empty_value_line_waits_for_fold() -> None:
    part = b"PUT /dev1/x HTTP/1.1\r\nContent-Length:\r\n"
    assert parse_head(part) is None  # a continuation may still supply the value
    req, _ = parse_head(part + b" 5\r\n\r\n")
    assert req.content_length == 5
    assert status_of(part + b"X: y\r\n") == 400
    assert status_of(part + b"\r\n") == 400


SAMPLES = [
    hdr(b"Content-Length: 5", b"X-Foo: bar", b"Transfer-Encoding:\r\n chunked", b"Trailer: Content-MD5"),
    hdr(b"Content-Length:\r\n\t 7", b"Range: bytes=1-2", b"Connection: close", version=b"1.0"),
    hdr(b"X:", b"Y:\r\n \r\n z", b"Content-MD5: " + MD5_ABCDE),
    hdr(b"X-Foo: a", b"X_Bad: b"),
    hdr(b"Content-Length: " + BIG),
    hdr(b"X-Foo: a\r\n continuation"),
    hdr(b"Content-Length:", b"X: y"),
    b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
    b"POST / HTTP/1.1\r\n\r\n",
    b"GET http://host/dev1/x HTTP/1.0\r\n\r\n",
]


@pytest.mark.parametrize("data", SAMPLES)
def test_bytewise_feeding_matches_whole(data: bytes) -> None:
    try:
        expected = parse_head(data)
    except HttpError as e:
        with pytest.raises(HttpError) as ei:
            feed_bytewise(data)
        assert ei.value.status == e.status
    else:
        assert feed_bytewise(data) == expected


def test_bytewise_values_keep_inner_spaces() -> None:
    """A value split inside its spaces is still one value ("5 5" means 5, not 55)."""
    req, _ = feed_bytewise(hdr(b"Content-Length: 5  5", b"Connection:  keep-alive  x", version=b"1.0"))
    assert req.content_length == 5 and req.keepalive


class _CountingRuns:
    """Stands in for a module regex: counts matches and the bytes they consumed."""

    def __init__(self, real: "re.Pattern[bytes]", tally: list[int]) -> None:
        self.real = real
        self.tally = tally

    def match(self, buf, pos, end):  # type: ignore[no-untyped-def]
        m = self.real.match(buf, pos, end)
        self.tally[0] += 1
        if m is not None:
            self.tally[1] += m.end() - pos
        return m


def _work(monkeypatch: pytest.MonkeyPatch, data: bytes, prefix: bytes = b"") -> tuple[int, int]:
    tally = [0, 0]
    for module in (head, fields, chunked):
        for name in dir(module):
            if isinstance(getattr(module, name), re.Pattern):
                monkeypatch.setattr(module, name, _CountingRuns(getattr(module, name), tally))
    res = feed_bytewise(data, prefix)
    monkeypatch.undo()
    assert res is not None and res[1] == len(prefix) + len(data)
    return tally[0], tally[1]


@pytest.mark.parametrize(
    "head",
    [
        b"GET /hello-world HTTP/1.1\r\n" + b"X-Hello: World\r\n" * 4094 + b"\r\n",  # many lines
        _head_of_size(MAX_HEAD),  # one long value
        b"GET http://" + b"h" * 240 + b"/x HTTP/1.1\r\nX-Pad: " + b"a b " * 16000 + b"\r\n\r\n",
    ],
)
def test_trickled_head_costs_linear_work(monkeypatch: pytest.MonkeyPatch, head: bytes) -> None:
    """Item 2 of issue 7: a head fed one byte per call is judged once per byte, never
    rescanned: regex runs consume each byte at most once and run a bounded number of
    times per byte (a rescan from the start would consume ~n^2/2 bytes)."""
    calls, consumed = _work(monkeypatch, head, b"GET /a HTTP/1.1\r\n\r\n")
    assert consumed <= len(head)
    assert calls <= 3 * len(head)


def test_pipelined_start_offset() -> None:
    first = b"GET /a HTTP/1.1\r\n\r\n"
    second = hdr(b"Content-Length: 5", b"X-Foo: bar")
    res = feed_bytewise(second, first)
    assert res is not None and res[0].content_length == 5 and res[1] == len(first) + len(second)


def test_buffer_compaction_between_calls() -> None:
    """The parser keeps offsets relative to the head start, so the caller may drop the
    bytes before it (as the server does) between two calls."""
    buf = bytearray(b"GET /a HTTP/1.1\r\n\r\nPUT /dev1/x HTTP/1.1\r\nContent-Le")
    parser = HeadParser()
    assert parser.parse(buf, 19) is None
    del buf[:19]
    buf += b"ngth: 5\r\n\r\n"
    req, end = parser.parse(buf, 0)
    assert req.content_length == 5 and end == len(buf)


def test_pipelined_heads() -> None:
    buf = b"GET /a HTTP/1.1\r\n\r\nHEAD /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\nDELETE /c HTTP/1.1\r\n"
    r1, e1 = parse_head(buf)
    r2, e2 = parse_head(buf, e1)
    assert (r1.method, r1.path, r2.method, r2.path, r2.keepalive) == ("GET", "/a", "HEAD", "/b", True)
    assert parse_head(buf, e2) is None


def test_bytearray_and_bytes_inputs_equivalent() -> None:
    h = hdr(b"Content-Length: 5")
    assert parse_head(bytearray(h)) == parse_head(h)


# ---------------------------------------------------------------- PUT path rule


@pytest.mark.parametrize(
    "path,ok",
    [
        ("/dev1/a", True),
        ("/dev1/0/000/000/0000000001.fid", True),
        ("/dev1//a", True),
        ("/dev123/a/b/c", True),
        ("/dev16777215/0/000/000/0123456789.fid", True),
        ("/dev1/a..b", True),  # `..` is checked separately
        ("/dev7/foo/", False),
        ("/foo", False),
        ("/de", False),
        ("/dev", False),
        ("/dev1", False),
        ("/dev1/", False),
        ("/dev1//", False),
        ("/devx/a", False),
        ("/dev/a", False),
        ("/", False),
        ("/Dev1/a", False),
    ],
)
def test_is_put_path(path: str, ok: bool) -> None:
    assert is_put_path(path) is ok


# ---------------------------------------------------------------- §3.5.1 range resolution


@pytest.mark.parametrize(
    "rng,expected",
    [
        ((66, 70), (206, 66, 70)),
        ((66, None), (206, 66, 665)),
        ((None, 66), (206, 600, 665)),
        ((5, 6666), (206, 5, 665)),
        ((666, 666), (416, 0, 665)),
        ((666, None), (416, 0, 665)),
        ((6666, None), (416, 0, 665)),
        ((None, 667), (200, 0, 665)),
        ((None, 666), (206, 0, 665)),  # L = S
        ((None, 1), (206, 665, 665)),
        ((0, 0), (206, 0, 0)),
        ((665, 665), (206, 665, 665)),
        ((0, 665), (206, 0, 665)),
        ((10, 9), (416, 0, 665)),
        ((None, None), (416, 0, 665)),
        ((None, 0), (416, 0, 665)),  # §8: 1.2.1 aborts
    ],
)
def test_resolve_range_666(rng: tuple, expected: tuple) -> None:
    assert resolve_range(rng, 666) == expected


@pytest.mark.parametrize("rng", [(0, 1), (0, None), (0, 0), (1, 0), (None, None), (None, 0)])
def test_resolve_range_empty_file_is_416(rng: tuple) -> None:
    # any range with a first byte on an empty file (and GET / with a Range, §8) -> bytes */0
    assert resolve_range(rng, 0)[0] == 416


def test_resolve_range_suffix_longer_than_empty_file() -> None:
    assert resolve_range((None, 5), 0)[0] == 200


# ---------------------------------------------------------------- chunked decoding


def decode_all(dec: ChunkedDecoder, pieces: list[bytes]) -> tuple[bytes, bytes]:
    """Feed pieces as a server would; return (body, bytes left over after the body)."""
    body = bytearray()
    rest = b""
    for k, piece in enumerate(pieces):
        mv = memoryview(rest + piece)
        pos = 0
        while not dec.done:
            n, data = dec.decode(mv[pos:])
            if data is not None:
                body += data
            if n == 0:
                break
            pos += n
        rest = bytes(mv[pos:])
        if dec.done:
            return bytes(body), rest + b"".join(pieces[k + 1 :])
    return bytes(body), rest


def dec_status(data: bytes) -> int:
    with pytest.raises(HttpError) as ei:
        decode_all(ChunkedDecoder(), [data])
    return ei.value.status


CHUNKED_BODY = (
    b"5\r\nabcde\r\n"
    b"A;name=value\r\n0123456789"  # the CRLF after data is optional
    b"b\r\nhello world\r\n"
    b"1F;x\r\n" + b"z" * 31 + b"\r\n"
    b"0;last\r\n"
    b"X-Other: skipped\r\n"
    b"Content-MD5: " + MD5_ABCDE + b"\r\n"
    b"\r\n"
)
CHUNKED_DATA = b"abcde" + b"0123456789" + b"hello world" + b"z" * 31
NEXT = b"GET /next HTTP/1.1\r\n\r\n"


def test_chunked_basic() -> None:
    dec = ChunkedDecoder()
    body, rest = decode_all(dec, [CHUNKED_BODY + NEXT])
    assert body == CHUNKED_DATA and rest == NEXT
    assert dec.done and dec.trailer_md5 == MD5_ABCDE_RAW


def test_chunked_reference_example() -> None:
    dec = ChunkedDecoder()
    body, rest = decode_all(dec, [b"5\r\nabcde\r\n0\r\nContent-MD5: " + MD5_ABCDE + b"\r\n\r\n"])
    assert body == b"abcde" and rest == b"" and dec.trailer_md5 == MD5_ABCDE_RAW


def test_chunked_split_at_every_offset() -> None:
    data = CHUNKED_BODY + NEXT
    for i in range(len(data) + 1):
        dec = ChunkedDecoder()
        body, rest = decode_all(dec, [data[:i], data[i:]])
        assert (body, rest, dec.done, dec.trailer_md5) == (CHUNKED_DATA, NEXT, True, MD5_ABCDE_RAW), i


def test_chunked_split_at_every_pair_of_offsets() -> None:
    data = b"3;e\r\nabc4\r\ndefg\r\n0\r\nContent-MD5: " + MD5_ABCDE + b"\r\n\r\n" + NEXT
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1):
            dec = ChunkedDecoder()
            body, rest = decode_all(dec, [data[:i], data[i:j], data[j:]])
            assert (body, rest, dec.trailer_md5) == (b"abcdefg", NEXT, MD5_ABCDE_RAW), (i, j)


def test_chunked_byte_at_a_time() -> None:
    dec = ChunkedDecoder()
    body, rest = decode_all(dec, [bytes([c]) for c in CHUNKED_BODY + NEXT])
    assert body == CHUNKED_DATA and dec.done
    # decoding stops right after the final CRLF; the next request is left untouched
    assert rest == NEXT


def test_chunked_hex_case() -> None:
    for size in (b"a", b"A", b"0a", b"00A"):
        body, _ = decode_all(ChunkedDecoder(), [size + b"\r\n" + b"q" * 10 + b"\r\n0\r\n\r\n"])
        assert body == b"q" * 10
    body, _ = decode_all(ChunkedDecoder(), [b"1aB\r\n" + b"x" * 0x1AB + b"0\r\n\r\n"])
    assert len(body) == 0x1AB


def test_chunked_data_slices_are_large() -> None:
    payload = bytes(range(256)) * 256
    buf = memoryview(b"%x\r\n" % len(payload) + payload + b"\r\n0\r\n\r\n")
    dec = ChunkedDecoder()
    n, data = dec.decode(buf)
    assert data is not None and len(data) == len(payload) and n == len(buf) - 7
    assert data.obj is buf.obj  # a slice, not a copy
    n2, data2 = dec.decode(buf[n:])
    assert data2 is None and n2 == 7 and dec.done
    assert dec.decode(buf[n + n2 :]) == (0, None)


def test_chunked_leading_zeros_and_zero_only() -> None:
    body, rest = decode_all(ChunkedDecoder(), [b"0" * 100 + b"5\r\nabcde\r\n0000\r\n\r\n"])
    assert body == b"abcde" and rest == b""


def test_chunked_huge_extension_not_buffered() -> None:
    dec = ChunkedDecoder()
    ext = b";" + b"e" * (4600 * 1024)
    stream = b"5" + ext + b"\r\nabcde\r\n0" + ext + b"\r\n\r\n" + NEXT
    body = bytearray()
    t0 = time.perf_counter()
    mv = memoryview(stream)
    for off in range(0, len(stream), 4096):
        piece = mv[off : off + 4096]
        pos = 0
        while pos < len(piece) and not dec.done:
            n, data = dec.decode(piece[pos:])
            if data is not None:
                body += data
            if n == 0:
                break
            pos += n
        if not dec.done:
            assert pos == len(piece)  # everything consumed, nothing kept
        else:
            rest = bytes(piece[pos:])
            break
    assert body == b"abcde" and dec.done
    assert rest == NEXT[: len(rest)]
    assert time.perf_counter() - t0 < 5.0


def test_chunked_trailers() -> None:
    dec = ChunkedDecoder()
    body, rest = decode_all(dec, [b"0\r\nX-Foo: bar\r\nExpires: whenever\r\n\r\n"])
    assert dec.done and dec.trailer_md5 is None and rest == b""
    # last Content-MD5 trailer wins
    other = b"1B2M2Y8AsgTpgAmY7PhCfg=="  # md5 of b""
    dec = ChunkedDecoder()
    decode_all(dec, [b"0\r\nContent-MD5: " + other + b"\r\ncontent-md5:  " + MD5_ABCDE + b" \r\n\r\n"])
    assert dec.trailer_md5 == MD5_ABCDE_RAW


@pytest.mark.parametrize(
    "trailer",
    [
        b"Content-MD5: ab56b4d92b40713acc5af89985d4b786\r\n",
        b"Content-MD5: q1a02StAcTrMWviZhdS3hg=\r\n",
        b"Content-MD5:\r\n",
        b"Content-MD5: " + MD5_ABCDE + b"\n",
        b"X-Foo: bar\n",
        b"garbage\r\n",
        b"X-Foo: a\tb\r\n",
    ],
)
def test_chunked_bad_trailers(trailer: bytes) -> None:
    assert dec_status(b"5\r\nabcde\r\n0\r\n" + trailer + b"\r\n") == 400


@pytest.mark.parametrize(
    "body",
    [
        b"x\r\n",
        b"\r\n\r\n5\r\nabcde",
        b";ext\r\n",
        b"5\nabcde",
        b"5;ext\nabcde",
        b"5\rabcde",
        b"\rX",
        b" 5\r\nabcde",
        b"5\r\nabcde\r\nzz\r\n",
        b"5\r\nabcde\r\r\n0\r\n\r\n",
        b"-1\r\n",
        b"0\r\n\r\r\n",
    ],
)
def test_chunked_garbage(body: bytes) -> None:
    assert dec_status(body) == 400


@pytest.mark.parametrize(
    "size", [b"8000000000000000", b"ffffffffffffffff", b"10000000000000000", b"0" * 50 + b"8000000000000000"]
)
def test_chunked_size_overflow(size: bytes) -> None:
    assert dec_status(size + b"\r\n") == 507
    # also when the digits arrive split
    dec = ChunkedDecoder()
    with pytest.raises(HttpError) as ei:
        decode_all(dec, [size[:9], size[9:] + b";x\r\n"])
    assert ei.value.status == 507


def test_chunked_max_size_accepted() -> None:
    dec = ChunkedDecoder()
    n, data = dec.decode(memoryview(b"7fffffffffffffff\r\nab"))
    assert bytes(data) == b"ab"
    assert dec._left == 2**63 - 1 - 2


def test_chunked_empty_input() -> None:
    assert ChunkedDecoder().decode(memoryview(b"")) == (0, None)


def test_chunked_accepts_bytes() -> None:
    n, data = ChunkedDecoder().decode(b"3\r\nabc")  # type: ignore[arg-type]
    assert n == 6 and bytes(data) == b"abc"


def test_chunked_trailers_of_any_size_skipped() -> None:
    """§3.6.3: other trailers are skipped like extensions, without keeping them."""
    dec = ChunkedDecoder()
    line = b"X-Foo: " + b"a" * (4 << 20)
    _, rest = decode_all(dec, [b"5\r\nabcde\r\n0\r\n", line[: 1 << 20], line[1 << 20 :],
                               b"\r\nContent-MD5: " + MD5_ABCDE + b"\r\n\r\n" + NEXT])
    assert dec.done and dec.trailer_md5 == MD5_ABCDE_RAW and rest == NEXT
    assert len(dec._trailers._value) <= 24  # only the Content-MD5 value was ever kept


def test_chunked_md5_trailer_value_bounded() -> None:
    assert dec_status(b"0\r\nContent-MD5: " + b"a" * (MAX_HEAD + 1)) == 400


# ---------------------------------------------------------------- one method table


def test_the_method_table_drives_the_grammar_and_the_counters() -> None:
    """counters.HTTP_METHODS is the one list: the fast path, the byte-by-byte states and
    the metrics rows all take every method in it, and nothing else."""
    from mogstored import counters

    for method in counters.HTTP_METHODS:
        line = b"%s /dev1/x HTTP/1.1\r\n\r\n" % method.encode()
        whole = head.parse_whole(line)
        assert whole is not None and whole[0].method == method
        res = feed_bytewise(line)
        assert res is not None and res[0].method == method
        assert method in counters.METHODS
    assert status_of(b"OPTIONS /dev1/x HTTP/1.1\r\n\r\n") == 400
    assert head._METHOD_MAX == max(len(m) for m in counters.HTTP_METHODS) + 1


def test_the_whole_head_match_runs_once_per_head(monkeypatch: pytest.MonkeyPatch) -> None:
    """parse_head tries the one-match fast path once; a HeadParser (made after it failed)
    never tries it again, however many pieces the head comes in."""
    tally = [0, 0]
    monkeypatch.setattr(head, "_WHOLE_HEAD", _CountingRuns(head._WHOLE_HEAD, tally))
    folded = hdr(b"X-A:", b" folded", b"Content-Length: 5")  # not a usual head: the states judge it
    assert parse(folded).content_length == 5
    assert tally[0] == 1
    assert feed_bytewise(folded) is not None
    assert tally[0] == 1
