"""``--durable`` (issue 10): the 201/204 goes out only after the data and the
directory entries are synced, shown on the daemon's own system calls (strace)."""
from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

from conftest import Daemon, children, wait_for

TRACED = "fdatasync,fsync,linkat,renameat,renameat2,mkdirat,unlinkat,sendto,write"
SYNC_CALLS = ("fdatasync", "fsync", "linkat", "renameat", "renameat2", "mkdirat", "unlinkat")
_LINE = re.compile(r"(\d+) +(.*)")
_CALL = re.compile(r"(\w+)\((.*)")
_RESUMED = re.compile(r"<\.\.\. (\w+) resumed>(.*)")


@dataclass
class Call:
    name: str
    text: str  # arguments and result
    start: int  # line numbers in the trace
    end: int

    @property
    def ok(self) -> bool:
        return re.search(r"= \d+$", self.text.rstrip()) is not None  # not "= -1 EEXIST (...)"


def parse_trace(text: str) -> list[Call]:
    """strace -f output as calls, ordered by their end (unfinished/resumed joined)."""
    calls: list[Call] = []
    pending: dict[str, Call] = {}
    for n, line in enumerate(text.splitlines()):
        m = _LINE.match(line)
        if m is None:
            continue
        pid, rest = m.groups()
        if (r := _RESUMED.match(rest)) is not None:
            call = pending.pop(pid)
            call.text += r.group(2)
            call.end = n
            calls.append(call)
        elif (c := _CALL.match(rest)) is not None:
            call = Call(c.group(1), c.group(2), n, n)
            if rest.endswith("<unfinished ...>"):
                call.text = call.text[: -len("<unfinished ...>")]
                pending[pid] = call
            else:
                calls.append(call)
    return sorted(calls, key=lambda c: c.end)


def request(d: Daemon, data: bytes) -> bytes:
    with d.http() as s:
        s.sendall(data)
        return s.recv(4096)


VIA_PROC = {"MOG_LINK_VIA_PROC": "1"}  # as where linkat refuses AT_EMPTY_PATH (no CAP_DAC_READ_SEARCH, < 6.10)
BY_FD = re.compile(r'\d+, "", \d+, "([^"]+)", AT_EMPTY_PATH\) = 0$')
VIA_PROC_LINK = re.compile(r'AT_FDCWD, "/proc/self/fd/\d+", \d+, "([^"]+)", AT_SYMLINK_FOLLOW\) = 0$')


def traced_session(tmp_path: Path, durable: bool, env: dict[str, str] | None = None) -> list[Call]:
    """PUT a new file (new directories), PUT over it, DELETE it; the calls made."""
    log = tmp_path / "strace.log"
    wrap = ("strace", "-f", "-qq", "--seccomp-bpf", "-s", "48", "-e", f"trace={TRACED}", "-o", str(log), "--")
    d = Daemon(tmp_path, devices=(1,), args=("--durable",) if durable else (), wrap=wrap, env=env)
    try:
        for body in (b"first", b"second"):
            head = request(d, b"PUT /dev1/a/b/x.fid HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            assert head.startswith(b"HTTP/1.1 201 Created\r\n")
            assert (d.docroot / "dev1/a/b/x.fid").read_bytes() == body
        assert request(d, b"DELETE /dev1/a/b/x.fid HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 204 No Content\r\n")
        node = wait_for(lambda: children(d.pid), what="the traced daemon")[0]
        os.kill(node, signal.SIGQUIT)
        d.proc.wait(30)  # strace exits once the traced daemon has
    finally:
        d.kill()
    # A usage pass replaces devN/usage meanwhile (linkat, renameat), and start-up probes
    # linkat's AT_EMPTY_PATH (a link to "." that cannot succeed): not the requests' calls.
    return [c for c in parse_trace(log.read_text()) if '"usage' not in c.text and '".", AT_EMPTY_PATH' not in c.text]


def responses(calls: list[Call]) -> list[tuple[int, Call]]:
    return [(i, c) for i, c in enumerate(calls)
            if c.name in ("sendto", "write") and re.match(r'\d+, "HTTP/1\.1 20[14] ', c.text)]


def test_durable_put_and_delete_answer_after_the_syncs(tmp_path: Path) -> None:
    calls = traced_session(tmp_path, durable=True)
    answers = responses(calls)
    assert [c.text.split('"')[1][:12] for _, c in answers] == ["HTTP/1.1 201", "HTTP/1.1 201", "HTTP/1.1 204"]
    (first, a1), (second, a2), (third, a3) = answers

    # 1. a new file in new directories: each directory that got an entry is
    #    synced, the data before the link, the directory after it; then the 201.
    window = calls[:first]
    seq = [c.name for c in window if c.name in SYNC_CALLS]
    assert seq == ["mkdirat", "fsync", "mkdirat", "fsync", "fdatasync", "linkat", "fsync"], seq
    assert all(c.ok for c in window if c.name in SYNC_CALLS)
    link = next(c for c in window if c.name == "linkat")
    assert (m := BY_FD.match(link.text.rstrip())) and m.group(1) == "x.fid", link.text  # as root: by fd
    assert a1.start > max(c.end for c in window if c.name == "fsync")

    # 2. over an existing file (seen when the PUT began): fdatasync, linkat to a
    #    temp name, renameat over the target, fsync of the directory, then the 201.
    window = calls[first + 1:second]
    seq = [c.name for c in window if c.name in SYNC_CALLS]
    assert seq == ["fdatasync", "linkat", "renameat", "fsync"], seq
    link = next(c for c in window if c.name == "linkat")
    assert link.ok and ".tmp" in link.text
    assert all(c.ok for c in window if c.name in ("fdatasync", "renameat", "fsync"))
    assert a2.start > max(c.end for c in window if c.name == "fsync")

    # 3. DELETE: unlinkat, then fsync of the directory, then the 204.
    window = calls[second + 1:third]
    seq = [c.name for c in window if c.name in SYNC_CALLS]
    assert seq == ["unlinkat", "fsync"], seq
    assert a3.start > max(c.end for c in window if c.name == "fsync")


def test_without_durable_nothing_is_synced(tmp_path: Path) -> None:
    """The default, as cmogstored: the answer does not wait for the disk."""
    calls = traced_session(tmp_path, durable=False)
    answers = responses(calls)
    assert len(answers) == 3
    assert not [c for c in calls[: answers[-1][0]] if c.name in ("fsync", "fdatasync")]
    assert [c for c in calls if c.name == "linkat" and c.ok]  # O_TMPFILE linked into place


def test_without_at_empty_path_files_are_linked_through_proc(tmp_path: Path) -> None:
    """Where linkat refuses to link by fd, the unnamed file is linked through
    /proc/self/fd: a new name directly, an overwrite under a temp name renamed over it."""
    calls = traced_session(tmp_path, durable=False, env=VIA_PROC)
    first, second = [i for i, _ in responses(calls)][:2]
    new, over = ([VIA_PROC_LINK.match(c.text.rstrip()) for c in calls[a:b] if c.name == "linkat"]
                 for a, b in ((0, first), (first + 1, second)))
    assert len(new) == 1 and new[0] and new[0].group(1) == "x.fid"
    assert len(over) == 1 and over[0] and re.fullmatch(r"x\.fid\.[0-9a-f]{8}\.\d+\.tmp", over[0].group(1))
    renames = [c for c in calls[first + 1:second] if c.name == "renameat"]
    assert len(renames) == 1 and renames[0].ok and '"x.fid"' in renames[0].text
