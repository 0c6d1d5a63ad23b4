"""Usage files ``devN/usage`` (§2.3) as the tracker and its test-suite see them (§1.5, §5.2, §5.8)."""
from __future__ import annotations

import hashlib
import os
import re
import socket
import time
from pathlib import Path

import pytest

from conftest import HOST, Daemon, http_get, read_lines

FAST = {"MOG_DISK_USAGE_INTERVAL": "1"}
USAGE = re.compile(
    rb"available: (\d+)\ndevice: (.+)\ndisk: (.+)\ntime: (\d+)\ntotal: (\d+)\nuse: (\d+)%\nused: (\d+)\n")


def parse(data: bytes) -> dict[str, bytes | int]:
    m = USAGE.fullmatch(data)
    assert m, data
    keys = ("available", "device", "disk", "time", "total", "use", "used")
    return {k: (v if k in ("device", "disk") else int(v)) for k, v in zip(keys, m.groups())}


def wait_for(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout}s")
        time.sleep(0.05)


def mount_source(path: Path) -> bytes:
    """The ``device:`` expected for ``path``: its mountinfo source (``tmpfs`` for tmpfs)."""
    st_dev = os.stat(path).st_dev
    for line in Path("/proc/self/mountinfo").read_bytes().splitlines():
        fields = line.split(b" ")
        major, minor = map(int, fields[2].split(b":"))
        if os.makedev(major, minor) == st_dev:
            rest = fields[fields.index(b"-", 6) + 1:]
            return b"tmpfs" if rest[0] == b"tmpfs" else os.fsencode(os.path.realpath(rest[1]))
    pytest.fail(f"no mount for {path}")


def connect_early(port: int, timeout: float = 10.0) -> socket.socket:
    """Connect as soon as the port is bound (the daemon may still be starting up)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection((HOST, port), timeout=10)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def test_usage_exists_before_first_sidechannel_answer(tmp_path: Path) -> None:
    """§1.5: the very first ``MD5 /dev1/usage`` answers a digest of the file, not -1."""
    d = Daemon(tmp_path, devices=(1, 2), wait=False)
    try:
        with connect_early(d.mgmt_port) as s:
            s.sendall(b"MD5 /dev1/usage\r\nsize /dev2/usage\r\n")
            reply = b"".join(read_lines(s, 2))
        md5 = hashlib.md5((d.docroot / "dev1" / "usage").read_bytes()).hexdigest()
        size = (d.docroot / "dev2" / "usage").stat().st_size
        assert reply == f"/dev1/usage MD5={md5}\r\n/dev2/usage {size}\r\n".encode()
    finally:
        d.kill()


def test_usage_exists_before_first_http_answer(tmp_path: Path) -> None:
    d = Daemon(tmp_path, devices=(1,), wait=False)
    try:
        connect_early(d.http_port).close()
        status, body = http_get(d, "/dev1/usage")
        assert status == 200
        parse(body)
    finally:
        d.kill()


@pytest.fixture
def fast(tmp_path: Path):
    """A daemon rewriting usage files every second."""
    d = Daemon(tmp_path, devices=(1, 2), env=FAST)
    assert d.mgmt_cmd(b"\r\n") == b"\r\n"  # serving: the first pass is done
    yield d
    d.kill()


def test_format_and_values(fast: Daemon) -> None:
    """§2.3.1 layout; §2.3.2 values from statvfs, root-reserved blocks excluded."""
    for devid in (1, 2):
        devdir = fast.docroot / f"dev{devid}"
        u = parse((devdir / "usage").read_bytes())
        st = os.statvfs(devdir)
        k = st.f_frsize // 1024
        assert u["device"] == mount_source(devdir)
        assert u["disk"] == os.fsencode(os.path.realpath(fast.docroot)) + b"/dev%d" % devid
        assert abs(u["time"] - time.time()) < 5
        assert u["total"] == (st.f_blocks - (st.f_bfree - st.f_bavail)) * k
        assert u["total"] == u["used"] + u["available"]
        assert abs(u["available"] - st.f_bavail * k) < max(u["total"] // 100, 1 << 16)  # others write too
        assert 0 < u["used"] and 0 < u["total"]  # the tracker needs both non-zero (§2.3.4)
        assert u["use"] == min(100, -(-u["used"] * 100 // u["total"]))
        umask = os.umask(0o022)
        os.umask(umask)  # the daemon inherited ours
        assert oct((devdir / "usage").stat().st_mode & 0o777) == oct(0o666 & ~umask)


def test_rewritten_every_interval_atomically(fast: Daemon) -> None:
    usage = fast.docroot / "dev1" / "usage"
    first, ino = parse(usage.read_bytes())["time"], usage.stat().st_ino
    wait_for(lambda: parse(usage.read_bytes())["time"] > first, 3, "usage not rewritten")
    assert usage.stat().st_ino != ino  # replaced by rename, not rewritten in place
    assert sorted(p.name for p in usage.parent.iterdir()) == ["usage"]  # no temp file left


def test_devices_found_at_run_time(fast: Daemon) -> None:
    """§2.1: new devN get a usage file within an interval; non-device names never do."""
    root = fast.docroot
    for name in ("dev5", "dev01", "dev007", "dev16777216", "devx", "dev-1"):
        (root / name).mkdir()
    (root / "dev6").write_bytes(b"")
    wait_for((root / "dev5" / "usage").exists, 3, "no usage file for dev5")
    time.sleep(1.2)  # one more pass
    assert [p.name for p in sorted(root.glob("*/usage"))] == ["usage"] * 3
    assert sorted(p.parent.name for p in root.glob("*/usage")) == ["dev1", "dev2", "dev5"]


def test_symlinked_device_gets_usage(tmp_path: Path) -> None:
    """A devN that is a symlink to a mount point counts; ``disk:`` names devN, not the target."""
    target = tmp_path / "disk3"
    target.mkdir()
    (tmp_path / "docroot").mkdir()
    (tmp_path / "docroot" / "dev3").symlink_to(target)
    d = Daemon(tmp_path, devices=(1,))
    try:
        assert d.mgmt_cmd(b"\r\n") == b"\r\n"
        u = parse((target / "usage").read_bytes())
        assert u["disk"] == os.fsencode(os.path.realpath(d.docroot)) + b"/dev3"
    finally:
        d.kill()


def test_http_get_usage(fast: Daemon) -> None:
    """The monitor's GET and mogadm check's double-slash GET (§5.2, §5.7)."""
    for path in ("/dev1/usage", "//dev2/usage"):
        status, body = http_get(fast, path)
        assert status == 200
        u = parse(body)
        assert u["used"] and u["total"] and u["available"] and u["device"] and u["disk"]


def test_no_usage_files_without_sidechannel(tmp_path: Path) -> None:
    d = Daemon(tmp_path, devices=(1, 2), env=FAST, mgmt=False)
    try:
        assert http_get(d, "/dev1/usage")[0] == 404
        time.sleep(1.5)  # a periodic pass would have written by now
        assert http_get(d, "/dev2/usage")[0] == 404
        assert list(d.docroot.glob("*/usage*")) == []
    finally:
        d.kill()
