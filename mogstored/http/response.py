"""Response heads, byte-exact with cmogstored 1.2.1 (§3.5, §3.5.1, §3.8.1).

Built per request on the hot path: static pieces are precomputed and each head is one
bytes %-format; the Date value is cached for the current second.
"""

from __future__ import annotations

import time

_DAYS = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")
_MONTHS = (b"", b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun",
           b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")  # fmt: skip

REASONS = {
    200: b"200 OK",
    201: b"201 Created",
    204: b"204 No Content",
    206: b"206 Partial Content",
    400: b"400 Bad Request",
    403: b"403 Forbidden",
    404: b"404 Not Found",
    405: b"405 Method Not Allowed",
    416: b"416 Requested Range Not Satisfiable",
    500: b"500 Internal Server Error",
    507: b"507 Insufficient Storage",
}
_STATUS = {code: b"HTTP/1.1 %s\r\nStatus: %s\r\nDate: " % (r, r) for code, r in REASONS.items()}
_CONNECTION = (b"Connection: close\r\n\r\n", b"Connection: keep-alive\r\n\r\n")

_now_sec = -1
_now_date = b""
_last_sec = -1  # one-entry cache for explicit times (mtimes repeat across requests)
_last_date = b""


def _format(sec: int) -> bytes:
    """IMF-fixdate without strftime, so it cannot depend on the locale."""
    t = time.gmtime(sec)
    return b"%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _DAYS[t.tm_wday], t.tm_mday, _MONTHS[t.tm_mon], t.tm_year, t.tm_hour, t.tm_min, t.tm_sec
    )


def http_date(t: float | None = None) -> bytes:
    """29-byte HTTP date of `t` (default: now), e.g. b"Thu, 01 Jan 1970 00:00:00 GMT"."""
    global _now_sec, _now_date, _last_sec, _last_date
    if t is None:
        sec = int(time.time())
        if sec != _now_sec:
            _now_date = _format(sec)
            _now_sec = sec
        return _now_date
    sec = int(t // 1)
    if sec != _last_sec:
        _last_date = _format(sec)
        _last_sec = sec
    return _last_date


def file_head(
    status: int,
    mtime: float,
    length: int,
    keepalive: bool,
    first: int = 0,
    last: int = 0,
    size: int = 0,
) -> bytes:
    """200 or 206 head of a file response; 206 has Content-Range where 200 has Accept-Ranges."""
    if status == 206:
        ranges = b"Content-Range: bytes %d-%d/%d\r\n" % (first, last, size)
    else:
        ranges = b"Accept-Ranges: bytes\r\n"
    return b"%s%s\r\nLast-Modified: %s\r\nContent-Length: %d\r\nContent-Type: application/octet-stream\r\n%s%s" % (
        _STATUS[status], http_date(), http_date(mtime), length, ranges, _CONNECTION[keepalive]
    )


def error_head(status: int, keepalive: bool, range_size: int | None = None) -> bytes:
    """Generic empty-body head (§3.8.1); 416 also carries Content-Range: bytes */<size>."""
    if status == 416:
        return b"%s%s\r\nContent-Length: 0\r\nContent-Type: text/plain\r\nContent-Range: bytes */%d\r\n%s" % (
            _STATUS[416], http_date(), range_size or 0, _CONNECTION[keepalive]
        )
    return b"%s%s\r\nContent-Length: 0\r\nContent-Type: text/plain\r\n%s" % (
        _STATUS[status], http_date(), _CONNECTION[keepalive]
    )


def root_head(keepalive: bool) -> bytes:
    """GET/HEAD / liveness answer: 200, Content-Length 0, Last-Modified at the epoch."""
    return file_head(200, 0, 0, keepalive)
