"""The hot-path counters and a pool's stats, sans-IO."""
from __future__ import annotations

import errno

from mogstored import counters
from mogstored.counters import BUCKETS, PoolStats


def test_a_finished_request_counts_once_in_its_status_and_its_bucket() -> None:
    m = counters.METHODS.index("DELETE")
    before = ([*counters.requests[m]], [*counters.buckets[m]], counters.seconds[m])
    counters.http_request("DELETE", 204, counters.now() - 0.003)  # 3 ms ago: the 0.005 bucket
    assert counters.requests[m][204] == before[0][204] + 1
    assert sum(counters.requests[m]) == sum(before[0]) + 1
    i = BUCKETS.index(0.005)
    assert [b - a for a, b in zip(before[1], counters.buckets[m])] == [int(k == i) for k in range(len(BUCKETS) + 1)]
    assert 0.003 <= counters.seconds[m] - before[2] < 1.0


def test_mgmt_commands_by_label() -> None:
    before = [*counters.mgmt_commands]
    counters.mgmt_command("sha1")
    counters.mgmt_command("other")
    diff = [b - a for a, b in zip(before, counters.mgmt_commands)]
    assert dict(zip(counters.MGMT_COMMANDS, diff)) == {"size": 0, "md5": 0, "sha1": 1, "watch": 0, "other": 1}


def test_only_disk_errors_count() -> None:
    st = PoolStats("dev1")
    for err in (errno.EIO, errno.ENOENT, errno.EIO, errno.ENOSPC, errno.EACCES, errno.ELOOP, None):
        st.io_error(err)
    assert st.errors == {"EIO": 2, "ENOSPC": 1}


def test_in_flight_is_the_busy_threads_and_the_oldest_call() -> None:
    st = PoolStats("dev2")
    a, b, idle = st.thread_clock(), st.thread_clock(), st.thread_clock()
    assert st.in_flight(100.0) == (0, 0.0)
    a.since, b.since = 90.0, 97.5
    assert st.in_flight(100.0) == (2, 10.0)
    st.drop_clock(a)  # its thread left the pool
    assert st.in_flight(100.0) == (1, 2.5)
    assert idle.since == 0.0


def test_counters_is_a_leaf_and_prometheus_client_waits_for_metricslisten() -> None:
    """The hot path imports no other module of the package; a node without
    --metricslisten never loads prometheus_client."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    tree = ast.parse(Path(counters.__file__).read_text())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m and m.startswith("mogstored")]
    code = "import sys, mogstored.__main__, mogstored.process.server; print('prometheus_client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout
    assert out == "False\n"
