"""Device directories, mount table and usage files (protocol §2.1–§2.3).

Plain file-system helpers: callers decide when to rescan (every usage pass, on `watch`).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

MAX_DEVID = 0xFFFFFF  # MySQL MEDIUMINT limit of the tracker's devid column (§2.1)

_DEV_NAME = re.compile(r"dev([0-9]+)", re.ASCII)


def devid_of(name: str) -> int | None:
    """N of a ``devN`` name (``dev01`` included); None for any other name."""
    m = _DEV_NAME.fullmatch(name)
    return None if m is None else int(m[1])


def device_of_path(path: str) -> int | None:
    """The devid a request path starts with (``/dev3/...``; sidechannel paths may start with ``//``)."""
    if not path.startswith("/"):
        return None
    return devid_of(path.lstrip("/").partition("/")[0])


def scan_devices(docroot: str) -> dict[int, str]:
    """Map devid → ``<docroot>/dev<N>`` for every usable device directory (§2.1).

    A name counts through its canonical form: ``dev01`` only if ``dev1`` is a directory
    (or a symlink to one), so it never yields a path the tracker would not address.
    """
    found: dict[int, str] = {}
    with os.scandir(docroot) as it:
        for entry in it:
            devid = devid_of(entry.name)
            if devid is None or devid > MAX_DEVID or devid in found:
                continue
            path = os.path.join(docroot, f"dev{devid}")
            if os.path.isdir(path):
                found[devid] = path
    return found


@dataclass
class Mount:
    source: str  # symlink-resolved, "tmpfs" for tmpfs: the usage file's `device:`
    mountpoint: str
    fstype: str
    st_dev: int


# gnulib ME_DUMMY types as used by cmogstored 1.2.1 (§2.2). "none" is only spared for bind
# mounts in /etc/mtab data; mountinfo shows a bind mount with its real type, so always skip.
_DUMMY_TYPES = frozenset(
    ["autofs", "proc", "subfs", "debugfs", "devpts", "fusectl", "mqueue", "rpc_pipefs", "sysfs", "devfs", "kernfs", "ignore", "none"])

_OCTAL = re.compile(rb"\\([0-7]{3})")


def _unescape(field: bytes) -> str:
    """Undo mountinfo's octal escapes (``\\040`` for space etc.)."""
    if b"\\" in field:
        field = _OCTAL.sub(lambda m: bytes((int(m[1], 8) & 0xFF,)), field)
    return os.fsdecode(field)


def read_mounts(path: str = "/proc/self/mountinfo") -> dict[int, Mount]:
    """Mount table keyed by ``st_dev`` (§2.2).

    ``st_dev`` comes from mountinfo's major:minor field, so no mount point is ever stat'ed
    (a dead NFS server cannot hang the caller). Unlike gnulib, filesystems whose statfs
    fails or that report 0 blocks are therefore kept; such entries only matter if a device
    directory lives on one, and then the usage computation fails for it anyway.
    """
    table: dict[int, tuple[str, str, str]] = {}
    with open(path, "rb") as f:
        data = f.read()
    for line in data.splitlines():
        fields = line.split(b" ")
        try:
            sep = fields.index(b"-", 6)
            major, minor = fields[2].split(b":")
            st_dev = os.makedev(int(major), int(minor))
            fstype = _unescape(fields[sep + 1])
            source = _unescape(fields[sep + 2])
        except (ValueError, IndexError):
            continue  # not a mountinfo line
        if fstype in _DUMMY_TYPES:
            continue
        cur = table.get(st_dev)
        if cur is None or (source.startswith("/") and not cur[0].startswith("/")):
            table[st_dev] = (source, _unescape(fields[4]), fstype)
    return {st_dev: Mount(_device_name(source, fstype), mountpoint, fstype, st_dev)
            for st_dev, (source, mountpoint, fstype) in table.items()}


def _device_name(source: str, fstype: str) -> str:
    """``/dev/disk/by-uuid/x`` → ``/dev/dm-0`` so iostat names match by prefix (§4.5.1)."""
    if fstype == "tmpfs":
        return "tmpfs"
    if source.startswith("/") and os.path.islink(source):
        return os.path.realpath(source)
    return source


@dataclass
class Usage:
    """Contents of ``devN/usage``; sizes in KiB (§2.3.1)."""
    available: int
    device: str
    disk: str
    time: int
    total: int
    use: int  # percent
    used: int


def compute_usage(devdir: str, device: str, now: int | None = None) -> Usage:
    """Usage of the filesystem holding ``devdir`` as cmogstored computes it (§2.3.2).

    Root-reserved blocks are excluded from ``total`` (``used + available``, like df's Use%).

    ``used`` is reported as at least 1 KiB when ``total`` is non-zero: the tracker treats
    ``used: 0`` as a failed read (Perl truth, §2.3.4) and would keep a brand-new, empty
    filesystem (fresh tmpfs, freshly formatted XFS) out of service until the first byte
    lands on it, which no file can do while the monitor ignores the device. 1 KiB is
    invisible in the tracker's MiB accounting; ``use`` keeps the measured percentage.
    """
    st = os.statvfs(devdir)
    frsize = st.f_frsize
    used_blocks = st.f_blocks - st.f_bfree
    total_blocks = st.f_blocks - max(st.f_bfree - st.f_bavail, 0)
    use = min(100, -(-used_blocks * 100 // total_blocks)) if total_blocks > 0 else 0
    total = total_blocks * frsize // 1024
    used = used_blocks * frsize // 1024
    if used <= 0 < total:
        used = 1
    return Usage(
        available=st.f_bavail * frsize // 1024,
        device=device,
        disk=devdir,
        time=int(time.time()) if now is None else now,
        total=total,
        use=use,
        used=used,
    )


def format_usage(u: Usage) -> bytes:
    """The seven ``key: value\\n`` lines of §2.3.1, keys in alphabetical order."""
    return b"".join((
        b"available: %d\n" % u.available,
        b"device: %s\n" % os.fsencode(u.device),
        b"disk: %s\n" % os.fsencode(u.disk),
        b"time: %d\n" % u.time,
        b"total: %d\n" % u.total,
        b"use: %d%%\n" % u.use,
        b"used: %d\n" % u.used,
    ))


def umask() -> int:
    """The process umask, read without os.umask's set-and-restore (which races
    against threads creating files meanwhile)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old
