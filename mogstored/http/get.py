"""GET and HEAD of a file below a device (§3.5).

First on the thread that parsed the request, as far as the kernel guarantees it
cannot block: a lookup served from the dentry cache (RESOLVE_CACHED), fstat, and
for a small body a read that cannot wait for a disk (store/fs.py read_cached)
sent with the head in one send.
Whatever would wait for a disk goes to the device pool: open and stat there,
the head, then the body by sendfile from the pool as the socket drains."""
from __future__ import annotations

import errno
import os
import stat

from mogstored import log
from mogstored.event.expiry import STARVED
from mogstored.event.step import Next, Pool
from mogstored.http.head import Request, resolve_range
from mogstored.http.paths import Op, status_for
from mogstored.http.response import error_head, file_head
from mogstored.http.states import (
    LOOKING,
    OPENING,
    SENDING,
    SENDING_BULK,
    Connection,
    FileTransfer,
)
from mogstored.store.fs import read_cached

SENDFILE_CHUNK = 1 << 22
SENDFILE_SLICE = 100 << 20  # bytes per scheduling step before yielding
FADVISE_MIN = 256 << 10
INLINE_MAX = 64 << 10  # a cached body this small goes out with its head, read on the event thread
# O_NONBLOCK: a FIFO below devN must not block an I/O thread in open() (it is then 403).
_GET_FLAGS = os.O_RDONLY | os.O_NONBLOCK
_noatime = os.O_NOATIME
_PEER_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ETIMEDOUT)  # sendfile's socket side


class GetTransfer(FileTransfer):
    """One GET or HEAD: OPENING, then SENDING while body bytes remain."""

    __slots__ = ("offset", "remaining", "starved")  # offset, remaining: set for SENDING

    def __init__(self, conn: Connection, req: Request, rel: str) -> None:
        super().__init__(conn, req, rel)
        self.starved: OSError | None = None  # LOOKING found no descriptor left

    def step(self, pool: Pool | None) -> Next:
        state = self.conn.state
        if state is SENDING or state is SENDING_BULK:
            return self._send()
        return self._look() if state is LOOKING else self._open()

    def _look(self) -> Next:
        """LOOKING: answer from the caches, or go to OPENING in the pool."""
        conn, req = self.conn, self.req
        docroot = conn.svc.docroot
        try:
            if req.method == "HEAD":
                st = docroot.stat(self.rel, cached=True)
            else:
                self.file = docroot.open_cached(self.rel, _GET_FLAGS | _noatime)
                st = os.fstat(self.file)
        except FileNotFoundError:  # a cached negative entry
            return conn.answer(error_head(404, req.keepalive))
        except OSError as e:  # not cached (EAGAIN), or an error the pool handles and reports
            if e.errno in STARVED:
                self.starved = e  # the pool's open starts from this failure (expiry, retry)
            self.release()
            conn.state = OPENING
            return Next.RUN
        return self._respond(st, cached=True)

    def _open(self) -> Next:
        """OPENING (device pool)."""
        conn, req = self.conn, self.req
        svc = conn.svc
        try:
            if req.method == "HEAD":
                st = svc.process.retry_open(lambda: svc.docroot.stat(self.rel))  # no read permission needed (§3.5)
            else:
                self.file = svc.process.retry_open(self._open_file)
                st = os.fstat(self.file)
        except OSError as e:
            conn.pool.disk_error(e, f"{req.method} {req.path}")
            return conn.answer(error_head(status_for(e.errno, Op.READ), req.keepalive))
        return self._respond(st, cached=False)

    def _respond(self, st: os.stat_result, cached: bool) -> Next:
        """The head for ``st``, then the body: with it if ``cached`` and it is small and
        in the page cache, else by sendfile in the pool."""
        conn, req = self.conn, self.req
        if not stat.S_ISREG(st.st_mode):
            return conn.answer(error_head(403, req.keepalive))
        size = st.st_size
        status, first, last = (200, 0, size - 1) if req.range is None else resolve_range(req.range, size)
        if status == 416:
            return conn.answer(error_head(416, req.keepalive, size))
        length = last - first + 1
        head = file_head(status, st.st_mtime, length, req.keepalive, first, last, size)
        if req.method == "HEAD" or length == 0:
            return conn.answer(head)
        if cached and length <= INLINE_MAX:
            whole = self._with_cached_body(head, st.st_dev, first, length)
            if whole is not None:
                self.release()  # all read: the descriptor is free before the client hears back
                conn.pool.stats.sent += length  # metrics
                return conn.answer(whole)
        if length > FADVISE_MIN:
            os.posix_fadvise(self.file, first, length, os.POSIX_FADV_SEQUENTIAL)
        conn.out = memoryview(head)
        req.status = status  # metrics
        self.offset = first
        self.remaining = length
        conn.state = SENDING_BULK if length >= SENDFILE_CHUNK else SENDING
        return Next.RUN if cached else self._send()

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
        docroot = self.conn.svc.docroot
        try:
            return docroot.open(self.rel, _GET_FLAGS | _noatime)
        except OSError as e:
            if not _noatime or e.errno in (errno.ENOENT, errno.ELOOP, errno.EMFILE, errno.ENFILE):
                raise
            _noatime = 0  # files owned by others: EPERM with O_NOATIME
            return docroot.open(self.rel, _GET_FLAGS)

    def _send(self) -> Next:
        conn = self.conn
        if self.remaining < SENDFILE_CHUNK:
            conn.state = SENDING  # short sendfile calls from here on: not computing
        if conn.out and not conn.flush(more=True):
            return Next.WRITE
        sent = 0
        while self.remaining > 0:
            try:
                n = os.sendfile(conn.fd, self.file, self.offset, min(self.remaining, SENDFILE_CHUNK))
            except BlockingIOError:
                return Next.WRITE
            except OSError as e:
                if e.errno not in _PEER_GONE:  # the file's read failed: close short of Content-Length
                    conn.pool.disk_error(e, f"GET {self.req.path}: sendfile() at offset={self.offset}")
                return Next.CLOSE
            if n == 0:
                log.error(f"sendfile()-d 0 bytes at offset={self.offset}; file truncated?")
                return Next.CLOSE
            self.offset += n
            self.remaining -= n
            sent += n
            conn.pool.stats.sent += n
            if sent >= SENDFILE_SLICE and self.remaining:
                return Next.ACTIVE
        return conn.finish()
