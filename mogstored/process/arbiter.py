"""The master of ``--worker-processes=N`` (§6.6): forks the workers, respawns the
dead, passes QUIT on, and performs SIGUSR2 upgrades.  It serves nothing.

The master stays single-threaded for its whole life: it forks workers at any
time (respawns), and forking a process with threads is unsafe.  So it runs no
thread pool, no iostat (each worker runs its own), and takes its signals
synchronously with ``sigtimedwait``: they stay blocked, no handler runs, and
the loop below reads like the state machine it is.

Every worker is a complete single-process server accepting on the shared
listeners; balancing between them is the kernel's (and :mod:`core`'s) job.
"""
from __future__ import annotations

import os
import signal
import time

from mogstored import log
from mogstored.config.options import DEFAULT_STALL_SECONDS, Service
from mogstored.metrics.board import MetricsBoard
from mogstored.node.usage import write_usage_now
from mogstored.process.board import LoadBoard
from mogstored.process.server import Listener, serve
from mogstored.process.signals import (
    LIFECYCLE_SIGNALS,
    STOP_SIGNAL,
    STOP_SIGNALS,
    UPGRADE_SIGNAL,
)
from mogstored.process.upgrade import Upgrade

FORK_RETRY = 10.0  # seconds after a failed fork
QUIT_REPEAT = 1.0  # while stopping, QUIT goes out again this often


class Arbiter:
    """Keeps N workers alive until told to stop."""

    def __init__(self, listeners: list[Listener], nworkers: int, iostat: bool, upgrade: Upgrade,
                 stall_seconds: int = DEFAULT_STALL_SECONDS) -> None:
        self.listeners = listeners
        self.nworkers = nworkers
        self.iostat = iostat
        self.upgrade = upgrade
        self.pid = os.getpid()
        self.workers: dict[int, int] = {}  # pid -> worker index
        self.unborn: dict[int, float] = {}  # index -> when to retry a failed fork
        self.quitting = False
        self.board = LoadBoard(nworkers)
        self.stall_seconds = stall_seconds
        self.metrics_board = MetricsBoard(nworkers)  # mapped before any fork
        self.restarts = 0
        self.metrics_board.set_master(nworkers, self.restarts)

    def run(self) -> int:
        """Signals are already blocked (since main() began); returns the exit status."""
        for i in range(self.nworkers):
            self.spawn(i)
        while True:
            timeout = self._timeout()
            if timeout is None:
                self.handle(signal.sigwaitinfo(LIFECYCLE_SIGNALS).si_signo)
            else:
                info = signal.sigtimedwait(LIFECYCLE_SIGNALS, timeout)
                if info is not None:
                    self.handle(info.si_signo)
            self.reap()
            if self.quitting:
                if not self.workers:
                    return 0
                self.signal_workers(STOP_SIGNAL)
            else:
                self.retry_forks()

    def handle(self, sig: int) -> None:
        if sig in STOP_SIGNALS:
            self.quitting = True
            for lst in self.listeners:  # no more respawns: new connections are refused
                lst.sock.close()
        elif sig == UPGRADE_SIGNAL and not self.quitting:
            self.upgrade.start()
        # SIGCHLD: reaped right after; USR1, HUP, WINCH: no-ops, as in cmogstored

    def _timeout(self) -> float | None:
        if self.quitting:
            return QUIT_REPEAT
        if self.unborn:
            return max(0.0, min(self.unborn.values()) - time.monotonic())
        return None

    # -- workers -------------------------------------------------------------
    def spawn(self, index: int) -> None:
        try:
            pid = os.fork()
        except OSError as e:
            log.error(f"fork() failed: {e.strerror}, sleeping for {FORK_RETRY:.0f}s")
            self.unborn[index] = time.monotonic() + FORK_RETRY
            return
        if pid == 0:
            os._exit(self._worker(index))
        self.unborn.pop(index, None)
        self.workers[pid] = index

    def retry_forks(self) -> None:
        now = time.monotonic()
        for index, when in list(self.unborn.items()):
            if when <= now:
                self.spawn(index)

    def reap(self) -> None:
        """Only our own children, by PID: the workers and the upgrade child."""
        for pid, index in list(self.workers.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done == 0:
                continue
            del self.workers[pid]
            self.board.withdraw(index)
            self.metrics_board.retire(index)
            if not self.quitting:
                log.error(f"worker[{index}] PID:{pid} died with status={status}, respawning")
                self.restarts += 1
                self.metrics_board.set_master(self.nworkers, self.restarts)
                self.spawn(index)
        self.upgrade.poll()

    def signal_workers(self, sig: int) -> None:
        for pid in self.workers:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def _worker(self, index: int) -> int:
        """In the forked child: become a complete single-process server."""
        try:
            self.board.index = index
            self.metrics_board.index = index
            return serve(self.listeners, self.nworkers, self.iostat, master_pid=self.pid, board=self.board,
                         stall_seconds=self.stall_seconds, metrics_board=self.metrics_board)
        except BaseException as e:  # noqa: BLE001  # never return into the master's code
            log.error(f"worker died: {e!r}")
            return 1


def first_usage_pass(services: list[Service]) -> None:
    """§1.5: every usage file exists before any worker answers, written
    without starting a thread in the master."""
    for service in services:
        write_usage_now(service)
