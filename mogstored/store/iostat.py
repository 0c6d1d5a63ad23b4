"""iostat: the child process and the parsing of its output into per-filesystem
utilisation (protocol §4.5.1).

:class:`IostatParser` is sans-IO: :class:`IostatRunner` feeds it whatever it read
from the pipe; every completed report is one `watch` broadcast.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable

from mogstored import log
from mogstored.libc import libc
from mogstored.store.devices import Mount

DEFAULT_COMMAND = "iostat -dx 1 30"
RETRY_DELAY = 10.0
MIN_RUN = 1.0  # a command that exits 0 at once is not restarted in a tight loop
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """In the child: SIGTERM when our parent dies, even by SIGKILL, so no
    iostat is ever left orphaned (the Perl mogstored leaves them).  A parent
    that died before the prctl took effect would never send it: check."""
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(1)

# Device name, blanks, [anything ending in a blank], last field of [0-9.], blanks.
# Unlike cmogstored 1.2.1 the name may contain "-" and "_" (dm-0, `iostat -N` names such
# as vg0-lv_data); ":" still never matches, so no header line can pass as data.
_DATA = re.compile(rb"[ \t]*([A-Za-z0-9/_-]+)[ \t]+(?:.*[ \t])?([0-9.]+)[ \t]*")

_MAX_LINE = 65536
"""Partial line kept at most; iostat lines are a few hundred bytes. Beyond this the line
is treated as non-matching, so a runaway MOG_IOSTAT_CMD cannot exhaust memory."""

_JUNK = b"\0"  # cannot start a data line: marks a truncated over-long line


class IostatParser:
    """Byte-stream parser of §4.5.1: lines may split at any byte, several reports per read,
    stalls mid-line.

    A report is the run of data lines ended by the first non-matching line (the blank
    line iostat prints after each report, or the next banner/header).
    """

    __slots__ = ("_buf", "_report")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._report: dict[str, str] = {}

    def feed(self, data: bytes) -> list[dict[str, str]]:
        """Consume ``data``; return the reports it completed: {device name: util text}."""
        buf = self._buf
        buf += data
        if b"\n" not in data:
            if len(buf) > _MAX_LINE:
                buf[:] = _JUNK
            return []
        *lines, rest = buf.split(b"\n")
        buf[:] = rest if len(rest) <= _MAX_LINE else _JUNK
        reports = []
        report = self._report
        for line in lines:
            if m := _DATA.fullmatch(line):
                report[m[1].decode("ascii")] = m[2].decode("ascii")
            elif report:
                reports.append(report)
                report = {}
        self._report = report
        return reports


def map_utilisation(report: dict[str, str], mounts: dict[int, Mount]) -> dict[int, str]:
    """st_dev → util for every mount whose source starts with ``/dev/<name>`` (§4.5.1).

    So whole-disk values apply to their partitions (``sda`` → ``/dev/sda1``) unless the
    partition is listed itself. The longest matching name wins whatever the order, which
    keeps cmogstored's "later line overrides" outcome for iostat's usual disk-then-
    partitions order and also gets ``sdaa`` vs ``sda`` right; equal names: later wins.
    Mounts without a match (tmpfs, NFS) are absent: watchers show ``-``.
    """
    candidates = [(m.source, st_dev) for st_dev, m in mounts.items()
                  if m.source.startswith("/dev/")]
    best: dict[int, tuple[int, str]] = {}
    for name, util in report.items():
        prefix = "/dev/" + name
        for source, st_dev in candidates:
            if source.startswith(prefix):
                cur = best.get(st_dev)
                if cur is None or len(prefix) >= cur[0]:
                    best[st_dev] = (len(prefix), util)
    return {st_dev: util for st_dev, (_, util) in best.items()}


class IostatRunner:
    """Runs ``MOG_IOSTAT_CMD`` for as long as the process serves, restarting it
    when it exits (at once after status 0, else 10 s later), and hands every
    completed report to ``on_report`` from its own thread."""

    def __init__(self, command: str, on_report: Callable[[dict[str, str]], None]) -> None:
        self.command = command
        self.on_report = on_report
        self._stop = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._loop, name="iostat", daemon=True)

    @property
    def running(self) -> bool:
        proc = self._proc
        return proc is not None and proc.poll() is None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
        self._thread.join(5)

    def _loop(self) -> None:
        env = dict(os.environ, LC_ALL="C")  # "2.00", never "2,00"
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                # Its own session: a terminal's ^C is for us; we stop iostat ourselves.
                proc = subprocess.Popen(["/bin/sh", "-c", f"exec {self.command}"], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, env=env, close_fds=True,
                                        start_new_session=True,
                                        preexec_fn=functools.partial(_die_with_parent, os.getpid()))  # noqa: PLW1509  # prctl only: async-signal-safe
            except OSError as e:
                log.error(f"iostat(1) not available/running: {e.strerror}")
                self._stop.wait(RETRY_DELAY)
                continue
            self._proc = proc
            if self._stop.is_set():  # stop() ran during Popen and saw no process to end
                proc.terminate()
            parser = IostatParser()
            stdout = proc.stdout
            assert stdout is not None  # stdout=PIPE
            fd = stdout.fileno()
            while True:
                try:
                    data = os.read(fd, 65536)
                except OSError as e:
                    log.error(f"iostat read() failed: {e.strerror}")
                    break
                if not data:
                    break
                for report in parser.feed(data):
                    self.on_report(report)
            stdout.close()
            status = proc.wait()
            if status != 0 and not self._stop.is_set():
                log.error(f"iostat done (pid={proc.pid}, status={status}), will retry in {RETRY_DELAY:.0f}s")
                self._stop.wait(RETRY_DELAY)
            else:
                self._stop.wait(started + MIN_RUN - time.monotonic())
