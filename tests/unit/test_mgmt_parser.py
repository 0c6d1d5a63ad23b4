"""Sidechannel framing, grammar and replies against the byte strings of §4 and Appendix A."""

import pytest

from mogstored.mgmt.parser import (
    BAD_PATH_REPLY, BLANK_REPLY, MAX_LINE, AioThreads, BadPath, Blank, Digest, LineBuffer,
    LineTooLong, Shutdown, Size, Unknown, Watch, digest_reply, parse_command, read_error_reply,
    resolve_path, size_reply, unknown_reply,
)


def lines_of(buf: LineBuffer) -> list[bytes]:
    out = []
    while (line := buf.next_line()) is not None:
        out.append(line)
    return out


# --- framing (§4.1) ---------------------------------------------------------------------

def test_pipelined_lines_in_one_chunk():
    b = LineBuffer()
    b.feed(b"size /a\r\nwatch\n\r\n\nMD5 /b")
    assert lines_of(b) == [b"size /a", b"watch", b"", b""]
    b.feed(b" fsck\r\n")
    assert lines_of(b) == [b"MD5 /b fsck"]


def test_byte_by_byte():
    b = LineBuffer()
    data = b"size /dev1/m\r\nshutdown\n"
    got = []
    for i in range(len(data)):
        b.feed(data[i:i + 1])
        got += lines_of(b)
    assert got == [b"size /dev1/m", b"shutdown"]


def test_cr_split_from_lf_is_still_stripped():
    b = LineBuffer()
    b.feed(b"watch\r")
    assert b.next_line() is None
    b.feed(b"\n")
    assert b.next_line() == b"watch"


def test_only_one_cr_stripped_and_inner_cr_kept():
    b = LineBuffer()
    b.feed(b"a\rb\r\r\n")
    assert b.next_line() == b"a\rb\r"


def test_longest_line_accepted():
    for eol in (b"\n", b"\r\n"):
        b = LineBuffer()
        body = b"x" * (MAX_LINE - len(eol))
        b.feed(body + eol + b"next\n")
        assert lines_of(b) == [body, b"next"]


def test_too_long_without_newline():
    b = LineBuffer()
    b.feed(b"x" * (MAX_LINE - 1))
    assert b.next_line() is None
    b.feed(b"x")
    with pytest.raises(LineTooLong):
        b.next_line()


def test_too_long_even_if_newline_follows_in_same_chunk():
    b = LineBuffer()
    b.feed(b"x" * MAX_LINE + b"\n")
    with pytest.raises(LineTooLong):
        b.next_line()


def test_limit_applies_per_line_not_per_stream():
    b = LineBuffer()
    b.feed(b"size /dev1/x\n" * 1000)
    assert len(lines_of(b)) == 1000


def test_limit_counts_from_start_of_pending_line_fed_bytewise():
    b = LineBuffer()
    b.feed(b"ok\n")
    assert b.next_line() == b"ok"
    for _ in range(MAX_LINE - 1):
        b.feed(b"y")
        assert b.next_line() is None
    b.feed(b"\n")
    assert b.next_line() == b"y" * (MAX_LINE - 1)


# --- grammar (§4.2) ---------------------------------------------------------------------

LONGEST = "/dev16777215/0/000/000/0123456789.fid"


@pytest.mark.parametrize("line, cmd", [
    (b"size /dev1/0/000/000/0000000001.fid", Size("/dev1/0/000/000/0000000001.fid")),
    (b"size /", Size("/")),
    (b"size //etc/passwd", Size("//etc/passwd")),
    (b"size /a-b.C9", Size("/a-b.C9")),
    (b"size " + LONGEST.encode(), Size(LONGEST)),
    (b"size " + LONGEST.encode() + b"0", BadPath(LONGEST + "0")),
    (b"size /dev1/../x", BadPath("/dev1/../x")),
    (b"size /..", BadPath("/..")),
    (b"MD5 /dev1/a.fid", Digest("MD5", "/dev1/a.fid", None)),
    (b"MD5 /dev1/a.fid fsck", Digest("MD5", "/dev1/a.fid", "fsck")),
    (b"SHA-1 /dev1/a.fid create_close", Digest("SHA-1", "/dev1/a.fid", "create_close")),
    (b"SHA-1 /x/../y replicate", BadPath("/x/../y")),
    (b"MD5 " + ("/" + "a" * 37).encode(), BadPath("/" + "a" * 37)),
    (b"watch", Watch()),
    (b"server aio_threads = 20", AioThreads(20)),
    (b"server aio_threads=6", AioThreads(6)),
    (b"server aio_threads =0", AioThreads(0)),
    (b"SERVER Aio_Threads= 1000", AioThreads(1000)),
    (b"shutdown", Shutdown(False)),
    (b"shutdown graceful", Shutdown(True)),
    (b"shutdown    graceful", Shutdown(True)),
    (b"", Blank()),
    (b"  \t ", Blank()),
])
def test_grammar(line, cmd):
    assert parse_command(line) == cmd


@pytest.mark.parametrize("line, token", [
    (b"hello", "hello"),
    (b"  hello world", "hello"),
    (b"WTF", "WTF"),
    (b"size /foo bar", "size"),
    (b"size bad", "size"),
    (b"a\rb", "a"),
    (b"size  /a", "size"),
    (b"size /a ", "size"),
    (b" size /a", "size"),
    (b"size /a_b", "size"),
    (b"md5 /a", "md5"),
    (b"SIZE /a", "SIZE"),
    (b"SHA1 /a", "SHA1"),
    (b"SHA-256 /a", "SHA-256"),
    (b"MD5 /a fsck!", "MD5"),
    (b"MD5 /a fsck extra", "MD5"),
    (b"MD5 a", "MD5"),
    (b"watch now", "watch"),
    (b"WATCH", "WATCH"),
    (b"watch ", "watch"),
    (b"server aio_threads  = 1", "server"),
    (b"server aio_threads = x", "server"),
    (b"server aio_threads = ", "server"),
    (b"server aio_mode = x", "server"),
    (b"show service", "show"),
    (b"shutdown now", "shutdown"),
    (b"shutdown ", "shutdown"),
    (b"Shutdown", "Shutdown"),
    (b"\t\xff\x00x y", "\xff\x00x"),
    (b" \r", ""),
])
def test_unknown(line, token):
    assert parse_command(line) == Unknown(token)


def test_unknown_token_bytes_round_trip():
    cmd = parse_command(b"\xc3\xa9t\xe9")
    assert unknown_reply(cmd.token) == b"ERROR: unknown command: \xc3\xa9t\xe9\r\n"


def test_resolve_path():
    assert resolve_path("/dev1/a.fid") == "dev1/a.fid"
    assert resolve_path("//etc/passwd") == "etc/passwd"
    assert resolve_path("///dev1//x") == "dev1//x"
    assert resolve_path("/") == ""


# --- replies (Appendix A) -----------------------------------------------------------------

def test_replies():
    assert size_reply("/dev1/a.fid", 1234) == b"/dev1/a.fid 1234\r\n"
    assert size_reply("/dev1/missing.fid", -1) == b"/dev1/missing.fid -1\r\n"
    assert size_reply("/x", 2**63) == b"/x 9223372036854775808\r\n"
    assert (digest_reply("/dev1/m", "MD5", "900150983cd24fb0d6963f7d28e17f72")
            == b"/dev1/m MD5=900150983cd24fb0d6963f7d28e17f72\r\n")
    assert digest_reply("/dev1/m", "SHA-1", None) == b"/dev1/m SHA-1=-1\r\n"
    assert read_error_reply("/dev1", 0) == b"ERR read /dev1 at 0 failed\r\n"
    assert unknown_reply("hello") == b"ERROR: unknown command: hello\r\n"
    assert BAD_PATH_REPLY == b"ERROR: uri invalid (contains ..)\r\n"
    assert BLANK_REPLY == b"\r\n"
