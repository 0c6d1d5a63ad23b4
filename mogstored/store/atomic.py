"""How a PUT's file comes into being, and what a crash may leave of it.

A PUT body is written into an unnamed ``O_TMPFILE`` inode in the target's
directory and given its name only once complete, so a crash at any point leaves
nothing behind (the kernel frees the unnamed inode).  Where a filesystem refuses
``O_TMPFILE`` the body goes to a named temp file; :func:`sweep` removes such
files left by dead processes.  Readers see the old file or the new one, never a
mix: the new name appears with ``linkat``/``rename``, each atomic.

With ``durable`` the data reaches stable storage before the name does
(``fdatasync`` before the link or rename) and the name before the answer
(``fsync`` of the directory after it).

Every operation is relative to a directory fd from :class:`fs.Docroot`, so the
path confinement below ``devN`` holds here too.
"""
from __future__ import annotations

import ctypes
import errno
import itertools
import os
import re
import stat
import time

from .. import log
from ..libc import libc
from .fs import sync_dir

# The named temp file's pattern: <name>.<8 hex digits>.<pid>.tmp
_TMP_NAME = re.compile(r".+\.[0-9a-f]{8}\.([0-9]+)\.tmp\Z", re.ASCII)
_started = time.time()  # sweeps spare temp files younger than this process


_pid = os.getpid()  # in temp names
_serial = itertools.count(int.from_bytes(os.urandom(4), "big"))  # temp names differ without a syscall each


_AT_EMPTY_PATH = 0x1000
_linkat = libc["linkat"]  # no argtypes: ints and bytes convert by themselves, cheaper per call


def _can_link_by_fd() -> bool:
    """``linkat(fd, "", dirfd, name, AT_EMPTY_PATH)`` is allowed here: with
    CAP_DAC_READ_SEARCH (root), or (Linux >= 6.10) for a file this process
    opened.  Probed with a link that cannot succeed: the kernel looks up the
    empty old name first (ENOENT when refused), then the new one, "." under "/"
    (EEXIST whatever the filesystem).  Any answer but EEXIST (a sandbox's
    EPERM, say) keeps the /proc/self/fd way.  A test seam forces that way: the
    CI kernel allows both."""
    if os.environ.get("MOG_LINK_VIA_PROC", "") not in ("", "0"):
        return False
    fd = os.open("/", os.O_PATH | os.O_CLOEXEC)
    try:
        return _linkat(fd, b"", fd, b".", _AT_EMPTY_PATH) != 0 and ctypes.get_errno() == errno.EEXIST
    finally:
        os.close(fd)


_by_fd = _can_link_by_fd()


def _after_fork() -> None:
    # _by_fd holds in a child too: a worker links files it opened itself, with its own
    # credentials, which is what the >= 6.10 rule compares.
    global _started, _pid
    _started = time.time()
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork)  # a respawned worker sweeps its predecessor's
# Test seam: no filesystem the CI kernel offers refuses O_TMPFILE.
_use_tmpfile = os.environ.get("MOG_NO_TMPFILE", "") in ("", "0")
_TMPFILE_REFUSED = (errno.EOPNOTSUPP, errno.EISDIR)  # the filesystem, the kernel


class Unsynced(OSError):
    """The file has its name, but the ``fsync`` of its directory failed: the name may
    not survive a power cut, and the temp name (if any) is gone."""


def _tmp_name(name: str) -> str:
    return f"{name}.{next(_serial) & 0xFFFFFFFF:08x}.{_pid}.tmp"  # a clash (O_EXCL, EEXIST) takes the next


def create(dirfd: int, name: str, mode: int = 0o600) -> tuple[int, str | None]:
    """A file to write ``name``'s new content into: (fd, None) for an unnamed
    one, created with ``mode`` (the final one: nobody can open it before it is
    linked, so it needs no fchmod), or (fd, temp name) with mode 0600 (the
    reference's, until the caller's fchmod) where the filesystem refuses ``O_TMPFILE``."""
    if _use_tmpfile:
        try:
            return os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, mode, dir_fd=dirfd), None
        except OSError as e:
            if e.errno not in _TMPFILE_REFUSED:
                raise
    for _ in range(2):
        tmp = _tmp_name(name)
        try:
            return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_CLOEXEC,
                           0o600, dir_fd=dirfd), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), name)


def commit(fd: int, tmpname: str | None, dirfd: int, name: str, durable: bool,
           in_place: bool = False, replacing: bool = False) -> None:
    """Give the complete file ``fd`` the name ``name`` in ``dirfd``, replacing
    any old file atomically.  On failure the old file is untouched and no new
    name remains (the caller still discards a named ``tmpname``), except for
    :class:`Unsynced`: named, not synced.  ``in_place``
    (a Content-Range PUT, written into ``name`` itself) only syncs; ``replacing``:
    ``name`` existed when the PUT began (a hint, saves a failing link)."""
    if durable:
        os.fdatasync(fd)
    if in_place:
        pass  # the name exists already
    elif tmpname is None:
        _link_unnamed(fd, dirfd, name, replacing)
    else:
        os.rename(tmpname, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
    if durable:
        try:
            sync_dir(dirfd)
        except OSError as e:
            raise Unsynced(e.errno, e.strerror, name) from e


def _link(fd: int, dirfd: int, name: str) -> None:
    """Name the unnamed file ``fd``: linkat(fd, "", dirfd, name, AT_EMPTY_PATH)
    where allowed (:func:`_can_link_by_fd`; about 4 us less kernel time per link
    than resolving the magic link), else linkat(AT_FDCWD, "/proc/self/fd/N",
    dirfd, name, AT_SYMLINK_FOLLOW), which needs /proc but no privilege."""
    if not _by_fd:
        os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dirfd, follow_symlinks=True)
    elif _linkat(fd, b"", dirfd, os.fsencode(name), _AT_EMPTY_PATH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), name)


def _link_unnamed(fd: int, dirfd: int, name: str, replacing: bool) -> None:
    """Link ``fd`` as ``name`` (:func:`_link`).  An existing target (``replacing``,
    or EEXIST) is replaced: link under a temp name, rename that over it."""
    if not replacing:
        try:
            _link(fd, dirfd, name)
            return
        except FileExistsError:
            pass
    for _ in range(2):
        tmp = _tmp_name(name)
        try:
            _link(fd, dirfd, tmp)
        except FileExistsError:
            continue
        try:
            os.rename(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
        except BaseException:
            discard(dirfd, tmp)
            raise
        return
    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), name)


def replace_file(dirpath: str, name: str, data: bytes, mode: int) -> None:
    """``dirpath/name`` replaced by ``data`` (a usage file) as a PUT replaces a file:
    readers see the old or the new one, a crash leaves nothing but, for an instant,
    a complete temp link the sweep removes.  On failure the old file stays."""
    dirfd = os.open(dirpath, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd, tmp = create(dirfd, name)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)
            commit(fd, tmp, dirfd, name, durable=False, replacing=True)
        except BaseException:
            if tmp is not None:
                discard(dirfd, tmp)
            raise
        finally:
            os.close(fd)
    finally:
        os.close(dirfd)


def discard(dirfd: int, tmpname: str) -> None:
    try:
        os.unlink(tmpname, dir_fd=dirfd)
    except OSError as e:
        log.error(f"Failed to unlink {tmpname}: {e.strerror}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def sweep(devfd: int, devname: str) -> int:
    """Remove named temp files that no live process writes any more: only
    names of our own pattern, older than this process, whose writer's pid is
    gone (another worker's or an old process's PUT in flight is kept).
    ``devfd`` is the device directory; symlinks are never followed.  Returns
    how many were removed."""
    removed = 0
    for _, _, files, dfd in os.fwalk(".", dir_fd=devfd):
        for fname in files:
            m = _TMP_NAME.match(fname)
            if m is None:
                continue
            try:
                st = os.stat(fname, dir_fd=dfd, follow_symlinks=False)
                if (not stat.S_ISREG(st.st_mode) or st.st_mtime >= _started
                        or _pid_alive(int(m.group(1)))):
                    continue
                os.unlink(fname, dir_fd=dfd)
            except FileNotFoundError:
                continue
            removed += 1
    if removed:
        log.info(f"{devname}: removed {removed} temp file(s) left by a crash")
    return removed
