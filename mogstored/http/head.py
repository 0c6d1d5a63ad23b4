"""Sans-IO HTTP/1.x request lines and heads, byte-compatible with cmogstored 1.2.1
(§3.2-§3.6, §8).

No sockets and no files here: callers hand in bytes and get back parsed values or an
HttpError carrying the status to answer (always with Connection: close).

The grammar is stricter than h11 and differs from it on purpose (fixed method set, a tiny
path alphabet, prefix matching of Connection/Trailer, lenient chunk framing), so it is a
hand-made incremental state machine in h11's sans-IO style rather than a wrapper around h11.
The usual head (whole, made of usual lines) is parsed by one regex match
(:func:`parse_whole`); a caller tries it once per head, before any
:class:`HeadParser`, which judges the rest byte by byte.  Field lines are
:mod:`mogstored.http.fields`; chunked bodies :mod:`mogstored.http.chunked`.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from mogstored.counters import HTTP_METHODS
from mogstored.http.fields import (
    FIELD_NAME,
    FIELD_VALUE,
    MAX_HEAD,
    NAME_KEEP,
    WHOLE_LINE,
    FieldLines,
    HttpError,
    number,
    parse_md5,
    run_end,
)

_PATH_MAX = 37  # longest legal path: /dev16777215/0/000/000/0123456789.fid
_PATH_END_MAX = 255  # 1.2.1 keeps path offsets in a byte (§8)


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
    started: float = 0.0  # when its head was parsed (metrics)
    status: int = 0  # of its response, once the head is built (metrics)


_PUT_PATH = re.compile(r"/dev[0-9]+/+[^/].*")


def _content_length(req: Request, value: bytes) -> None:
    n, end = number(value, 0)
    if n is None or (end < len(value) and value[end] != 0x20):
        raise HttpError(400)  # "+5", "0x5", "123a", empty; "5 x" means 5
    if req.content_length is not None and req.content_length != n:
        raise HttpError(400)  # Clone: conflicting duplicates (1.2.1 concatenates digits)
    req.content_length = n


def _range(req: Request, value: bytes) -> None:
    if not value.startswith(b"bytes="):
        raise HttpError(400)
    first, end = number(value, 6)
    if end == len(value) or value[end] != 0x2D:  # '-'
        raise HttpError(400)
    last, end = number(value, end + 1)
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
    first, end = number(value, pos)
    if first is None or end == len(value) or value[end] != 0x2D:
        raise HttpError(400)  # "bytes */*", non-digit first
    last, end = number(value, end + 1)
    if last is None:
        raise HttpError(400)
    if value[end:] == b"/*":
        req.content_range = (first, last)
    # "bytes 0-1/2" and other tails: header ignored


def _apply_header(req: Request, name: bytes, value: bytes) -> None:
    """Record a recognised header (`name` lowercased; the others were only syntax-checked)."""
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


# -- the request line: an incremental state machine -----------------------------------
#
# Every byte is judged as it arrives (see fields.py); a call resumes where the previous one
# stopped, so trickled heads cost O(n) in total.

_METHODS = tuple(m.encode() + b" " for m in HTTP_METHODS)  # each with its space
_METHOD_MAX = max(map(len, _METHODS))  # the longest, space included
_SCHEME = b"http://"
_VERSION = b" HTTP/1."
_HOST_RUN = re.compile(rb"[^/ \r\n]*+")
_SLASH_RUN = re.compile(rb"/*+")
_PATH_RUN = re.compile(rb"[A-Za-z0-9/.-]*+")
_SP, _CR, _LF, _SLASH = 0x20, 0x0D, 0x0A, 0x2F
# The whole request line in one match, accepting exactly what the states below accept
# for it (so it changes speed, not the grammar).
_WHOLE_REQUEST_LINE = re.compile(
    rb"(" + b"|".join(m.encode() for m in HTTP_METHODS) + rb") (?:http://[^/ \r\n]++)?/++([A-Za-z0-9/.-]*+) HTTP/1\.([01])\r\n"
)
# A whole head of such lines, the usual case, in one match; its field lines are then
# split by one findall (a head within MAX_HEAD cannot hold a value over MAX_HEAD).
_WHOLE_HEAD = re.compile(
    _WHOLE_REQUEST_LINE.pattern
    + rb"((?:" + FIELD_NAME + rb":[ \t]*+" + FIELD_VALUE + rb"[ \t]*+\r\n)*+)\r\n"
)

_HEAD_FIELDS = frozenset(
    (b"content-length", b"transfer-encoding", b"connection", b"range", b"content-md5",
     b"content-range", b"trailer")
)


# Request-line states
_R_METHOD = 0
_R_TARGET = 1  # first byte of the target: '/' or the start of "http://"
_R_SCHEME = 2
_R_HOST0 = 3  # at least one host byte
_R_HOST = 4
_R_SLASHES = 5
_R_PATH = 6
_R_VERSION = 7  # " HTTP/1."
_R_MINOR = 8
_R_CR = 9
_R_LF = 10
_R_FIELDS = 11


class HeadParser:
    """One request head, parsed incrementally as its bytes arrive (one parser per request,
    made once :func:`parse_whole` found the head incomplete or unusual).

    Call parse() with the same buffer and head start each time more bytes arrived; bytes
    already judged are never looked at again."""

    __slots__ = ("_fields", "_lit", "_method", "_off", "_path", "_req", "_state", "pieces")

    def __init__(self) -> None:
        self.pieces = 0  # calls that judged new bytes yet found the head incomplete
        self._state = _R_METHOD
        self._off = 0  # bytes of this head judged so far
        self._lit = 0  # bytes of the current literal (method, scheme, version) matched
        self._path = 0  # offset where the path proper starts (after the leading slashes)
        self._method = b""
        self._req: Request | None = None
        self._fields: FieldLines | None = None

    def parse(self, buf: bytes | bytearray, start: int = 0) -> tuple[Request, int] | None:
        """The head at buf[start:] -> (request, index past the blank line), or None while it
        is a valid but incomplete prefix.  HttpError as soon as it cannot be valid."""
        end = min(len(buf), start + MAX_HEAD)
        pos = start + self._off
        if self._off == 0:  # parse_whole() was tried: at least the request line may be whole
            pos = self._whole_request_line(buf, start, end)
        if self._state != _R_FIELDS:
            pos = self._request_line(buf, start, pos, end)
        if self._state == _R_FIELDS:
            assert self._fields is not None and self._req is not None
            pos = self._fields.feed(buf, pos, end)
            if self._fields.done:
                return self._req, pos
        if pos - start > self._off:
            self.pieces += 1
        self._off = pos - start
        if len(buf) - start >= MAX_HEAD:
            raise HttpError(400)  # no end within 65535 bytes
        return None

    def _whole_request_line(self, buf: bytes | bytearray, start: int, end: int) -> int:
        m = _WHOLE_REQUEST_LINE.match(buf, start, end)
        if m is None or len(m.group(2)) >= _PATH_MAX or m.end(2) - start > _PATH_END_MAX:
            return start  # incomplete or wrong: the states judge it byte by byte
        req = self._req = Request(m.group(1).decode(), "/" + m.group(2).decode(), m.group(3) == b"1")
        self._fields = FieldLines(_HEAD_FIELDS, functools.partial(_apply_header, req))
        self._state = _R_FIELDS
        return m.end()

    def _literal(self, lit: bytes, buf: bytes | bytearray, pos: int, end: int) -> int:
        """Match more of `lit` at buf[pos:end] -> new pos; self._lit == len(lit) when whole."""
        k = self._lit
        n = min(len(lit) - k, end - pos)
        if buf[pos : pos + n] != lit[k : k + n]:
            raise HttpError(400)
        self._lit = k + n
        return pos + n

    def _request_line(self, buf: bytes | bytearray, start: int, pos: int, end: int) -> int:
        st = self._state
        while pos < end and st != _R_FIELDS:
            if st == _R_METHOD:
                k = self._lit
                n = min(_METHOD_MAX - k, end - pos)
                word = self._method + bytes(buf[pos : pos + n])
                for m in _METHODS:
                    if word.startswith(m):
                        pos += len(m) - k
                        self._method = m[:-1]
                        self._lit = 0
                        st = _R_TARGET
                        break
                else:
                    if not any(m.startswith(word) for m in _METHODS):
                        raise HttpError(400)
                    self._method = word
                    self._lit = len(word)
                    pos += n
            elif st == _R_TARGET:
                c = buf[pos]
                if c == _SLASH:
                    st = _R_SLASHES
                elif c == _SCHEME[0]:
                    st = _R_SCHEME
                else:
                    raise HttpError(400)
            elif st == _R_SCHEME:
                pos = self._literal(_SCHEME, buf, pos, end)
                if self._lit == len(_SCHEME):
                    self._lit = 0
                    st = _R_HOST0
            elif st == _R_HOST0 or st == _R_HOST:
                run = run_end(_HOST_RUN, buf, pos, end)
                if run > pos:
                    st = _R_HOST
                pos = run
                _check_path_end(pos - start)
                if pos < end:
                    if st == _R_HOST0 or buf[pos] != _SLASH:
                        raise HttpError(400)  # no host, or no path after it
                    st = _R_SLASHES
            elif st == _R_SLASHES:
                pos = run_end(_SLASH_RUN, buf, pos, end)
                _check_path_end(pos - start)
                if pos < end:
                    self._path = pos - start
                    st = _R_PATH
            elif st == _R_PATH:
                pos = run_end(_PATH_RUN, buf, pos, end)
                _check_path_end(pos - start)
                if pos - start - self._path >= _PATH_MAX:
                    raise HttpError(400)  # 38+ bytes with the leading '/'
                if pos < end:
                    if buf[pos] != _SP:
                        raise HttpError(400)
                    path = bytes(buf[start + self._path : pos])
                    self._req = Request(self._method.decode(), "/" + path.decode(), True)
                    st = _R_VERSION
            elif st == _R_VERSION:
                pos = self._literal(_VERSION, buf, pos, end)
                if self._lit == len(_VERSION):
                    st = _R_MINOR
            elif st == _R_MINOR:
                c = buf[pos]
                if c != 0x30 and c != 0x31:
                    raise HttpError(400)
                assert self._req is not None
                self._req.keepalive = c == 0x31
                st = _R_CR
                pos += 1
            elif st == _R_CR or st == _R_LF:
                if buf[pos] != (_CR if st == _R_CR else _LF):
                    raise HttpError(400)
                pos += 1
                if st == _R_CR:
                    st = _R_LF
                else:
                    req = self._req
                    assert req is not None
                    self._fields = FieldLines(_HEAD_FIELDS, functools.partial(_apply_header, req))
                    st = _R_FIELDS
        self._state = st
        return pos


def parse_whole(buf: bytes | bytearray, start: int = 0) -> tuple[Request, int] | None:
    """The head at buf[start:] if it is whole and made of usual lines only (one match,
    the common case), else None: then a HeadParser judges it byte by byte."""
    m = _WHOLE_HEAD.match(buf, start, min(len(buf), start + MAX_HEAD))
    if m is None or len(m.group(2)) >= _PATH_MAX or m.end(2) - start > _PATH_END_MAX:
        return None
    return _whole_head(m), m.end()


def _whole_head(m: re.Match[bytes]) -> Request:
    req = Request(m.group(1).decode(), "/" + m.group(2).decode(), m.group(3) == b"1")
    if m.start(4) != m.end(4):
        for name, value in WHOLE_LINE.findall(m.group(4)):
            if len(name) < NAME_KEEP:
                name = name.lower()
                if name in _HEAD_FIELDS:
                    _apply_header(req, name, value)
    return req


def _check_path_end(offset: int) -> None:
    if offset > _PATH_END_MAX:
        raise HttpError(400)  # the path would end beyond byte 255 of the request (§8)


def parse_head(buf: bytes | bytearray, start: int = 0) -> tuple[Request, int] | None:
    """One-shot parse of the head at buf[start:] (see HeadParser.parse)."""
    return parse_whole(buf, start) or HeadParser().parse(buf, start)


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


