"""One sidechannel connection as a state machine driven by the event core.

Commands run strictly one at a time per connection, answers in order.  ``size``
and digests touch a disk, so they are states with ``on_pool``: the event core
runs them in the I/O pool of the device the path names; everything else is
answered on the epoll worker, and so is a ``size`` the kernel answers from its
caches without blocking (store.fs.Docroot.stat, cached).  The states, listed in
:data:`STATES`:

    READING        lines in, answers out, commands run      (any thread)
    SIZING         ``size``: one stat                       (device pool)
    OPENING        a digest's file                          (device pool)
    DIGESTING      hash a slice per step          (device pool; computes)
    FSCK_WAITING   parked in the fsck queue of its filesystem (nowhere)
    WATCHING       ``watch``: input read and ignored        (any thread)
"""
from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable

from mogstored import counters, digests, log
from mogstored.event.step import Next, Pool, State, states
from mogstored.event.stream import Stream
from mogstored.mgmt.parser import (
    BAD_PATH_REPLY,
    BLANK_REPLY,
    AioThreads,
    BadPath,
    Blank,
    Command,
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
from mogstored.node.service import ServiceContext
from mogstored.store.fsck import low_io_priority
from mogstored.store.iopool import IoPool, thread_buffer

READING, WATCHING = states("reading", "watching", on_pool=False)
SIZING, OPENING, FSCK_WAITING = states("sizing", "opening", "fsck-waiting", on_pool=True)
DIGESTING = State("digesting", on_pool=True, computes=True)
STATES = (READING, SIZING, OPENING, DIGESTING, FSCK_WAITING, WATCHING)

DIGEST_SLICE = 8 << 20  # bytes hashed per scheduling step before yielding
_RECV = 4096
_ALGS = {"MD5": digests.md5, "SHA-1": digests.sha1}
_NO_COMMAND = Size("")  # between commands


class _Digest:
    """One digest command in progress: its file, hash and position."""

    __slots__ = ("cmd", "file", "hasher", "offset")

    def __init__(self, cmd: Digest, file: int) -> None:
        self.cmd = cmd
        self.file = file
        if file >= 0:  # not for _NO_DIGEST, which is never hashed: no hashlib at start-up
            self.hasher = _ALGS[cmd.alg]()
        self.offset = 0

    def close(self) -> None:
        if self.file >= 0:
            os.close(self.file)
            self.file = -1


_NO_DIGEST = _Digest(Digest("MD5", "", None), -1)


def _label(cmd: Command) -> str:
    """The ``command`` label of mogstored_mgmt_commands_total."""
    if isinstance(cmd, Size):
        return "size"
    if isinstance(cmd, Digest):
        return "md5" if cmd.alg == "MD5" else "sha1"
    return "watch" if isinstance(cmd, Watch) else "other"


class MgmtConnection(Stream):
    """A client of the sidechannel listener."""

    expirable = False  # trackers' sidechannel connections are never expired (§3.10)
    listener = "mgmt"  # for the connections gauge (metrics)

    __slots__ = ("cmd", "digest", "fsck_dev", "lines", "pool", "state", "svc")

    def __init__(self, sock: socket.socket, svc: ServiceContext) -> None:
        super().__init__(sock)
        self.svc = svc
        self.lines = LineBuffer(self.inbuf)  # takes whole lines off the input buffer itself
        self.state = READING
        self.pool: IoPool = svc.ioq.shared  # the current command's device pool
        self.cmd: Size | Digest = _NO_COMMAND  # the command a pool state works on
        self.digest = _NO_DIGEST  # of the digest command in DIGESTING
        self.fsck_dev: int | None = None  # filesystem whose fsck slot we hold

    # -- event core interface --------------------------------------------
    def step(self, pool: Pool | None) -> Next:
        return _STEPS[self.state](self)

    def idle(self) -> bool:
        return self.state is READING and not self.out and not self.inbuf

    def close(self) -> None:
        self._release()
        self.svc.watchers.discard(self)
        self.sock.close()

    def resume(self) -> None:
        """Our turn in the fsck queue of this filesystem."""
        self.pool.submit(self)

    # -- READING: Stream._read ----------------------------------------------------
    def _take(self) -> Next | None:
        """Answers out first; then every whole line buffered, run in order."""
        while True:
            # A failed send closes at once: nobody is left to read the answers of the
            # commands still buffered, so running them (digests of big files) is wasted disk time.
            if self.out and (nxt := self._send_out()) is not None:
                return nxt
            try:
                line = self.lines.next_line()
            except LineTooLong:
                log.error("mgmt request too large")
                return self._reset()
            if line is None:
                return None
            nxt = self._run(parse_command(line))
            if nxt is not None:
                return nxt

    def _quitting(self) -> bool:
        return self.svc.process.quitting

    def _gone(self, e: OSError) -> Next:
        log.error(f"mgmt client died: {e.strerror}")
        return Next.CLOSE

    def _run(self, cmd: Command) -> Next | None:
        """Answer one command; a return value means "not finished here"."""
        counters.mgmt_command(_label(cmd))
        if isinstance(cmd, Size) and (reply := _cached_size(self.svc, cmd.path)) is not None:
            self.out = reply
        elif isinstance(cmd, (Size, Digest)):
            self.cmd = cmd
            self.pool = self.svc.ioq.for_path(self.svc.docroot.path, cmd.path)
            self.state = SIZING if isinstance(cmd, Size) else OPENING
            return Next.RUN  # the core hops to the pool
        elif isinstance(cmd, Blank):
            self.out = BLANK_REPLY
        elif isinstance(cmd, BadPath):
            self.out = BAD_PATH_REPLY
        elif isinstance(cmd, Unknown):
            self.out = unknown_reply(cmd.token)
        elif isinstance(cmd, AioThreads):
            self.svc.process.set_aio_threads(cmd.n)
            self.out = BLANK_REPLY
        elif isinstance(cmd, Shutdown):
            self.svc.process.request_shutdown()
        elif isinstance(cmd, Watch):
            if not self.svc.process.iostat_running():
                log.error("iostat(1) not available/running")
            self.svc.watchers.add(self)
            self.svc.process.request_usage_pass()
            self.state = WATCHING
            return Next.READ
        return None

    def _reset(self) -> Next:
        """Drop the connection with a TCP reset: the peer sent garbage."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return Next.CLOSE

    def _done(self, reply: bytes) -> Next:
        self._release()
        self.out = reply
        self.cmd = _NO_COMMAND
        self.state = READING
        return Next.ACTIVE

    def _release(self) -> None:
        if self.fsck_dev is not None:  # our slot goes to the next in line
            self.svc.fsck.leave(self.fsck_dev)
            self.fsck_dev = None
        self.digest.close()
        self.digest = _NO_DIGEST

    # -- SIZING, DIGESTING (device pool) ------------------------------------------
    def _size(self) -> Next:
        path = self.cmd.path
        try:
            size = self.svc.docroot.stat(resolve_path(path)).st_size
        except OSError as e:
            self.pool.disk_error(e, f"size {path}")
            size = -1
        return self._done(size_reply(path, size))

    def _open_digest(self) -> Next:
        cmd = self.cmd
        assert isinstance(cmd, Digest)  # OPENING follows a Digest command
        try:
            # O_NONBLOCK: opening a FIFO must not hang a pool thread (regular files ignore it).
            file = self.svc.docroot.open(resolve_path(cmd.path), os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            self.pool.disk_error(e, f"{cmd.alg} {cmd.path}: open")
            return self._done(digest_reply(cmd.path, cmd.alg, None))
        self.digest = _Digest(cmd, file)
        self.state = DIGESTING
        if cmd.reason == "fsck":
            st_dev = os.fstat(file).st_dev
            self.fsck_dev = st_dev
            self.state = FSCK_WAITING  # before enter(): resume() may come at once
            if not self.svc.fsck.enter(st_dev, self):
                return Next.PARKED  # resume() is called when our turn comes
            self.state = DIGESTING
        return self._digest()

    def _digest(self) -> Next:
        digest = self.digest
        if self.fsck_dev is not None and not self.svc.process.quitting:
            with low_io_priority():
                return self._hash_slice(digest)
        return self._hash_slice(digest)

    def _hash_slice(self, digest: _Digest) -> Next:
        buf = thread_buffer()
        update = digest.hasher.update
        done = 0
        while done < DIGEST_SLICE:
            try:
                n = os.readv(digest.file, [buf])
            except OSError as e:
                self.pool.disk_error(e, f"{digest.cmd.alg} {digest.cmd.path}: read at {digest.offset}")
                return self._done(read_error_reply(digest.cmd.path, digest.offset))
            if n == 0:
                return self._done(digest_reply(digest.cmd.path, digest.cmd.alg, digest.hasher.hexdigest()))
            update(buf[:n])
            digest.offset += n
            done += n
        return Next.ACTIVE  # a long file: let others in, then continue

    def _fsck_turn(self) -> Next:
        self.state = DIGESTING
        return self._digest()

    # -- WATCHING -------------------------------------------------------------
    def _watching(self) -> Next:
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


def _cached_size(svc: ServiceContext, path: str) -> bytes | None:
    """The ``size`` reply if the dentry cache has the whole path (no disk wait), else None."""
    try:
        size = svc.docroot.stat(resolve_path(path), cached=True).st_size
    except BlockingIOError:
        return None
    except OSError:
        size = -1
    return size_reply(path, size)


_STEPS: dict[State, Callable[[MgmtConnection], Next]] = {
    READING: MgmtConnection._read,
    SIZING: MgmtConnection._size,
    OPENING: MgmtConnection._open_digest,
    DIGESTING: MgmtConnection._digest,
    FSCK_WAITING: MgmtConnection._fsck_turn,
    WATCHING: MgmtConnection._watching,
}
assert set(_STEPS) == set(STATES)
