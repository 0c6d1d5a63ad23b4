"""PUT (§3.6): an unnamed file in the target's directory (or the target itself
for a Content-Range write), the body written as the connection receives it, MD5
checked, then linked into place (store/atomic.py).  The file gets the
reference's final mode, 0666 & ~umask: the unnamed one from its creation (no
fchmod), a named temp file or a Content-Range target by fchmod before commit.  Everything runs
in the device pool; while the socket is empty the client waits in epoll holding
no thread."""
from __future__ import annotations

import errno
import os

from mogstored import digests, log
from mogstored.http.chunked import ChunkedDecoder
from mogstored.http.dav import refuse_symlink
from mogstored.http.head import Request
from mogstored.http.paths import Op, status_for
from mogstored.http.response import error_head
from mogstored.http.states import BODY, FileTransfer, Result
from mogstored.node.service import ServiceContext
from mogstored.store import atomic
from mogstored.store.devices import umask
from mogstored.store.fs import Docroot
from mogstored.store.iopool import IoPool

_PUT_MODE = 0o666 & ~umask()  # the kernel applies the umask at creation too: the same bits


class PutTransfer(FileTransfer):
    """One PUT: CREATING, then RECEIVING until the body is complete."""

    __slots__ = ("chunks", "dirfd", "md5", "offset", "remaining", "replacing", "tmpname", "written")

    def __init__(self, svc: ServiceContext, pool: IoPool, req: Request, rel: str) -> None:
        super().__init__(svc, pool, req, rel)
        self.dirfd = -1
        self.tmpname: str | None = None  # a named temp file (no O_TMPFILE here)
        self.replacing = False  # the target existed when the file was created
        self.offset = req.content_range[0] if req.content_range else 0
        self.written = 0
        self.md5 = digests.md5() if (req.content_md5 is not None or req.trailer_md5) else None
        # A chunked body ends when its decoder says so; any other after ``remaining`` bytes.
        self.chunks = ChunkedDecoder() if req.chunked else None
        self.remaining = 0 if req.chunked else req.content_length or 0

    def release(self) -> None:
        super().release()
        if self.dirfd >= 0:
            os.close(self.dirfd)
            self.dirfd = -1

    # -- CREATING ------------------------------------------------------------
    def create(self) -> Result:
        """BODY once the file is there, or the status of the failure."""
        docroot = self.svc.docroot
        try:
            self.svc.process.retry_open(lambda: self._create_with_parents(docroot))
        except OSError as e:
            self.pool.stats.io_error(e.errno)
            log.error(f"problem starting PUT for path={self.req.path} ({e.strerror})")
            return status_for(e.errno, Op.WRITE)
        return BODY

    def _create_with_parents(self, docroot: Docroot) -> None:
        try:
            self._create(docroot)
        except FileNotFoundError:
            self.release()  # a directory vanishing under us must not leak dirfd
            docroot.makedirs(self.rel.rpartition("/")[0], sync=self.svc.durable)
            self._create(docroot)

    def _create(self, docroot: Docroot) -> None:
        self.dirfd, name = docroot.open_parent(self.rel)
        self.replacing = refuse_symlink(self.dirfd, name)
        if self.req.content_range is not None:
            self.tmpname = None
            self.file = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=self.dirfd)
            return
        self.file, self.tmpname = atomic.create(self.dirfd, name, _PUT_MODE)

    # -- RECEIVING: the connection hands in what it receives -----------------------
    def computes(self, bufsize: int) -> bool:
        """The next receiving step hashes, or copies whole buffers of ``bufsize``."""
        return self.md5 is not None or self.remaining >= bufsize

    def want(self, bufsize: int) -> int:
        """How much to receive next, at most ``bufsize``: never past a body of known length."""
        return bufsize if self.chunks is not None else min(bufsize, self.remaining)

    def done(self) -> bool:
        return self.chunks.done if self.chunks is not None else self.remaining == 0

    def consume(self, data: memoryview) -> int:
        """Write body bytes from ``data``; return how many belonged to the body
        (what follows a chunked body is the next request's).  HttpError for a
        bad chunked framing, OSError from the disk (see :meth:`write_failed`)."""
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
            self.pool.stats.received += n
            data = data[n:]

    def write_failed(self, e: OSError) -> int:
        """A write failed: counted, logged, the file dropped; the status to fail with."""
        self.pool.stats.io_error(e.errno)
        log.error(f"pwrite() to {self.req.path} failed at offset: {self.offset}: {e.strerror}")
        self.discard()
        return status_for(e.errno, Op.WRITE)

    def progress(self) -> int:
        """Body bytes in place so far (for the log when the client goes away)."""
        return self.offset if self.req.content_range else self.written

    def discard(self) -> None:
        """No file: the temp name unlinked (an unnamed file goes with its descriptor)."""
        if self.tmpname is not None and self.dirfd >= 0:
            try:
                os.unlink(self.tmpname, dir_fd=self.dirfd)
            except OSError as e:
                log.error(f"Failed to unlink {self.tmpname} (in {self.svc.docroot.path}): {e.strerror}")
            self.tmpname = None
        self.release()

    def commit(self) -> Result:
        """The body is complete: checked and linked into place; the answer, or the
        status of the failure."""
        req = self.req
        if self.md5 is not None:
            expected = self.chunks.trailer_md5 if self.chunks is not None and self.chunks.trailer_md5 else req.content_md5
            if expected != self.md5.digest():
                self.discard()  # mismatch keeps the connection (§3.6.4)
                return error_head(400, req.keepalive)
        try:
            if self.tmpname is not None or req.content_range is not None:  # not created with it
                os.fchmod(self.file, _PUT_MODE)
        except OSError as e:
            self.pool.stats.io_error(e.errno)
            log.error(f"fchmod() failed: {e.strerror}")
            self.discard()
            return 500
        name = self.rel.rpartition("/")[2]
        try:
            atomic.commit(self.file, self.tmpname, self.dirfd, name, self.svc.durable,
                          in_place=req.content_range is not None, replacing=self.replacing)
        except OSError as e:
            self.pool.stats.io_error(e.errno)
            log.error(f"committing {req.path} failed: {e.strerror}")
            if isinstance(e, atomic.Unsynced):
                self.tmpname = None  # renamed into place already: nothing left to unlink
            self.discard()
            return 500
        self.tmpname = None
        self.svc.on_change(self.rel)
        return error_head(201, req.keepalive)
