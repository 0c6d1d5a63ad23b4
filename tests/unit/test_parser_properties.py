"""Property-based tests of both parsers (hypothesis): the properties of tests/parsecheck.py
over generated heads, chunked bodies and sidechannel lines, their mutations and plain
random bytes.

CI runs the bounded "ci" profile (tens of seconds in all);
``MOGSTORED_HYPOTHESIS=long`` runs a hundred times as many examples.  An input that
failed once is kept below with ``@example``, so it is checked on every run.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from parsecheck import (
    CHUNK_EXTENSIONS,
    EOLS,
    HEADER_NAMES,
    MD5_VALUE,
    METHODS,
    MGMT_LINES,
    MUTATION_BYTES,
    NEAR_EOLS,
    NEAR_METHODS,
    NEAR_NAMES,
    NEAR_SEPARATORS,
    NEAR_VALUES,
    NEAR_VERSIONS,
    PATH_ALPHABET,
    PATH_NEAR,
    SEPARATORS,
    VALUES,
    VERSIONS,
    check_chunked,
    check_chunked_linear,
    check_h11,
    check_h11_chunked,
    check_head,
    check_head_linear,
    check_lines,
    check_lines_linear,
)

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile("ci", max_examples=100, deadline=None, suppress_health_check=_QUIET)
settings.register_profile("long", max_examples=10000, deadline=None, suppress_health_check=_QUIET)
PROFILE = settings.get_profile(os.environ.get("MOGSTORED_HYPOTHESIS", "ci"))

CUTS = st.lists(st.integers(0, 600), max_size=10)
PREFIXES = st.sampled_from([b"", b"GET /a HTTP/1.1\r\n\r\n", b"anything before the head"])
_WORD = st.from_regex(rb"[!-~]{1,8}( [!-~]{1,8}){0,2}", fullmatch=True)


def _either(valid: tuple[bytes, ...], near: tuple[bytes, ...]) -> st.SearchStrategy[bytes]:
    return st.sampled_from(valid) | st.sampled_from(near)


@st.composite
def _header_line(draw: st.DrawFn, valid: bool) -> bytes:
    if valid:
        name = draw(st.sampled_from([n for n in HEADER_NAMES if n != b"Host"]))  # heads() adds the Host
        values = VALUES.get(name.lower())
        value = draw(st.sampled_from(values) if values else _WORD)
        sep, eol = draw(st.sampled_from(SEPARATORS)), draw(st.sampled_from(EOLS))
    else:
        name = draw(_either(HEADER_NAMES, NEAR_NAMES) | st.from_regex(rb"[A-Za-z0-9-]{1,20}", fullmatch=True))
        value = draw(st.sampled_from(VALUES.get(name.lower(), (b"v",))) | st.sampled_from(NEAR_VALUES)
                     | _WORD | st.binary(max_size=8))
        sep, eol = draw(_either(SEPARATORS, NEAR_SEPARATORS)), draw(_either(EOLS, NEAR_EOLS))
    trail = draw(st.sampled_from([b"", b"", b" ", b"\t", b" \t"]))
    return name + sep + value + trail + eol


@st.composite
def heads(draw: st.DrawFn, valid: bool = False) -> bytes:
    """A request head: valid for us and h11 alike (``valid``), or with near misses."""
    path = draw(st.text(PATH_ALPHABET, max_size=30 if valid else 45)
                | (st.nothing() if valid else st.text(PATH_ALPHABET + PATH_NEAR, max_size=12)))
    path = b"/" * draw(st.integers(1, 3)) + path.replace("//", "/").encode("latin-1")
    if draw(st.booleans()):
        path = b"http://" + draw(st.sampled_from([b"host", b"h:80", b"..", b""] if not valid else [b"host"])) + path
    if valid:
        method, version = draw(st.sampled_from(METHODS)), draw(st.sampled_from(VERSIONS))
        # each name once: h11 refuses a repeated Transfer-Encoding, both conflicting lengths
        lines = [b"Host: x\r\n", *draw(st.lists(_header_line(True), max_size=6,
                                                unique_by=lambda line: line.split(b":")[0].lower()))]
        end = b"\r\n"
    else:
        method, version = draw(_either(METHODS, NEAR_METHODS)), draw(_either(VERSIONS, NEAR_VERSIONS))
        lines = draw(st.lists(_header_line(False), max_size=6))
        end = draw(_either(EOLS, NEAR_EOLS))
    head = method + b" " + path + b" " + version + b"\r\n" + b"".join(lines) + end
    return head + draw(st.sampled_from([b"", b"abc", b"GET / HTTP/1.1\r\n\r\n"]))


@st.composite
def chunked_bodies(draw: st.DrawFn, valid: bool = False) -> bytes:
    """A chunked body with trailers and what follows it (the next request)."""
    body = b""
    for data in draw(st.lists(st.binary(min_size=1, max_size=20), max_size=4)):
        size = draw(st.sampled_from([b"%x", b"%X", b"00%x"])) % len(data)
        ext = draw(st.sampled_from(CHUNK_EXTENSIONS))
        after = b"\r\n" if valid else draw(st.sampled_from([b"\r\n", b"\r\n", b""]))
        body += size + ext + b"\r\n" + data + after
    trailers = draw(st.lists(st.sampled_from([b"Content-MD5: " + MD5_VALUE + b"\r\n", b"X-Other: v\r\n"]),
                             max_size=2))
    body += b"0" + draw(st.sampled_from(CHUNK_EXTENSIONS)) + b"\r\n" + b"".join(trailers) + b"\r\n"
    return body + draw(st.sampled_from([b"", b"GET /next HTTP/1.1\r\n\r\n"]))


@st.composite
def mgmt_input(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(st.sampled_from(MGMT_LINES) | st.binary(max_size=12) | st.just(b"size /" + b"x" * 500),
                          max_size=6))
    return b"".join(line + draw(st.sampled_from([b"\r\n", b"\n", b"\r"])) for line in lines)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """A few bytes replaced, inserted or removed, from bytes that matter to the grammar."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        byte = draw(st.sampled_from(MUTATION_BYTES) | st.integers(0, 255))
        kind = draw(st.sampled_from(["replace", "insert", "delete"]))
        if kind == "insert" or at == len(data):
            data[at:at] = bytes([byte])
        elif kind == "replace":
            data[at] = byte
        else:
            del data[at: at + draw(st.integers(1, 4))]
    return bytes(data)


HEAD_INPUTS = heads() | mutated(heads()) | mutated(heads(valid=True)) | st.binary(max_size=300)
CHUNKED_INPUTS = chunked_bodies() | mutated(chunked_bodies()) | st.binary(max_size=200)
MGMT_INPUTS = mgmt_input() | mutated(mgmt_input()) | st.binary(max_size=200)


@PROFILE
@given(HEAD_INPUTS, CUTS, PREFIXES)
def test_head_split_anywhere_gives_the_whole_result(data: bytes, cuts: list[int], prefix: bytes) -> None:
    check_head(data, cuts, prefix)


@PROFILE
@given(HEAD_INPUTS)
def test_head_work_is_linear_in_bytes_fed(data: bytes) -> None:
    check_head_linear(data)


@PROFILE
@given(heads(valid=True))
def test_valid_heads_parse_as_h11_parses_them(data: bytes) -> None:
    assert check_h11(data), data


@PROFILE
@given(HEAD_INPUTS)
@example(b"GET / HTTP/1.1\r\nHost: x\r\nHost: !\r\n\r\n")  # h11 refuses two Hosts, we take them
@example(b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n")
def test_heads_both_accept_agree_with_h11(data: bytes) -> None:
    check_h11(data)


@PROFILE
@given(CHUNKED_INPUTS, CUTS)
def test_chunked_split_anywhere_gives_the_whole_result(data: bytes, cuts: list[int]) -> None:
    check_chunked(data, cuts)


@PROFILE
@given(CHUNKED_INPUTS)
@example(b"0\r\nContent-MD5: q1a02StAcTrMWviZhdS3hg==\r\n\r\n")  # a value judged, then checked whole
def test_chunked_work_is_linear_in_bytes_fed(data: bytes) -> None:
    check_chunked_linear(data)


@PROFILE
@given(chunked_bodies(valid=True))
def test_valid_chunked_bodies_decode_as_h11_decodes_them(data: bytes) -> None:
    assert check_h11_chunked(data), data


@PROFILE
@given(MGMT_INPUTS, CUTS)
def test_sidechannel_split_anywhere_gives_the_whole_result(data: bytes, cuts: list[int]) -> None:
    check_lines(data, cuts)


@PROFILE
@given(MGMT_INPUTS)
def test_sidechannel_work_is_linear_in_bytes_fed(data: bytes) -> None:
    check_lines_linear(data)
