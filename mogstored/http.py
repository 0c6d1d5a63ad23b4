"""One HTTP connection as a state machine driven by the event core.

Socket reads and request parsing run on epoll workers.  Anything that touches a
disk (open, stat, sendfile from the file, writes, rename, unlink) runs in the
I/O pool of the device the path names: the step returns that pool, and the
pool thread runs the next step.  ``self._state`` is the bound method of the next
step; each returns what the client needs next (see :class:`core.Next`).
"""
from __future__ import annotations

import errno
import hashlib
import os
import socket
import stat
import struct
from typing import TYPE_CHECKING, Callable

from . import log, store
from .core import Next
from .expire import retry_starved
from .http_parser import (
    MAX_HEAD,
    ChunkedDecoder,
    HeadParser,
    HttpError,
    Request,
    check_put_framing,
    is_put_path,
    resolve_range,
)
from .http_response import error_head, file_head, root_head
from .ioq import thread_buffer

if TYPE_CHECKING:
    from .ioq import IoPool
    from .service import ServiceContext

Step = Callable[["IoPool | None"], "Next | IoPool"]

SENDFILE_CHUNK = 1 << 22
SENDFILE_SLICE = 100 << 20  # bytes per scheduling step before yielding
FADVISE_MIN = 256 << 10


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_PUT_MODE = 0o666 & ~_umask()  # read once, while the process is single-threaded
_TCP_INFO_LEN = 104
_LAST_DATA_RECV = 52  # offset of tcpi_last_data_recv in struct tcp_info
_noatime = os.O_NOATIME
# O_NONBLOCK: a FIFO below devN must not block an I/O thread in open() (it is then 403).
_GET_FLAGS = os.O_RDONLY | os.O_NONBLOCK


def _open_status(err: int) -> int:
    """Status for a failed GET/HEAD open or stat (§3.5)."""
    if err == errno.ENOENT:
        return 404
    if err in (errno.EACCES, errno.ELOOP):
        return 403
    return 500


def _put_status(err: int) -> int:
    """Status for a failed PUT open or write (§3.6.4)."""
    if err == errno.ENOENT:
        return 404
    if err in (errno.EACCES, errno.EPERM, errno.ELOOP):
        return 403
    if err == errno.EINVAL:
        return 400
    if err in (errno.ENOSPC, errno.EFBIG, errno.ERANGE, errno.EDQUOT):
        return 507
    return 500


def _refuse_symlink(dirfd: int, name: str) -> None:
    """§3.4 item 4: a symlink below devN is never replaced, written through or
    unlinked, even where rename/unlink would only touch the link (ELOOP -> 403)."""
    try:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), name)


class HttpClient:
    """A client of an HTTP (or GET-only) listener."""

    expirable = True  # idle ones are shut down when descriptors run out (expire.py)

    __slots__ = (
        "sock", "fd", "svc", "get_only", "inbuf", "pos", "out", "eof", "_state", "req",
        "pool", "rel", "file", "offset", "remaining", "tmpname", "dirfd", "md5",
        "chunks", "written", "peer", "head",
    )

    def __init__(self, sock: socket.socket, svc: "ServiceContext", get_only: bool) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.svc = svc
        self.get_only = get_only
        self.inbuf = bytearray()
        self.pos = 0  # start of unprocessed input in inbuf
        self.out: memoryview | None = None  # response head bytes not yet sent
        self.eof = False
        self._state: Step = self._read_head
        self.req: Request | None = None
        self.pool: IoPool | None = None
        self.rel = ""
        self.file = -1
        self.dirfd = -1
        self.tmpname: str | None = None
        self.offset = self.remaining = self.written = 0
        self.md5 = None
        self.chunks: ChunkedDecoder | None = None
        self.head = HeadParser()  # the next request's head, judged as its bytes arrive
        # Kept from the start: after a reset getpeername() fails, yet the log names the peer.
        try:
            self.peer = "%s:%d" % sock.getpeername()[:2]
        except OSError:
            self.peer = "?:0"

    # -- event core interface --------------------------------------------
    def step(self, pool: "IoPool | None") -> "Next | IoPool":
        return self._state(pool)

    def idle(self) -> bool:
        return self._state == self._read_head and self.pos >= len(self.inbuf)

    def close(self) -> None:
        self._release_file()
        self.sock.close()

    # -- reading and dispatching requests --------------------------------
    def _read_head(self, pool: "IoPool | None") -> "Next | IoPool":
        drained = False  # the last recv got less than asked: nothing more is queued
        while True:
            try:
                parsed = self.head.parse(self.inbuf, self.pos) if self.pos < len(self.inbuf) else None
            except HttpError as e:
                return self._fail(e.status)
            if parsed is not None:
                req, self.pos = parsed
                self.head = HeadParser()
                return self._dispatch(req)
            if self.eof:
                return Next.CLOSE
            if drained:
                return Next.READ  # one recv per wake-up for heads trickling in
            want = MAX_HEAD + 1 - (len(self.inbuf) - self.pos)
            try:
                data = self.sock.recv(want)
            except BlockingIOError:
                # Shutting down: closed only once nothing at all has arrived (a
                # request already sent is answered, not reset by the close).
                return Next.CLOSE if self.svc.server.quitting and self.pos >= len(self.inbuf) else Next.READ
            except OSError:
                return Next.CLOSE
            if not data:
                self.eof = True
                continue
            drained = len(data) < want
            if self.pos:
                del self.inbuf[: self.pos]
                self.pos = 0
            self.inbuf += data

    def _dispatch(self, req: Request) -> "Next | IoPool":
        self.req = req
        method, path = req.method, req.path
        if method in ("GET", "HEAD"):
            if path == "/":
                if req.range is not None and resolve_range(req.range, 0)[0] == 416:
                    return self._respond(error_head(416, req.keepalive, 0))
                return self._respond(root_head(req.keepalive))
            if ".." in path:
                return self._respond(error_head(403, req.keepalive))
            usage = self.svc.usage_body(path)
            if usage is not None:
                return self._respond_bytes(*usage)
            return self._to_pool(path, self._open_get)
        if method == "PUT":
            if self.get_only:
                return self._fail(405)
            if ".." in path or not is_put_path(path):
                return self._fail(400)
            if self.svc.refuses_writes(path):
                return self._fail(507)
            try:
                check_put_framing(req)
            except HttpError as e:
                return self._fail(e.status)
            return self._to_pool(path, self._open_put)
        if method == "DELETE":
            if self.get_only:
                return self._respond(error_head(405, req.keepalive))
            if path == "/" or ".." in path:
                return self._respond(error_head(403, req.keepalive))
            return self._to_pool(path, self._delete)
        # MKCOL never creates anything: the tracker takes 400 as "no MKCOL here".
        if self.get_only:
            return self._respond(error_head(405, req.keepalive))
        return self._respond(error_head(403 if ".." in path else 400, req.keepalive))

    def _to_pool(self, path: str, state: Step) -> "IoPool":
        self.rel = path.lstrip("/")
        self.pool = self.svc.ioq.for_path(self.svc.docroot.path, path)
        self._state = state
        return self.pool

    # -- responses ---------------------------------------------------------
    def _fail(self, status: int) -> "Next | IoPool":
        """An error that ends the connection once answered (§3.8.2)."""
        if self.req is not None:
            self.req.keepalive = False
        self.inbuf.clear()
        self.pos = 0
        self.eof = True
        return self._respond(error_head(status, False))

    def _respond(self, head: bytes) -> "Next | IoPool":
        self.out = memoryview(head)
        self._state = self._write_head_then_finish
        return self._write_head_then_finish(None)

    def _respond_bytes(self, body: bytes, mtime: float) -> "Next | IoPool":
        """A GET/HEAD answered from memory (``devN/usage``), Range included."""
        req = self.req
        size = len(body)
        status, first, last = (200, 0, size - 1) if req.range is None else resolve_range(req.range, size)
        if status == 416:
            return self._respond(error_head(416, req.keepalive, size))
        head = file_head(status, mtime, last - first + 1, req.keepalive, first, last, size)
        return self._respond(head if req.method == "HEAD" else head + body[first : last + 1])

    def _write_head_then_finish(self, pool: "IoPool | None") -> "Next | IoPool":
        if not self._flush():
            return Next.WRITE
        return self._finish()

    def _flush(self, more: bool = False) -> bool:
        """Send pending head bytes; False while the socket is full."""
        out = self.out
        while out:
            try:
                n = self.sock.send(out, socket.MSG_MORE if more else 0)
            except BlockingIOError:
                self.out = out
                return False
            except OSError:
                self.out = None
                self.eof = True
                if self.req is not None:
                    self.req.keepalive = False
                return True
            out = out[n:]
        self.out = None
        return True

    def _finish(self) -> "Next | IoPool":
        """The response is out: close, or go on with the next request."""
        req, self.req = self.req, None
        self._release_file()
        self._state = self._read_head
        if req is None or not req.keepalive:
            return Next.CLOSE
        if self.pos < len(self.inbuf):
            return Next.ACTIVE  # pipelined: behind the other ready clients
        self.inbuf.clear()
        self.pos = 0
        if self.eof:
            return Next.CLOSE
        if self.svc.server.quitting:
            # The socket may hold the start of the next request (a PUT body read to its
            # last byte leaves it there): _read_head answers it, or closes if none came.
            return Next.ACTIVE
        return Next.READ

    def _release_file(self) -> None:
        if self.file >= 0:
            os.close(self.file)
            self.file = -1
        if self.dirfd >= 0:
            os.close(self.dirfd)
            self.dirfd = -1

    # -- GET and HEAD (device pool) ------------------------------------
    def _open_get(self, pool: "IoPool | None") -> "Next | IoPool":
        req = self.req
        docroot = self.svc.docroot
        try:
            if req.method == "HEAD":
                st = retry_starved(self.svc.server.queue, lambda: docroot.stat(self.rel))  # no read permission needed (§3.5)
            else:
                self.file = retry_starved(self.svc.server.queue, self._open_for_get)
                st = os.fstat(self.file)
        except OSError as e:
            return self._respond(error_head(_open_status(e.errno), req.keepalive))
        if not stat.S_ISREG(st.st_mode):
            return self._respond(error_head(403, req.keepalive))
        size = st.st_size
        status, first, last = (200, 0, size - 1) if req.range is None else resolve_range(req.range, size)
        if status == 416:
            return self._respond(error_head(416, req.keepalive, size))
        length = last - first + 1
        self.out = memoryview(file_head(status, st.st_mtime, length, req.keepalive, first, last, size))
        if req.method == "HEAD" or length == 0:
            self._state = self._write_head_then_finish
            return self._write_head_then_finish(pool)
        if length > FADVISE_MIN:
            os.posix_fadvise(self.file, first, length, os.POSIX_FADV_SEQUENTIAL)
        self.offset = first
        self.remaining = length
        self._state = self._send_file
        return self._send_file(pool)

    def _open_for_get(self) -> int:
        global _noatime
        try:
            return self.svc.docroot.open(self.rel, _GET_FLAGS | _noatime)
        except OSError as e:
            if not _noatime or e.errno in (errno.ENOENT, errno.ELOOP, errno.EMFILE, errno.ENFILE):
                raise
            _noatime = 0  # files owned by others: EPERM with O_NOATIME
            return self.svc.docroot.open(self.rel, _GET_FLAGS)

    def _send_file(self, pool: "IoPool | None") -> "Next | IoPool":
        if self.out is not None and not self._flush(more=True):
            return Next.WRITE
        if pool is not self.pool:
            return self.pool  # sendfile reads the disk
        sent = 0
        while self.remaining > 0:
            try:
                n = os.sendfile(self.fd, self.file, self.offset, min(self.remaining, SENDFILE_CHUNK))
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
            if sent >= SENDFILE_SLICE and self.remaining:
                return Next.ACTIVE
        return self._finish()

    # -- PUT (device pool) ------------------------------------------------
    def _open_put(self, pool: "IoPool | None") -> "Next | IoPool":
        req = self.req
        docroot = self.svc.docroot
        try:
            retry_starved(self.svc.server.queue, lambda: self._create_with_parents(docroot))
        except OSError as e:
            log.error(f"problem starting PUT for path={req.path} ({e.strerror})")
            return self._fail(_put_status(e.errno))
        self.offset = req.content_range[0] if req.content_range else 0
        self.written = 0
        self.md5 = hashlib.md5() if (req.content_md5 is not None or req.trailer_md5) else None
        if req.chunked:
            self.chunks = ChunkedDecoder()
            self.remaining = -1
        else:
            self.chunks = None
            self.remaining = req.content_length or 0
        self._state = self._put_body
        return self._put_body(pool)

    def _create_with_parents(self, docroot) -> None:
        try:
            self._create(docroot)
        except FileNotFoundError:
            self._release_file()  # a directory vanishing under us must not leak dirfd
            docroot.makedirs(self.rel.rpartition("/")[0], sync=self.svc.durable)
            self._create(docroot)

    def _create(self, docroot) -> None:
        self.dirfd, name = docroot.open_parent(self.rel)
        _refuse_symlink(self.dirfd, name)
        if self.req.content_range is not None:
            self.tmpname = None
            self.file = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=self.dirfd)
            return
        self.file, self.tmpname = store.create(self.dirfd, name)

    def _put_body(self, pool: "IoPool | None") -> "Next | IoPool":
        if pool is not self.pool:
            return self.pool
        try:
            # Body bytes that arrived with the head come first.
            if self.pos < len(self.inbuf):
                # A copy (at most one head's worth): a view would pin inbuf.
                used = self._consume(memoryview(bytes(self.inbuf[self.pos :])))
                self.pos += used
                if self.pos >= len(self.inbuf):
                    self.inbuf.clear()
                    self.pos = 0
            buf = thread_buffer()
            while not self._body_done():
                want = len(buf) if self.chunks is not None else min(len(buf), self.remaining)
                try:
                    n = self.sock.recv_into(buf, want)
                except BlockingIOError:
                    return Next.READ
                except OSError as e:
                    return self._abort_put(e.strerror)
                if n == 0:
                    return self._abort_put("premature EOF")
                used = self._consume(buf[:n])
                if used < n:  # the next request, pipelined after a chunked body
                    self.inbuf += buf[used:n]
        except HttpError as e:
            self._discard_tmp()
            return self._fail(e.status)
        except OSError as e:
            log.error(f"pwrite() to {self.req.path} failed at offset: {self.offset}: {e.strerror}")
            self._discard_tmp()
            return self._fail(_put_status(e.errno))
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
            data = data[n:]

    def _abort_put(self, why: str) -> Next:
        """The client went away mid-body: no response, no file (§1.8)."""
        req = self.req
        try:
            info = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
            (last_recv,) = struct.unpack_from("I", info, _LAST_DATA_RECV)
        except OSError:
            last_recv = 0
        done = self.offset if req.content_range else self.written
        log.error(f"PUT {req.path} failed from {self.peer} after {done} bytes: {why}")
        log.error(f"last_data_recv={last_recv}ms from {self.peer} for PUT {req.path}")
        self._discard_tmp()
        return Next.CLOSE

    def _discard_tmp(self) -> None:
        if self.tmpname is not None and self.dirfd >= 0:
            try:
                os.unlink(self.tmpname, dir_fd=self.dirfd)
            except OSError as e:
                log.error(f"Failed to unlink {self.tmpname} (in {self.svc.docroot.path}): {e.strerror}")
            self.tmpname = None
        self._release_file()

    def _commit(self) -> "Next | IoPool":
        req = self.req
        if self.md5 is not None:
            expected = self.chunks.trailer_md5 if self.chunks is not None and self.chunks.trailer_md5 else req.content_md5
            if expected != self.md5.digest():
                self._discard_tmp()  # mismatch keeps the connection (§3.6.4)
                return self._respond(error_head(400, req.keepalive))
        try:
            os.fchmod(self.file, _PUT_MODE)
        except OSError as e:
            log.error(f"fchmod() failed: {e.strerror}")
            self._discard_tmp()
            return self._fail(500)
        name = self.rel.rpartition("/")[2]
        try:
            store.commit(self.file, self.tmpname, self.dirfd, name, self.svc.durable,
                         in_place=req.content_range is not None)
        except OSError as e:
            log.error(f"committing {req.path} failed: {e.strerror}")
            self._discard_tmp()
            return self._fail(500)
        self.tmpname = None
        self.svc.on_change(self.rel)
        return self._respond(error_head(201, req.keepalive))

    # -- DELETE (device pool) --------------------------------------------
    def _delete(self, pool: "IoPool | None") -> "Next | IoPool":
        keep = self.req.keepalive
        if "/" not in self.rel:  # the device directory itself, or a top-level entry
            return self._respond(error_head(403, keep))
        try:
            self.dirfd, name = self.svc.docroot.open_parent(self.rel)
            if not name:  # "devN/dir/": what opened as a directory is the target (EISDIR)
                return self._respond(error_head(403, keep))
            _refuse_symlink(self.dirfd, name)
            os.unlink(name, dir_fd=self.dirfd)
            if self.svc.durable:
                store.sync_dir(self.dirfd)
        except OSError as e:
            if e.errno == errno.ENOENT:
                status = 404
            elif e.errno in (errno.EPERM, errno.EISDIR, errno.EACCES, errno.ELOOP):
                status = 403
            else:
                status = 500
            return self._respond(error_head(status, keep))
        self.svc.on_change(self.rel)
        return self._respond(error_head(204, keep))
