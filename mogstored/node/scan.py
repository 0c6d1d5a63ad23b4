"""Device discovery: the ``devN`` directories of a docroot, whether their disk
is mounted (``--mountcheck``), and the temp-file sweep of a device found.

Devices are rescanned on every usage pass (and on ``watch``), so a disk added
at run time gets its I/O pool and usage file without a restart.  With
``mountcheck``, a ``devN`` on the docroot's own filesystem (its disk did not
mount) refuses PUTs and gets no usage, until a rescan finds it on a filesystem
of its own; each change is logged once."""
from __future__ import annotations

import os

from mogstored import log
from mogstored.store import atomic, devices
from mogstored.store.fs import Docroot
from mogstored.store.iopool import IoPool

Scanned = tuple[dict[int, tuple[str, int]], dict[int, devices.Mount]]


def scan(docroot: str) -> Scanned | None:
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


def unmounted(mountcheck: bool, st_dev: int, docroot_dev: int) -> bool:
    """--mountcheck: a devN on the docroot's own filesystem has no disk of its own."""
    return mountcheck and st_dev == docroot_dev


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


class MountLog:
    """One log line per change of a device's mount state."""

    def __init__(self) -> None:
        self._unmounted: set[int] = set()

    def note(self, dev: Device) -> None:
        if not dev.mounted and dev.devid not in self._unmounted:
            self._unmounted.add(dev.devid)
            log.error(f"dev{dev.devid}: {dev.path} is not a mount point, refusing writes (mountcheck)")
        elif dev.mounted and dev.devid in self._unmounted:
            self._unmounted.discard(dev.devid)
            log.info(f"dev{dev.devid}: {dev.path} is mounted now, accepting writes")


def sweep(docroot: Docroot, dev: Device) -> None:
    """Temp files of named-file PUTs a crash left (device pool)."""
    try:
        fd = docroot.open(f"dev{dev.devid}", os.O_PATH | os.O_DIRECTORY)
    except OSError as e:
        log.error(f"sweeping {dev.path}: {e.strerror}")
        return
    try:
        atomic.sweep(fd, f"dev{dev.devid}")
    finally:
        os.close(fd)
