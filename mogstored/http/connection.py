"""One HTTP connection: it owns its state, buffers and socket.  It reads and
parses request heads, dispatches each request to a transfer object created for
it, runs the transfer's steps and acts on the outcome each returns, sends
answers, file ranges (sendfile) and receives PUT bodies, and finishes
(keep-alive, pipelining, close).

Every state and the step that runs it are in :data:`_STEPS` (states.py says
where each runs).  Socket reads and request parsing run on epoll workers.
Anything that touches a disk (open, stat, sendfile from the file, writes,
rename, unlink) is a state with ``on_pool``: the event core runs it in the I/O
pool of the device the path names.
"""
from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from typing import cast

from mogstored import counters, log, trust
from mogstored.event.expiry import tcp_info
from mogstored.event.step import Next, Pool, State
from mogstored.event.stream import Stream
from mogstored.http.dav import DeleteTransfer
from mogstored.http.fields import MAX_HEAD, HttpError
from mogstored.http.get import GetTransfer
from mogstored.http.head import (
    HeadParser,
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
    BODY,
    CREATING,
    DELETING,
    LOOKING,
    NO_REQUEST,
    NO_TRANSFER,
    OPEN,
    OPENING,
    READING,
    RECEIVING,
    RECEIVING_BULK,
    SEND,
    SENDING,
    SENDING_BULK,
    STATES,
    Result,
    Transfer,
)
from mogstored.node.service import ServiceContext
from mogstored.store.iopool import IoPool, thread_buffer

_NO_HEAD = HeadParser()  # no head byte yet (never parses): idle connections hold no parser of their own
TRICKLE_PIECES = 8  # a head still incomplete after this many reads is read at most once per event/later.DELAY
SENDFILE_CHUNK = 1 << 22
SENDFILE_SLICE = 100 << 20  # bytes per scheduling step before yielding
_PEER_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ETIMEDOUT)  # sendfile's socket side


class HttpConnection(Stream):
    """A client of an HTTP (or GET-only) listener."""

    expirable = True  # idle ones are shut down when descriptors run out (event/expiry.py)

    __slots__ = ("get_only", "head", "keepalive", "peer", "pool", "req", "state", "svc", "transfer", "trusted")

    def __init__(self, sock: socket.socket, svc: ServiceContext, get_only: bool) -> None:
        super().__init__(sock)
        self.svc = svc
        self.get_only = get_only
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
        return _STEPS[self.state](self)

    def idle(self) -> bool:
        return self.state is READING and self.pos >= len(self.inbuf)

    def close(self) -> None:
        self.transfer.release()
        self.sock.close()

    # -- reading and dispatching requests (READING: Stream._read) -------------
    def _take(self) -> Next | None:
        """The next head, once whole, dispatched."""
        if self.pos >= len(self.inbuf):
            return None
        try:
            if self.head is not _NO_HEAD:
                parsed = self.head.parse(self.inbuf, self.pos)
            elif (parsed := parse_whole(self.inbuf, self.pos)) is None:  # the usual head, no parser
                self.head = HeadParser()
                parsed = self.head.parse(self.inbuf, self.pos)
        except HttpError as e:
            self.req = Request("other", "", False, started=counters.now())  # metrics: a head refused
            return self.fail(e.status)
        if parsed is None:
            return None
        req, self.pos = parsed
        self.head = _NO_HEAD
        return self._dispatch(req)

    def _want(self) -> int:
        return MAX_HEAD + 1 - (len(self.inbuf) - self.pos)

    def _short_read(self) -> Next:
        """A head in many small pieces waits a moment (event/later.py)."""
        return Next.LATER if self.head.pieces >= TRICKLE_PIECES else Next.READ

    def _quitting(self) -> bool:
        return self.svc.process.quitting

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
        svc = self.svc
        if reading:
            usage = svc.usage_body(path)
            if usage is not None:
                return self._answer_bytes(req, *usage)
            pool = self.pool = svc.ioq.for_path(svc.docroot.path, path)
            get = GetTransfer(svc, pool, req, rel)
            self.transfer = get
            self.state = LOOKING
            return self._then(get.look())  # LOOKING runs anywhere: here, in this step
        if method == "PUT":
            if svc.refuses_writes(path):
                return self.fail(507)
            try:
                check_put_framing(req)
            except HttpError as e:
                return self.fail(e.status)
            pool = self.pool = svc.ioq.for_path(svc.docroot.path, path)
            self.transfer = PutTransfer(svc, pool, req, rel)
            return self._enter(CREATING)
        if method == "DELETE":
            pool = self.pool = svc.ioq.for_path(svc.docroot.path, path)
            self.transfer = DeleteTransfer(svc, pool, rel, keep)
            return self._enter(DELETING)
        # MKCOL never creates anything: the tracker takes 400 as "no MKCOL here".
        return self.answer(error_head(400, keep))

    # -- the table's steps and their outcomes ------------------------------
    def _enter(self, state: State) -> Next:
        """Go to ``state``: its step runs now where it may run here (any thread, or
        this request's pool when already in it), else the core hops to the pool."""
        here_in_pool = self.state.on_pool
        self.state = state
        if state.on_pool and not here_in_pool:
            return Next.RUN
        return _STEPS[state](self)

    def _then(self, outcome: Result) -> Next:
        """Act on what a transfer step returned."""
        kind = outcome.__class__
        if kind is bytearray or kind is bytes:
            return self.answer(outcome)  # type: ignore[arg-type]  # (mypy: not narrowed by __class__)
        if kind is int:
            return self.fail(outcome)  # type: ignore[arg-type]
        if outcome is SEND:
            get = cast(GetTransfer, self.transfer)
            self.out = get.head
            return self._enter(SENDING_BULK if get.remaining >= SENDFILE_CHUNK else SENDING)
        if outcome is OPEN:
            return self._enter(OPENING)
        assert outcome is BODY
        return self._enter(RECEIVING)

    def _look(self) -> Next:
        return self._then(cast(GetTransfer, self.transfer).look())

    def _open(self) -> Next:
        return self._then(cast(GetTransfer, self.transfer).open())

    def _create(self) -> Next:
        return self._then(cast(PutTransfer, self.transfer).create())

    def _delete(self) -> Next:
        return self.answer(cast(DeleteTransfer, self.transfer).delete())

    def _send(self) -> Next:
        """SENDING: the head, then the file range, by sendfile as the socket drains."""
        get = cast(GetTransfer, self.transfer)
        if get.remaining < SENDFILE_CHUNK:
            self.state = SENDING  # short sendfile calls from here on: not computing
        if self.out and (nxt := self._send_out(socket.MSG_MORE)) is not None:
            return nxt
        stats = self.pool.stats
        sent = 0
        while get.remaining > 0:
            try:
                n = os.sendfile(self.fd, get.file, get.offset, min(get.remaining, SENDFILE_CHUNK))
            except BlockingIOError:
                return Next.WRITE
            except OSError as e:
                if e.errno not in _PEER_GONE:  # the file's read failed: close short of Content-Length
                    self.pool.disk_error(e, f"GET {get.req.path}: sendfile() at offset={get.offset}")
                return Next.CLOSE
            if n == 0:
                log.error(f"sendfile()-d 0 bytes at offset={get.offset}; file truncated?")
                return Next.CLOSE
            get.offset += n
            get.remaining -= n
            sent += n
            stats.sent += n
            if sent >= SENDFILE_SLICE and get.remaining:
                return Next.ACTIVE
        return self.finish()

    def _receive(self) -> Next:
        """RECEIVING: the body bytes that came with the head, then what the socket
        has, into the transfer; then its commit."""
        put = cast(PutTransfer, self.transfer)
        try:
            if self.pos < len(self.inbuf):
                # One copy (at most one head's worth): a view kept by a write error's
                # traceback would pin inbuf.
                with memoryview(self.inbuf) as whole:
                    body = bytes(whole[self.pos :])
                self.pos += put.consume(memoryview(body))
                if self.pos >= len(self.inbuf):
                    self.inbuf.clear()
                    self.pos = 0
            buf = thread_buffer()
            # Hashing, or copies of whole buffers: another thread may run beside this one.
            self.state = RECEIVING_BULK if put.computes(len(buf)) else RECEIVING
            while not put.done():
                try:
                    n = self.sock.recv_into(buf, put.want(len(buf)))
                except BlockingIOError:
                    return Next.READ
                except OSError as e:
                    return self._abort(put, e.strerror or "recv failed")
                if n == 0:
                    return self._abort(put, "premature EOF")
                used = put.consume(buf[:n])
                if used < n:  # the next request, pipelined after a chunked body
                    self.inbuf += buf[used:n]
        except HttpError as e:
            put.discard()
            return self.fail(e.status)
        except OSError as e:
            return self.fail(put.write_failed(e))
        return self._then(put.commit())

    def _abort(self, put: PutTransfer, why: str) -> Next:
        """The client went away mid-body: no response, no file (§1.8)."""
        req = put.req
        info = tcp_info(self.sock)
        last_recv = 0 if info is None else info.last_data_recv
        log.error(f"PUT {req.path} failed from {self.peer} after {put.progress()} bytes: {why}")
        log.error(f"last_data_recv={last_recv}ms from {self.peer} for PUT {req.path}")
        put.discard()
        return Next.CLOSE

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
        self.out = head
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
        """ANSWERING: send the answer, then finish."""
        nxt = self._send_out()
        if nxt is Next.WRITE:
            return nxt
        if nxt is Next.CLOSE:  # the peer is gone: finished all the same (metrics), then closed
            self.eof = True
            self.keepalive = False
        return self.finish()

    def finish(self) -> Next:
        """The response is out: close, or go on with the next request."""
        self.transfer.release()
        self.transfer = NO_TRANSFER
        self.state = READING
        counters.http_request(self.req.method, self.req.status, self.req.started)
        self.req = NO_REQUEST
        return self._after_answer(self.keepalive)


_STEPS: dict[State, Callable[[HttpConnection], Next]] = {
    READING: HttpConnection._read,
    ANSWERING: HttpConnection._answer,
    LOOKING: HttpConnection._look,
    OPENING: HttpConnection._open,
    SENDING: HttpConnection._send,
    SENDING_BULK: HttpConnection._send,
    CREATING: HttpConnection._create,
    RECEIVING: HttpConnection._receive,
    RECEIVING_BULK: HttpConnection._receive,
    DELETING: HttpConnection._delete,
}
assert set(_STEPS) == set(STATES) and len(_STEPS) == len(STATES)
