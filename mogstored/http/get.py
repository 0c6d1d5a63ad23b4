"""GET and HEAD of a file below a device (§3.5): open and stat in the device
pool, the head, then the body by sendfile from the pool as the socket drains."""
from __future__ import annotations

import errno
import os
import stat

from mogstored import log
from mogstored.event.step import Next, Pool
from mogstored.http.parser import resolve_range
from mogstored.http.paths import Op, status_for
from mogstored.http.response import error_head, file_head
from mogstored.http.states import SENDING, FileTransfer

SENDFILE_CHUNK = 1 << 22
SENDFILE_SLICE = 100 << 20  # bytes per scheduling step before yielding
FADVISE_MIN = 256 << 10
# O_NONBLOCK: a FIFO below devN must not block an I/O thread in open() (it is then 403).
_GET_FLAGS = os.O_RDONLY | os.O_NONBLOCK
_noatime = os.O_NOATIME


class GetTransfer(FileTransfer):
    """One GET or HEAD: OPENING, then SENDING while body bytes remain."""

    __slots__ = ("offset", "remaining")  # set by OPENING for SENDING

    def step(self, pool: Pool | None) -> Next:
        return self._send() if self.conn.state is SENDING else self._open()

    def _open(self) -> Next:
        conn, req = self.conn, self.req
        svc = conn.svc
        try:
            if req.method == "HEAD":
                st = svc.process.retry_open(lambda: svc.docroot.stat(self.rel))  # no read permission needed (§3.5)
            else:
                self.file = svc.process.retry_open(self._open_file)
                st = os.fstat(self.file)
        except OSError as e:
            conn.pool.stats.io_error(e.errno)
            return conn.answer(error_head(status_for(e.errno, Op.READ), req.keepalive))
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
        if length > FADVISE_MIN:
            os.posix_fadvise(self.file, first, length, os.POSIX_FADV_SEQUENTIAL)
        conn.out = memoryview(head)
        req.status = status  # metrics
        self.offset = first
        self.remaining = length
        conn.state = SENDING
        return self._send()

    def _open_file(self) -> int:
        global _noatime
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
        if conn.out and not conn.flush(more=True):
            return Next.WRITE
        sent = 0
        while self.remaining > 0:
            try:
                n = os.sendfile(conn.fd, self.file, self.offset, min(self.remaining, SENDFILE_CHUNK))
            except BlockingIOError:
                return Next.WRITE
            except OSError:
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
