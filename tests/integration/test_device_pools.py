"""The device layer: per-device I/O pools, their isolation and resizing, the
fsck queue, devices added at run time, usage kept in memory."""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from conftest import BlockedOpens, Daemon, mounted, named_threads, read_until, wait_for

POOL = 10  # default threads per device
SHARED = 4  # default threads of the pool for paths outside any device


def settle(d: Daemon) -> None:
    """The port accepts before the threads start: wait until both protocols answer."""
    assert d.mgmt_cmd(b"\r\n") == b"\r\n"
    assert requests.get(d.url("/"), timeout=10).status_code == 200
    time.sleep(0.2)


def get_status(d: Daemon, path: str, timeout: float = 30.0) -> int:
    return requests.get(d.url(path), timeout=timeout).status_code


def test_saturated_device_does_not_slow_another(tmp_path: Path) -> None:
    d = Daemon(tmp_path)
    blocked = None
    try:
        settle(d)
        (d.docroot / "dev1" / "small").write_bytes(b"x" * 4096)
        # Larger than a body sent with its head from the page cache: sendfile in dev2's pool.
        queued_body = os.urandom(1 << 20)
        (d.docroot / "dev2" / "queued").write_bytes(queued_body)
        (d.docroot / "dev2" / "cached").write_bytes(b"c" * 4096)
        baseline = [_timed_get(d, "/dev1/small") for _ in range(20)]

        blocked = BlockedOpens(d, 2, POOL)  # every dev2 pool thread stuck in open()
        time.sleep(0.5)
        queued: list[int] = []
        waiter = threading.Thread(target=lambda: queued.append(get_status(d, "/dev2/queued")))
        waiter.start()
        during = [_timed_get(d, "/dev1/small") for _ in range(50)]
        time.sleep(0.3)
        assert not queued, "dev2 should have no free thread while its opens block"
        # A small cached file needs no pool thread: served from the caches meanwhile.
        assert _timed_get(d, "/dev2/cached") < 1.0
        assert not blocked.results
        assert max(during) < 1.0, during  # generous: dev1 does not wait for dev2
        print(f"\ndev1 GET latency: idle median {sorted(baseline)[10] * 1e3:.2f} ms; "
              f"dev2 saturated median {sorted(during)[25] * 1e3:.2f} ms, max {max(during) * 1e3:.2f} ms")

        blocked.release()
        blocked = None
        waiter.join(30)
        assert queued == [200]  # parked, not failed: served once dev2 has a thread again
        assert (d.docroot / "dev2" / "leased0").read_bytes() == b"new"
    finally:
        if blocked is not None:
            blocked.release()
        d.kill()


def _timed_get(d: Daemon, path: str) -> float:
    t = time.monotonic()
    r = requests.get(d.url(path), timeout=10)
    assert r.status_code == 200 and len(r.content) == 4096
    return time.monotonic() - t


def _steady(count: Callable[[], int], want: int) -> None:
    """``count()`` reaches ``want`` and stays there for a while."""
    wait_for(lambda: count() == want, timeout=5, what=f"{want} threads")
    time.sleep(0.3)
    assert count() == want


def test_aio_threads_resizes_device_pools(tmp_path: Path) -> None:
    """Pool threads start as work comes, up to ``server aio_threads`` per device: with
    more blocked requests than that, exactly N threads run per pool, the rest wait.
    A pool with threads has exactly N right after the command."""
    d = Daemon(tmp_path, devices=(1, 2))
    blocked: list[BlockedOpens] = []
    try:
        settle(d)
        io = {dev: (lambda dev=dev: named_threads(d.pid, f"io:dev{dev}")) for dev in (1, 2)}
        assert io[1]() <= 1 and io[2]() <= 1  # idle: at most the one that ran the usage pass
        assert d.mgmt_cmd(b"server aio_threads = 2\r\n") == b"\r\n"
        time.sleep(0.2)  # the main thread applies it
        blocked = [BlockedOpens(d, dev, 5) for dev in (1, 2)]
        for dev in (1, 2):
            _steady(io[dev], 2)
        assert d.mgmt_cmd(b"server aio_threads = 0\r\n") == b"\r\n"  # out of range: ignored
        assert d.mgmt_cmd(b"server aio_threads = 101\r\n") == b"\r\n"
        _steady(io[1], 2)
        assert d.mgmt_cmd(b"server aio_threads=20\r\n") == b"\r\n"
        for dev in (1, 2):
            _steady(io[dev], 20)  # the queued requests get threads at once, 15 more wait
        assert "server aio_threads=20" in d.stderr()
        for b in blocked:
            b.release()
        assert [b.results for b in blocked] == [[201] * 5] * 2
        blocked = []
        assert d.mgmt_cmd(b"server aio_threads = 1\r\n") == b"\r\n"
        for dev in (1, 2):
            _steady(io[dev], 1)  # surplus idle threads leave at once
        # Still serving after all that.
        (d.docroot / "dev1" / "f").write_bytes(b"abc")
        assert requests.get(d.url("/dev1/f"), timeout=10).content == b"abc"
    finally:
        for b in blocked:
            b.release()
        d.kill()


def test_aio_threads_without_any_device(tmp_path: Path) -> None:
    """Issue 7 item 4: on a docroot with no devNNN the setting still limits the
    process's pool threads: the shared pool, which serves a device that appeared
    since the last scan."""
    d = Daemon(tmp_path, devices=(), env={"MOG_DISK_USAGE_INTERVAL": "3600"})
    blocked = None
    try:
        settle(d)
        (d.docroot / "dev9").mkdir()  # no scan will find it during the test
        shared = lambda: named_threads(d.pid, "io:shared")  # noqa: E731
        assert d.mgmt_cmd(b"server aio_threads = 1\r\n") == b"\r\n"
        time.sleep(0.2)
        blocked = BlockedOpens(d, 9, 4)
        _steady(shared, 1)
        assert d.mgmt_cmd(b"server aio_threads = 6\r\n") == b"\r\n"
        _steady(shared, 6)  # 4 run the queued PUTs, 2 wait for work
        blocked.release()
        assert blocked.results == [201] * 4
        blocked = None
        assert requests.get(d.url("/"), timeout=10).status_code == 200
    finally:
        if blocked is not None:
            blocked.release()
        d.kill()


def test_device_added_at_run_time(tmp_path: Path) -> None:
    d = Daemon(tmp_path, devices=(1,), env={"MOG_DISK_USAGE_INTERVAL": "1"})
    try:
        settle(d)
        (d.docroot / "dev7").mkdir()
        # Served at once (shared pool until the next scan gives it its own).
        r = requests.put(d.url("/dev7/0/000/000/0000000001.fid"), data=b"new disk", timeout=10)
        assert r.status_code == 201
        usage = d.docroot / "dev7" / "usage"
        wait_for(usage.exists, timeout=5)
        assert usage.read_text().splitlines()[2] == f"disk: {d.docroot / 'dev7'}"
        # Its own pool: its usage passes and sweep run there.
        wait_for(lambda: named_threads(d.pid, "io:dev7") >= 1, timeout=5)
        assert requests.get(d.url("/dev7/0/000/000/0000000001.fid"), timeout=10).content == b"new disk"
    finally:
        d.kill()


def _send(d: Daemon, line: bytes) -> socket.socket:
    s = d.mgmt()
    s.sendall(line)
    return s


def test_fsck_digests_run_one_at_a_time_per_filesystem(tmp_path: Path) -> None:
    d = Daemon(tmp_path)
    try:
        settle(d)
        big = os.urandom(1 << 20) * 128  # long enough to hash that order tells
        (d.docroot / "dev1" / "big").write_bytes(big)
        (d.docroot / "dev2" / "small").write_bytes(b"abc")  # dev2 shares dev1's filesystem
        first = _send(d, b"MD5 /dev1/big fsck\r\n")
        time.sleep(0.05)
        second = _send(d, b"MD5 /dev2/small fsck\r\n")
        ordinary = _send(d, b"MD5 /dev2/small\r\n")
        arrivals = []
        for name, sock, want in (("ordinary", ordinary, b"/dev2/small MD5=900150983cd24fb0d6963f7d28e17f72\r\n"),
                                 ("first", first, f"/dev1/big MD5={hashlib.md5(big).hexdigest()}\r\n".encode()),
                                 ("second", second, b"/dev2/small MD5=900150983cd24fb0d6963f7d28e17f72\r\n")):
            assert read_until(sock, b"\r\n", timeout=60) == want
            arrivals.append((time.monotonic(), name))
            sock.close()
        # Had the small fsck run beside the big one, it would have been done long
        # before; it waits its turn, while the ordinary digest is not held up.
        assert [name for _, name in sorted(arrivals)] == ["ordinary", "first", "second"]
    finally:
        d.kill()


def test_fsck_slot_released_when_client_leaves(tmp_path: Path) -> None:
    """A tracker that disconnects mid-fsck must not wedge the queue."""
    d = Daemon(tmp_path)
    try:
        settle(d)
        (d.docroot / "dev1" / "big").write_bytes(os.urandom(1 << 20) * 64)
        (d.docroot / "dev1" / "f").write_bytes(b"abc")
        _send(d, b"SHA-1 /dev1/big fsck\r\n").close()
        assert d.mgmt_cmd(b"MD5 /dev1/f fsck\r\n") == b"/dev1/f MD5=900150983cd24fb0d6963f7d28e17f72\r\n"
    finally:
        d.kill()


def test_usage_served_from_memory_when_file_is_frozen(tmp_path: Path) -> None:
    """chmod 000 stops the writes (operator's choice); the tracker still reads
    current usage over HTTP, refreshed by PUT/DELETE and every pass."""
    d = Daemon(tmp_path, devices=(1,), env={"MOG_DISK_USAGE_INTERVAL": "1"})
    try:
        settle(d)
        usage = d.docroot / "dev1" / "usage"
        usage.chmod(0)
        time.sleep(1.2)  # a pass already past its mode check may still replace it once
        usage.chmod(0)
        frozen = usage.read_bytes()
        first = requests.get(d.url("/dev1/usage"), timeout=10).text
        time.sleep(2.2)
        later = requests.get(d.url("/dev1/usage"), timeout=10).text
        assert _field(later, "time") > _field(first, "time")
        assert usage.read_bytes() == frozen and stat.S_IMODE(usage.stat().st_mode) == 0
        assert _field(later, "disk") == str(d.docroot / "dev1")
    finally:
        d.kill()


def test_put_and_delete_show_in_usage_before_the_next_pass(tmp_path: Path) -> None:
    """The read after a PUT or DELETE queues a refresh: usage follows within a
    read or two, not at the next pass (an hour away here).  dev1 is a tmpfs of
    its own: on the shared root filesystem other processes' writes and deletes
    move ``used`` by as much as the PUT does."""
    with mounted(tmp_path / "docroot" / "dev1", "tmpfs", tmp_path, 128):
        d = Daemon(tmp_path, devices=(1,), env={"MOG_DISK_USAGE_INTERVAL": "3600"})

        def used() -> int:
            return _field(requests.get(d.url("/dev1/usage"), timeout=10).text, "used")

        try:
            settle(d)
            before = used()
            assert requests.put(d.url("/dev1/big"), data=b"\0" * (64 << 20), timeout=30).status_code == 201
            wait_for(lambda: used() - before >= 32768, 5, "the PUT to show in usage")  # KiB
            grown = used()
            assert requests.delete(d.url("/dev1/big"), timeout=10).status_code == 204
            wait_for(lambda: grown - used() >= 32768, 5, "the DELETE to show in usage")
        finally:
            d.kill()


def _field(text: str, key: str):
    for line in text.splitlines():
        k, _, v = line.partition(": ")
        if k == key:
            return int(v) if v.isdigit() else v
    raise AssertionError(f"{key} missing in {text!r}")


@pytest.mark.parametrize("path", ["/dev1/usage", "//dev1/usage"])
def test_usage_over_http_is_complete(shared_daemon: Daemon, path: str) -> None:
    r = requests.get(shared_daemon.url(path), timeout=10)
    assert r.status_code == 200
    keys = [line.split(":")[0] for line in r.text.splitlines()]
    assert keys == ["available", "device", "disk", "time", "total", "use", "used"]
    assert _field(r.text, "used") > 0 and _field(r.text, "total") > 0  # the tracker rejects 0


def test_frozen_filesystem_holds_only_its_own_device(tmp_path: Path) -> None:
    """A real kernel-level hang: dev2 is a loop-mounted ext4 frozen with fsfreeze while
    PUTs to it are in flight (blocked in the kernel, more of them than dev2 has
    threads).  GET, PUT and sidechannel commands for dev1 go on as usual, a cached
    dev2 file is still read; after the thaw every dev2 PUT completes."""
    if shutil.which("fsfreeze") is None or not os.path.exists("/dev/loop-control"):
        pytest.skip("needs fsfreeze and loop devices")
    with mounted(tmp_path / "docroot" / "dev2", "ext4", tmp_path, 64) as dev2:
        d = Daemon(tmp_path, devices=(1, 2))
        frozen = False
        puts: list[threading.Thread] = []
        results: dict[str, int] = {}
        try:
            settle(d)
            (d.docroot / "dev1" / "small").write_bytes(b"x" * 4096)
            (dev2 / "old").write_bytes(b"o" * 4096)
            assert requests.get(d.url("/dev2/old"), timeout=10).status_code == 200
            subprocess.run(["fsfreeze", "-f", str(dev2)], check=True)
            frozen = True
            bodies = {f"/dev2/0/000/000/{i:010d}.fid": os.urandom(65536) for i in range(POOL + 2)}

            def put(path: str) -> None:
                results[path] = requests.put(d.url(path), data=bodies[path], timeout=120).status_code

            puts = [threading.Thread(target=put, args=(p,)) for p in bodies]
            for t in puts:
                t.start()
            wait_for(lambda: named_threads(d.pid, "io:dev2") == POOL, timeout=10, what="dev2's threads all blocked")
            time.sleep(0.3)
            assert not results, "PUTs to a frozen filesystem cannot have completed"

            start = time.monotonic()
            for i in range(20):
                assert _timed_get(d, "/dev1/small") < 2.0
                r = requests.put(d.url(f"/dev1/0/000/000/{i:010d}.fid"), data=b"p" * 65536, timeout=10)
                assert r.status_code == 201
                assert d.mgmt_cmd(b"size /dev1/small\r\n") == b"/dev1/small 4096\r\n"
                assert d.mgmt_cmd(f"MD5 /dev1/0/000/000/{i:010d}.fid\r\n".encode()) == (
                    f"/dev1/0/000/000/{i:010d}.fid MD5={hashlib.md5(b'p' * 65536).hexdigest()}\r\n".encode())
            assert time.monotonic() - start < 20
            r = requests.get(d.url("/dev2/old"), timeout=10)  # reads of a frozen filesystem do not block
            assert (r.status_code, r.content) == (200, b"o" * 4096)
            assert not results

            subprocess.run(["fsfreeze", "-u", str(dev2)], check=True)
            frozen = False
            for t in puts:
                t.join(60)
            assert results == {p: 201 for p in bodies}
            for p, body in bodies.items():
                assert (d.docroot / p.lstrip("/")).read_bytes() == body
        finally:
            if frozen:
                subprocess.run(["fsfreeze", "-u", str(dev2)], check=False)
            for t in puts:
                t.join(60)
            d.kill()
