"""One serving process: listeners, the event core, I/O pools, usage files and
the graceful shutdown, driven by the main thread."""
from __future__ import annotations

import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable

from setproctitle import setproctitle

from . import devices, log
from .cli import Service
from .core import Acceptor, Client, EventQueue, install_kick_handler
from .fs import Docroot
from .http import HttpClient
from .ioq import MAX_THREADS, IoQueues
from .mgmt import MgmtClient

SHUTDOWN_TITLE = "mogstored, shutting down"


def usage_interval(environ: dict[str, str] | os._Environ = os.environ) -> int:
    try:
        n = int(environ.get("MOG_DISK_USAGE_INTERVAL", "10"))
    except ValueError:
        return 10
    return n if n > 0 else 10


class Watchers:
    """Sidechannel clients that sent ``watch``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.clients: set[MgmtClient] = set()

    def add(self, client: MgmtClient) -> None:
        with self.lock:
            self.clients.add(client)

    def discard(self, client: MgmtClient) -> None:
        with self.lock:
            self.clients.discard(client)

    def disconnect_all(self) -> None:
        with self.lock:
            for c in self.clients:
                try:
                    c.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class ServiceContext:
    """What a client needs of its service: docroot, I/O pools, the server."""

    def __init__(self, service: Service, server: "Server") -> None:
        self.service = service
        self.docroot = Docroot(service.docroot)
        self.ioq = server.ioq
        self.server = server
        self.watchers = Watchers()
        self.devices: dict[int, str] = {}

    def on_put(self, rel: str) -> None:
        """A file was stored below ``rel``'s device."""

    def on_delete(self, rel: str) -> None:
        """A file was removed below ``rel``'s device."""

    def scan(self) -> None:
        """Find device directories and give each its I/O pool."""
        try:
            self.devices = devices.scan_devices(self.docroot.path)
        except OSError as e:
            log.error(f"scanning {self.docroot.path}: {e.strerror}")
            return
        self.ioq.set_devices(self.docroot.path, set(self.devices))

    def write_usage(self) -> None:
        """One usage-file pass (§2.3.3); only services with a sidechannel."""
        try:
            mounts = devices.read_mounts()
        except OSError as e:
            log.error(f"reading mount table: {e.strerror}")
            return
        now = int(time.time())
        for devid, devdir in sorted(self.devices.items()):
            try:
                mount = mounts.get(os.stat(devdir).st_dev)
                if mount is None:
                    log.error(f"mount entry not found for {devdir}")
                    continue
                devices.write_usage(devdir, devices.compute_usage(devdir, mount.source, now))
            except OSError as e:
                log.error(f"usage for {devdir}: {e.strerror}")


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

    def __init__(self, listeners: list[Listener], worker_processes: int = 0) -> None:
        self.listeners = listeners
        self.worker_processes = worker_processes
        self.quitting = False
        self._stop_requested = False
        self._wake = threading.Event()
        self._pending_aio: int | None = None
        self.queue = EventQueue(max(4, 2 * (os.cpu_count() or 1)))
        self.queue.on_close = self._wake.set
        self.ioq = IoQueues(self.queue)
        self.services: dict[int, ServiceContext] = {}
        for lst in listeners:
            if id(lst.service) not in self.services:
                self.services[id(lst.service)] = ServiceContext(lst.service, self)
        self.acceptors: list[Acceptor] = []
        self.usage_interval = usage_interval()

    # -- called from any thread ----------------------------------------------
    def request_shutdown(self) -> None:
        self._stop_requested = True
        self._wake.set()

    def set_aio_threads(self, n: int) -> None:
        """``server aio_threads = N``: N threads per device pool (1..100)."""
        if 1 <= n <= MAX_THREADS:
            self._pending_aio = n
            self._wake.set()

    # -- main thread -------------------------------------------------------------
    def install_signals(self) -> None:
        for sig in (signal.SIGQUIT, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda s, f: self.request_shutdown())
        for sig in (signal.SIGHUP, signal.SIGWINCH, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_IGN)
        install_kick_handler()

    def usage_pass(self) -> None:
        for ctx in self.services.values():
            ctx.scan()
            if ctx.service.mgmtlisten is not None:
                ctx.write_usage()

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

    def run(self) -> int:
        """Main loop: periodic usage passes and run-time settings, until asked to stop."""
        next_usage = time.monotonic() + self.usage_interval
        while not self._stop_requested:
            self._wake.wait(max(0.0, next_usage - time.monotonic()))
            self._wake.clear()
            if self._pending_aio is not None:
                n, self._pending_aio = self._pending_aio, None
                log.info(f"server aio_threads={n}")
                self.ioq.resize(n)
            if time.monotonic() >= next_usage:
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
        for ctx in self.services.values():
            ctx.watchers.disconnect_all()
        while self.queue.clients:
            for client in self.queue.idle_clients():
                try:
                    client.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._wake.wait(0.1)
            self._wake.clear()
        self.queue.stop()
        self.ioq.stop()
