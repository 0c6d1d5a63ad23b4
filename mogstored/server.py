"""One serving process: listeners, the event core, I/O pools, usage files and
the graceful shutdown, driven by the main thread."""
from __future__ import annotations

import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from setproctitle import setproctitle

from . import log
from .cli import Service
from .core import Acceptor, Client, EventQueue, install_kick_handler
from .devices import read_mounts
from .expire import heard_within
from .fsck import FsckQueues
from .http import HttpClient
from .iostat import DEFAULT_COMMAND, IostatRunner, map_utilisation
from .ioq import MAX_THREADS, IoQueues
from .mgmt import MgmtClient
from .service import ServiceContext
from .signals import LIFECYCLE_SIGNALS, Waker

if TYPE_CHECKING:
    from .upgrade import Upgrade

SHUTDOWN_TITLE = "cmogstored, shutting down"  # §6.5, as operators see it in ps
PARENT_CHECK_INTERVAL = 1.0  # a worker notices an exited master this soon
# An idle client heard from this recently is left a moment longer when shutting
# down: a request sent on a connection just accepted is answered, not cut off.
SHUTDOWN_GRACE_MS = 100


def usage_interval(environ: dict[str, str] | os._Environ = os.environ) -> int:
    try:
        n = int(environ.get("MOG_DISK_USAGE_INTERVAL", "10"))
    except ValueError:
        return 10
    return n if n > 0 else 10


@dataclass
class Listener:
    kind: str  # "http", "httpget" or "mgmt"
    service: Service
    sock: socket.socket


def acceptor_threads(kind: str, worker_processes: int) -> int:
    """One blocking acceptor per CPU for HTTP (spread over worker processes),
    one for the sidechannel, as cmogstored does."""
    if kind == "mgmt":
        return 1
    return max(1, (os.cpu_count() or 1) // max(1, worker_processes))


class Server:
    """Serves the given listeners until a graceful shutdown completes."""

    master_pid: int | None = None  # set in a worker process (§6.6)
    upgrade: "Upgrade | None" = None  # set when this process itself serves (no workers)
    _upgrade_requested = False

    def __init__(self, listeners: list[Listener], worker_processes: int = 0, iostat: bool = True) -> None:
        self.listeners = listeners
        self.worker_processes = worker_processes
        self.quitting = False
        self._stop_requested = False
        self._usage_requested = False
        self._wake = Waker()
        self._pending_aio: int | None = None
        # Epoll workers never wait for a disk, so one per CPU is enough; more only
        # contend for the interpreter lock (measured: ~15% fewer small GETs with 4).
        self.queue = EventQueue(max(2, os.cpu_count() or 1))
        self.queue.on_close = self._wake.set
        self.ioq = IoQueues(self.queue)
        self.fsck = FsckQueues()
        self.services: dict[int, ServiceContext] = {}
        for lst in listeners:
            if id(lst.service) not in self.services:
                self.services[id(lst.service)] = ServiceContext(lst.service, self)
        self.acceptors: list[Acceptor] = []
        self.usage_interval = usage_interval()
        # §4.5.1: iostat only serves watchers, so only with a sidechannel.
        self.iostat: IostatRunner | None = None
        if iostat and any(lst.kind == "mgmt" for lst in listeners):
            self.iostat = IostatRunner(os.environ.get("MOG_IOSTAT_CMD", DEFAULT_COMMAND), self._on_iostat)

    # -- called from any thread ----------------------------------------------
    def request_shutdown(self) -> None:
        """``shutdown``: a worker passes it on to the master, which stops every worker."""
        if self.master_pid is not None:
            os.kill(self.master_pid, signal.SIGQUIT)
        else:
            self._stop()

    def _stop(self) -> None:
        self._stop_requested = True
        self._wake.set()

    def _request_upgrade(self) -> None:
        self._upgrade_requested = True
        self._wake.set()

    def request_usage_pass(self) -> None:
        """``watch``: rescan devices and rewrite usage files now."""
        self._usage_requested = True
        self._wake.set()

    def _on_iostat(self, report: dict[str, str]) -> None:
        """iostat thread: one block to every watcher of every service."""
        contexts = [ctx for ctx in self.services.values() if len(ctx.watchers)]
        if not contexts:
            return
        utils = map_utilisation(report, read_mounts())
        for ctx in contexts:
            ctx.watchers.broadcast(ctx.watch_block(utils))

    def set_aio_threads(self, n: int) -> None:
        """``server aio_threads = N``: N threads per device pool (1..100)."""
        if 1 <= n <= MAX_THREADS:
            self._pending_aio = n
            self._wake.set()

    # -- main thread -------------------------------------------------------------
    def install_signals(self) -> None:
        """QUIT/TERM/INT stop this process gracefully; USR2 upgrades unless we
        are a worker; then the signals held back since start-up are let in."""
        for sig in (signal.SIGQUIT, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda s, f: self._stop())
        for sig in (signal.SIGHUP, signal.SIGWINCH):
            signal.signal(sig, signal.SIG_IGN)
        if self.upgrade is None:
            signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        else:
            signal.signal(signal.SIGUSR2, lambda s, f: self._request_upgrade())
            signal.signal(signal.SIGCHLD, lambda s, f: self._wake.set())  # the upgrade child died?
        install_kick_handler()
        self._wake.install()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, LIFECYCLE_SIGNALS)

    def usage_pass(self, now: bool = False) -> None:
        for ctx in self.services.values():
            ctx.scan()
            ctx.usage_pass(now)

    def start(self) -> None:
        for lst in self.listeners:
            ctx = self.services[id(lst.service)]
            make: Callable[[socket.socket], Client]
            if lst.kind == "mgmt":
                make = lambda sock, ctx=ctx: MgmtClient(sock, ctx)
            else:
                make = lambda sock, ctx=ctx, get_only=(lst.kind == "httpget"): HttpClient(sock, ctx, get_only)
            acc = Acceptor(lst.sock, self.queue, make, acceptor_threads(lst.kind, self.worker_processes),
                           on_error=lambda e: log.error(f"accept4() failed with: {e.strerror}"))
            self.acceptors.append(acc)
            acc.start()
        if self.iostat is not None:
            self.iostat.start()

    def run(self) -> int:
        """Main loop: periodic usage passes and run-time settings, until asked to stop."""
        next_usage = time.monotonic() + self.usage_interval
        while not self._stop_requested:
            timeout = next_usage - time.monotonic()
            if self.master_pid is not None:
                timeout = min(timeout, PARENT_CHECK_INTERVAL)
            self._wake.wait(max(0.0, timeout))
            if self.master_pid is not None and os.getppid() != self.master_pid:
                log.error(f"parent={self.master_pid} abandoned us, dying")
                break
            if self.upgrade is not None:
                self.upgrade.poll()
                if self._upgrade_requested:
                    self._upgrade_requested = False
                    self.upgrade.start()
            if self._pending_aio is not None:
                n, self._pending_aio = self._pending_aio, None
                log.info(f"server aio_threads={n}")
                self.ioq.resize(n)
            if time.monotonic() >= next_usage or self._usage_requested:
                self._usage_requested = False
                self.usage_pass()
                next_usage = time.monotonic() + self.usage_interval
        self.shutdown()
        return 0

    def shutdown(self) -> None:
        """Graceful: stop accepting, close idle clients, finish everything else."""
        setproctitle(SHUTDOWN_TITLE)
        for acc in self.acceptors:
            acc.running = False
        for acc in self.acceptors:
            acc.stop()
        for lst in self.listeners:
            lst.sock.close()  # new connections are refused from here on
        self.quitting = True
        if self.iostat is not None:
            self.iostat.stop()
        for ctx in self.services.values():
            ctx.watchers.disconnect_all()
        while self.queue.clients:
            for client in self.queue.idle_clients():
                if heard_within(client.sock, SHUTDOWN_GRACE_MS):
                    continue  # its request may be in flight (a connection just made)
                try:
                    client.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._wake.wait(0.1)
        self.queue.stop()
        self.ioq.stop()
