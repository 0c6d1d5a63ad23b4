"""SIGHUP reload, for the single process and the master alike.

The start command's arguments are parsed again, so the config files it names
are read again and its own options still win.  What a running node cannot
change (``docroot``, ``pidfile``, whether there are worker processes at all)
is logged and kept; a configuration that does not load or whose new
listeners cannot be bound is logged and the running one kept, so a reload
never stops the node.  Switching to the result is the caller's: the single
process switches in place (process/server.py), the master replaces its
workers (process/arbiter.py).
"""
from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

from mogstored import log
from mogstored.config.cli import load_options
from mogstored.config.options import Options, StartupError
from mogstored.process.daemon import raise_nofile
from mogstored.process.listening import Listener, address, by_address, open_listeners
from mogstored.process.upgrade import Upgrade


@dataclass
class Reloaded:
    opts: Options
    listeners: list[Listener]  # every listener the new options ask for, running ones reused
    unused: list[socket.socket]  # running listeners no longer asked for: close once nobody accepts on them


class Reload:
    """The options in force and how to read them again."""

    def __init__(self, argv: list[str], argv0: str, opts: Options, upgrade: Upgrade) -> None:
        self.argv = argv
        self.argv0 = argv0
        self.opts = opts
        self.upgrade = upgrade  # hands the listeners to an upgrade: kept current

    def run(self, running: list[Listener], switch: Callable[[Reloaded], None]) -> None:
        """Load the configuration again and have ``switch`` apply it; logged
        either way, ``reloaded:`` once it is applied."""
        new = self._load(running)
        if new is None:
            return
        switch(new)
        log.info("reloaded: " + " ".join(f"{lst.kind}={address(lst.sock)}" for lst in new.listeners))

    def _load(self, running: list[Listener]) -> Reloaded | None:
        """The new configuration with its listeners open, or None (logged)."""
        log.info("reloading the configuration (SIGHUP)")
        available = by_address(running)
        try:
            opts = self._keep_fixed(load_options(self.argv, self.argv0, os.environ))
            bound = open_listeners(opts, available)
        except StartupError as e:
            for line in str(e).splitlines():
                log.error(f"reload: {line}")
            log.error("reload failed, the running configuration is kept")
            return None
        raise_nofile(opts.maxconns)
        self.opts = opts
        self.upgrade.listeners = [lst.sock for lst in bound]
        for sock in available.values():
            log.info(f"reload: closing listener {address(sock)}")
        return Reloaded(opts, bound, list(available.values()))

    def _keep_fixed(self, new: Options) -> Options:
        """What cannot change live is logged and the running value kept."""
        old = self.opts
        services = []
        for was, svc in zip(old.services, new.services):
            if svc.docroot != was.docroot:
                log.error(f"reload: docroot={svc.docroot} cannot change live, keeping {was.docroot}")
                svc = dataclasses.replace(svc, docroot=was.docroot)
            services.append(svc)
        if new.pidfile != old.pidfile:
            log.error(f"reload: pidfile={new.pidfile} cannot change live, keeping {old.pidfile}")
        workers = new.worker_processes
        if (workers == 0) != (old.worker_processes == 0):
            log.error(f"reload: worker-processes={workers} cannot change live to or from 0, "
                      f"keeping {old.worker_processes}")
            workers = old.worker_processes
        return dataclasses.replace(new, services=services, pidfile=old.pidfile, daemonize=old.daemonize,
                                   worker_processes=workers)
