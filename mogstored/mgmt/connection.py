"""One sidechannel connection as a state machine driven by the event core.

Commands run strictly one at a time per connection, answers in order.  ``size``
and digests touch a disk, so they run in the I/O pool of the device the path
names; everything else is answered on the epoll worker.
"""
from __future__ import annotations

import hashlib
import os
import socket
import struct
from typing import TYPE_CHECKING, Callable

from mogstored import log
from mogstored.event.core import Next
from mogstored.store.fsck import low_io_priority
from mogstored.store.iopool import thread_buffer
from mogstored.mgmt.parser import (
    BAD_PATH_REPLY,
    BLANK_REPLY,
    AioThreads,
    BadPath,
    Blank,
    Digest,
    LineBuffer,
    LineTooLong,
    Shutdown,
    Size,
    Unknown,
    Watch,
    digest_reply,
    parse_command,
    read_error_reply,
    resolve_path,
    size_reply,
    unknown_reply,
)

if TYPE_CHECKING:
    from mogstored.store.iopool import IoPool
    from mogstored.node import ServiceContext

Step = Callable[["IoPool | None"], "Next | IoPool"]

DIGEST_SLICE = 8 << 20  # bytes hashed per scheduling step before yielding
_ALGS = {"MD5": hashlib.md5, "SHA-1": hashlib.sha1}


class MgmtClient:
    """A client of the sidechannel listener."""

    expirable = False  # trackers' sidechannel connections are never expired (§3.10)

    __slots__ = ("sock", "fd", "svc", "lines", "out", "eof", "_state", "cmd", "pool", "file", "hasher", "offset",
                 "fsck_dev")

    def __init__(self, sock: socket.socket, svc: "ServiceContext") -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.svc = svc
        self.lines = LineBuffer()
        self.out = bytearray()
        self.eof = False
        self._state: Step = self._read
        self.cmd: Size | Digest | None = None
        self.pool: IoPool | None = None
        self.file = -1
        self.hasher = None
        self.offset = 0
        self.fsck_dev: int | None = None  # filesystem whose fsck slot we hold

    # -- event core interface --------------------------------------------
    def step(self, pool: "IoPool | None") -> "Next | IoPool":
        return self._state(pool)

    def idle(self) -> bool:
        return self._state == self._read and not self.out and not self.lines.pending()

    def close(self) -> None:
        if self.fsck_dev is not None:  # our slot goes to the next in line
            self.svc.fsck.leave(self.fsck_dev)
            self.fsck_dev = None
        self._close_file()
        self.svc.watchers.discard(self)
        self.sock.close()

    # -- reading and running commands --------------------------------------
    def _read(self, pool: "IoPool | None") -> "Next | IoPool":
        while True:
            if self.out and (nxt := self._flush()) is not None:
                return nxt
            try:
                line = self.lines.next_line()
            except LineTooLong:
                log.error("mgmt request too large")
                return self._reset()
            if line is not None:
                nxt = self._run(parse_command(line))
                if nxt is not None:
                    return nxt
                continue
            if self.eof or (self.svc.server.quitting and not self.lines.pending()):
                return Next.CLOSE
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return Next.READ
            except OSError as e:
                log.error(f"mgmt client died: {e.strerror}")
                return Next.CLOSE
            if not data:
                self.eof = True
                continue
            self.lines.feed(data)

    def _run(self, cmd) -> "Next | IoPool | None":
        """Answer one command; a return value means "not finished here"."""
        if isinstance(cmd, (Size, Digest)):
            self.cmd = cmd
            path = cmd.path
            self.pool = self.svc.ioq.for_path(self.svc.docroot.path, path)
            self._state = self._stat if isinstance(cmd, Size) else self._open_digest
            return self.pool
        if isinstance(cmd, Blank):
            self.out += BLANK_REPLY
        elif isinstance(cmd, BadPath):
            self.out += BAD_PATH_REPLY
        elif isinstance(cmd, Unknown):
            self.out += unknown_reply(cmd.token)
        elif isinstance(cmd, AioThreads):
            self.svc.server.set_aio_threads(cmd.n)
            self.out += BLANK_REPLY
        elif isinstance(cmd, Shutdown):
            self.svc.server.request_shutdown()
        elif isinstance(cmd, Watch):
            server = self.svc.server
            if server.iostat is None or not server.iostat.running:
                log.error("iostat(1) not available/running")
            self.svc.watchers.add(self)
            server.request_usage_pass()
            self._state = self._watching
            return Next.READ
        return None

    def _flush(self) -> Next | None:
        """Send what we can; None once all is sent.

        A failed send closes at once: nobody is left to read the answers of the
        commands still buffered, so running them (digests of big files) is wasted disk time.
        """
        try:
            n = self.sock.send(self.out)
        except BlockingIOError:
            return Next.WRITE
        except OSError:
            return Next.CLOSE
        del self.out[:n]
        return Next.WRITE if self.out else None

    def _reset(self) -> Next:
        """Drop the connection with a TCP reset: the peer sent garbage."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return Next.CLOSE

    def _done(self, reply: bytes) -> Next:
        if self.fsck_dev is not None:
            self.svc.fsck.leave(self.fsck_dev)
            self.fsck_dev = None
        self._close_file()
        self.out += reply
        self.cmd = None
        self._state = self._read
        return Next.ACTIVE

    def _close_file(self) -> None:
        if self.file >= 0:
            os.close(self.file)
            self.file = -1

    # -- disk work (device pool) ------------------------------------------
    def _stat(self, pool: "IoPool | None") -> Next:
        path = self.cmd.path
        try:
            size = self.svc.docroot.stat(resolve_path(path)).st_size
        except OSError:
            size = -1
        return self._done(size_reply(path, size))

    def _open_digest(self, pool: "IoPool | None") -> "Next | IoPool":
        cmd = self.cmd
        try:
            # O_NONBLOCK: opening a FIFO must not hang a pool thread (regular files ignore it).
            self.file = self.svc.docroot.open(resolve_path(cmd.path), os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return self._done(digest_reply(cmd.path, cmd.alg, None))
        self.hasher = _ALGS[cmd.alg]()
        self.offset = 0
        self._state = self._digest
        if cmd.reason == "fsck":
            st_dev = os.fstat(self.file).st_dev
            if not self.svc.fsck.enter(st_dev, self):
                self._state = self._fsck_turn
                self.fsck_dev = st_dev
                return Next.PARKED  # resume() is called when our turn comes
            self.fsck_dev = st_dev
        return self._digest(pool)

    def resume(self) -> None:
        """Our turn in the fsck queue of this filesystem."""
        self.pool.submit(self)

    def _fsck_turn(self, pool: "IoPool | None") -> "Next | IoPool":
        self._state = self._digest
        return self._digest(pool)

    def _digest(self, pool: "IoPool | None") -> "Next | IoPool":
        if pool is not self.pool:
            return self.pool
        if self.fsck_dev is not None and not self.svc.server.quitting:
            with low_io_priority():
                return self._hash_slice()
        return self._hash_slice()

    def _hash_slice(self) -> Next:
        buf = thread_buffer()
        update = self.hasher.update
        done = 0
        while done < DIGEST_SLICE:
            try:
                n = os.readv(self.file, [buf])
            except OSError:
                return self._done(read_error_reply(self.cmd.path, self.offset))
            if n == 0:
                return self._done(digest_reply(self.cmd.path, self.cmd.alg, self.hasher.hexdigest()))
            update(buf[:n])
            self.offset += n
            done += n
        return Next.ACTIVE  # a long file: let others in, then continue

    # -- watch --------------------------------------------------------------
    def _watching(self, pool: "IoPool | None") -> Next:
        """Write-only from now on: input is read and ignored until EOF."""
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return Next.READ
            except OSError:
                return Next.CLOSE
            if not data:
                return Next.CLOSE
