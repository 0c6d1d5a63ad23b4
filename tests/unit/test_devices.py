"""Device discovery, mount table and usage files (§2.1–§2.3)."""

import os
import time
import stat

import pytest

from mogstored.store import devices
from mogstored.store.devices import (
    Mount, Usage, compute_usage, format_usage, read_mounts, scan_devices,
)


# --- scan_devices (§2.1) --------------------------------------------------------------------

def test_scan_devices(tmp_path):
    for name in ("dev1", "dev01", "dev02", "dev16777215", "dev16777216", "dev", "devx",
                 "dev-1", "dev+3", "dev1 ", "Dev5", "dev\u0663", "target"):
        (tmp_path / name).mkdir()
    (tmp_path / "dev3").write_text("a file")
    (tmp_path / "dev4").symlink_to(tmp_path / "target")
    (tmp_path / "dev6").symlink_to(tmp_path / "dev3")
    (tmp_path / "dev7").symlink_to(tmp_path / "nowhere")
    (tmp_path / "dev0008").symlink_to("target")  # counts only through dev8
    root = str(tmp_path)
    assert scan_devices(root) == {
        1: os.path.join(root, "dev1"),
        4: os.path.join(root, "dev4"),
        16777215: os.path.join(root, "dev16777215"),
    }


def test_scan_devices_leading_zero_counts_when_canonical_exists(tmp_path):
    (tmp_path / "dev007").mkdir()
    assert scan_devices(str(tmp_path)) == {}
    (tmp_path / "dev7").symlink_to("dev007")
    assert scan_devices(str(tmp_path)) == {7: os.path.join(str(tmp_path), "dev7")}


def test_scan_devices_missing_docroot(tmp_path):
    with pytest.raises(FileNotFoundError):
        scan_devices(str(tmp_path / "missing"))


# --- read_mounts (§2.2) ---------------------------------------------------------------------

def test_read_mounts(tmp_path):
    (tmp_path / "dm-0").write_text("")
    (tmp_path / "by-uuid").mkdir()
    (tmp_path / "by-uuid" / "abc").symlink_to("../dm-0")
    uuid = tmp_path / "by-uuid" / "abc"
    info = tmp_path / "mountinfo"
    info.write_text("\n".join([
        "22 27 0:21 / /proc rw,relatime - proc proc rw",
        "23 27 0:22 / /sys rw,relatime - sysfs sysfs rw",
        "26 24 0:24 / /dev/pts rw,relatime - devpts devpts rw,mode=600",
        "27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard",
        "28 27 0:25 / /var/mog\\040data rw,relatime shared:5 master:2 - tmpfs mogtmp rw",
        # same st_dev: a source not starting with "/" loses to one that does
        "29 27 8:17 / /srv/a rw - ext4 rootfs rw",
        "30 27 8:17 /sub /srv/b rw - ext4 /dev/sdb1 rw",
        "31 27 8:17 /sub /srv/c rw - ext4 /dev/sdb1-later rw",
        f"32 27 253:0 / /data rw - xfs {uuid} rw",
        "33 27 0:40 / /nfs rw - nfs4 server:/export rw",
        "34 27 0:41 / /none rw - none none rw",
        "35 27 0:42 / /auto rw - autofs systemd-1 rw",
        "garbage line",
        "",
    ]) + "\n")
    got = read_mounts(str(info))
    assert got == {
        os.makedev(254, 0): Mount("/dev/vda", "/", "ext4", os.makedev(254, 0)),
        os.makedev(0, 25): Mount("tmpfs", "/var/mog data", "tmpfs", os.makedev(0, 25)),
        os.makedev(8, 17): Mount("/dev/sdb1", "/srv/b", "ext4", os.makedev(8, 17)),
        os.makedev(253, 0): Mount(str(tmp_path / "dm-0"), "/data", "xfs", os.makedev(253, 0)),
        os.makedev(0, 40): Mount("server:/export", "/nfs", "nfs4", os.makedev(0, 40)),
    }


def test_read_mounts_live_system_matches_stat():
    mounts = read_mounts()
    root = mounts[os.stat("/").st_dev]
    assert root.mountpoint == "/"


# --- compute_usage (§2.3.2) -----------------------------------------------------------------

def fake_statvfs(monkeypatch, *, frsize, blocks, bfree, bavail):
    result = os.statvfs_result((frsize, frsize, blocks, bfree, bavail, 0, 0, 0, 0, 255))
    monkeypatch.setattr(devices.os, "statvfs", lambda path: result)


def test_compute_usage_matches_spec_example(monkeypatch):
    # §2.3.1's real example, as 4 KiB blocks with 1000000 blocks reserved for root
    fake_statvfs(monkeypatch, frsize=4096, blocks=27597728, bfree=21886416, bavail=20886416)
    u = compute_usage("/var/mogdata/dev1", "/dev/vda", now=1795664592)
    assert u == Usage(available=83545664, device="/dev/vda", disk="/var/mogdata/dev1",
                      time=1795664592, total=106390912, use=22, used=22845248)
    assert u.total == u.used + u.available


def test_compute_usage_use_rounds_up_and_caps(monkeypatch):
    fake_statvfs(monkeypatch, frsize=1024, blocks=1000, bfree=999, bavail=999)
    assert compute_usage("/d", "x", now=0).use == 1
    fake_statvfs(monkeypatch, frsize=1024, blocks=1000, bfree=50, bavail=0)
    u = compute_usage("/d", "x", now=0)
    assert (u.use, u.used, u.total, u.available) == (100, 950, 950, 0)


def test_compute_usage_small_fragments(monkeypatch):
    fake_statvfs(monkeypatch, frsize=512, blocks=2001, bfree=1001, bavail=1001)
    u = compute_usage("/d", "x", now=0)
    assert (u.available, u.used, u.total, u.use) == (500, 500, 1000, 50)


def test_compute_usage_bavail_above_bfree_is_not_negative_reserve(monkeypatch):
    fake_statvfs(monkeypatch, frsize=4096, blocks=100, bfree=40, bavail=50)
    u = compute_usage("/d", "x", now=0)
    assert (u.total, u.used, u.available) == (400, 240, 200)


def test_empty_filesystem_reports_one_kib_used(monkeypatch):
    """A fresh tmpfs has used 0, which the tracker rejects (§2.3.4)."""
    fake_statvfs(monkeypatch, frsize=4096, blocks=1024, bfree=1024, bavail=1024)
    u = compute_usage("/d", "tmpfs", now=0)
    assert (u.used, u.total, u.available, u.use) == (1, 4096, 4096, 0)


def test_zero_block_filesystem_stays_zero(monkeypatch):
    fake_statvfs(monkeypatch, frsize=4096, blocks=0, bfree=0, bavail=0)
    u = compute_usage("/d", "x", now=0)
    assert (u.used, u.total, u.available, u.use) == (0, 0, 0, 0)


def test_compute_usage_real_filesystem(tmp_path):
    u = compute_usage(str(tmp_path), "/dev/x")
    assert u.disk == str(tmp_path) and u.device == "/dev/x"
    assert u.total >= u.available >= 0 and u.used > 0 and 0 <= u.use <= 100
    assert abs(u.time - time.time()) < 5


# --- format_usage (§2.3.1); its atomic replacement is in test_atomic.py --------------------------------------------

EXAMPLE = Usage(available=83545664, device="/dev/vda", disk="/var/mogdata/dev1",
                time=1795664592, total=106390912, use=22, used=22845248)
EXAMPLE_BYTES = (b"available: 83545664\ndevice: /dev/vda\ndisk: /var/mogdata/dev1\n"
                 b"time: 1795664592\ntotal: 106390912\nuse: 22%\nused: 22845248\n")


def test_format_usage():
    assert format_usage(EXAMPLE) == EXAMPLE_BYTES


@pytest.fixture
def umask027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_umask_read_without_changing_it(umask027):
    assert devices.umask() == 0o027
    assert os.umask(0o027) == 0o027
