"""Becoming a daemon: descriptor limit, pidfile and the double fork.

The launcher must only exit 0 once the daemon is really up (listeners bound, pidfile
written), because callers read the pidfile right after it returns (reference §1.5).
"""
from __future__ import annotations

import errno
import os
import re
import resource
import sys
from collections.abc import Callable

from mogstored import log
from mogstored.config.options import DEFAULT_MAXCONNS, StartupError

_NOFILE_STEP = 64


def raise_nofile(maxconns: int) -> None:
    """Raise RLIMIT_NOFILE towards ``maxconns`` (0 → 10000); never lower it (§1.1.2).

    ``--maxconns`` only bounds descriptors; it is not a connection cap.  When the
    wanted soft limit cannot be set, retry 64 lower while still above the current
    soft limit.
    """
    want = maxconns or DEFAULT_MAXCONNS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if _at_least(soft, want):
        return
    if _at_least(hard, want):
        cur = want
    else:
        log.warning(f"RLIMIT_NOFILE max={hard} less than wanted value={want}")
        cur = hard
    retried = False
    while True:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (cur, hard))
        except (OSError, ValueError):
            log.warning(f"failed to set RLIMIT_NOFILE max={hard} cur={cur} (maxconns={want})")
            cur -= _NOFILE_STEP
            retried = True
            if cur <= soft:
                now_soft, now_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                log.warning(f"RLIMIT_NOFILE stuck at  max={now_hard} cur={now_soft} (maxconns={want})")
                return
            continue
        if retried:
            log.warning(f"set RLIMIT_NOFILE max={hard} cur={cur} (maxconns={want})")
        return


def _at_least(limit: int, want: int) -> bool:
    return limit == resource.RLIM_INFINITY or limit >= want


class Pidfile:
    """A pidfile: the daemon's own (opened and checked before daemonising,
    written by the daemon) or the ``.oldbin`` of an upgrade."""

    def __init__(self, path: str, fd: int | None = None) -> None:
        self.path = path
        self._fd = fd  # held open since the start-up check, until written

    @classmethod
    def open(cls, path: str) -> Pidfile:
        """Open/create ``path``; refuse to start when it names a live process."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise StartupError(f"failed to open pidfile({path}): {e.strerror}") from None
        try:
            pid = _parse_pid(os.pread(fd, 64, 0))
        except OSError:
            pid = None  # unreadable content is overwritten like stale content
        if pid is not None and 0 < pid != os.getpid() and pid_alive(pid):
            os.close(fd)
            raise StartupError(f"already running on PID: {pid}")
        return cls(path, fd)

    def read(self) -> int | None:
        """The PID it names; None when missing, empty or unparsable."""
        try:
            with open(self.path, "rb") as f:
                return _parse_pid(f.read(64))
        except OSError:
            return None

    def write(self, pid: int) -> None:
        """Replace the content with ``<pid>\n`` (creating the file if need be);
        a failure is logged, not fatal."""
        fd, self._fd = self._fd, None
        try:
            if fd is None:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{pid}\n".encode(), 0)
            finally:
                os.close(fd)
        except OSError as e:
            log.error(f"failed to write pidfile({self.path}): {e.strerror}. continuing...")

    def remove(self) -> None:
        """Unlink the file if it still holds our PID (an upgrade may have taken it over)."""
        if self.read() == os.getpid():
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def rival(self) -> int | None:
        """The live process other than us that it names, if any."""
        pid = self.read()
        return pid if pid is not None and pid != os.getpid() and pid_alive(pid) else None


def pid_alive(pid: int) -> bool:
    """kill(pid, 0) does not say ESRCH (EPERM: alive, just not ours)."""
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno != errno.ESRCH
    return True


def _parse_pid(content: bytes) -> int | None:
    """A decimal PID terminated by a newline, else None (empty or unparsable)."""
    m = re.fullmatch(rb"([0-9]+)\n", content)
    return int(m.group(1)) if m else None


_READY = b"R"


def daemonize(argv0: str | None = None) -> Callable[[], None]:
    """Double-fork into the background; return ``ready()`` in the daemon only.

    The original process waits on a pipe and exits 0 once the daemon calls ``ready()``,
    or exits 1 with ``<argv0>: daemonization error, check syslog`` when the pipe closes
    without a report (the daemon died during start-up).
    """
    argv0 = sys.argv[0] if argv0 is None else argv0
    sys.stdout.flush()
    sys.stderr.flush()
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid:
        os.close(write_fd)
        _wait_for_daemon(read_fd, pid, argv0)
    os.close(read_fd)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.chdir("/")
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)
    log.detach_stderr()

    def ready() -> None:
        nonlocal write_fd
        if write_fd < 0:
            return
        try:
            os.write(write_fd, _READY)
        finally:
            os.close(write_fd)
            write_fd = -1

    return ready


def _wait_for_daemon(read_fd: int, child: int, argv0: str) -> None:
    """In the launcher: exit 0 on the daemon's report, 1 when it never comes."""
    report = os.read(read_fd, 1)
    os.waitpid(child, 0)  # the intermediate process, gone right after the second fork
    if report == _READY:
        os._exit(0)
    sys.stderr.write(f"{argv0}: daemonization error, check syslog\n")
    sys.stderr.flush()
    os._exit(1)
