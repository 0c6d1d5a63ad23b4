"""File-system access confined to the docroot.

A ``devN`` entry of the docroot may be a symlink (operators point device
directories at mount points); below ``devN`` no symlink is ever followed, so
neither HTTP nor the sidechannel can read, overwrite or delete anything outside
that device.  ``openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS)`` (Linux >= 5.6)
does this in one system call.
"""
from __future__ import annotations

import ctypes
import errno
import os
import sys
import time

from mogstored.libc import MACHINE, libc, syscall_number
from mogstored.store.devices import devid_of

_SYS_OPENAT2 = syscall_number("openat2")
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_RESOLVE_CACHED = 0x20  # Linux >= 5.12: EAGAIN unless every component is in the dentry cache
_RESOLVE = _RESOLVE_NO_MAGICLINKS | _RESOLVE_NO_SYMLINKS | _RESOLVE_BENEATH


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


# Our own copy of syscall(), without argtypes: the 64-bit arguments are ctypes objects
# made once, the fd and path convert by themselves.  This is a per-request call, and
# argtypes conversion costs more than the syscall.
_syscall = libc["syscall"]
_syscall.restype = ctypes.c_long
_NR_OPENAT2 = ctypes.c_long(_SYS_OPENAT2 or -1)
_HOW_SIZE = ctypes.c_size_t(ctypes.sizeof(_OpenHow))
# One read-only open_how per (flags, mode, resolve), shared by every thread.
_hows: dict[tuple[int, int, int], tuple[_OpenHow, ctypes.c_void_p]] = {}


def _how(flags: int, mode: int, resolve: int) -> ctypes.c_void_p:
    key = (flags, mode, resolve)
    entry = _hows.get(key)
    if entry is None:
        how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0, resolve)
        entry = _hows.setdefault(key, (how, ctypes.c_void_p(ctypes.addressof(how))))
    return entry[1]


# os.fsencode's own arguments: its Python-level checks cost as much as the encoding.
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


def _openat2(dirfd: int, path: str, flags: int, mode: int, resolve: int = _RESOLVE) -> int:
    fd: int = _syscall(_NR_OPENAT2, dirfd, path.encode(_FS_ENCODING, _FS_ERRORS), _how(flags, mode, resolve), _HOW_SIZE)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd


_cached_ok = False  # RESOLVE_CACHED known to the kernel (5.12+)


def _require_openat2() -> None:
    """Fail at start-up, not per request, on kernels without openat2 (< 5.6); find
    out whether RESOLVE_CACHED is known (EINVAL before 5.12: never serve cached)."""
    global _cached_ok
    if _SYS_OPENAT2 is None:
        raise OSError(errno.ENOSYS, f"openat2 syscall number unknown on {MACHINE}")
    root = os.open("/", os.O_PATH | os.O_CLOEXEC)
    try:
        os.close(_openat2(root, ".", os.O_PATH, 0))
        try:
            os.close(_openat2(root, ".", os.O_PATH, 0, _RESOLVE | _RESOLVE_CACHED))
            _cached_ok = True
        except OSError as e:
            _cached_ok = e.errno == errno.EAGAIN
    finally:
        os.close(root)


class Docroot:
    """The docroot directory, held open so every lookup is relative to it."""

    def __init__(self, path: str) -> None:
        _require_openat2()
        self.path = os.path.realpath(path)
        self.fd = os.open(self.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def open(self, rel: str, flags: int, mode: int = 0o666) -> int:
        """Open ``rel`` (e.g. ``dev1/0/000/x.fid``, no leading slash).

        Raises OSError; ELOOP means a symlink below ``devN`` was met.
        """
        if not rel:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), rel)
        try:
            return _openat2(self.fd, rel, flags, mode)
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            dev, _, rest = rel.partition("/")
            if devid_of(dev) is None:
                raise
            # devN itself may be a symlink: follow it, then nothing below.
            if not rest:
                return os.open(dev, flags | os.O_CLOEXEC, mode, dir_fd=self.fd)
            devfd = os.open(dev, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.fd)
            try:
                return _openat2(devfd, rest, flags, mode)
            finally:
                os.close(devfd)

    def open_cached(self, rel: str, flags: int) -> int:
        """Open ``rel`` only if that cannot block: every path component is in the
        dentry cache (RESOLVE_CACHED), so an event thread may call it.

        BlockingIOError when the lookup would have to wait for a disk, and also for
        what only :meth:`open` handles (a symlinked devN: ELOOP); FileNotFoundError
        from a cached negative entry is a true answer.  Raises OSError."""
        if not rel or not _cached_ok:
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN), rel)
        try:
            return _openat2(self.fd, rel, flags, 0, _RESOLVE | _RESOLVE_CACHED)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN), rel) from e
            raise

    def stat(self, rel: str, cached: bool = False) -> os.stat_result:
        """fstat of an O_PATH open; ``cached``: only if that cannot block (:meth:`open_cached`)."""
        fd = self.open_cached(rel, os.O_PATH) if cached else self.open(rel, os.O_PATH)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def open_parent(self, rel: str) -> tuple[int, str]:
        """(directory fd, last component) for creating, renaming or unlinking."""
        parent, _, name = rel.rpartition("/")
        return self.open(parent, os.O_PATH | os.O_DIRECTORY), name

    def makedirs(self, rel_dir: str, sync: bool = False) -> None:
        """Create every missing directory of ``rel_dir`` below ``devN``, never
        ``devN`` itself (a missing device stays missing: ENOENT).  With
        ``sync``, each directory on the way is fsync'ed once its entry exists."""
        dev, _, rest = rel_dir.partition("/")
        fd = self.open(dev, os.O_PATH | os.O_DIRECTORY)
        try:
            for part in rest.split("/"):
                if not part:
                    continue
                try:
                    os.mkdir(part, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass
                if sync:  # also when a concurrent PUT made it: its sync may be pending
                    sync_dir(fd)
                nfd = _openat2(fd, part, os.O_PATH | os.O_DIRECTORY, 0)
                os.close(fd)
                fd = nfd
        finally:
            os.close(fd)



def sync_dir(dirfd: int) -> None:
    """fsync a directory held as an O_PATH fd (which fsync refuses: EBADF)."""
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dirfd)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- reads that cannot wait for a disk -------------------------------------
_TMPFS_MAGIC = 0x01021994
_RAMFS_MAGIC = 0x858458F6
_SWAP_RECHECK = 10.0  # seconds: swapon after start-up is seen this late at most
_fstatfs = libc["fstatfs"]
_fstatfs.argtypes = [ctypes.c_int, ctypes.c_void_p]
# st_dev of filesystems that refuse RWF_NOWAIT -> they keep every page in memory (tmpfs, ramfs)
_no_nowait: dict[int, bool] = {}
_swap = (True, -_SWAP_RECHECK)  # (swap may be on, when /proc/swaps was read)


def _memory_fs(fd: int) -> bool:
    buf = ctypes.create_string_buffer(128)  # struct statfs; f_type (a long) comes first
    if _fstatfs(fd, buf) != 0:
        return False
    return ctypes.c_long.from_buffer(buf).value in (_TMPFS_MAGIC, _RAMFS_MAGIC)


def _swap_on() -> bool:
    global _swap
    on, at = _swap
    now = time.monotonic()
    if now - at >= _SWAP_RECHECK:
        try:
            with open("/proc/swaps", "rb") as f:
                on = len(f.read().splitlines()) > 1  # a header line, then one per swap area
        except OSError:
            on = True
        _swap = (on, now)
    return on


def read_cached(fd: int, st_dev: int, view: memoryview, offset: int) -> bool:
    """Fill ``view`` from ``fd`` at ``offset`` only if that cannot wait for a disk,
    so an event thread may call it: True when all of it was read.

    Page-cache reads use ``RWF_NOWAIT`` (EAGAIN: not all cached).  tmpfs and
    ramfs refuse that flag (EOPNOTSUPP), but with no swap area their pages are
    memory and nothing else, so a plain read of them never touches a disk;
    with swap on, they go to the pool like any uncached read."""
    in_memory = _no_nowait.get(st_dev)
    try:
        if in_memory is None:
            n = os.preadv(fd, [view], offset, os.RWF_NOWAIT)
        elif in_memory and not _swap_on():
            n = os.preadv(fd, [view], offset)
        else:
            return False
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno == errno.EOPNOTSUPP and in_memory is None:
            _no_nowait[st_dev] = _memory_fs(fd)
            return read_cached(fd, st_dev, view, offset)
        return False
    return n == len(view)  # short: partly cached, or the file shrank
