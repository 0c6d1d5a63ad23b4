"""What every connection (HTTP, sidechannel, metrics) does the same way, written
once: reading into its input buffer, the graceful-quit rule, going on after an
answer (keep-alive, pipelining), and sending what is buffered.  A protocol adds
its parser (:meth:`Stream._take`) and its steps; it knows no protocol itself.

The graceful-quit rule (README, "Graceful shutdown"): while the process shuts
down, a connection with nothing buffered reads once more without waiting and
closes unless part of a next request arrived, so a request already sent is
answered, never reset by the close."""
from __future__ import annotations

import socket

from mogstored.event.step import Next

_NOTHING = b""
# Next's members as module names: an Enum class attribute costs ~8 global look-ups.
_READ, _WRITE, _ACTIVE, _CLOSE = Next.READ, Next.WRITE, Next.ACTIVE, Next.CLOSE


class Stream:
    """A connection's socket, its input buffer (``inbuf`` from ``pos`` on: not yet
    taken) and its output (``out``: not yet sent)."""

    __slots__ = ("eof", "fd", "inbuf", "out", "pos", "sock")

    RECV = 4096  # most bytes one recv asks for, unless the protocol says (_want)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.inbuf = bytearray()
        self.pos = 0  # start of the bytes not yet taken in inbuf
        self.out: bytes | bytearray | memoryview = _NOTHING
        self.eof = False

    # -- what a protocol adds ------------------------------------------------
    def _take(self) -> Next | None:
        """Parse and act on what ``inbuf[pos:]`` holds (and send what ``out`` holds);
        None when more input is needed."""
        raise NotImplementedError

    def _want(self) -> int:
        """How many bytes the next recv may bring."""
        return self.RECV

    def _short_read(self) -> Next:
        """What to wait for after a recv that drained the socket."""
        return _READ

    def _quitting(self) -> bool:
        """The process shuts down gracefully."""
        raise NotImplementedError

    def _gone(self, e: OSError) -> Next:
        """The socket failed."""
        return _CLOSE

    # -- written once ------------------------------------------------------------
    def _read(self) -> Next:
        """Take what is buffered; read and take more until a step says what is next.
        One recv per wake-up once a recv drained the socket (a recv now would only
        say EAGAIN; re-arming sees what comes meanwhile)."""
        drained = False
        while True:
            nxt = self._take()
            if nxt is not None:
                return nxt
            if self.eof:
                return _CLOSE
            if drained:
                return self._short_read()
            want = self._want()
            try:
                data = self.sock.recv(want)
            except BlockingIOError:
                return _CLOSE if self._quitting() and self.pos >= len(self.inbuf) else _READ
            except OSError as e:
                return self._gone(e)
            if not data:
                self.eof = True
                continue
            drained = len(data) < want
            if self.pos:
                del self.inbuf[: self.pos]
                self.pos = 0
            self.inbuf += data

    def _after_answer(self, keepalive: bool) -> Next:
        """An answer is out: close, or go on with the next request."""
        if not keepalive:
            return _CLOSE
        if self.pos < len(self.inbuf):
            return _ACTIVE  # pipelined: behind the other ready clients
        self.inbuf.clear()
        self.pos = 0
        if self.eof:
            return _CLOSE
        if self._quitting():
            # The socket may hold the start of the next request (a PUT body read to its
            # last byte leaves it there): _read answers it, or closes if none came.
            return _ACTIVE
        return _READ

    def _send_out(self, flags: int = 0) -> Next | None:
        """Send what ``out`` holds: None once all of it went, WRITE while the socket
        is full, CLOSE if the peer is gone."""
        out = self.out
        while out:
            try:
                n = self.sock.send(out, flags)
            except BlockingIOError:
                self.out = out
                return _WRITE
            except OSError:
                self.out = _NOTHING
                return _CLOSE
            out = memoryview(out)[n:] if n < len(out) else _NOTHING
        self.out = _NOTHING
        return None
