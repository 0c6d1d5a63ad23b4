"""Unit tests for mogstored.http.response: byte-exact heads of §3.5, §3.5.1 and §3.8.1."""

from __future__ import annotations

import calendar
import email.utils
import locale
import time

import pytest

from mogstored.http import response as http_response
from mogstored.http.head import resolve_range
from mogstored.http.response import error_head, file_head, http_date, root_head

EPOCH = b"Thu, 01 Jan 1970 00:00:00 GMT"


@pytest.fixture
def epoch_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """Freeze "now" at the epoch so that Date: is predictable."""
    monkeypatch.setattr(time, "time", lambda: 0.25)


# ---------------------------------------------------------------- dates


def test_http_date_epoch() -> None:
    assert http_date(0) == EPOCH
    assert http_date(0.999) == EPOCH


def test_http_date_known_value() -> None:
    t = calendar.timegm((2026, 11, 26, 3, 43, 15))
    assert http_date(t) == b"Thu, 26 Nov 2026 03:43:15 GMT"
    assert http_date(t + 0.5) == b"Thu, 26 Nov 2026 03:43:15 GMT"


def test_http_date_matches_imf_fixdate_over_years() -> None:
    for t in range(-86400 * 400, 86400 * 366 * 80, 86400 * 7 + 3607):
        d = http_date(t)
        assert len(d) == 29
        assert d == email.utils.formatdate(t, usegmt=True).encode(), t


def test_http_date_locale_independent() -> None:
    old = locale.setlocale(locale.LC_TIME)
    for name in ("de_DE.UTF-8", "fr_FR.UTF-8", "C.UTF-8"):
        try:
            locale.setlocale(locale.LC_TIME, name)
        except locale.Error:
            continue
        try:
            assert http_date(86400 * 40) == b"Tue, 10 Feb 1970 00:00:00 GMT"
        finally:
            locale.setlocale(locale.LC_TIME, old)


def test_http_date_now_cached_per_second(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.1]
    monkeypatch.setattr(time, "time", lambda: now[0])
    a = http_date()
    now[0] = 1000.9
    assert http_date() is a  # same second: the cached object
    now[0] = 1001.0
    b = http_date()
    assert b == b"Thu, 01 Jan 1970 00:16:41 GMT" and b is not a


def test_http_date_now_is_current() -> None:
    before = email.utils.formatdate(time.time(), usegmt=True).encode()
    now = http_date()
    after = email.utils.formatdate(time.time(), usegmt=True).encode()
    assert now in (before, after)


# ---------------------------------------------------------------- generic heads (§3.8.1)


def test_verified_examples_3_8_1(epoch_now: None) -> None:
    created = (
        b"HTTP/1.1 201 Created\r\nStatus: 201 Created\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\n"
        b"Content-Length: 0\r\nContent-Type: text/plain\r\nConnection: keep-alive\r\n\r\n"
    )
    not_found = (
        b"HTTP/1.1 404 Not Found\r\nStatus: 404 Not Found\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\n"
        b"Content-Length: 0\r\nContent-Type: text/plain\r\nConnection: keep-alive\r\n\r\n"
    )
    bad = (
        b"HTTP/1.1 400 Bad Request\r\nStatus: 400 Bad Request\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\n"
        b"Content-Length: 0\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
    )
    assert error_head(201, True) == created
    assert len(created) == 151
    assert error_head(404, True) == not_found
    assert error_head(400, False) == bad
    assert len(bad) == 154


def test_head_lengths_with_real_clock() -> None:
    assert len(error_head(201, True)) == 151
    assert len(error_head(400, False)) == 154


@pytest.mark.parametrize(
    "status,reason",
    [
        (201, b"201 Created"),
        (204, b"204 No Content"),
        (400, b"400 Bad Request"),
        (403, b"403 Forbidden"),
        (404, b"404 Not Found"),
        (405, b"405 Method Not Allowed"),
        (500, b"500 Internal Server Error"),
        (507, b"507 Insufficient Storage"),
    ],
)
@pytest.mark.parametrize("keepalive,conn", [(True, b"keep-alive"), (False, b"close")])
def test_generic_heads(epoch_now: None, status: int, reason: bytes, keepalive: bool, conn: bytes) -> None:
    assert error_head(status, keepalive) == (
        b"HTTP/1.1 " + reason + b"\r\nStatus: " + reason + b"\r\nDate: " + EPOCH + b"\r\n"
        b"Content-Length: 0\r\nContent-Type: text/plain\r\nConnection: " + conn + b"\r\n\r\n"
    )


@pytest.mark.parametrize("size", [0, 666, 2**63 - 1])
@pytest.mark.parametrize("keepalive,conn", [(True, b"keep-alive"), (False, b"close")])
def test_416_head(epoch_now: None, size: int, keepalive: bool, conn: bytes) -> None:
    assert error_head(416, keepalive, size) == (
        b"HTTP/1.1 416 Requested Range Not Satisfiable\r\n"
        b"Status: 416 Requested Range Not Satisfiable\r\n"
        b"Date: " + EPOCH + b"\r\n"
        b"Content-Length: 0\r\n"
        b"Content-Type: text/plain\r\n"
        b"Content-Range: bytes */%d\r\n"
        b"Connection: %s\r\n\r\n" % (size, conn)
    )


# ---------------------------------------------------------------- file heads (§3.5, §3.5.1)


def test_200_real_example(monkeypatch: pytest.MonkeyPatch) -> None:
    t = calendar.timegm((2026, 11, 26, 3, 43, 15))
    monkeypatch.setattr(time, "time", lambda: t + 0.3)
    assert file_head(200, t + 0.7, 6, True) == (
        b"HTTP/1.1 200 OK\r\nStatus: 200 OK\r\nDate: Thu, 26 Nov 2026 03:43:15 GMT\r\n"
        b"Last-Modified: Thu, 26 Nov 2026 03:43:15 GMT\r\nContent-Length: 6\r\n"
        b"Content-Type: application/octet-stream\r\nAccept-Ranges: bytes\r\nConnection: keep-alive\r\n\r\n"
    )


def test_200_close(epoch_now: None) -> None:
    head = file_head(200, 86400, 12345, False)
    assert head == (
        b"HTTP/1.1 200 OK\r\nStatus: 200 OK\r\nDate: " + EPOCH + b"\r\n"
        b"Last-Modified: Fri, 02 Jan 1970 00:00:00 GMT\r\nContent-Length: 12345\r\n"
        b"Content-Type: application/octet-stream\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n"
    )


def test_date_and_last_modified_independent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: 86400.0 * 2)
    head = file_head(200, 86400, 1, True)
    assert b"Date: Sat, 03 Jan 1970 00:00:00 GMT\r\n" in head
    assert b"Last-Modified: Fri, 02 Jan 1970 00:00:00 GMT\r\n" in head


def _head_206(first: int, last: int, size: int, conn: bytes = b"keep-alive") -> bytes:
    return (
        b"HTTP/1.1 206 Partial Content\r\nStatus: 206 Partial Content\r\nDate: " + EPOCH + b"\r\n"
        b"Last-Modified: " + EPOCH + b"\r\nContent-Length: %d\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Range: bytes %d-%d/%d\r\n"
        b"Connection: %s\r\n\r\n" % (last - first + 1, first, last, size, conn)
    )


@pytest.mark.parametrize(
    "rng,count,crange",
    [
        ((66, 70), 5, b"66-70/666"),
        ((66, None), 600, b"66-665/666"),
        ((None, 66), 66, b"600-665/666"),
        ((5, 6666), 661, b"5-665/666"),
        ((None, 666), 666, b"0-665/666"),
    ],
)
def test_206_heads_666(epoch_now: None, rng: tuple, count: int, crange: bytes) -> None:
    status, first, last = resolve_range(rng, 666)
    assert status == 206
    head = file_head(206, 0, last - first + 1, True, first, last, 666)
    assert head == _head_206(first, last, 666)
    assert b"Content-Length: %d\r\n" % count in head
    assert b"Content-Range: bytes " + crange + b"\r\n" in head
    assert b"Accept-Ranges" not in head


def test_206_close(epoch_now: None) -> None:
    assert file_head(206, 0, 2, False, 0, 1, 10) == _head_206(0, 1, 10, b"close")


@pytest.mark.parametrize("rng", [(666, 666), (666, None), (6666, None)])
def test_416_666(epoch_now: None, rng: tuple) -> None:
    status, _, _ = resolve_range(rng, 666)
    assert status == 416
    assert b"Content-Range: bytes */666\r\nConnection: keep-alive\r\n\r\n" in error_head(416, True, 666)


def test_200_for_long_suffix(epoch_now: None) -> None:
    status, _, _ = resolve_range((None, 667), 666)
    assert status == 200
    assert b"Content-Length: 666\r\n" in file_head(200, 0, 666, True)


@pytest.mark.parametrize("keepalive,conn", [(True, b"keep-alive"), (False, b"close")])
def test_root_head(epoch_now: None, keepalive: bool, conn: bytes) -> None:
    assert root_head(keepalive) == (
        b"HTTP/1.1 200 OK\r\nStatus: 200 OK\r\nDate: " + EPOCH + b"\r\nLast-Modified: " + EPOCH + b"\r\n"
        b"Content-Length: 0\r\nContent-Type: application/octet-stream\r\nAccept-Ranges: bytes\r\n"
        b"Connection: " + conn + b"\r\n\r\n"
    )


def test_root_with_range_is_416_bytes_star_0(epoch_now: None) -> None:
    # §8: GET / with a satisfiable-looking Range answers 416 bytes */0
    assert resolve_range((0, 1), 0)[0] == 416
    assert b"Content-Range: bytes */0\r\n" in error_head(416, True, 0)


def test_reasons_cover_all_statuses() -> None:
    assert set(http_response.REASONS) == {200, 201, 204, 206, 400, 403, 404, 405, 416, 500, 507}
