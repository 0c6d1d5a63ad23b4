"""A service as its connections see it: docroot, devices and their pools, the
fsck queue, watchers, and the in-memory usage of each device.

Usage is kept in memory and ``GET /devN/usage`` is answered from there, so a
full disk or a ``chmod 000`` usage file never hides current usage from the
tracker.  It is refreshed on every pass, and after a PUT or DELETE as soon as
it is read.  A device found (at start-up or later) is swept of temp files a
crash left, in its own pool."""
from __future__ import annotations

import functools
import os

from mogstored.config.options import Service
from mogstored.node.control import Control
from mogstored.node.scan import Device, MountLog, scan, sweep, unmounted
from mogstored.node.usage import measure, remove_usage_file, write_usage_file
from mogstored.node.watch import Watchers
from mogstored.store import devices
from mogstored.store.fs import Docroot
from mogstored.store.fsck import FsckQueues
from mogstored.store.iopool import IoQueues


class ServiceContext:
    """A service as its connections see it."""

    def __init__(self, service: Service, ioq: IoQueues, fsck: FsckQueues, process: Control) -> None:
        self.docroot = Docroot(service.docroot)
        self.ioq = ioq
        self.fsck = fsck
        self.process = process
        self.watchers = Watchers()
        self._docroot_dev = os.stat(self.docroot.fd).st_dev
        self._mount_log = MountLog()
        self.devices: dict[int, Device] = {}
        self._mounts: dict[int, devices.Mount] = {}
        self.mountcheck = service.mountcheck
        self.configure(service)

    def configure(self, service: Service) -> None:
        """The service's settings, at start and at a reload (main thread); each
        request reads them as it comes."""
        self.has_usage = service.mgmtlisten is not None  # §2.3.3: no sidechannel, no usage
        self.durable = service.durable
        self.options = service  # its ``trusted`` is read at each accept: a reload applies to new connections
        if service.mountcheck == self.mountcheck:
            return
        self.mountcheck = service.mountcheck
        for dev in self.devices.values():
            dev.mounted = not unmounted(self.mountcheck, dev.st_dev, self._docroot_dev)
            self._mount_log.note(dev)
            if not dev.mounted:  # the usage it had would invite writes
                dev.usage = None
                dev.pool.call(functools.partial(remove_usage_file, self.docroot, dev.devid))

    def trusts(self, host: str) -> bool:
        """May the peer at ``host`` change data and command the node?  Asked once per
        connection, when it is accepted."""
        trusted = self.options.trusted
        return trusted is None or trusted.admits(host)

    # -- discovery (main thread) -------------------------------------------
    def scan(self) -> None:
        """Find device directories; give new ones an I/O pool and a sweep."""
        scanned = scan(self.docroot.path)
        if scanned is None:
            return
        found, self._mounts = scanned
        self.ioq.set_devices(self.docroot.path, set(found))
        table: dict[int, Device] = {}
        for devid, (path, st_dev) in found.items():
            old = self.devices.get(devid)
            if old is not None and old.st_dev == st_dev:
                table[devid] = old
                continue
            mounted = not unmounted(self.mountcheck, st_dev, self._docroot_dev)
            dev = table[devid] = Device(devid, path, st_dev,
                                        self.ioq.for_path(self.docroot.path, f"/dev{devid}"), mounted)
            self._mount_log.note(dev)
            dev.pool.call(functools.partial(sweep, self.docroot, dev))
            if not mounted:  # a usage file written before mountcheck was on
                dev.pool.call(functools.partial(remove_usage_file, self.docroot, devid))
        self.devices = table

    def refuses_writes(self, path: str) -> bool:
        """PUT ``path`` would land on a device whose disk is not mounted."""
        devid = devices.device_of_path(path)
        dev = None if devid is None else self.devices.get(devid)
        return dev is not None and not dev.mounted

    def usage_pass(self, now: bool = False) -> None:
        """Refresh and write every usage file, each in its device's pool; or
        right here with ``now`` (start-up: files exist before any answer)."""
        if not self.has_usage:
            return
        for dev in self.devices.values():
            if now:
                self._write_usage(dev)
            else:
                dev.pool.call(lambda dev=dev: self._write_usage(dev))  # type: ignore[misc]

    # -- usage (device pools) -------------------------------------------------
    def _refresh(self, dev: Device) -> devices.Usage | None:
        dev.stale = False  # before reading: a PUT meanwhile marks it again
        if not dev.mounted:
            return None  # the root filesystem's usage would invite writes
        usage = measure(dev.path, dev.st_dev, self._mounts)
        if usage is not None:
            dev.usage = (devices.format_usage(usage), usage.time)
        return usage

    def _write_usage(self, dev: Device) -> None:
        usage = self._refresh(dev)
        if usage is not None:
            write_usage_file(dev.path, usage)

    def on_change(self, rel: str) -> None:
        """A PUT or DELETE below ``rel``'s device: its usage is stale (a flag,
        not a statvfs per PUT; the next read has it refreshed)."""
        devid = devices.devid_of(rel.partition("/")[0])
        dev = None if devid is None else self.devices.get(devid)
        if dev is not None:
            dev.stale = True

    def usage_body(self, path: str) -> tuple[bytes, int] | None:
        """In-memory ``devN/usage`` for ``GET /devN/usage``, if known.

        Answered at once, without touching the disk; if a PUT or DELETE made
        it stale, a refresh is queued in the device's pool for the next read
        (the tracker reads every few seconds)."""
        if not self.has_usage or not path.endswith("/usage"):
            return None
        devid = devices.device_of_path(path)
        if devid is None or path.count("/") != 2:
            return None
        dev = self.devices.get(devid)
        if dev is None:
            return None
        if dev.stale and not dev.refreshing:
            dev.refreshing = True
            dev.pool.call(lambda: self._refresh_for_read(dev))
        return dev.usage

    def _refresh_for_read(self, dev: Device) -> None:
        try:
            self._refresh(dev)
        finally:
            dev.refreshing = False
