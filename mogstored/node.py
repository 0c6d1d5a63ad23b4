"""What a connection sees of its node: one service (docroot, devices, their
usage and watchers), the I/O pools, the fsck queue, and a narrow control
interface to its serving process (:class:`Control`), never the whole server.

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
import stat
from collections.abc import Callable
from typing import Protocol, TypeVar

from mogstored import log
from mogstored.config.options import Service
from mogstored.mgmt.watch import Watchers
from mogstored.store import atomic, devices
from mogstored.store.fs import Docroot
from mogstored.store.fsck import FsckQueues
from mogstored.store.iopool import IoPool, IoQueues

T = TypeVar("T")


class Control(Protocol):
    """What a connection may ask of its serving process."""

    quitting: bool  # graceful shutdown under way: finish, then close

    def request_shutdown(self) -> None: ...
    def request_usage_pass(self) -> None: ...
    def set_aio_threads(self, n: int) -> None: ...
    def iostat_running(self) -> bool: ...
    def retry_open(self, fn: Callable[[], T]) -> T:
        """``fn()`` (a file open), retried once if descriptors ran out (§3.10)."""
        ...


def _mount_source(path: str, st_dev: int, mounts: dict[int, devices.Mount]) -> str | None:
    mount = mounts.get(st_dev)
    if mount is None:
        # btrfs subvolumes, overlays: st_dev differs from mountinfo's;
        # fall back to the longest mount point containing the device.
        real = os.path.realpath(path)
        best = max((m for m in mounts.values()
                    if real == m.mountpoint or real.startswith(m.mountpoint.rstrip("/") + "/")),
                   key=lambda m: len(m.mountpoint), default=None)
        if best is None:
            log.error(f"mount entry not found for {path}")
            return None
        mount = best
    return mount.source


def _measure(path: str, st_dev: int, mounts: dict[int, devices.Mount]) -> devices.Usage | None:
    source = _mount_source(path, st_dev, mounts)
    if source is None:
        return None
    try:
        return devices.compute_usage(path, source)
    except OSError as e:
        log.error(f"fstatvfs({path}): {e.strerror}")
        return None


def _write_usage_file(path: str, usage: devices.Usage) -> None:
    target = os.path.join(path, "usage")
    try:
        if stat.S_IMODE(os.stat(target, follow_symlinks=False).st_mode) == 0:
            return  # chmod 000: the operator stopped the writes
    except FileNotFoundError:
        pass
    except OSError as e:
        log.error(f"stat({target}): {e.strerror}")
        return
    try:
        atomic.replace_file(path, "usage", devices.format_usage(usage), 0o666 & ~devices.umask())
    except OSError as e:
        log.error(f"dprintf({target}): {e.strerror}")


def _scan(docroot: str) -> tuple[dict[int, tuple[str, int]], dict[int, devices.Mount]] | None:
    """devid -> (path, st_dev) of every device directory, and the mount table."""
    try:
        found = devices.scan_devices(docroot)
        mounts = devices.read_mounts()
    except OSError as e:
        log.error(f"scanning {docroot}: {e.strerror}")
        return None
    table = {}
    for devid, path in found.items():
        try:
            table[devid] = (path, os.stat(path).st_dev)
        except OSError:
            continue
    return table, mounts


def _unmounted(mountcheck: bool, st_dev: int, docroot_dev: int) -> bool:
    """--mountcheck: a devN on the docroot's own filesystem has no disk of its own."""
    return mountcheck and st_dev == docroot_dev


def write_usage_now(service: Service) -> None:
    """§1.5: every usage file of a service, written right here (the master
    before it forks: no pool, no thread)."""
    if service.mgmtlisten is None:  # §2.3.3: no sidechannel, no usage
        return
    scanned = _scan(service.docroot)
    if scanned is None:
        return
    table, mounts = scanned
    docroot_dev = os.stat(service.docroot).st_dev
    for path, st_dev in table.values():
        if _unmounted(service.mountcheck, st_dev, docroot_dev):
            continue  # the root filesystem's usage would invite writes
        usage = _measure(path, st_dev, mounts)
        if usage is not None:
            _write_usage_file(path, usage)


class Device:
    """One ``devN`` directory and what the node knows of it."""

    __slots__ = ("devid", "mounted", "path", "pool", "refreshing", "st_dev", "stale", "usage")

    def __init__(self, devid: int, path: str, st_dev: int, pool: IoPool, mounted: bool) -> None:
        self.devid = devid
        self.path = path
        self.st_dev = st_dev
        self.pool = pool
        self.mounted = mounted  # False: mountcheck found no disk there; no writes, no usage
        self.usage: tuple[bytes, int] | None = None  # file content, time written
        self.stale = True  # a PUT or DELETE happened since ``usage`` was computed
        self.refreshing = False  # a refresh for a read is queued


class ServiceContext:
    """A service as its connections see it."""

    def __init__(self, service: Service, ioq: IoQueues, fsck: FsckQueues, process: Control) -> None:
        self.docroot = Docroot(service.docroot)
        self.ioq = ioq
        self.fsck = fsck
        self.process = process
        self.watchers = Watchers()
        self.has_usage = service.mgmtlisten is not None  # §2.3.3: no sidechannel, no usage
        self.durable = service.durable
        self.mountcheck = service.mountcheck
        self.options = service  # its ``trusted`` is read at each accept (a reload may replace it)
        self._docroot_dev = os.stat(self.docroot.fd).st_dev
        self._logged_unmounted: set[int] = set()
        self.devices: dict[int, Device] = {}
        self._mounts: dict[int, devices.Mount] = {}

    def trusts(self, host: str) -> bool:
        """May the peer at ``host`` change data and command the node?  Asked once per
        connection, when it is accepted."""
        trusted = self.options.trusted
        return trusted is None or trusted.admits(host)

    # -- discovery (main thread) -------------------------------------------
    def scan(self) -> None:
        """Find device directories; give new ones an I/O pool."""
        scanned = _scan(self.docroot.path)
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
            mounted = not _unmounted(self.mountcheck, st_dev, self._docroot_dev)
            dev = table[devid] = Device(devid, path, st_dev,
                                        self.ioq.for_path(self.docroot.path, f"/dev{devid}"), mounted)
            self._log_mount_state(dev)
            dev.pool.call(functools.partial(self._sweep, dev))
        self.devices = table

    def _log_mount_state(self, dev: Device) -> None:
        """One line per change of a device's mount state."""
        if not dev.mounted and dev.devid not in self._logged_unmounted:
            self._logged_unmounted.add(dev.devid)
            log.error(f"dev{dev.devid}: {dev.path} is not a mount point, refusing writes (mountcheck)")
        elif dev.mounted and dev.devid in self._logged_unmounted:
            self._logged_unmounted.discard(dev.devid)
            log.info(f"dev{dev.devid}: {dev.path} is mounted now, accepting writes")

    def refuses_writes(self, path: str) -> bool:
        """PUT ``path`` would land on a device whose disk is not mounted."""
        devid = devices.device_of_path(path)
        dev = None if devid is None else self.devices.get(devid)
        return dev is not None and not dev.mounted

    def _sweep(self, dev: Device) -> None:
        """Temp files of named-file PUTs a crash left (device pool)."""
        try:
            fd = self.docroot.open(f"dev{dev.devid}", os.O_PATH | os.O_DIRECTORY)
        except OSError as e:
            log.error(f"sweeping {dev.path}: {e.strerror}")
            return
        try:
            atomic.sweep(fd, f"dev{dev.devid}")
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
                dev.pool.call(lambda dev=dev: self._write_usage(dev))  # type: ignore[misc]

    # -- usage (device pools) -------------------------------------------------
    def _refresh(self, dev: Device) -> devices.Usage | None:
        dev.stale = False  # before reading: a PUT meanwhile marks it again
        if not dev.mounted:
            return None  # the root filesystem's usage would invite writes
        usage = _measure(dev.path, dev.st_dev, self._mounts)
        if usage is not None:
            dev.usage = (devices.format_usage(usage), usage.time)
        return usage

    def _write_usage(self, dev: Device) -> None:
        usage = self._refresh(dev)
        if usage is not None:
            _write_usage_file(dev.path, usage)

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

    # -- watch ----------------------------------------------------------------
    def watch_block(self, utils: dict[int, str]) -> bytes:
        """One block for this service's watchers: ``<devid>\t<util>\n`` ... ``.\n``."""
        lines = [f"{devid}\t{utils.get(dev.st_dev, '-')}\n" for devid, dev in sorted(self.devices.items())]
        lines.append(".\n")
        return "".join(lines).encode()
