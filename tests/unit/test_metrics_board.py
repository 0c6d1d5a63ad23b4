"""Metrics snapshots in shared memory, sans-IO: slots, respawn, merge rules."""
from __future__ import annotations

import os

from mogstored.metrics import board as board_module
from mogstored.metrics import totals
from mogstored.metrics.board import MetricsBoard


def test_slots_round_trip_and_are_shared_across_fork():
    board = MetricsBoard(2)
    assert board.read(0) is None and board.read(1) is None  # nothing published yet
    pid = os.fork()
    if pid == 0:  # a worker writes its slot
        board.write(1, {"c": {("req", "GET", "200"): 3}, "g": {("busy", "dev1"): 2}})
        os._exit(0)
    os.waitpid(pid, 0)
    assert board.read(1) == {"c": {("req", "GET", "200"): 3}, "g": {("busy", "dev1"): 2}}
    board.write(1, {"c": {("req", "GET", "200"): 4}, "g": {}})  # a shorter blob replaces it whole
    assert board.read(1) == {"c": {("req", "GET", "200"): 4}, "g": {}}


def test_retire_keeps_counters_drops_gauges():
    board = MetricsBoard(1)
    board.write(0, {"c": {("mgmt", "size"): 5}, "g": {("connections", "http"): 9}})
    board.retire(0)
    assert board.read(0) == {"c": {("mgmt", "size"): 5}, "g": {}}
    board.set_master(1, 2)
    assert board.read(board.master) == {"c": {("restarts",): 2}, "g": {("workers",): 1}}


def test_torn_slot_is_never_read():
    board = MetricsBoard(1)
    board.write(0, {"c": {("x",): 1}, "g": {}})
    board_module._SEQ.pack_into(board._mem, 0, 7)  # odd: a writer died mid-write
    assert board.read(0) is None


def test_merge_sums_counters_and_per_worker_gauges_takes_max_of_shared_ones():
    total = {"c": {}, "g": {}}
    totals._merge(total, {"c": {("sent", "dev1"): 10}, "g": {("busy", "dev1"): 1, ("oldest", "dev1"): 2.5,
                                                              ("bytes", "dev1", "total"): 100}})
    totals._merge(total, {"c": {("sent", "dev1"): 5}, "g": {("busy", "dev1"): 2, ("oldest", "dev1"): 0.5,
                                                             ("bytes", "dev1", "total"): 100}})
    assert total == {"c": {("sent", "dev1"): 15},
                     "g": {("busy", "dev1"): 3, ("oldest", "dev1"): 2.5, ("bytes", "dev1", "total"): 100}}


def test_usage_numbers_are_bytes():
    text = b"available: 3\ndevice: /dev/sda1\ndisk: /x/dev1\ntime: 1\ntotal: 5\nuse: 40%\nused: 2\n"
    assert totals._usage_numbers(text) == {"total": 5120, "used": 2048, "available": 3072}
