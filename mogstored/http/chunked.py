"""Sans-IO decoder of chunked PUT bodies (§3.6.3): lenient framing (chunk
extensions of any size, optional CRLF after chunk data), sizes up to 2^63, and
the one trailer kept, Content-MD5."""
from __future__ import annotations

import re

from mogstored.http.fields import OFF_MAX, FieldLines, HttpError, parse_md5, run_end

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
                end = run_end(_HEX, buf, pos)
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
        if size >= OFF_MAX:
            raise HttpError(507)
        self._size = size

    def _trailer(self, name: bytes, value: bytes) -> None:
        self.trailer_md5 = parse_md5(value)  # the only trailer kept; others are skipped
