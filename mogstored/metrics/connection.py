"""A client of the ``--metricslisten`` port: ``GET /metrics`` (and HEAD) for
Prometheus, served by the event core like every other connection.

A scrape is memory work only (counters and the shared snapshots), so both
states run on the epoll worker; a slow scraper holds no thread between its
reads and writes.  Heads are parsed with the node's own strict HTTP parser.

    READING    head bytes in, parse, build the answer   (any thread)
    ANSWERING  answer bytes out                         (any thread)
"""
from __future__ import annotations

import socket

from mogstored.event.step import Next, Pool, states
from mogstored.event.stream import Stream
from mogstored.http.fields import MAX_HEAD, HttpError
from mogstored.http.head import HeadParser, parse_whole
from mogstored.http.response import error_head, http_date
from mogstored.metrics.exposition import CONTENT_TYPE, exposition
from mogstored.metrics.totals import NodeMetrics
from mogstored.node.control import Control
from mogstored.store.iopool import IoPool

READING, ANSWERING = states("reading", "answering", on_pool=False)
STATES = (READING, ANSWERING)
PATH = "/metrics"
_CONNECTION = (b"close", b"keep-alive")


def metrics_head(length: int, keepalive: bool) -> bytes:
    return b"HTTP/1.1 200 OK\r\nDate: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: %s\r\n\r\n" % (
        http_date(), CONTENT_TYPE, length, _CONNECTION[keepalive])


def answer(metrics: NodeMetrics, method: str, path: str, keepalive: bool) -> bytes:
    """The whole answer to one request."""
    if path != PATH:
        return error_head(404, keepalive)
    if method not in ("GET", "HEAD"):
        return error_head(405, keepalive)
    body = exposition(metrics)
    head = metrics_head(len(body), keepalive)
    return head if method == "HEAD" else head + body


class MetricsConnection(Stream):
    """One scraper connection: requests in, answers out, one at a time."""

    expirable = True  # an idle scraper may be shut down under descriptor pressure
    listener = "metrics"  # for the connections gauge

    __slots__ = ("head", "keepalive", "metrics", "pool", "process", "state")

    def __init__(self, sock: socket.socket, metrics: NodeMetrics, process: Control) -> None:
        super().__init__(sock)
        self.metrics = metrics
        self.process = process
        self.pool: IoPool = metrics.ioq.shared  # for the core's interface: no state runs in a pool
        self.state = READING
        self.head: HeadParser | None = None  # made when a head is not whole at once (parse_whole)
        self.keepalive = True

    def step(self, pool: Pool | None) -> Next:
        if self.state is ANSWERING:
            nxt = self._send_out()
            if nxt is not None:
                return nxt
            if not self.keepalive:
                return Next.CLOSE
            self.state = READING  # pipelined requests are answered in this step
        return self._read()

    def _take(self) -> Next | None:
        """The next head, once whole, answered."""
        if self.pos >= len(self.inbuf):
            return None
        try:
            if self.head is not None:
                parsed = self.head.parse(self.inbuf, self.pos)
            elif (parsed := parse_whole(self.inbuf, self.pos)) is None:
                self.head = HeadParser()
                parsed = self.head.parse(self.inbuf, self.pos)
        except HttpError as e:
            return self._answer(error_head(e.status, False), False)
        if parsed is None:
            return None
        req, self.pos = parsed
        self.head = None
        keep = req.keepalive and not self.process.quitting
        return self._answer(answer(self.metrics, req.method, req.path, keep), keep)

    def _want(self) -> int:
        return MAX_HEAD + 1 - (len(self.inbuf) - self.pos)

    def _quitting(self) -> bool:
        return self.process.quitting

    def _answer(self, data: bytes, keepalive: bool) -> Next:
        self.out = data
        self.keepalive = keepalive
        self.state = ANSWERING
        return Next.RUN

    def idle(self) -> bool:
        return self.state is READING and self.pos >= len(self.inbuf)

    def close(self) -> None:
        self.sock.close()
