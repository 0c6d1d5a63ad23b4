"""One HTTP connection: reads and parses request heads, dispatches each request
to a transfer object created for it, sends answers made in memory, and
finishes (keep-alive, pipelining, close).

Socket reads and request parsing run on epoll workers.  Anything that touches a
disk (open, stat, sendfile from the file, writes, rename, unlink) is a state
with ``on_pool`` (states.py lists them): the event core runs it in the I/O pool
of the device the path names.
"""
from __future__ import annotations

import socket

from mogstored import counters, trust
from mogstored.event.step import Next, Pool, State
from mogstored.http.dav import DeleteTransfer
from mogstored.http.get import GetTransfer
from mogstored.http.parser import (
    MAX_HEAD,
    HeadParser,
    HttpError,
    Request,
    check_put_framing,
    parse_whole,
    resolve_range,
)
from mogstored.http.paths import refusal
from mogstored.http.put import PutTransfer
from mogstored.http.response import error_head, file_head, root_head
from mogstored.http.states import (
    ANSWERING,
    CREATING,
    DELETING,
    LOOKING,
    NO_REQUEST,
    NO_TRANSFER,
    READING,
    Transfer,
)
from mogstored.node import ServiceContext
from mogstored.store.iopool import IoPool

_NOTHING = memoryview(b"")
_NO_HEAD = HeadParser()  # no head byte yet (never parses): idle connections hold no parser of their own
TRICKLE_PIECES = 8  # a head still incomplete after this many reads is read at most once per event/later.DELAY


class HttpConnection:
    """A client of an HTTP (or GET-only) listener."""

    expirable = True  # idle ones are shut down when descriptors run out (event/expiry.py)

    __slots__ = (
        "eof",
        "fd",
        "get_only",
        "head",
        "inbuf",
        "keepalive",
        "out",
        "peer",
        "pool",
        "pos",
        "req",
        "sock",
        "state",
        "svc",
        "transfer",
        "trusted",
    )

    def __init__(self, sock: socket.socket, svc: ServiceContext, get_only: bool) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.svc = svc
        self.get_only = get_only
        self.inbuf = bytearray()
        self.pos = 0  # start of unprocessed input in inbuf
        self.out = _NOTHING  # response head bytes not yet sent
        self.eof = False
        self.state = READING
        self.pool: IoPool = svc.ioq.shared  # the current request's device pool
        self.keepalive = False  # of the current answer
        self.req = NO_REQUEST  # the current request (its start and status: metrics)
        self.transfer: Transfer = NO_TRANSFER
        self.head = _NO_HEAD  # the next request's head, judged as its bytes arrive
        # Kept from the start: after a reset getpeername() fails, yet the log names the peer.
        try:
            host, port = sock.getpeername()[:2]
            self.peer = f"{host}:{port}"
        except OSError:
            host, self.peer = "", "?:0"
        self.trusted = svc.trusts(host)  # may it PUT, DELETE, MKCOL (--trusted)

    @property
    def listener(self) -> str:
        """The listener kind, for the connections gauge (metrics)."""
        return "httpget" if self.get_only else "http"

    # -- event core interface --------------------------------------------
    def step(self, pool: Pool | None) -> Next:
        state = self.state
        if state is READING:
            return self._read_head()
        if state is ANSWERING:
            return self._answer()
        return self.transfer.step(pool)

    def idle(self) -> bool:
        return self.state is READING and self.pos >= len(self.inbuf)

    def close(self) -> None:
        self.transfer.release()
        self.sock.close()

    # -- reading and dispatching requests --------------------------------
    def _read_head(self) -> Next:
        drained = False  # the last recv got less than asked: nothing more is queued
        while True:
            parsed = None
            if self.pos < len(self.inbuf):
                try:
                    if self.head is not _NO_HEAD:
                        parsed = self.head.parse(self.inbuf, self.pos)
                    elif (parsed := parse_whole(self.inbuf, self.pos)) is None:  # the usual head, no parser
                        self.head = HeadParser()
                        parsed = self.head.parse(self.inbuf, self.pos)
                except HttpError as e:
                    self.req = Request("other", "", False, started=counters.now())  # metrics: a head refused
                    return self.fail(e.status)
            if parsed is not None:
                req, self.pos = parsed
                self.head = _NO_HEAD
                return self._dispatch(req)
            if self.eof:
                return Next.CLOSE
            if drained:  # one recv per wake-up; a head in many small pieces waits a moment
                return Next.LATER if self.head.pieces >= TRICKLE_PIECES else Next.READ
            want = MAX_HEAD + 1 - (len(self.inbuf) - self.pos)
            try:
                data = self.sock.recv(want)
            except BlockingIOError:
                # Shutting down: closed only once nothing at all has arrived (a
                # request already sent is answered, not reset by the close).
                return Next.CLOSE if self.svc.process.quitting and self.pos >= len(self.inbuf) else Next.READ
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

    def _dispatch(self, req: Request) -> Next:
        self.req = req
        req.started = counters.now()
        self.keepalive = keep = req.keepalive
        method, path = req.method, req.path
        reading = method == "GET" or method == "HEAD"
        if not reading and not self.trusted:  # before anything is touched
            trust.refused(self.peer.rpartition(":")[0], self.listener, method)
            return self.fail(403)
        if not reading and self.get_only:
            return self.fail(405) if method == "PUT" else self.answer(error_head(405, keep))
        if reading and path == "/":
            if req.range is not None and resolve_range(req.range, 0)[0] == 416:
                return self.answer(error_head(416, keep, 0))
            return self.answer(root_head(keep))
        status = refusal(method, path)
        if status is not None:
            return self.fail(status) if method == "PUT" else self.answer(error_head(status, keep))
        rel = path.lstrip("/")
        if reading:
            usage = self.svc.usage_body(path)
            if usage is not None:
                return self._answer_bytes(req, *usage)
            return self._start(GetTransfer(self, req, rel), LOOKING, path)
        if method == "PUT":
            if self.svc.refuses_writes(path):
                return self.fail(507)
            try:
                check_put_framing(req)
            except HttpError as e:
                return self.fail(e.status)
            return self._start(PutTransfer(self, req, rel), CREATING, path)
        if method == "DELETE":
            return self._start(DeleteTransfer(self, rel, keep), DELETING, path)
        # MKCOL never creates anything: the tracker takes 400 as "no MKCOL here".
        return self.answer(error_head(400, keep))

    def _start(self, transfer: Transfer, state: State, path: str) -> Next:
        self.transfer = transfer
        self.pool = self.svc.ioq.for_path(self.svc.docroot.path, path)
        self.state = state
        if state.on_pool:
            return Next.RUN  # the core hops to the pool
        return transfer.step(None)  # runs here (LOOKING): no hop to make

    # -- responses (any thread) -------------------------------------------
    def fail(self, status: int) -> Next:
        """An error that ends the connection once answered (§3.8.2)."""
        self.keepalive = False
        self.inbuf.clear()
        self.pos = 0
        self.eof = True
        return self.answer(error_head(status, False))

    def answer(self, head: bytes | bytearray) -> Next:
        """Send ``head`` (a whole answer), then finish."""
        self.req.status = int(head[9:12])  # metrics
        self.out = memoryview(head)
        self.state = ANSWERING
        return self._answer()

    def _answer_bytes(self, req: Request, body: bytes, mtime: float) -> Next:
        """A GET/HEAD answered from memory (``devN/usage``), Range included."""
        size = len(body)
        status, first, last = (200, 0, size - 1) if req.range is None else resolve_range(req.range, size)
        if status == 416:
            return self.answer(error_head(416, req.keepalive, size))
        head = file_head(status, mtime, last - first + 1, req.keepalive, first, last, size)
        if req.method == "GET":
            self.svc.ioq.for_path(self.svc.docroot.path, req.path).stats.sent += last - first + 1
        return self.answer(head if req.method == "HEAD" else head + body[first : last + 1])

    def _answer(self) -> Next:
        if not self.flush():
            return Next.WRITE
        return self.finish()

    def flush(self, more: bool = False) -> bool:
        """Send pending head bytes; False while the socket is full."""
        out = self.out
        while out:
            try:
                n = self.sock.send(out, socket.MSG_MORE if more else 0)
            except BlockingIOError:
                self.out = out
                return False
            except OSError:
                self.out = _NOTHING
                self.eof = True
                self.keepalive = False
                return True
            out = out[n:]
        self.out = _NOTHING
        return True

    def finish(self) -> Next:
        """The response is out: close, or go on with the next request."""
        self.transfer.release()
        self.transfer = NO_TRANSFER
        self.state = READING
        counters.http_request(self.req.method, self.req.status, self.req.started)
        self.req = NO_REQUEST
        if not self.keepalive:
            return Next.CLOSE
        if self.pos < len(self.inbuf):
            return Next.ACTIVE  # pipelined: behind the other ready clients
        self.inbuf.clear()
        self.pos = 0
        if self.eof:
            return Next.CLOSE
        if self.svc.process.quitting:
            # The socket may hold the start of the next request (a PUT body read to its
            # last byte leaves it there): _read_head answers it, or closes if none came.
            return Next.ACTIVE
        return Next.READ
