"""A service: one docroot, its devices, their usage and their watchers.

Devices are rescanned on every usage pass (and on ``watch``), so a disk added at
run time gets its I/O pool and usage file without a restart.  Usage is kept in
memory and ``GET /devN/usage`` is answered from there, so a full disk or a
``chmod 000`` usage file (the operator's way to stop the writes) never hides
current usage from the tracker.  It is refreshed on every pass, and after a
PUT or DELETE as soon as it is read.

A device found (at start-up or later) is swept of temp files a crash left, in
its own pool.  With ``mountcheck``, a ``devN`` on the docroot's own filesystem
(its disk did not mount) refuses PUTs and gets no usage, until a rescan finds
it on a filesystem of its own.
"""
from __future__ import annotations

import functools
import os
import re
import stat
import threading
from typing import TYPE_CHECKING

from . import devices, log, store
from .cli import Service
from .fs import Docroot
from .watch import Watchers

if TYPE_CHECKING:
    from .ioq import IoPool
    from .server import Server

_USAGE_PATH = re.compile(r"/dev(\d+)/usage\Z")


class Device:
    """One ``devN`` directory and what the node knows of it."""

    __slots__ = ("devid", "path", "st_dev", "pool", "mounted", "usage", "stale", "refreshing")

    def __init__(self, devid: int, path: str, st_dev: int, pool: "IoPool", mounted: bool = True) -> None:
        self.devid = devid
        self.path = path
        self.st_dev = st_dev
        self.pool = pool
        self.mounted = mounted  # False: mountcheck found no disk there; no writes
        self.usage: tuple[bytes, int] | None = None  # file content, time written
        self.stale = True  # a PUT or DELETE happened since ``usage`` was computed
        self.refreshing = False  # a refresh for a read is queued


class ServiceContext:
    """What a client needs of its service: docroot, I/O pools, the server."""

    def __init__(self, service: Service, server: "Server") -> None:
        self.service = service
        self.docroot = Docroot(service.docroot)
        self.ioq = server.ioq
        self.fsck = server.fsck
        self.server = server
        self.watchers = Watchers()
        self.has_usage = service.mgmtlisten is not None  # §2.3.3: no sidechannel, no usage
        self.durable = service.durable
        self.mountcheck = service.mountcheck
        self._docroot_dev = os.stat(self.docroot.fd).st_dev
        self._unmounted: set[int] = set()  # devids last logged as not mounted
        self.devices: dict[int, Device] = {}
        self._mounts: dict[int, devices.Mount] = {}
        self._lock = threading.Lock()

    # -- discovery (main thread) -------------------------------------------
    def scan(self) -> None:
        """Find device directories; give new ones an I/O pool."""
        try:
            found = devices.scan_devices(self.docroot.path)
            self._mounts = devices.read_mounts()
        except OSError as e:
            log.error(f"scanning {self.docroot.path}: {e.strerror}")
            return
        self.ioq.set_devices(self.docroot.path, set(found))
        table: dict[int, Device] = {}
        for devid, path in found.items():
            try:
                st_dev = os.stat(path).st_dev
            except OSError:
                continue
            old = self.devices.get(devid)
            if old is not None and old.st_dev == st_dev:
                table[devid] = old
                continue
            mounted = not self.mountcheck or st_dev != self._docroot_dev
            dev = table[devid] = Device(devid, path, st_dev,
                                        self.ioq.for_path(self.docroot.path, f"/dev{devid}"), mounted)
            self._log_mount_state(dev)
            if dev.pool is not None:  # None in the master, which serves nothing
                dev.pool.call(functools.partial(self._sweep, dev))
        self.devices = table

    def _log_mount_state(self, dev: Device) -> None:
        """One line per change of a device's mount state."""
        if not dev.mounted and dev.devid not in self._unmounted:
            self._unmounted.add(dev.devid)
            log.error(f"dev{dev.devid}: {dev.path} is not a mount point, refusing writes (mountcheck)")
        elif dev.mounted and dev.devid in self._unmounted:
            self._unmounted.discard(dev.devid)
            log.info(f"dev{dev.devid}: {dev.path} is mounted now, accepting writes")

    def refuses_writes(self, path: str) -> bool:
        """PUT ``path`` would land on a device whose disk is not mounted."""
        dev = self._device_of(path.lstrip("/"))
        return dev is not None and not dev.mounted

    def _sweep(self, dev: Device) -> None:
        try:
            fd = self.docroot.open(f"dev{dev.devid}", os.O_PATH | os.O_DIRECTORY)
        except OSError as e:
            log.error(f"sweeping {dev.path}: {e.strerror}")
            return
        try:
            store.sweep(fd, f"dev{dev.devid}")
        finally:
            os.close(fd)

    def usage_pass(self, now: bool = False) -> None:
        """Refresh and write every usage file, each in its device's pool; or
        right here with ``now`` (start-up: files exist before any answer)."""
        if not self.has_usage:
            return
        for dev in self.devices.values():
            if now:
                self._write_usage(dev)
            else:
                dev.pool.call(lambda dev=dev: self._write_usage(dev))

    # -- usage (device pools) -------------------------------------------------
    def _mount_source(self, dev: Device) -> str | None:
        mount = self._mounts.get(dev.st_dev)
        if mount is None:
            # btrfs subvolumes, overlays: st_dev differs from mountinfo's;
            # fall back to the longest mount point containing the device.
            real = os.path.realpath(dev.path)
            best = max((m for m in self._mounts.values()
                        if real == m.mountpoint or real.startswith(m.mountpoint.rstrip("/") + "/")),
                       key=lambda m: len(m.mountpoint), default=None)
            if best is None:
                log.error(f"mount entry not found for {dev.path}")
                return None
            mount = best
        return mount.source

    def _refresh(self, dev: Device) -> devices.Usage | None:
        dev.stale = False  # before reading: a PUT meanwhile marks it again
        if not dev.mounted:
            return None  # the root filesystem's usage would invite writes
        source = self._mount_source(dev)
        if source is None:
            return None
        try:
            usage = devices.compute_usage(dev.path, source)
        except OSError as e:
            log.error(f"fstatvfs({dev.path}): {e.strerror}")
            return None
        dev.usage = (devices.format_usage(usage), usage.time)
        return usage

    def _write_usage(self, dev: Device) -> None:
        usage = self._refresh(dev)
        if usage is None:
            return
        target = os.path.join(dev.path, "usage")
        try:
            if stat.S_IMODE(os.stat(target, follow_symlinks=False).st_mode) == 0:
                return  # chmod 000: the operator stopped the writes
        except FileNotFoundError:
            pass
        except OSError as e:
            log.error(f"stat({target}): {e.strerror}")
            return
        try:
            devices.write_usage(dev.path, usage)
        except OSError as e:
            log.error(f"dprintf({target}): {e.strerror}")

    def _device_of(self, rel: str) -> Device | None:
        name = rel.partition("/")[0]
        if name.startswith("dev") and name[3:].isdigit():
            return self.devices.get(int(name[3:]))
        return None

    def on_change(self, rel: str) -> None:
        """A PUT or DELETE below ``rel``'s device: its usage is stale (a flag,
        not a statvfs per PUT; the next read has it refreshed)."""
        dev = self._device_of(rel)
        if dev is not None:
            dev.stale = True

    def usage_body(self, path: str) -> tuple[bytes, int] | None:
        """In-memory ``devN/usage`` for ``GET /devN/usage``, if known.

        Answered at once, without touching the disk; if a PUT or DELETE made
        it stale, a refresh is queued in the device's pool for the next read
        (the tracker reads every few seconds)."""
        m = _USAGE_PATH.match(path)
        if m is None or not self.has_usage:
            return None
        dev = self.devices.get(int(m.group(1)))
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

    # -- watch ----------------------------------------------------------------
    def watch_block(self, utils: dict[int, str]) -> bytes:
        """One block for this service's watchers: ``<devid>\\t<util>\\n`` ... ``.\\n``."""
        lines = [f"{devid}\t{utils.get(dev.st_dev, '-')}\n" for devid, dev in sorted(self.devices.items())]
        lines.append(".\n")
        return "".join(lines).encode()
