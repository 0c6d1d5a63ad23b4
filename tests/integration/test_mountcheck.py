"""``--mountcheck`` (issue 10): a devN whose disk did not mount (a plain
directory on the docroot's filesystem) takes no writes and advertises no usage,
yet still serves reads and shows in ``watch``; once mounted it is served
normally from the next rescan."""
from __future__ import annotations

import re
from pathlib import Path

from conftest import Daemon, HttpConn, http_get, mounted, wait_for
from test_watch import fake_iostat, read_blocks, watcher

FAST = {"MOG_DISK_USAGE_INTERVAL": "1"}


def usage_time(dev: Path) -> int:
    m = re.search(rb"^time: (\d+)$", (dev / "usage").read_bytes(), re.M)
    assert m is not None
    return int(m.group(1))


def put(d: Daemon, path: bytes, body: bytes = b"hello") -> int:
    with HttpConn(d.http()) as c:
        return c.request(b"PUT %s HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (path, len(body), body)).status


def test_unmounted_device_refuses_writes_until_mounted(tmp_path: Path) -> None:
    docroot = tmp_path / "docroot"
    (docroot / "dev1").mkdir(parents=True)
    (docroot / "dev1" / "old.fid").write_bytes(b"already here")
    env = {**FAST, "MOG_IOSTAT_CMD": fake_iostat(tmp_path, "vda 1.0 2.0 3.00")}
    with mounted(docroot / "dev2", "ext4", tmp_path, 16):
        d = Daemon(tmp_path, args=("--mountcheck",), env=env)
        try:
            with HttpConn(d.http()) as c:
                r = c.request(b"PUT /dev1/0/x.fid HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
                assert r.status == 507 and r.header("Connection") == b"close"
                assert c.at_eof()
            assert not (docroot / "dev1" / "0").exists()
            assert put(d, b"/dev2/0/x.fid") == 201
            assert (docroot / "dev2" / "0" / "x.fid").read_bytes() == b"hello"
            # reads still served; no usage (neither the file nor from memory)
            assert http_get(d, "/dev1/old.fid") == (200, b"already here")
            with HttpConn(d.http()) as c:
                assert c.request(b"HEAD /dev1/old.fid HTTP/1.1\r\n\r\n", head_only=True).status == 200
            assert http_get(d, "/dev1/usage")[0] == 404
            assert http_get(d, "/dev2/usage")[0] == 200
            assert not (docroot / "dev1" / "usage").exists()
            with watcher(d) as w:
                devids = [line.split(b"\t")[0] for line in read_blocks(w, 1)[0].splitlines()]
            assert devids == [b"1", b"2"]
            # one log line for the state, however many rescans see it
            first = usage_time(docroot / "dev2")
            wait_for(lambda: usage_time(docroot / "dev2") >= first + 2, what="two more rescans")
            refused = "dev1: %s/dev1 is not a mount point, refusing writes (mountcheck)" % docroot
            assert d.stderr().count(refused) == 1 and "dev2" not in d.stderr(), d.stderr()

            # the disk appears: writes from the next rescan on, no restart
            with mounted(docroot / "dev1", "tmpfs", tmp_path, 16):
                wait_for(lambda: put(d, b"/dev1/0/y.fid") == 201, what="dev1 accepting writes")
                assert (docroot / "dev1" / "0" / "y.fid").read_bytes() == b"hello"
                wait_for(lambda: (docroot / "dev1" / "usage").exists(), what="dev1 usage written")
                assert http_get(d, "/dev1/usage")[0] == 200
                assert d.stderr().count("dev1: %s/dev1 is mounted now, accepting writes" % docroot) == 1
                assert d.stderr().count(refused) == 1
                assert d.stop() == 0
        finally:
            d.kill()


def test_without_mountcheck_a_plain_directory_takes_writes(tmp_path: Path) -> None:
    d = Daemon(tmp_path, devices=(1,))
    try:
        assert put(d, b"/dev1/0/x.fid") == 201
        assert "mount" not in d.stderr()
    finally:
        d.kill()
