"""The master of ``--worker-processes=N`` (§6.6): forks the workers, respawns the
dead, passes QUIT on, performs SIGUSR2 upgrades, and on SIGHUP replaces its
workers with ones started on the configuration read again.  It serves nothing.

The master stays single-threaded for its whole life: it forks workers at any
time (respawns), and forking a process with threads is unsafe.  So it runs no
thread pool, no iostat (each worker runs its own), and takes its signals
synchronously with ``sigtimedwait``: they stay blocked, no handler runs, and
the loop below reads like the state machine it is.

Every worker is a complete single-process server accepting on the shared
listeners; balancing between them is the kernel's (and :mod:`core`'s) job.

A reload replaces every worker, nginx's way: the master binds the new
listeners, forks a new set of workers (with a load board and a metrics board
of their own), and sends the old ones QUIT, so they finish their requests and
exit while the new ones already accept.  Their counters are carried into the
master's slot, so node totals never go backwards.
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
from mogstored.process.listening import Listener
from mogstored.process.reload import Reload, Reloaded
from mogstored.process.server import serve
from mogstored.process.signals import (
    LIFECYCLE_SIGNALS,
    RELOAD_SIGNAL,
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
                 stall_seconds: int = DEFAULT_STALL_SECONDS, reload: Reload | None = None) -> None:
        self.listeners = listeners
        self.nworkers = nworkers
        self.iostat = iostat
        self.upgrade = upgrade
        self.reload = reload
        self.pid = os.getpid()
        self.workers: dict[int, int] = {}  # pid -> worker index
        self.unborn: dict[int, float] = {}  # index -> when to retry a failed fork
        # Workers of earlier configurations finishing their requests: pid ->
        # (their metrics board, index, its counters when they were replaced).
        self.retiring: dict[int, tuple[MetricsBoard, int, dict]] = {}
        self.quitting = False
        self.board = LoadBoard(nworkers)
        self.stall_seconds = stall_seconds
        self.metrics_board = MetricsBoard(nworkers)  # mapped before any fork
        self.restarts = 0
        self.carried: dict = {}  # counters of replaced workers
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
                if not self.workers and not self.retiring:
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
        elif sig == RELOAD_SIGNAL and not self.quitting and self.reload is not None:
            self.reload.run(self.listeners, self.replace_workers)
        # SIGCHLD: reaped right after; USR1, WINCH: no-ops, as in cmogstored

    def _timeout(self) -> float | None:
        if self.quitting:
            return QUIT_REPEAT
        if self.unborn:
            return max(0.0, min(self.unborn.values()) - time.monotonic())
        return None

    # -- workers -------------------------------------------------------------
    def replace_workers(self, new: Reloaded) -> None:
        """SIGHUP: new workers on the configuration read again; the old ones quit."""
        self.listeners = new.listeners
        self.iostat = new.opts.iostat
        self.stall_seconds = new.opts.stallseconds
        old_board = self.metrics_board
        for pid, index in self.workers.items():
            counts = old_board.counters(index)
            self.retiring[pid] = (old_board, index, counts)
            _add_counters(self.carried, counts)
        for index in range(self.nworkers):  # slots of workers not running now (dead, unborn)
            if index not in self.workers.values():
                _add_counters(self.carried, old_board.counters(index))
        old = list(self.workers)
        self.workers.clear()
        self.unborn.clear()
        self.nworkers = new.opts.worker_processes
        self.board = LoadBoard(self.nworkers)
        self.metrics_board = MetricsBoard(self.nworkers)
        self.metrics_board.set_master(self.nworkers, self.restarts, self.carried)
        for sock in new.unused:  # before forking; the old workers hold their own copies until they exit
            sock.close()
        for i in range(self.nworkers):
            self.spawn(i)
        for pid in old:
            _kill(pid, STOP_SIGNAL)
        log.info(f"reload: {self.nworkers} new workers, {len(old)} old ones finishing their requests")

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
        """Only our own children, by PID: the workers, the replaced ones and the upgrade child."""
        for pid, (board, index, counts) in list(self.retiring.items()):
            if _exited(pid) is not None:
                del self.retiring[pid]
                _add_counters(self.carried, board.counters(index), counts)  # what it counted since
                self.metrics_board.set_master(self.nworkers, self.restarts, self.carried)
        for pid, index in list(self.workers.items()):
            status = _exited(pid)
            if status is None:
                continue
            del self.workers[pid]
            self.board.withdraw(index)
            self.metrics_board.retire(index)
            if not self.quitting:
                log.error(f"worker[{index}] PID:{pid} died with status={status}, respawning")
                self.restarts += 1
                self.metrics_board.set_master(self.nworkers, self.restarts, self.carried)
                self.spawn(index)
        self.upgrade.poll()

    def signal_workers(self, sig: int) -> None:
        for pid in [*self.workers, *self.retiring]:
            _kill(pid, sig)

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


def _exited(pid: int) -> int | None:
    """The wait status of a child that exited (reaped now), else None."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return 0
    return None if done == 0 else status


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _add_counters(into: dict, counts: dict, minus: dict | None = None) -> None:
    """``into += counts - minus``, key by key."""
    for key, n in counts.items():
        into[key] = into.get(key, 0) + n - (minus or {}).get(key, 0)


def first_usage_pass(services: list[Service]) -> None:
    """§1.5: every usage file exists before any worker answers, written
    without starting a thread in the master."""
    for service in services:
        write_usage_now(service)
