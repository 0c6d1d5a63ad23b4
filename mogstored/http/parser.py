"""Sans-IO HTTP/1.x request parsing, byte-compatible with cmogstored 1.2.1 (§3.2-§3.6, §8).

No sockets and no files here: callers hand in bytes and get back parsed values or an
HttpError carrying the status to answer (always with Connection: close).

The grammar is stricter than h11 and differs from it on purpose (fixed method set, a tiny
path alphabet, prefix matching of Connection/Trailer, lenient chunk framing), so it is a
hand-made regex parser in h11's sans-IO style rather than a wrapper around h11.  All regexes
use possessive quantifiers so that hostile 64 KiB heads cannot make them backtrack.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass

MAX_HEAD = 65535
_OFF_MAX = 1 << 63  # numbers >= this are an overflow (off_t) -> 507
_PATH_MAX = 37  # longest legal path: /dev16777215/0/000/000/0123456789.fid
_PATH_END_MAX = 255  # 1.2.1 keeps path offsets in a byte (§8)
_MAX_TRAILERS = MAX_HEAD  # bound on buffered chunked trailer bytes


class HttpError(Exception):
    """A request the server answers with `status` (400 or 507) and then closes."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@dataclass(slots=True)
class Request:
    method: str
    path: str
    keepalive: bool
    content_length: int | None = None
    chunked: bool = False
    content_md5: bytes | None = None
    trailer_md5: bool = False
    range: tuple[int | None, int | None] | None = None
    content_range: tuple[int, int] | None = None


_REQUEST_LINE = re.compile(
    rb"(GET|HEAD|PUT|DELETE|MKCOL) (?:http://[^/ \r\n]++)?/++([A-Za-z0-9/.-]*+) HTTP/1\.([01])\r\n"
)
# name ":" [OWS, obs-fold allowed only here] [value] [OWS] CRLF; value = words separated by
# spaces, no control bytes (TAB only as leading/trailing OWS), bytes >= 0x80 allowed.
_VCHAR = rb"[^\x00-\x20\x7f]"
_HEADER = re.compile(
    rb"([A-Za-z0-9-]++):(?:[ \t]|\r\n[ \t])*+((?:"
    + _VCHAR
    + rb"++(?: ++"
    + _VCHAR
    + rb"++)*+)?+)[ \t]*+\r\n"
)
_DIGITS = re.compile(rb"[0-9]*+")
_MD5_B64 = re.compile(rb"[A-Za-z0-9+/]{22}==")
_PUT_PATH = re.compile(r"/dev[0-9]+/+[^/].*")


def _number(value: bytes, pos: int) -> tuple[int | None, int]:
    """Decimal digits at value[pos:] -> (number or None if no digit, end); >= 2^63 -> 507.

    Leading zeros are stripped first: they are legal and int() refuses > 4300 digits."""
    m = _DIGITS.match(value, pos)
    assert m is not None  # [0-9]*+ matches anywhere
    end = m.end()
    if end == pos:
        return None, end
    digits = value[pos:end].lstrip(b"0")
    if len(digits) > 19:
        raise HttpError(507)
    n = int(digits) if digits else 0
    if n >= _OFF_MAX:
        raise HttpError(507)
    return n, end


def _content_length(req: Request, value: bytes) -> None:
    n, end = _number(value, 0)
    if n is None or (end < len(value) and value[end] != 0x20):
        raise HttpError(400)  # "+5", "0x5", "123a", empty; "5 x" means 5
    if req.content_length is not None and req.content_length != n:
        raise HttpError(400)  # Clone: conflicting duplicates (1.2.1 concatenates digits)
    req.content_length = n


def _range(req: Request, value: bytes) -> None:
    if not value.startswith(b"bytes="):
        raise HttpError(400)
    first, end = _number(value, 6)
    if end == len(value) or value[end] != 0x2D:  # '-'
        raise HttpError(400)
    last, end = _number(value, end + 1)
    if end != len(value):
        raise HttpError(400)
    req.range = (first, last)  # last Range header wins


def _content_range(req: Request, value: bytes) -> None:
    if not value:
        raise HttpError(400)
    if not value.startswith(b"bytes "):
        return  # other forms are ignored (full-file PUT)
    pos = 6
    while pos < len(value) and value[pos] == 0x20:
        pos += 1
    first, end = _number(value, pos)
    if first is None or end == len(value) or value[end] != 0x2D:
        raise HttpError(400)  # "bytes */*", non-digit first
    last, end = _number(value, end + 1)
    if last is None:
        raise HttpError(400)
    if value[end:] == b"/*":
        req.content_range = (first, last)
    # "bytes 0-1/2" and other tails: header ignored


def parse_md5(value: bytes) -> bytes:
    """Content-MD5 value (header or trailer): exactly 22 base64 chars + "==" -> 16 raw bytes."""
    if _MD5_B64.fullmatch(value) is None:
        raise HttpError(400)
    return binascii.a2b_base64(value)


def _apply_header(req: Request, name: bytes, value: bytes) -> None:
    """Record a recognised header; unknown ones were already syntax-checked by _HEADER."""
    n = len(name)
    if n not in (5, 7, 10, 11, 13, 14, 17):
        return
    name = name.lower()
    if name == b"content-length":
        _content_length(req, value)
    elif name == b"transfer-encoding":
        if value.lower() == b"chunked":
            req.chunked = True
    elif name == b"connection":
        v = value[:10].lower()
        if v.startswith(b"close"):
            req.keepalive = False
        elif v == b"keep-alive":
            req.keepalive = True
    elif name == b"range":
        _range(req, value)
    elif name == b"content-md5":
        req.content_md5 = parse_md5(value)
    elif name == b"content-range":
        _content_range(req, value)
    elif name == b"trailer" and value[:11].lower() == b"content-md5":
        req.trailer_md5 = True


def _request_line(buf: bytes | bytearray, start: int, endpos: int) -> tuple[Request, int]:
    m = _REQUEST_LINE.match(buf, start, endpos)
    if m is None:
        raise HttpError(400)
    rest = m.group(2)
    if len(rest) >= _PATH_MAX or m.end(2) - start > _PATH_END_MAX:
        raise HttpError(400)
    method = m.group(1).decode()
    req = Request(method, "/" + rest.decode(), m.group(3) == b"1")
    return req, m.end()


def _headers(req: Request, buf: bytes | bytearray, pos: int, endpos: int, partial: bool) -> None:
    """Check and apply header lines in buf[pos:endpos] (which ends on a CRLF).

    In partial mode the last line is not applied when its value is empty: an obs-fold
    continuation may still arrive and supply the value."""
    match = _HEADER.match
    while pos < endpos:
        h = match(buf, pos, endpos)
        if h is None:
            raise HttpError(400)
        pos = h.end()
        value = h.group(2)
        if partial and pos == endpos and not value:
            return
        _apply_header(req, h.group(1), value)


def _line_start(buf: bytes | bytearray, start: int, pos: int) -> int:
    """Index of the first byte of the line containing buf[pos] (not before start)."""
    return max(buf.rfind(b"\n", start, pos) + 1, start)


def _check_partial(buf: bytes | bytearray, start: int, seen: int, stop: int) -> None:
    """Raise for errors in lines completed since `seen` (revisiting one line of context)."""
    first_lf = buf.find(b"\n", seen, stop)
    if first_lf < 0:
        return
    endpos = buf.rfind(b"\n", first_lf, stop) + 1
    ls = _line_start(buf, start, first_lf)
    if ls > start:  # the previous line may have been deferred (empty value)
        ls = _line_start(buf, start, ls - 1)
    while ls > start and buf[ls] in (0x20, 0x09):  # continuation: back to its header
        ls = _line_start(buf, start, ls - 1)
    if ls == start:
        req, pos = _request_line(buf, start, endpos)
    else:
        req, pos = Request("GET", "/", True), ls
    _headers(req, buf, pos, endpos, True)


def parse_head(
    buf: bytes | bytearray, start: int = 0, scanned_from: int = 0
) -> tuple[Request, int] | None:
    """Parse the request head at buf[start:] -> (request, index past the blank line), or None
    while incomplete.  Errors raise HttpError as soon as the bytes show them.

    `scanned_from`: pass len(buf) of the previous call that returned None for this same head
    (indices in the same buffer) so that a head trickling in byte by byte costs O(n) in total
    instead of O(n^2); 0 (the default) rescans from `start`, which is always correct."""
    limit = start + MAX_HEAD
    seen = min(max(start, scanned_from), len(buf))
    end = buf.find(b"\r\n\r\n", max(start, seen - 3), limit)
    if end >= 0:
        hend = end + 2
        req, pos = _request_line(buf, start, hend)
        _headers(req, buf, pos, hend, False)
        return req, end + 4
    _check_partial(buf, start, seen, min(len(buf), limit))
    if len(buf) - start >= MAX_HEAD:
        raise HttpError(400)
    return None


def is_put_path(path: str) -> bool:
    """Clone rule of §3.4 item 2: /dev<digits>/<name...>, not ending in '/'."""
    return _PUT_PATH.fullmatch(path) is not None and not path.endswith("/")


def check_put_framing(req: Request) -> None:
    """PUT framing checks run after the path checks (§3.6.1, §3.6.2 item 3) -> HttpError(400).

    Content-Range with chunked, last < first, or Content-Length (missing = 0) != range size."""
    cr = req.content_range
    if cr is None:
        return
    first, last = cr
    if req.chunked or last < first or (req.content_length or 0) != last - first + 1:
        raise HttpError(400)


def resolve_range(rng: tuple[int | None, int | None], size: int) -> tuple[int, int, int]:
    """Range of §3.5.1 against a file of `size` bytes -> (status, first, last).

    206: bytes first..last (inclusive); 200: whole file; 416: unsatisfiable.  For 200 and
    416 first/last are 0 and size-1."""
    first, last = rng
    if first is None:
        if not last:  # "bytes=-" and "bytes=-0"
            return 416, 0, size - 1
        if last > size:
            return 200, 0, size - 1
        return 206, size - last, size - 1
    if first >= size or (last is not None and first > last):
        return 416, 0, size - 1
    if last is None or last >= size:
        last = size - 1
    return 206, first, last


# Chunked decoder states
_ST_START = 0  # optional CRLF, then a size
_ST_START_LF = 1  # LF of the optional CRLF
_ST_SIZE0 = 2  # first hex digit required
_ST_SIZE = 3  # more hex digits, extension or CR
_ST_EXT = 4  # extension bytes up to CR
_ST_SIZE_LF = 5  # LF ending the size line
_ST_DATA = 6
_ST_TRAILER = 7
_ST_DONE = 8

_HEX = re.compile(rb"[0-9A-Fa-f]*+")
_CR_OR_LF = re.compile(rb"[\r\n]")
_LF = re.compile(rb"\n")


class ChunkedDecoder:
    """Streaming decoder for chunked PUT bodies (§3.6.3).

    Everything handed to decode() is consumed into the decoder's state (except bytes after
    the final CRLF), so callers need not keep unconsumed input around."""

    __slots__ = ("_left", "_line", "_size", "_state", "_trailer_bytes", "done", "trailer_md5")

    def __init__(self) -> None:
        self.done = False
        self.trailer_md5: bytes | None = None
        self._state = _ST_START
        self._size = 0
        self._left = 0
        self._line = bytearray()
        self._trailer_bytes = 0

    def decode(self, buf: memoryview) -> tuple[int, memoryview | None]:
        """Consume from buf[0:] -> (bytes consumed, body data slice of buf or None)."""
        if not isinstance(buf, memoryview):
            buf = memoryview(buf)
        n = len(buf)
        pos = 0
        st = self._state
        while pos < n:
            if st == _ST_DATA:
                k = min(self._left, n - pos)
                self._left -= k
                self._state = _ST_START if self._left == 0 else _ST_DATA
                return pos + k, buf[pos : pos + k]
            if st == _ST_START:
                if buf[pos] == 0x0D:
                    st = _ST_START_LF
                    pos += 1
                else:
                    st = _ST_SIZE0
            elif st == _ST_START_LF:
                if buf[pos] != 0x0A:
                    raise HttpError(400)
                st = _ST_SIZE0
                pos += 1
            elif st == _ST_SIZE0 or st == _ST_SIZE:
                m = _HEX.match(buf, pos)
                assert m is not None  # a possessive star matches anywhere
                end = m.end()
                if end == pos and st == _ST_SIZE0:
                    raise HttpError(400)  # garbage where a size is expected
                if end > pos:
                    self._add_hex(bytes(buf[pos:end]))
                    pos = end
                st = _ST_SIZE
                if pos < n:
                    c = buf[pos]
                    if c == 0x0D:
                        st = _ST_SIZE_LF
                        pos += 1
                    elif c == 0x0A:
                        raise HttpError(400)
                    else:
                        st = _ST_EXT
            elif st == _ST_EXT:
                m = _CR_OR_LF.search(buf, pos)
                if m is None:
                    pos = n  # skip extension bytes without keeping them
                else:
                    pos = m.start()
                    if buf[pos] == 0x0A:
                        raise HttpError(400)
                    st = _ST_SIZE_LF
                    pos += 1
            elif st == _ST_SIZE_LF:
                if buf[pos] != 0x0A:
                    raise HttpError(400)
                pos += 1
                if self._size:
                    self._left = self._size
                    self._size = 0
                    st = _ST_DATA
                else:
                    st = _ST_TRAILER
            elif st == _ST_TRAILER:
                m = _LF.search(buf, pos)
                end = n if m is None else m.end()
                self._trailer_bytes += end - pos
                if self._trailer_bytes > _MAX_TRAILERS:
                    raise HttpError(400)
                self._line += buf[pos:end]
                pos = end
                if m is not None and self._trailer_line():
                    st = _ST_DONE
                    self.done = True
                    break
            else:  # _ST_DONE: leave the rest (next pipelined request) alone
                break
        self._state = st
        return pos, None

    def _add_hex(self, digits: bytes) -> None:
        if not self._size:
            digits = digits.lstrip(b"0")
            if not digits:
                return
        if len(digits) > 16:
            raise HttpError(507)
        size = (self._size << (4 * len(digits))) | int(digits, 16)
        if size >= _OFF_MAX:
            raise HttpError(507)
        self._size = size

    def _trailer_line(self) -> bool:
        """Handle one complete trailer line; True when it was the final empty line."""
        line = bytes(self._line)
        self._line.clear()
        if line == b"\r\n":
            return True
        h = _HEADER.fullmatch(line)
        if h is None:
            raise HttpError(400)
        if h.group(1).lower() == b"content-md5":
            self.trailer_md5 = parse_md5(h.group(2))
        return False
