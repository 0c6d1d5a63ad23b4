"""PUT (§3.6): an unnamed file in the target's directory (or the target itself
for a Content-Range write), the body written as it arrives, MD5 checked, then
fchmod and linked into place (store/atomic.py).  Everything runs in the device pool; while the
socket is empty the client waits in epoll holding no thread."""
from __future__ import annotations

import errno
import os

from mogstored import digests, log
from mogstored.event.expiry import tcp_info
from mogstored.event.step import Next, Pool
from mogstored.http.chunked import ChunkedDecoder
from mogstored.http.dav import refuse_symlink
from mogstored.http.fields import HttpError
from mogstored.http.head import Request
from mogstored.http.paths import Op, status_for
from mogstored.http.response import error_head
from mogstored.http.states import (
    CREATING,
    RECEIVING,
    RECEIVING_BULK,
    Connection,
    FileTransfer,
)
from mogstored.store import atomic
from mogstored.store.devices import umask
from mogstored.store.fs import Docroot
from mogstored.store.iopool import thread_buffer

_PUT_MODE = 0o666 & ~umask()


class PutTransfer(FileTransfer):
    """One PUT: CREATING, then RECEIVING until the body is complete."""

    __slots__ = ("chunks", "dirfd", "md5", "offset", "remaining", "replacing", "tmpname", "written")

    def __init__(self, conn: Connection, req: Request, rel: str) -> None:
        super().__init__(conn, req, rel)
        self.dirfd = -1
        self.tmpname: str | None = None  # a named temp file (no O_TMPFILE here)
        self.replacing = False  # the target existed when the file was created
        self.offset = req.content_range[0] if req.content_range else 0
        self.written = 0
        self.md5 = digests.md5() if (req.content_md5 is not None or req.trailer_md5) else None
        # A chunked body ends when its decoder says so; any other after ``remaining`` bytes.
        self.chunks = ChunkedDecoder() if req.chunked else None
        self.remaining = 0 if req.chunked else req.content_length or 0

    def step(self, pool: Pool | None) -> Next:
        return self._open() if self.conn.state is CREATING else self._receive()

    def release(self) -> None:
        super().release()
        if self.dirfd >= 0:
            os.close(self.dirfd)
            self.dirfd = -1

    # -- CREATING ------------------------------------------------------------
    def _open(self) -> Next:
        conn = self.conn
        docroot = conn.svc.docroot
        try:
            conn.svc.process.retry_open(lambda: self._create_with_parents(docroot))
        except OSError as e:
            conn.pool.stats.io_error(e.errno)
            log.error(f"problem starting PUT for path={self.req.path} ({e.strerror})")
            return conn.fail(status_for(e.errno, Op.WRITE))
        conn.state = RECEIVING
        return self._receive()

    def _create_with_parents(self, docroot: Docroot) -> None:
        try:
            self._create(docroot)
        except FileNotFoundError:
            self.release()  # a directory vanishing under us must not leak dirfd
            docroot.makedirs(self.rel.rpartition("/")[0], sync=self.conn.svc.durable)
            self._create(docroot)

    def _create(self, docroot: Docroot) -> None:
        self.dirfd, name = docroot.open_parent(self.rel)
        self.replacing = refuse_symlink(self.dirfd, name)
        if self.req.content_range is not None:
            self.tmpname = None
            self.file = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=self.dirfd)
            return
        self.file, self.tmpname = atomic.create(self.dirfd, name)

    # -- RECEIVING -------------------------------------------------------------
    def _receive(self) -> Next:
        conn = self.conn
        try:
            # Body bytes that arrived with the head come first.
            if conn.pos < len(conn.inbuf):
                # One copy (at most one head's worth): a view kept by a write error's
                # traceback would pin inbuf.
                with memoryview(conn.inbuf) as whole:
                    body = bytes(whole[conn.pos :])
                used = self._consume(memoryview(body))
                conn.pos += used
                if conn.pos >= len(conn.inbuf):
                    conn.inbuf.clear()
                    conn.pos = 0
            buf = thread_buffer()
            # Hashing, or copies of whole buffers: another thread may run beside this one.
            conn.state = RECEIVING_BULK if self.md5 is not None or self.remaining >= len(buf) else RECEIVING
            while not self._body_done():
                want = len(buf) if self.chunks is not None else min(len(buf), self.remaining)
                try:
                    n = conn.sock.recv_into(buf, want)
                except BlockingIOError:
                    return Next.READ
                except OSError as e:
                    return self._abort(e.strerror or "recv failed")
                if n == 0:
                    return self._abort("premature EOF")
                used = self._consume(buf[:n])
                if used < n:  # the next request, pipelined after a chunked body
                    conn.inbuf += buf[used:n]
        except HttpError as e:
            self._discard_tmp()
            return conn.fail(e.status)
        except OSError as e:
            conn.pool.stats.io_error(e.errno)
            log.error(f"pwrite() to {self.req.path} failed at offset: {self.offset}: {e.strerror}")
            self._discard_tmp()
            return conn.fail(status_for(e.errno, Op.WRITE))
        return self._commit()

    def _body_done(self) -> bool:
        return self.chunks.done if self.chunks is not None else self.remaining == 0

    def _consume(self, data: memoryview) -> int:
        """Write body bytes from ``data``; return how many belonged to the body."""
        chunks = self.chunks
        if chunks is None:
            n = min(len(data), self.remaining)
            self._write(data[:n])
            self.remaining -= n
            return n
        used = 0
        while not chunks.done:
            n, piece = chunks.decode(data[used:])
            if n == 0:
                break
            used += n
            if piece is not None:
                self._write(piece)
        return used

    def _write(self, data: memoryview) -> None:
        if self.md5 is not None:
            self.md5.update(data)
        while data:
            n = os.pwrite(self.file, data, self.offset)
            if n == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.offset += n
            self.written += n
            self.conn.pool.stats.received += n
            data = data[n:]

    def _abort(self, why: str) -> Next:
        """The client went away mid-body: no response, no file (§1.8)."""
        conn, req = self.conn, self.req
        info = tcp_info(conn.sock)
        last_recv = 0 if info is None else info.last_data_recv
        done = self.offset if req.content_range else self.written
        log.error(f"PUT {req.path} failed from {conn.peer} after {done} bytes: {why}")
        log.error(f"last_data_recv={last_recv}ms from {conn.peer} for PUT {req.path}")
        self._discard_tmp()
        return Next.CLOSE

    def _discard_tmp(self) -> None:
        if self.tmpname is not None and self.dirfd >= 0:
            try:
                os.unlink(self.tmpname, dir_fd=self.dirfd)
            except OSError as e:
                log.error(f"Failed to unlink {self.tmpname} (in {self.conn.svc.docroot.path}): {e.strerror}")
            self.tmpname = None
        self.release()

    def _commit(self) -> Next:
        conn, req = self.conn, self.req
        if self.md5 is not None:
            expected = self.chunks.trailer_md5 if self.chunks is not None and self.chunks.trailer_md5 else req.content_md5
            if expected != self.md5.digest():
                self._discard_tmp()  # mismatch keeps the connection (§3.6.4)
                return conn.answer(error_head(400, req.keepalive))
        try:
            os.fchmod(self.file, _PUT_MODE)
        except OSError as e:
            conn.pool.stats.io_error(e.errno)
            log.error(f"fchmod() failed: {e.strerror}")
            self._discard_tmp()
            return conn.fail(500)
        name = self.rel.rpartition("/")[2]
        try:
            atomic.commit(self.file, self.tmpname, self.dirfd, name, conn.svc.durable,
                          in_place=req.content_range is not None, replacing=self.replacing)
        except OSError as e:
            conn.pool.stats.io_error(e.errno)
            log.error(f"committing {req.path} failed: {e.strerror}")
            if isinstance(e, atomic.Unsynced):
                self.tmpname = None  # renamed into place already: nothing left to unlink
            self._discard_tmp()
            return conn.fail(500)
        self.tmpname = None
        conn.svc.on_change(self.rel)
        return conn.answer(error_head(201, req.keepalive))
