"""Device usage: measured with fstatvfs, written to ``devN/usage`` the way PUTs
replace files.  A ``chmod 000`` usage file (the operator's way to stop the
writes) is left alone.  An unmounted device (``mountcheck``) advertises no
usage: a usage file written on the docroot's own filesystem goes."""
from __future__ import annotations

import os
import stat

from mogstored import log
from mogstored.config.options import Service
from mogstored.node.scan import scan, unmounted
from mogstored.store import atomic, devices
from mogstored.store.fs import Docroot


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


def measure(path: str, st_dev: int, mounts: dict[int, devices.Mount]) -> devices.Usage | None:
    """The usage of the device directory ``path`` (None, logged, on failure)."""
    source = _mount_source(path, st_dev, mounts)
    if source is None:
        return None
    try:
        return devices.compute_usage(path, source)
    except OSError as e:
        log.error(f"fstatvfs({path}): {e.strerror}")
        return None


def write_usage_file(path: str, usage: devices.Usage) -> None:
    """Replace ``path/usage``, unless the operator made it mode 000."""
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


def write_usage_now(service: Service) -> None:
    """§1.5: every usage file of a service, written right here (the master
    before it forks: no pool, no thread)."""
    if service.mgmtlisten is None:  # §2.3.3: no sidechannel, no usage
        return
    scanned = scan(service.docroot)
    if scanned is None:
        return
    table, mounts = scanned
    docroot_dev = os.stat(service.docroot).st_dev
    for path, st_dev in table.values():
        if unmounted(service.mountcheck, st_dev, docroot_dev):
            continue  # the root filesystem's usage would invite writes
        usage = measure(path, st_dev, mounts)
        if usage is not None:
            write_usage_file(path, usage)


def remove_usage_file(docroot: Docroot, devid: int) -> None:
    """``devN/usage`` of a device found unmounted (device pool)."""
    try:
        fd, name = docroot.open_parent(f"dev{devid}/usage")
        try:
            os.unlink(name, dir_fd=fd)
        finally:
            os.close(fd)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.error(f"unlink({docroot.path}/dev{devid}/usage): {e.strerror}")
