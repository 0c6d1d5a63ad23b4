"""GET and HEAD of a file below a device (§3.5).

First on the thread that parsed the request, as far as the kernel guarantees it
cannot block: a lookup served from the dentry cache (RESOLVE_CACHED), fstat, and
for a small body a read that cannot wait for a disk (store/fs.py read_cached)
sent with the head in one send.
Whatever would wait for a disk goes to the device pool: open and stat there,
the head; the connection then sends the body by sendfile from the pool as the
socket drains."""
from __future__ import annotations

import errno
import os
import stat

from mogstored.event.expiry import STARVED
from mogstored.http.head import Request, resolve_range
from mogstored.http.paths import Op, status_for
from mogstored.http.response import error_head, file_head
from mogstored.http.states import OPEN, SEND, FileTransfer, Result
from mogstored.node.service import ServiceContext
from mogstored.store.fs import read_cached
from mogstored.store.iopool import IoPool

FADVISE_MIN = 256 << 10
INLINE_MAX = 64 << 10  # a cached body this small goes out with its head, read on the event thread
# O_NONBLOCK: a FIFO below devN must not block an I/O thread in open() (it is then 403).
_GET_FLAGS = os.O_RDONLY | os.O_NONBLOCK
_noatime = os.O_NOATIME


class GetTransfer(FileTransfer):
    """One GET or HEAD: LOOKING, or OPENING; then SENDING while body bytes remain."""

    __slots__ = ("head", "offset", "remaining", "starved")  # head, offset, remaining: for SEND

    def __init__(self, svc: ServiceContext, pool: IoPool, req: Request, rel: str) -> None:
        super().__init__(svc, pool, req, rel)
        self.starved: OSError | None = None  # LOOKING found no descriptor left

    def look(self) -> Result:
        """LOOKING: an answer from the caches, SEND of a large cached file, or OPEN in the pool."""
        req = self.req
        docroot = self.svc.docroot
        try:
            if req.method == "HEAD":
                st = docroot.stat(self.rel, cached=True)
            else:
                self.file = docroot.open_cached(self.rel, _GET_FLAGS | _noatime)
                st = os.fstat(self.file)
        except FileNotFoundError:  # a cached negative entry
            return error_head(404, req.keepalive)
        except OSError as e:  # not cached (EAGAIN), or an error the pool handles and reports
            if e.errno in STARVED:
                self.starved = e  # the pool's open starts from this failure (expiry, retry)
            self.release()
            return OPEN
        return self._respond(st, cached=True)

    def open(self) -> Result:
        """OPENING (device pool): an answer, or SEND."""
        req = self.req
        svc = self.svc
        try:
            if req.method == "HEAD":
                st = svc.process.retry_open(lambda: svc.docroot.stat(self.rel))  # no read permission needed (§3.5)
            else:
                self.file = svc.process.retry_open(self._open_file)
                st = os.fstat(self.file)
        except OSError as e:
            self.pool.disk_error(e, f"{req.method} {req.path}")
            return error_head(status_for(e.errno, Op.READ), req.keepalive)
        return self._respond(st, cached=False)

    def _respond(self, st: os.stat_result, cached: bool) -> Result:
        """The head for ``st``, and the body: with it if ``cached`` and it is small and
        in the page cache, else SEND (by sendfile in the pool)."""
        req = self.req
        if not stat.S_ISREG(st.st_mode):
            return error_head(403, req.keepalive)
        size = st.st_size
        status, first, last = (200, 0, size - 1) if req.range is None else resolve_range(req.range, size)
        if status == 416:
            return error_head(416, req.keepalive, size)
        length = last - first + 1
        head = file_head(status, st.st_mtime, length, req.keepalive, first, last, size)
        if req.method == "HEAD" or length == 0:
            return head
        if cached and length <= INLINE_MAX:
            whole = self._with_cached_body(head, st.st_dev, first, length)
            if whole is not None:
                self.release()  # all read: the descriptor is free before the client hears back
                self.pool.stats.sent += length  # metrics
                return whole
        if length > FADVISE_MIN:
            os.posix_fadvise(self.file, first, length, os.POSIX_FADV_SEQUENTIAL)
        req.status = status  # metrics
        self.head = head
        self.offset = first
        self.remaining = length
        return SEND

    def _with_cached_body(self, head: bytes, st_dev: int, first: int, length: int) -> bytearray | None:
        """head + body if reading the body cannot wait for a disk, else None."""
        whole = bytearray(len(head) + length)
        whole[: len(head)] = head
        with memoryview(whole) as view:
            if not read_cached(self.file, st_dev, view[len(head) :], first):
                return None
        return whole

    def _open_file(self) -> int:
        global _noatime
        if self.starved is not None:
            e, self.starved = self.starved, None
            raise e
        docroot = self.svc.docroot
        try:
            return docroot.open(self.rel, _GET_FLAGS | _noatime)
        except OSError as e:
            if not _noatime or e.errno in (errno.ENOENT, errno.ELOOP, errno.EMFILE, errno.ENFILE):
                raise
            _noatime = 0  # files owned by others: EPERM with O_NOATIME
            return docroot.open(self.rel, _GET_FLAGS)
