"""What a scrape reports: this process's counters and gauges as one snapshot,
the whole node's with worker processes (summed over the metrics board), and
the metrics thread that watches for stalled devices.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping

from mogstored import counters, log
from mogstored.event.step import Client
from mogstored.metrics.board import MetricsBoard, Snapshot
from mogstored.node.service import ServiceContext
from mogstored.store.devices import read_mounts
from mogstored.store.iopool import IoQueues
from mogstored.store.iostat import map_utilisation

TICK = 1.0  # seconds between stall checks and snapshots to the board
UTIL_MAX_AGE = 5.0  # an iostat report older than this is not shown

# Gauges every process reports alike (one disk, one filesystem): the largest wins, not the sum.
_MAX_GAUGES = frozenset({"oldest", "stalled", "bytes", "util"})


def _add(into: dict, key: tuple, value: float) -> None:
    into[key] = into.get(key, 0) + value


def _merge(total: Snapshot, snap: Snapshot) -> None:
    for key, value in snap["c"].items():
        _add(total["c"], key, value)
    gauges = total["g"]
    for key, value in snap["g"].items():
        if key[0] in _MAX_GAUGES:
            gauges[key] = max(gauges.get(key, value), value)
        else:
            _add(gauges, key, value)


def _usage_numbers(text: bytes) -> dict[str, int]:
    fields = dict(line.split(b": ", 1) for line in text.splitlines() if b": " in line)
    return {kind: int(fields[kind.encode()]) * 1024 for kind in ("total", "used", "available")}


class NodeMetrics:
    """This process's metrics; with worker processes (``board``), the whole node's."""

    def __init__(self, ioq: IoQueues, services: list[ServiceContext], clients: Mapping[int, Client],
                 listeners: list[str], stall_seconds: int, board: MetricsBoard | None) -> None:
        self.ioq = ioq
        self.services = services
        self.clients = clients  # the event core's client table
        self.listeners = listeners  # kinds, so that a listener without connections shows 0
        self.stall_seconds = stall_seconds
        self.board = board
        prev = board.read(board.index) if board is not None else None
        self.base: dict = prev["c"] if prev else {}  # what earlier workers in our slot counted
        self.utils: dict[str, float] = {}
        self.utils_time = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.publish()  # the last snapshot, for a respawned worker to go on from

    def _tick(self) -> None:
        while not self._stop.wait(TICK):
            self.check_stalls()
            self.publish()

    def check_stalls(self) -> None:
        """Set each pool's stalled flag; log every transition once."""
        at = counters.now()
        for pool in self.ioq.pools():
            st = pool.stats
            oldest = st.in_flight(at)[1]
            stalled = oldest > self.stall_seconds
            if stalled == st.stalled:
                continue
            st.stalled = stalled
            if stalled:
                log.error(f"device {st.device} stalled: a disk call has been running for {oldest:.1f}s "
                          f"(stallseconds={self.stall_seconds})")
            else:
                log.error(f"device {st.device} no longer stalled")

    def on_iostat(self, report: dict[str, str]) -> None:
        """iostat thread: keep %util / 100 per device of every service."""
        utils = map_utilisation(report, read_mounts())
        ratios = {}
        for ctx in self.services:
            for devid, dev in list(ctx.devices.items()):
                util = utils.get(dev.st_dev)
                if util is not None:
                    ratios[f"dev{devid}"] = float(util) / 100
        self.utils, self.utils_time = ratios, counters.now()

    # -- snapshots -----------------------------------------------------------
    def counts(self) -> dict:
        c = dict(self.base)
        for m, method in enumerate(counters.METHODS):
            for status, n in enumerate(counters.requests[m]):
                if n:
                    _add(c, ("req", method, str(status)), n)
            if any(counters.buckets[m]):
                for i, n in enumerate(counters.buckets[m]):
                    _add(c, ("bucket", method, i), n)
                _add(c, ("seconds", method), counters.seconds[m])
        for name, n in zip(counters.MGMT_COMMANDS, counters.mgmt_commands):
            _add(c, ("mgmt", name), n)
        for kind, n in list(counters.refused.items()):
            if n or kind in self.listeners:
                _add(c, ("refused", kind), n)
        for pool in self.ioq.pools():
            st = pool.stats
            _add(c, ("sent", st.device), st.sent)
            _add(c, ("received", st.device), st.received)
            for name, n in list(st.errors.items()):
                _add(c, ("errors", st.device, name), n)
        return c

    def gauges(self) -> dict:
        g: dict = {}
        at = counters.now()
        for pool in self.ioq.pools():
            st = pool.stats
            busy, oldest = st.in_flight(at)
            _add(g, ("threads", st.device), pool.limit)
            _add(g, ("busy", st.device), busy)
            _add(g, ("waiting", st.device), pool.waiting)
            g[("oldest", st.device)] = max(g.get(("oldest", st.device), 0.0), oldest)
            g[("stalled", st.device)] = max(g.get(("stalled", st.device), 0), int(st.stalled))
        for kind in self.listeners:
            g[("connections", kind)] = 0
        for client in list(self.clients.values()):
            _add(g, ("connections", getattr(client, "listener", "other")), 1)
        for ctx in self.services:
            for devid, dev in list(ctx.devices.items()):
                if dev.usage is not None:
                    for kind, n in _usage_numbers(dev.usage[0]).items():
                        g[("bytes", f"dev{devid}", kind)] = n
        if at - self.utils_time <= UTIL_MAX_AGE:
            for device, ratio in self.utils.items():
                g[("util", device)] = ratio
        return g

    def snapshot(self) -> Snapshot:
        return {"c": self.counts(), "g": self.gauges()}

    def publish(self) -> None:
        if self.board is not None:
            self.board.write(self.board.index, self.snapshot())

    def node_snapshot(self) -> Snapshot:
        """Ours alone, or (worker processes) ours published, then every slot summed."""
        own = self.snapshot()
        if self.board is None:
            return own
        self.board.write(self.board.index, own)
        total: Snapshot = {"c": {}, "g": {}}
        for i in range(self.board.nslots):
            snap = self.board.read(i)
            if snap is not None:
                _merge(total, snap)
        return total
