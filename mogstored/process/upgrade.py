"""SIGUSR2 binary upgrade, nginx style (§1.6), for the single process and the master alike.

The old process keeps serving throughout: it hands its listening sockets to a
fresh copy of the program (a child, so the old one learns when it dies), renames
the pidfile to ``.oldbin`` and, should the new process die, takes the pidfile
back.  Both processes accept on the same sockets meanwhile, so no connection is
refused at any point; the operator then sends SIGQUIT to the old one.
"""
from __future__ import annotations

import os
import socket
import sys

from mogstored import log
from mogstored.process.daemon import Pidfile
from mogstored.process.signals import LIFECYCLE_SIGNALS


def start_command() -> list[str]:
    """Our own start command: the same interpreter, program and arguments.

    argv[0] of an interpreted program names the interpreter or a wrapper, so
    the original interpreter command line is re-run instead (§1.6 Clone).
    """
    return [sys.executable, *sys.orig_argv[1:]]


class Upgrade:
    """The upgrade child of this process, if any, and the pidfile hand-over."""

    def __init__(self, pidfile: str | None, listeners: list[socket.socket]) -> None:
        self.pidfile = None if pidfile is None else Pidfile(pidfile)
        self.oldbin = None if pidfile is None else Pidfile(f"{pidfile}.oldbin")
        self.listeners = listeners  # in CMOGSTORED_FD order: per service mgmt, http, httpget; then metrics
        self.command = start_command()
        self.pid: int | None = None

    def start(self) -> None:
        """SIGUSR2: spawn the new program on our listeners."""
        if self.pid is not None:
            log.error(f"upgrade already running on PID:{self.pid}")
            return
        if not self._hand_over_pidfile():
            return
        env = dict(os.environ, CMOGSTORED_FD=",".join(str(s.fileno()) for s in self.listeners))
        for s in self.listeners:
            s.set_inheritable(True)
        try:
            # posix_spawn, not fork: safe in a multi-threaded process, and the
            # child starts with a clean signal mask (the master blocks signals).
            self.pid = os.posix_spawn(self.command[0], self.command, env,
                                      setsigmask=(), setsigdef=LIFECYCLE_SIGNALS)  # default dispositions
        except OSError as e:
            log.error(f"upgrade failed to spawn {self.command[0]}: {e.strerror}")
            self._take_back_pidfile()
            return
        finally:
            for s in self.listeners:
                s.set_inheritable(False)
        log.info(f"upgrade spawned PID:{self.pid}")

    def poll(self) -> None:
        """Reap the upgrade child if it died (never waitpid(-1): a worker's
        iostat thread waits for its own child)."""
        if self.pid is None:
            return
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, 0
        if pid == 0:
            return
        log.error(f"upgrade PID:{pid} exited with status={status}")
        self.pid = None
        self._take_back_pidfile()

    def finish(self) -> None:
        """At exit: ``.oldbin`` is ours to remove; the pidfile may be the new process's."""
        if self.oldbin is not None:
            self.oldbin.remove()

    def _hand_over_pidfile(self) -> bool:
        """Rename the pidfile to ``.oldbin`` as seen from outside; False to abort."""
        if self.pidfile is None or self.oldbin is None:
            return True
        for pidfile in (self.pidfile, self.oldbin):
            owner = pidfile.rival()
            if owner is not None:
                log.error(f"pidfile={pidfile.path} belongs to PID:{owner}, not upgrading")
                return False
        self.oldbin.write(os.getpid())
        try:
            os.unlink(self.pidfile.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.error(f"unlink({self.pidfile.path}): {e.strerror}, not upgrading")
            self.oldbin.remove()
            return False
        return True

    def _take_back_pidfile(self) -> None:
        """The upgrade is over without a successor: the pidfile is ours again,
        unless the new process lives on (it wrote its PID and we only lost track)."""
        if self.pidfile is None or self.oldbin is None:
            return
        owner = self.pidfile.rival()
        if owner is not None:
            log.error(f"PID:{owner} of upgrade still running")
            return
        self.pidfile.write(os.getpid())
        self.oldbin.remove()
