"""What both parsers must hold for any input, as plain functions over bytes that raise
AssertionError: shared by tests/unit/test_parser_properties.py (hypothesis, in CI) and
scripts/fuzz.py (a million generated and mutated inputs).

* Any split of the input into pieces, fed as a server feeds them, gives what the whole
  input gives: the same request (or the same error status), the same bytes consumed.
* Only the parser's own error type escapes (HttpError with 400 or 507; LineTooLong).
* Work is linear in the bytes fed: fed one byte per call, the regex runs consume each
  byte at most twice (once as it is judged, once more when the complete value it is
  part of is checked, e.g. a Content-MD5) and run a bounded number of times per byte (a
  parser that rescans its input would consume about n^2/2): the counting of
  tests/unit/test_http_parser.py.
* Where h11 accepts a head too, both agree on method, target, the headers the node
  acts on and the body framing, except where the reference requires otherwise
  (:func:`h11_disagreement` lists those exceptions).
"""
from __future__ import annotations

import base64
import re
from collections.abc import Iterator, Sequence
from typing import Any

import h11

from mogstored.http import chunked, fields, head
from mogstored.http.chunked import ChunkedDecoder
from mogstored.http.fields import HttpError
from mogstored.http.head import HeadParser, Request
from mogstored.mgmt.parser import LineBuffer, LineTooLong, parse_command

# -- vocabulary of generated inputs (the grammar of §3.2 and §4.2, and near misses) ---------
METHODS = (b"GET", b"HEAD", b"PUT", b"DELETE", b"MKCOL")
NEAR_METHODS = (b"POST", b"get", b"PUTT", b"OPTIONS", b"DELET", b"")
PATH_ALPHABET = "/dev0123456789.-fidabcxyz"
PATH_NEAR = "_%?#+~ \x00\x80"
VERSIONS = (b"HTTP/1.1", b"HTTP/1.0")
NEAR_VERSIONS = (b"HTTP/1.2", b"HTTP/2.0", b"HTTP/1.", b"http/1.1", b"HTTP/1.1 ", b"")
HEADER_NAMES = (b"Host", b"Content-Length", b"content-length", b"Transfer-Encoding", b"Connection",
                b"Range", b"Content-MD5", b"Content-Range", b"Trailer", b"X-Foo", b"X", b"Expect")
NEAR_NAMES = (b"X_Bad", b"X Foo", b"", b"\x80", b"Content-Length ")
MD5_VALUE = b"q1a02StAcTrMWviZhdS3hg=="
VALUES: dict[bytes, tuple[bytes, ...]] = {  # values each recognised header takes when valid
    b"content-length": (b"0", b"5", b"007", b"123456", b"9223372036854775807"),
    b"transfer-encoding": (b"chunked", b"Chunked"),
    b"connection": (b"close", b"keep-alive"),
    b"range": (b"bytes=1-2", b"bytes=-5", b"bytes=3-", b"bytes=0-0"),
    b"content-md5": (MD5_VALUE,),
    b"content-range": (b"bytes 0-4/*", b"bytes 1-1/*"),
    b"trailer": (b"Content-MD5", b"content-md5, foo"),
}
NEAR_VALUES = (b"", b" ", b"5 5", b"5 x", b"+5", b"0x5", b"9223372036854775808", b"gzip", b"gzip, chunked",
               b"closed", b"TE, close", b"Keep-Alive, x", b"bytes = 1-2", b"bytes=1-2,3-4", b"bytes */*",
               b"a\tb", b"\x80\xff", b"a\x00b", b"x" * 40)
SEPARATORS = (b": ", b":", b":\t", b":   ")
NEAR_SEPARATORS = (b":\r\n ", b":\r\n\t", b" : ", b" :")
EOLS = (b"\r\n",)
NEAR_EOLS = (b"\n", b"\r", b"\r\r\n")
CHUNK_EXTENSIONS = (b"", b";a=b", b";" + b"x" * 30)
MGMT_LINES = (b"size /dev1/f", b"MD5 /dev1/f", b"SHA-1 /dev1/f fsck", b"MD5 /dev1/x reason_1", b"watch",
              b"server aio_threads = 10", b"SERVER AIO_THREADS=3", b"", b" \t", b"size /dev1/../f",
              b"size  /dev1/f", b"hello world", b"md5 /dev1/f", b"size /" + b"d" * 40)
MUTATION_BYTES = b"\r\n \t:/-.0123456789aAzZ\x00\x7f\x80\xff;=,"

ERROR_STATUSES = (400, 507)
Outcome = tuple[Any, ...]


def pieces(data: bytes, cuts: Sequence[int]) -> Iterator[bytes]:
    """``data`` cut at the given offsets (any order, repeats and out-of-range ones allowed)."""
    last = 0
    for cut in sorted({min(max(c, 0), len(data)) for c in cuts}):
        yield data[last:cut]
        last = cut
    yield data[last:]


# -- request heads --------------------------------------------------------------------------

def head_whole(buf: bytes, start: int) -> Outcome:
    """One parse of everything (what a server that got it all in one read sees)."""
    try:
        return ("request", HeadParser().parse(buf, start))
    except HttpError as e:
        return ("error", e.status)


def head_pieces(prefix: bytes, data: bytes, cuts: Sequence[int]) -> Outcome:
    """One parser fed piece by piece, after ``prefix`` (earlier pipelined requests)."""
    buf = bytearray(prefix)
    parser = HeadParser()
    for piece in pieces(data, cuts):
        buf += piece
        try:
            res = parser.parse(buf, len(prefix))
        except HttpError as e:
            return ("error", e.status)
        if res is not None:
            return ("request", res)
    return ("request", None)


def check_head(data: bytes, cuts: Sequence[int], prefix: bytes = b"") -> Outcome:
    """Split invariance and the error type of the head parser; the whole input's outcome."""
    whole = head_whole(prefix + data, len(prefix))
    split = head_pieces(prefix, data, cuts)
    assert split == whole, f"split {sorted(cuts)} gives {split}, whole {whole}"
    if whole[0] == "error":
        assert whole[1] in ERROR_STATUSES, whole
    return whole


class CountingRegex:
    """Stands in for a module regex: counts runs and the bytes their matches consumed."""

    def __init__(self, real: re.Pattern[bytes], tally: list[int]) -> None:
        self.real = real
        self.tally = tally

    def _count(self, m: re.Match[bytes] | None, pos: int) -> re.Match[bytes] | None:
        self.tally[0] += 1
        if m is not None:
            self.tally[1] += m.end() - pos
        return m

    def match(self, buf: Any, pos: int = 0, end: int | None = None) -> re.Match[bytes] | None:
        return self._count(self.real.match(buf, pos) if end is None else self.real.match(buf, pos, end), pos)

    def search(self, buf: Any, pos: int = 0, end: int | None = None) -> re.Match[bytes] | None:
        m = self.real.search(buf, pos) if end is None else self.real.search(buf, pos, end)
        return self._count(m, pos if m is None else m.start())

    def fullmatch(self, buf: Any) -> re.Match[bytes] | None:
        return self._count(self.real.fullmatch(buf), 0)

    def findall(self, buf: Any) -> list[Any]:
        self.tally[0] += 1
        return self.real.findall(buf)


class counted_regexes:
    """``with counted_regexes() as tally``: every module regex of the HTTP parser counts
    into ``tally`` = [runs, bytes consumed] (restored on exit)."""

    def __enter__(self) -> list[int]:
        self.tally = [0, 0]
        self.saved = [(module, name, value) for module in (head, fields, chunked)
                      for name, value in vars(module).items() if isinstance(value, re.Pattern)]
        for module, name, value in self.saved:
            setattr(module, name, CountingRegex(value, self.tally))
        return self.tally

    def __exit__(self, *exc: object) -> None:
        for module, name, value in self.saved:
            setattr(module, name, value)


def _check_work(tally: list[int], fed: int) -> None:
    assert tally[1] <= 2 * fed, f"{tally[1]} bytes consumed by regex runs for {fed} fed"
    assert tally[0] <= 3 * fed + 3, f"{tally[0]} regex runs for {fed} bytes fed"


def check_head_linear(data: bytes) -> None:
    """Fed one byte per call, the head parser's work stays linear in the bytes fed."""
    with counted_regexes() as tally:
        head_pieces(b"", data, range(1, len(data)))
    _check_work(tally, len(data))


# -- h11 as a second opinion ----------------------------------------------------------------

def h11_head(data: bytes) -> tuple[h11.Request, int, bool] | None:
    """h11's request for the head at the start of ``data``, the bytes it consumed and its
    keep-alive decision; None if it refuses the head or wants more bytes."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(event, h11.Request):
        return None
    return event, len(data) - len(conn.trailing_data[0]), conn._cstate.keep_alive  # h11's own decision


_ABSOLUTE = re.compile(rb"http://[^/]*")
_LEADING_SLASHES = re.compile(rb"^/+")
_RANGE = re.compile(rb"bytes=([0-9]*)-([0-9]*)")


def _last(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    values = [v for n, v in headers if n == name]
    return values[-1] if values else None


def h11_disagreement(req: Request, end: int, theirs: tuple[h11.Request, int, bool]) -> str | None:
    """Where our request and h11's differ, or None.  Differences the reference requires
    are not compared: the target's ``http://host`` part is skipped and leading slashes
    are collapsed (§3.2); Connection is matched by prefix and HTTP/1.0 may be kept
    alive (§3.3, h11 closes every 1.0 connection): keep-alive is compared only for
    HTTP/1.1 without a Connection header or with exactly ``close``; a non-PUT
    request's body is never read (§3.2), yet its framing is parsed and compared here."""
    event, consumed, keepalive = theirs
    headers = [(n.lower(), v) for n, v in event.headers.raw_items()]
    target = _LEADING_SLASHES.sub(b"/", _ABSOLUTE.sub(b"", event.target, count=1))
    length, md5, rng = _last(headers, b"content-length"), _last(headers, b"content-md5"), _last(headers, b"range")
    expected_range = None
    if rng is not None and (m := _RANGE.fullmatch(rng)) is not None:
        expected_range = tuple(int(g) if g else None for g in m.groups())
    connection = _last(headers, b"connection")
    checks = {
        "method": (req.method.encode(), event.method),
        "target": (req.path.encode(), target),
        "bytes consumed": (end, consumed),
        "framing": ("chunked" if req.chunked else req.content_length or 0,
                    "chunked" if _last(headers, b"transfer-encoding") else int(length or 0)),
        "content-length": (req.content_length, None if length is None else int(length)),
        "content-md5": (req.content_md5, None if md5 is None else base64.b64decode(md5)),
        "range": (req.range, expected_range),
        "trailer": (req.trailer_md5,
                    any(v.lower().startswith(b"content-md5") for n, v in headers if n == b"trailer")),
    }
    if event.http_version == b"1.1" and connection in (None, b"close"):
        checks["keep-alive"] = (req.keepalive, keepalive)
    for what, (ours, h11s) in checks.items():
        if ours != h11s:
            return f"{what}: ours {ours!r}, h11 {h11s!r}"
    return None


def check_h11(data: bytes) -> bool:
    """Where both parsers accept the head at the start of ``data``, they agree; True if both did."""
    try:
        ours = HeadParser().parse(data)
    except HttpError:
        return False
    theirs = h11_head(data)
    if ours is None or theirs is None:
        return False
    diff = h11_disagreement(*ours, theirs)
    assert diff is None, diff
    return True


# -- chunked bodies -------------------------------------------------------------------------

def chunked_pieces(data: bytes, cuts: Sequence[int]) -> Outcome:
    """A decoder fed as put.py feeds it: (body, bytes left after it, done, trailer MD5),
    or ("error", status)."""
    dec = ChunkedDecoder()
    body = bytearray()
    parts = list(pieces(data, cuts))
    try:
        for k, part in enumerate(parts):
            view = memoryview(part)
            used = 0
            while not dec.done:
                n, piece = dec.decode(view[used:])
                if n == 0:
                    break
                used += n
                if piece is not None:
                    body += piece
            if dec.done:
                return bytes(body), part[used:] + b"".join(parts[k + 1:]), True, dec.trailer_md5
            assert used == len(part), f"{len(part) - used} bytes neither consumed nor left after the end"
    except HttpError as e:
        return ("error", e.status)
    return bytes(body), b"", False, dec.trailer_md5


def check_chunked(data: bytes, cuts: Sequence[int]) -> Outcome:
    whole = chunked_pieces(data, ())
    split = chunked_pieces(data, cuts)
    assert split == whole, f"split {sorted(cuts)} gives {split}, whole {whole}"
    if whole[0] == "error":
        assert whole[1] in ERROR_STATUSES, whole
    return whole


def check_chunked_linear(data: bytes) -> None:
    with counted_regexes() as tally:
        chunked_pieces(data, range(1, len(data)))
    _check_work(tally, len(data))


_CHUNKED_HEAD = b"PUT /dev1/f HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"


def check_h11_chunked(data: bytes) -> bool:
    """Where h11 and we both decode a whole chunked body, same data, same end, same
    Content-MD5 trailer.  Ours also takes chunk extensions of any size and data without
    the CRLF after it (README, Dependencies): h11 refusing those is not compared."""
    ours = chunked_pieces(data, ())
    if ours[0] == "error" or not ours[2]:
        return False
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(_CHUNKED_HEAD + data)
    body = bytearray()
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif event is h11.NEED_DATA:
                return False
    except h11.RemoteProtocolError:
        return False
    md5 = _last([(n.lower(), v) for n, v in event.headers.raw_items()], b"content-md5")
    theirs = (bytes(body), conn.trailing_data[0], True, None if md5 is None else base64.b64decode(md5))
    assert ours == theirs, f"ours {ours}, h11 {theirs}"
    return True


# -- sidechannel lines ----------------------------------------------------------------------

def lines_pieces(data: bytes, cuts: Sequence[int]) -> Outcome:
    """Commands parsed from each piece as it arrives, as mgmt/connection.py does, then
    whether the line limit was hit and whether bytes of an unfinished line wait."""
    inbuf = bytearray()  # the connection's input buffer, which the line buffer reads from
    buf = LineBuffer(inbuf)
    commands = []
    for part in pieces(data, cuts):
        buf.feed(part)
        try:
            while (line := buf.next_line()) is not None:
                commands.append(parse_command(line))
        except LineTooLong:
            return tuple(commands), "too long"
    return tuple(commands), len(inbuf)


def check_lines(data: bytes, cuts: Sequence[int]) -> Outcome:
    whole = lines_pieces(data, ())
    split = lines_pieces(data, cuts)
    assert split == whole, f"split {sorted(cuts)} gives {split}, whole {whole}"
    return whole


class _CountingBuffer(bytearray):
    """A LineBuffer's buffer that counts the bytes its newline searches look at."""

    looked = 0

    def find(self, sub: Any, start: Any = 0, end: Any = None) -> int:
        stop = len(self) if end is None else min(end, len(self))
        _CountingBuffer.looked += max(0, stop - start)
        return super().find(sub, start, stop)


def check_lines_linear(data: bytes) -> None:
    """Fed one byte per call, the line buffer looks at each byte about once."""
    buf = LineBuffer(_CountingBuffer())
    _CountingBuffer.looked = 0
    try:
        for i in range(len(data)):
            buf.feed(data[i:i + 1])
            while buf.next_line() is not None:
                pass
    except LineTooLong:
        pass
    assert _CountingBuffer.looked <= len(data), f"{_CountingBuffer.looked} bytes looked at for {len(data)} fed"
