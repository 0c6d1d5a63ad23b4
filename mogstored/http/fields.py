"""Sans-IO field lines (``name: value`` up to the empty line, §3.2) for request
heads and chunked trailers, and what every request grammar shares: the error
that carries a status, the head size limit, numbers and Content-MD5 values.

Like cmogstored's ragel parser, every byte is judged as it arrives: a prefix
that can no longer continue a valid head is a 400 at once, and a call resumes
exactly where the previous one stopped.  Regexes only skip runs of bytes inside
one state; all use possessive quantifiers, so they never backtrack.
"""
from __future__ import annotations

import binascii
import re
from collections.abc import Callable

MAX_HEAD = 65535
OFF_MAX = 1 << 63  # numbers >= this are an overflow (off_t) -> 507


def run_end(pattern: re.Pattern[bytes], buf: bytes | bytearray | memoryview, pos: int, end: int | None = None) -> int:
    """Where a run of ``pattern`` (a ``*`` pattern: it always matches) starting at ``pos`` ends."""
    m = pattern.match(buf, pos) if end is None else pattern.match(buf, pos, end)
    assert m is not None
    return m.end()


class HttpError(Exception):
    """A request the server answers with `status` (400 or 507) and then closes."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


_DIGITS = re.compile(rb"[0-9]*+")
_MD5_B64 = re.compile(rb"[A-Za-z0-9+/]{22}==")


def number(value: bytes, pos: int) -> tuple[int | None, int]:
    """Decimal digits at value[pos:] -> (number or None if no digit, end); >= 2^63 -> 507.

    Leading zeros are stripped first: they are legal and int() refuses > 4300 digits."""
    end = run_end(_DIGITS, value, pos)
    if end == pos:
        return None, end
    digits = value[pos:end].lstrip(b"0")
    if len(digits) > 19:
        raise HttpError(507)
    n = int(digits) if digits else 0
    if n >= OFF_MAX:
        raise HttpError(507)
    return n, end


def parse_md5(value: bytes) -> bytes:
    """Content-MD5 value (header or trailer): exactly 22 base64 chars + "==" -> 16 raw bytes."""
    if _MD5_B64.fullmatch(value) is None:
        raise HttpError(400)
    return binascii.a2b_base64(value)


_NAME_RUN = re.compile(rb"[A-Za-z0-9-]*+")
_WORD_RUN = re.compile(rb"[^\x00-\x20\x7f]*+")  # value characters (bytes >= 0x80 allowed)
_SPACE_RUN = re.compile(rb" *+")
_OWS_RUN = re.compile(rb"[ \t]*+")
_SP, _HT, _CR, _LF, _COLON = 0x20, 0x09, 0x0D, 0x0A, 0x3A
# The shortcut for a complete line without folds or empty values, accepting exactly what
# the states below accept for it (so it changes speed, not the grammar).
FIELD_NAME = rb"[A-Za-z0-9-]++"
FIELD_VALUE = rb"[^\x00-\x20\x7f]++(?: ++[^\x00-\x20\x7f]++)*+"
WHOLE_LINE = re.compile(rb"(" + FIELD_NAME + rb"):[ \t]*+(" + FIELD_VALUE + rb")[ \t]*+\r\n")

# Header-line states
_F_LINE = 0  # start of a line: a name, a fold (after an empty value) or the final CRLF
_F_END_LF = 1  # _LF of the final empty line
_F_NAME = 2
_F_OWS = 3  # between ':' and the value (obs-fold allowed here only)
_F_OWS_LF = 4  # _LF after an empty value: the next line may fold
_F_WORD = 5  # inside a value word
_F_SPACES = 6  # spaces after a word: another word may follow
_F_TRAIL = 7  # trailing OWS after a TAB: only CRLF may follow
_F_LF = 8  # _LF ending a line with a value
_F_DONE = 9

NAME_KEEP = 18  # longer names are of no interest (the longest wanted has 17 bytes)


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
                run = run_end(_WORD_RUN, buf, pos, end)
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
                run = run_end(_SPACE_RUN, buf, pos, end)
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
                    line = WHOLE_LINE.match(buf, pos, end)
                    if line is not None:  # the usual case, in one step
                        pos = line.end()
                        self._whole_line(line.group(1), line.group(2))
                        continue
                    run = run_end(_NAME_RUN, buf, pos, end)
                    if run == pos:
                        raise HttpError(400)  # continuation after a value, or no name
                    self._name[:] = buf[pos : min(run, pos + NAME_KEEP)]
                    st = _F_NAME
                    pos = run
                    continue
                pos += 1
            elif st == _F_NAME:
                run = run_end(_NAME_RUN, buf, pos, end)
                if len(self._name) < NAME_KEEP:
                    self._name += buf[pos : min(run, pos + NAME_KEEP - len(self._name))]
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
                pos = run_end(_OWS_RUN, buf, pos, end)
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
                    raise HttpError(400)  # bare _CR
                if st == _F_LF:
                    self._field()
                else:
                    self._pending = True
                st = _F_LINE
                pos += 1
            elif st == _F_TRAIL:  # blanks after a value: only the line end may follow
                pos = run_end(_OWS_RUN, buf, pos, end)
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
        if len(name) < NAME_KEEP:
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
