"""The node's hot-path counters: plain ints of this process, summed at scrape
time by :mod:`mogstored.metrics`.

Imported by the connections and the I/O pools, it imports nothing of the
package.  No lock and no syscall per request: CPython 3.11 lets another thread
in only at calls and backward jumps, so ``row[i] += 1`` on an int and
``stats.sent += n`` are never torn between threads.  Only error counts (rare,
keyed by errno) take a lock.
"""
from __future__ import annotations

import bisect
import errno
import threading
import time

now = time.monotonic  # the clock of request durations and disk-call ages

# The methods a request line may name: the one table the HTTP grammar (http/head.py)
# and these counters' rows derive from.
HTTP_METHODS = ("GET", "HEAD", "PUT", "DELETE", "MKCOL")
METHODS = (*HTTP_METHODS, "other")  # "other": a head that did not parse
_METHOD = {m: i for i, m in enumerate(METHODS)}
STATUS_LIMIT = 600  # rows are indexed by the status itself
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
MGMT_COMMANDS = ("size", "md5", "sha1", "watch", "other")
_MGMT = {name: i for i, name in enumerate(MGMT_COMMANDS)}

requests = [[0] * STATUS_LIMIT for _ in METHODS]  # [method][status]
buckets = [[0] * (len(BUCKETS) + 1) for _ in METHODS]  # not cumulative; the last is +Inf
seconds = [0.0] * len(METHODS)
mgmt_commands = [0] * len(MGMT_COMMANDS)
REFUSED_LISTENERS = ("http", "httpget", "mgmt")
refused = dict.fromkeys(REFUSED_LISTENERS, 0)  # untrusted peers refused, by listener (trust.py counts)


def http_request(method: str, status: int, started: float) -> None:
    """A response is out: its last byte was handed to the kernel."""
    m = _METHOD[method]
    requests[m][status] += 1
    took = now() - started
    buckets[m][bisect.bisect_left(BUCKETS, took)] += 1
    seconds[m] += took


def mgmt_command(name: str) -> None:
    """One sidechannel command, by its label in :data:`MGMT_COMMANDS`."""
    mgmt_commands[_MGMT[name]] += 1


class CallClock:
    """When the step a pool thread is running began (0.0: idle)."""

    __slots__ = ("since",)

    def __init__(self) -> None:
        self.since = 0.0


# Errors a request causes itself (missing file, symlink, no permission) or
# descriptor pressure: not the disk's fault.
_NOT_DISK = frozenset({
    errno.ENOENT, errno.EACCES, errno.EPERM, errno.ELOOP, errno.EISDIR, errno.ENOTDIR, errno.EEXIST,
    errno.ENAMETOOLONG, errno.EINVAL, errno.EMFILE, errno.ENFILE,
})
_errors_lock = threading.Lock()  # error paths only


class PoolStats:
    """Counters and in-flight clocks of one device I/O pool."""

    __slots__ = ("clocks", "device", "errors", "received", "sent", "stalled")

    def __init__(self, device: str) -> None:
        self.device = device  # the ``device`` label
        self.sent = 0  # HTTP body bytes
        self.received = 0
        self.errors: dict[str, int] = {}  # errno name -> count
        self.clocks: list[CallClock] = []  # one per live pool thread
        self.stalled = False  # set by the metrics thread

    def thread_clock(self, clock: CallClock | None = None) -> CallClock:
        """Count ``clock`` (a new one if None) as a live pool thread's."""
        clock = CallClock() if clock is None else clock
        self.clocks.append(clock)
        return clock

    def drop_clock(self, clock: CallClock) -> None:
        self.clocks.remove(clock)

    def in_flight(self, at: float) -> tuple[int, float]:
        """(threads inside a step, age of the oldest such step) at time ``at``."""
        starts = [s for s in [c.since for c in list(self.clocks)] if s]
        return len(starts), (at - min(starts)) if starts else 0.0

    def io_error(self, err: int | None) -> bool:
        """A disk call failed with ``err``: counted, and True, unless the request itself caused it."""
        if err is None or err in _NOT_DISK:
            return False
        name = errno.errorcode.get(err, str(err))
        with _errors_lock:
            self.errors[name] = self.errors.get(name, 0) + 1
        return True
