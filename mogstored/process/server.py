"""One serving process: listeners, the event core, I/O pools, usage files and
the graceful shutdown, driven by the main thread.  :func:`serve` is the one
entry point, for the single process and for each worker alike."""
from __future__ import annotations

import collections
import enum
import os
import socket
import time
from collections.abc import Callable
from typing import TypeVar

from mogstored import log, trust
from mogstored.config.options import DEFAULT_STALL_SECONDS, Service
from mogstored.event.acceptor import Acceptor, Board
from mogstored.event.core import EventQueue
from mogstored.event.expiry import Expiry, heard_within
from mogstored.event.step import Client
from mogstored.http.connection import HttpConnection
from mogstored.libc import trim_heap
from mogstored.metrics.board import MetricsBoard
from mogstored.metrics.totals import NodeMetrics
from mogstored.mgmt.connection import MgmtConnection
from mogstored.node.service import ServiceContext
from mogstored.node.watch import watch_block
from mogstored.process import signals
from mogstored.process.listening import Listener
from mogstored.process.reload import Reload, Reloaded
from mogstored.process.upgrade import Upgrade
from mogstored.store.devices import read_mounts
from mogstored.store.fsck import FsckQueues
from mogstored.store.iopool import MAX_THREADS, IoQueues
from mogstored.store.iostat import DEFAULT_COMMAND, IostatRunner, map_utilisation

T = TypeVar("T")
SHUTDOWN_TITLE = "cmogstored, shutting down"  # §6.5, as operators see it in ps
PARENT_CHECK_INTERVAL = 1.0  # a worker notices an exited master this soon
# An idle client heard from this recently is left a moment longer when shutting
# down: a request sent on a connection just accepted is answered, not cut off.
SHUTDOWN_GRACE_MS = 100
EPOLL_WORKERS = 1


def usage_interval(environ: dict[str, str] | os._Environ[str] = os.environ) -> int:
    try:
        n = int(environ.get("MOG_DISK_USAGE_INTERVAL", "10"))
    except ValueError:
        return 10
    return n if n > 0 else 10


def acceptor_threads(kind: str, worker_processes: int) -> int:
    """One blocking acceptor per CPU for HTTP (spread over worker processes),
    one for the sidechannel (and the metrics port), as cmogstored does."""
    if kind in ("mgmt", "metrics"):
        return 1
    return max(1, (os.cpu_count() or 1) // max(1, worker_processes))


def sidechannel_client(sock: socket.socket, ctx: ServiceContext) -> MgmtConnection | None:
    """A sidechannel client; an untrusted peer's connection is closed at once, unread and
    unanswered (trackers and mogadm run on trusted hosts)."""
    try:
        host = sock.getpeername()[0]
    except OSError:
        host = ""
    if ctx.trusts(host):
        return MgmtConnection(sock, ctx)
    trust.refused(host, "mgmt", "sidechannel connection")
    sock.close()
    return None


class Ask(enum.Enum):
    """What other threads (and signal handlers) ask of the main thread."""

    STOP = 1
    UPGRADE = 2
    USAGE_PASS = 3
    AIO_THREADS = 4
    RELOAD = 5


class Server:
    """Serves the given listeners until a graceful shutdown completes.

    ``master_pid``, ``board`` and ``metrics_board`` are given in a worker
    process (§6.6), ``upgrade`` and ``reload`` when this process itself serves
    (no workers)."""

    def __init__(self, listeners: list[Listener], worker_processes: int, iostat: bool, *,
                 upgrade: Upgrade | None = None, master_pid: int | None = None,
                 board: Board | None = None, stall_seconds: int = DEFAULT_STALL_SECONDS,
                 metrics_board: MetricsBoard | None = None, reload: Reload | None = None) -> None:
        self.listeners = listeners
        self.reload = reload
        self.worker_processes = worker_processes
        self.quitting = False
        self._wake = signals.Waker()
        self._asks: collections.deque[tuple[Ask, int]] = collections.deque()
        # One epoll worker: it never waits for a disk, and under the interpreter lock a
        # second one only adds lock hand-offs (measured: ~18% more small GETs with 1
        # than with 2, pinned and unpinned; more CPUs: --worker-processes).
        self.queue = EventQueue(EPOLL_WORKERS, on_close=self._wake.set)
        self.upgrade = upgrade
        self.master_pid = master_pid
        self.board = board
        self.expiry = Expiry(self.queue.clients.values)
        self.ioq = IoQueues(self.queue.run)
        self.fsck = FsckQueues()
        self.services: dict[str, ServiceContext] = {}  # by docroot
        self.acceptors: dict[tuple[str, int], Acceptor] = {}  # by kind and id() of the listening socket
        self.usage_interval = usage_interval()
        self.iostat_wanted = iostat
        self.iostat: IostatRunner | None = None
        self.metrics = NodeMetrics(self.ioq, [], self.queue.clients, [lst.kind for lst in listeners],
                                   stall_seconds, metrics_board)
        for lst in listeners:
            if lst.service is not None:
                self._context(lst.service)

    # -- node.Control: called from any thread -----------------------------------
    def _ask(self, ask: Ask, n: int = 0) -> None:
        self._asks.append((ask, n))
        self._wake.set()

    def request_shutdown(self) -> None:
        """``shutdown``: a worker passes it on to the master, which stops every worker."""
        if self.master_pid is not None:
            os.kill(self.master_pid, signals.STOP_SIGNAL)
        else:
            self._ask(Ask.STOP)

    def request_usage_pass(self) -> None:
        """``watch``: rescan devices and rewrite usage files now."""
        self._ask(Ask.USAGE_PASS)

    def set_aio_threads(self, n: int) -> None:
        """``server aio_threads = N``: N threads per device pool (1..100)."""
        if 1 <= n <= MAX_THREADS:
            self._ask(Ask.AIO_THREADS, n)

    def iostat_running(self) -> bool:
        return self.iostat is not None and self.iostat.running

    def retry_open(self, fn: Callable[[], T]) -> T:
        return self.expiry.retry_open(fn)

    def _on_iostat(self, report: dict[str, str]) -> None:
        """iostat thread: one block to every watcher of every service."""
        self.metrics.on_iostat(report)
        contexts = [ctx for ctx in list(self.services.values()) if len(ctx.watchers)]
        if not contexts:
            return
        utils = map_utilisation(report, read_mounts())
        for ctx in contexts:
            ctx.watchers.broadcast(watch_block(ctx.devices, utils))

    # -- main thread -------------------------------------------------------------
    def usage_pass(self, now: bool = False) -> None:
        for ctx in self.services.values():
            ctx.scan()
            ctx.usage_pass(now)

    def install_signals(self) -> None:
        signals.install_serving(self._wake, lambda: self._ask(Ask.STOP),
                                None if self.upgrade is None else lambda: self._ask(Ask.UPGRADE),
                                None if self.reload is None else lambda: self._ask(Ask.RELOAD))

    def _context(self, service: Service) -> ServiceContext:
        """The service's context, made on its first listener."""
        ctx = self.services.get(service.docroot)
        if ctx is None:
            ctx = self.services[service.docroot] = ServiceContext(service, self.ioq, self.fsck, self)
            self.metrics.services.append(ctx)
        return ctx

    def _accept(self, lst: Listener) -> None:
        """Start accepting on a listener."""
        make: Callable[[socket.socket], Client | None]
        if lst.kind == "metrics":
            from mogstored.metrics.connection import (
                MetricsConnection,  # prometheus_client only when asked for
            )

            make = lambda sock: MetricsConnection(sock, self.metrics, self)  # type: ignore[misc]
        else:
            assert lst.service is not None
            ctx = self._context(lst.service)
            if lst.kind == "mgmt":
                make = lambda sock: sidechannel_client(sock, ctx)  # type: ignore[misc]
            else:
                make = lambda sock, get_only=(lst.kind == "httpget"): HttpConnection(  # type: ignore[misc]
                    sock, ctx, get_only)
        acc = Acceptor(lst.sock, self.queue, make, acceptor_threads(lst.kind, self.worker_processes),
                       signals.KICK_SIGNAL, self.expiry.accept_failed, self.board)
        self.acceptors[(lst.kind, id(lst.sock))] = acc
        acc.start()

    def _run_iostat(self) -> None:
        """§4.5.1: iostat only serves watchers, so only with a sidechannel."""
        wanted = self.iostat_wanted and any(lst.kind == "mgmt" for lst in self.listeners)
        if wanted and self.iostat is None:
            self.iostat = IostatRunner(os.environ.get("MOG_IOSTAT_CMD", DEFAULT_COMMAND), self._on_iostat)
            self.iostat.start()
        elif not wanted and self.iostat is not None:
            self.iostat.stop()
            self.iostat = None

    def start(self) -> None:
        for lst in self.listeners:
            self._accept(lst)
        self._run_iostat()
        self.metrics.start()

    def switch(self, new: Reloaded) -> None:
        """SIGHUP: switch to the configuration read again.  Acceptors move to
        the new listeners first; connections accepted before go on as they were."""
        keep = {(lst.kind, id(lst.sock)) for lst in new.listeners}
        for key in list(self.acceptors):
            if key not in keep:
                self.acceptors.pop(key).stop()
        for sock in new.unused:
            sock.close()
        self.listeners = new.listeners
        for lst in self.listeners:
            if (lst.kind, id(lst.sock)) not in self.acceptors:
                self._accept(lst)
        for svc in new.opts.services:
            if svc.docroot in self.services:
                self.services[svc.docroot].configure(svc)
        self.metrics.listeners = [lst.kind for lst in self.listeners]
        self.metrics.stall_seconds = new.opts.stallseconds
        self.iostat_wanted = new.opts.iostat
        self._run_iostat()

    def run(self) -> int:
        """Main loop: periodic usage passes and what was asked, until asked to stop."""
        next_usage = time.monotonic() + self.usage_interval
        while True:
            timeout = next_usage - time.monotonic()
            if self.master_pid is not None:
                timeout = min(timeout, PARENT_CHECK_INTERVAL)
            self._wake.wait(max(0.0, timeout))
            if self.master_pid is not None and os.getppid() != self.master_pid:
                log.error(f"parent={self.master_pid} abandoned us, dying")
                break
            if self.upgrade is not None:
                self.upgrade.poll()
            usage_now = False
            stop = False
            while self._asks:
                ask, n = self._asks.popleft()
                if ask is Ask.STOP:
                    stop = True
                elif ask is Ask.UPGRADE and self.upgrade is not None:
                    self.upgrade.start()
                elif ask is Ask.AIO_THREADS:
                    log.info(f"server aio_threads={n}")
                    self.ioq.resize(n)
                elif ask is Ask.USAGE_PASS:
                    usage_now = True
                elif ask is Ask.RELOAD and self.reload is not None:
                    self.reload.run(self.listeners, self.switch)
                    usage_now = True  # a device may refuse or accept writes now (mountcheck)
            if stop:
                break
            if usage_now or time.monotonic() >= next_usage:
                self.usage_pass()
                next_usage = time.monotonic() + self.usage_interval
        self.shutdown()
        return 0

    def shutdown(self) -> None:
        """Graceful: stop accepting, close idle clients, finish everything else."""
        # Imported here, once: setproctitle imports logging (~0.3 MiB resident) for nothing else.
        from setproctitle import setproctitle

        setproctitle(SHUTDOWN_TITLE)
        for acc in self.acceptors.values():
            acc.running = False
        for acc in self.acceptors.values():
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
                    continue  # its request may be in flight (a connection just made) or not read yet
                try:
                    client.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._wake.wait(0.1)
        self.queue.stop()
        self.ioq.stop()
        self.metrics.stop()


def serve(listeners: list[Listener], worker_processes: int, iostat: bool, *,
          upgrade: Upgrade | None = None, master_pid: int | None = None, board: Board | None = None,
          stall_seconds: int = DEFAULT_STALL_SECONDS, metrics_board: MetricsBoard | None = None,
          ready: Callable[[], None] | None = None, reload: Reload | None = None) -> int:
    """Serve until a graceful shutdown: the single process, or one worker."""
    server = Server(listeners, worker_processes, iostat, upgrade=upgrade, master_pid=master_pid, board=board,
                    stall_seconds=stall_seconds, metrics_board=metrics_board, reload=reload)
    server.install_signals()
    server.usage_pass(now=True)
    server.start()
    trim_heap()
    if ready is not None:
        ready()
    return server.run()
