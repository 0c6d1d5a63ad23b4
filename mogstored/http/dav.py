"""DELETE (§3.7): unlink one file below a device, never a directory or a symlink.
(MKCOL is answered by the connection: it never creates anything.)"""
from __future__ import annotations

import errno
import os
import stat

from mogstored.http.paths import Op, status_for
from mogstored.http.response import error_head
from mogstored.node.service import ServiceContext
from mogstored.store.fs import sync_dir
from mogstored.store.iopool import IoPool


def refuse_symlink(dirfd: int, name: str) -> bool:
    """§3.4 item 4: a symlink below devN is never replaced, written through or
    unlinked, even where rename/unlink would only touch the link (ELOOP -> 403).
    True if ``name`` exists."""
    try:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), name)
    return True


class DeleteTransfer:
    """One DELETE, run in DELETING (the device pool)."""

    __slots__ = ("keepalive", "pool", "rel", "svc")

    def __init__(self, svc: ServiceContext, pool: IoPool, rel: str, keepalive: bool) -> None:
        self.svc = svc
        self.pool = pool
        self.rel = rel  # has a "/": refusal() sent the rest away
        self.keepalive = keepalive

    def delete(self) -> bytes:
        """DELETING: the answer."""
        svc = self.svc
        dirfd = -1
        try:
            dirfd, name = svc.docroot.open_parent(self.rel)
            if not name:  # "devN/dir/": what opened as a directory is the target (EISDIR)
                return error_head(403, self.keepalive)
            refuse_symlink(dirfd, name)
            os.unlink(name, dir_fd=dirfd)
            if svc.durable:
                sync_dir(dirfd)
        except OSError as e:
            self.pool.disk_error(e, f"DELETE /{self.rel}")
            return error_head(status_for(e.errno, Op.DELETE), self.keepalive)
        finally:
            if dirfd >= 0:
                os.close(dirfd)
        svc.on_change(self.rel)
        return error_head(204, self.keepalive)

    def release(self) -> None:
        pass
