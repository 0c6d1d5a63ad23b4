"""Sans-IO HTTP/1.x request parsing, byte-compatible with cmogstored 1.2.1 (§3.2-§3.6, §8).

No sockets and no files here: callers hand in bytes and get back parsed values or an
HttpError carrying the status to answer (always with Connection: close).

The grammar is stricter than h11 and differs from it on purpose (fixed method set, a tiny
path alphabet, prefix matching of Connection/Trailer, lenient chunk framing), so it is a
hand-made incremental state machine in h11's sans-IO style rather than a wrapper around h11.
Regexes only skip runs of bytes inside one state; all use possessive quantifiers, so they
never backtrack.
"""

from __future__ import annotations

import binascii
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

MAX_HEAD = 65535
_OFF_MAX = 1 << 63  # numbers >= this are an overflow (off_t) -> 507
_PATH_MAX = 37  # longest legal path: /dev16777215/0/000/000/0123456789.fid
_PATH_END_MAX = 255  # 1.2.1 keeps path offsets in a byte (§8)



def _run_end(pattern: re.Pattern[bytes], buf: bytes | bytearray | memoryview, pos: int, end: int | None = None) -> int:
    """Where a run of ``pattern`` (a ``*`` pattern: it always matches) starting at ``pos`` ends."""
    m = pattern.match(buf, pos) if end is None else pattern.match(buf, pos, end)
    assert m is not None
    return m.end()

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
    started: float = 0.0  # when its head was parsed (metrics)
    status: int = 0  # of its response, once the head is built (metrics)


_DIGITS = re.compile(rb"[0-9]*+")
_MD5_B64 = re.compile(rb"[A-Za-z0-9+/]{22}==")
_PUT_PATH = re.compile(r"/dev[0-9]+/+[^/].*")


def _number(value: bytes, pos: int) -> tuple[int | None, int]:
    """Decimal digits at value[pos:] -> (number or None if no digit, end); >= 2^63 -> 507.

    Leading zeros are stripped first: they are legal and int() refuses > 4300 digits."""
    end = _run_end(_DIGITS, value, pos)
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


# -- the head: an incremental state machine -----------------------------------------
#
# Like cmogstored's ragel parser, every byte is judged as it arrives: a prefix that can no
# longer begin or continue a valid head is a 400 at once, without waiting for a line end, and
# a call resumes exactly where the previous one stopped (trickled heads cost O(n) in total).
# Runs of bytes that need no decision (names, values, paths) are skipped with one regex match.

_METHODS = (b"GET ", b"HEAD ", b"PUT ", b"DELETE ", b"MKCOL ")
_SCHEME = b"http://"
_VERSION = b" HTTP/1."
_NAME_RUN = re.compile(rb"[A-Za-z0-9-]*+")
_WORD_RUN = re.compile(rb"[^\x00-\x20\x7f]*+")  # value characters (bytes >= 0x80 allowed)
_SPACE_RUN = re.compile(rb" *+")
_OWS_RUN = re.compile(rb"[ \t]*+")
_HOST_RUN = re.compile(rb"[^/ \r\n]*+")
_SLASH_RUN = re.compile(rb"/*+")
_PATH_RUN = re.compile(rb"[A-Za-z0-9/.-]*+")
_SP, _HT, _CR, _LF, _COLON, _SLASH = 0x20, 0x09, 0x0D, 0x0A, 0x3A, 0x2F
# Shortcuts for complete lines without folds or empty values, accepting exactly what the
# states below accept for them (so they change speed, not the grammar).
_FIELD_NAME = rb"[A-Za-z0-9-]++"
_FIELD_VALUE = rb"[^\x00-\x20\x7f]++(?: ++[^\x00-\x20\x7f]++)*+"
_WHOLE_LINE = re.compile(rb"(" + _FIELD_NAME + rb"):[ \t]*+(" + _FIELD_VALUE + rb")[ \t]*+\r\n")
_WHOLE_REQUEST_LINE = re.compile(
    rb"(GET|HEAD|PUT|DELETE|MKCOL) (?:http://[^/ \r\n]++)?/++([A-Za-z0-9/.-]*+) HTTP/1\.([01])\r\n"
)
# A whole head of such lines, the usual case, in one match; its field lines are then
# split by one findall (a head within MAX_HEAD cannot hold a value over MAX_HEAD).
_WHOLE_HEAD = re.compile(
    _WHOLE_REQUEST_LINE.pattern
    + rb"((?:" + _FIELD_NAME + rb":[ \t]*+" + _FIELD_VALUE + rb"[ \t]*+\r\n)*+)\r\n"
)

# Header-line states
_F_LINE = 0  # start of a line: a name, a fold (after an empty value) or the final CRLF
_F_END_LF = 1  # LF of the final empty line
_F_NAME = 2
_F_OWS = 3  # between ':' and the value (obs-fold allowed here only)
_F_OWS_LF = 4  # LF after an empty value: the next line may fold
_F_WORD = 5  # inside a value word
_F_SPACES = 6  # spaces after a word: another word may follow
_F_TRAIL = 7  # trailing OWS after a TAB: only CRLF may follow
_F_LF = 8  # LF ending a line with a value
_F_DONE = 9

_HEAD_FIELDS = frozenset(
    (b"content-length", b"transfer-encoding", b"connection", b"range", b"content-md5",
     b"content-range", b"trailer")
)
_NAME_KEEP = 18  # longer names are of no interest (the longest wanted has 17 bytes)


class FieldLines:
    """Incremental `name: value` lines up to the empty line (§3.2), for heads and trailers.

    Only the values of `wanted` names are kept (at most MAX_HEAD bytes each, more is a 400),
    so any number of lines of any length costs bounded memory; `on_field(name, value)` gets
    each wanted field (name lowercased) once its line is complete."""

    __slots__ = ("_keep", "_name", "_on_field", "_pending", "_spaces", "_state", "_value", "_wanted", "done")

    def __init__(self, wanted: frozenset[bytes], on_field: Callable[[bytes, bytes], None]) -> None:
        self.done = False
        self._state = _F_LINE
        self._wanted = wanted
        self._on_field = on_field
        self._name = bytearray()
        self._value = bytearray()
        self._keep = False  # this line's value is wanted
        self._pending = False  # a line with an empty value ended: a fold may still follow
        self._spaces = 0  # spaces after a word: inside the value if another word follows

    def feed(self, buf: bytes | bytearray | memoryview, pos: int, end: int) -> int:
        """Judge buf[pos:end] -> index where it stopped (past the empty line once done)."""
        st = self._state
        while pos < end:
            c = buf[pos]
            if st == _F_WORD:
                run = _run_end(_WORD_RUN, buf, pos, end)
                if self._keep and run > pos:
                    self._add_value(buf, pos, run)
                pos = run
                if pos == end:
                    break
                c = buf[pos]
                if c == _SP:
                    st = _F_SPACES
                    self._spaces = 0
                    continue
                elif c == _HT:
                    st = _F_TRAIL
                elif c == _CR:
                    st = _F_LF
                else:
                    raise HttpError(400)
                pos += 1
            elif st == _F_SPACES:
                run = _run_end(_SPACE_RUN, buf, pos, end)
                self._spaces += run - pos
                if run == end:
                    pos = run
                    break
                c = buf[run]
                if c == _HT:
                    st = _F_TRAIL
                elif c == _CR:
                    st = _F_LF
                elif c > _SP and c != 0x7F:
                    if self._keep:
                        self._add_value(b" " * self._spaces, 0, self._spaces)
                    st = _F_WORD
                    pos = run
                    continue
                else:
                    raise HttpError(400)
                pos = run + 1
            elif st == _F_LINE:
                if self._pending:
                    self._pending = False
                    if c == _SP or c == _HT:  # obs-fold: the value is still to come
                        st = _F_OWS
                        pos += 1
                        continue
                    self._field()
                if c == _CR:
                    st = _F_END_LF
                else:
                    line = _WHOLE_LINE.match(buf, pos, end)
                    if line is not None:  # the usual case, in one step
                        pos = line.end()
                        self._whole_line(line.group(1), line.group(2))
                        continue
                    run = _run_end(_NAME_RUN, buf, pos, end)
                    if run == pos:
                        raise HttpError(400)  # continuation after a value, or no name
                    self._name[:] = buf[pos : min(run, pos + _NAME_KEEP)]
                    st = _F_NAME
                    pos = run
                    continue
                pos += 1
            elif st == _F_NAME:
                run = _run_end(_NAME_RUN, buf, pos, end)
                if len(self._name) < _NAME_KEEP:
                    self._name += buf[pos : min(run, pos + _NAME_KEEP - len(self._name))]
                pos = run
                if pos == end:
                    break
                if buf[pos] != _COLON:
                    raise HttpError(400)
                name = bytes(self._name).lower()
                self._keep = name in self._wanted
                self._name[:] = name
                self._value.clear()
                st = _F_OWS
                pos += 1
            elif st == _F_OWS:
                pos = _run_end(_OWS_RUN, buf, pos, end)
                if pos == end:
                    break
                c = buf[pos]
                if c == _CR:
                    st = _F_OWS_LF
                    pos += 1
                elif c > _SP and c != 0x7F:
                    st = _F_WORD
                else:
                    raise HttpError(400)
            elif st == _F_LF or st == _F_OWS_LF:
                if c != _LF:
                    raise HttpError(400)  # bare CR
                if st == _F_LF:
                    self._field()
                else:
                    self._pending = True
                st = _F_LINE
                pos += 1
            elif st == _F_TRAIL:  # blanks after a value: only the line end may follow
                pos = _run_end(_OWS_RUN, buf, pos, end)
                if pos < end and buf[pos] != _CR:
                    raise HttpError(400)
                if pos == end:
                    break
                st, pos = _F_LF, pos + 1
            elif st == _F_END_LF:
                if c != _LF:
                    raise HttpError(400)
                st = _F_DONE
                self.done = True
                pos += 1
                break
            else:  # _F_DONE: what follows is not ours
                break
        self._state = st
        return pos

    def _whole_line(self, name: bytes, value: bytes) -> None:
        if len(name) < _NAME_KEEP:
            name = name.lower()
            if name in self._wanted:
                if len(value) > MAX_HEAD:
                    raise HttpError(400)
                self._on_field(name, value)

    def _add_value(self, buf: bytes | bytearray | memoryview, start: int, end: int) -> None:
        if len(self._value) + end - start > MAX_HEAD:
            raise HttpError(400)
        self._value += buf[start:end]

    def _field(self) -> None:
        if self._keep:
            self._on_field(bytes(self._name), bytes(self._value))


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
    """One request head, parsed incrementally as its bytes arrive (one parser per request).

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
        if self._off == 0:
            whole = parse_whole(buf, start)
            if whole is not None:
                return whole
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
                n = min(7 - k, end - pos)
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
                run = _run_end(_HOST_RUN, buf, pos, end)
                if run > pos:
                    st = _R_HOST
                pos = run
                _check_path_end(pos - start)
                if pos < end:
                    if st == _R_HOST0 or buf[pos] != _SLASH:
                        raise HttpError(400)  # no host, or no path after it
                    st = _R_SLASHES
            elif st == _R_SLASHES:
                pos = _run_end(_SLASH_RUN, buf, pos, end)
                _check_path_end(pos - start)
                if pos < end:
                    self._path = pos - start
                    st = _R_PATH
            elif st == _R_PATH:
                pos = _run_end(_PATH_RUN, buf, pos, end)
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
        for name, value in _WHOLE_LINE.findall(m.group(4)):
            if len(name) < _NAME_KEEP:
                name = name.lower()
                if name in _HEAD_FIELDS:
                    _apply_header(req, name, value)
    return req


def _check_path_end(offset: int) -> None:
    if offset > _PATH_END_MAX:
        raise HttpError(400)  # the path would end beyond byte 255 of the request (§8)


def parse_head(buf: bytes | bytearray, start: int = 0) -> tuple[Request, int] | None:
    """One-shot parse of the head at buf[start:] (see HeadParser.parse)."""
    return HeadParser().parse(buf, start)


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
_TRAILER_FIELDS = frozenset((b"content-md5",))


class ChunkedDecoder:
    """Streaming decoder for chunked PUT bodies (§3.6.3).

    Everything handed to decode() is consumed into the decoder's state (except bytes after
    the final CRLF), so callers need not keep unconsumed input around."""

    __slots__ = ("_left", "_size", "_state", "_trailers", "done", "trailer_md5")

    def __init__(self) -> None:
        self.done = False
        self.trailer_md5: bytes | None = None
        self._state = _ST_START
        self._size = 0
        self._left = 0
        self._trailers = FieldLines(_TRAILER_FIELDS, self._trailer)

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
                end = _run_end(_HEX, buf, pos)
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
                pos = self._trailers.feed(buf, pos, n)
                if self._trailers.done:
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

    def _trailer(self, name: bytes, value: bytes) -> None:
        self.trailer_md5 = parse_md5(value)  # the only trailer kept; others are skipped
