"""iostat stream parsing and mount mapping (§4.5.1).

Samples in tests/data/iostat/: ``sysstat-12.6-recorded-vda.txt`` is real
``LC_ALL=C iostat -dx 1 3`` output (sysstat 12.6.1). The others reproduce the layouts of
older sysstat (10.x ``Device:`` header ending ``svctm  %util``; 11.6/12.0 ``Device r/s w/s
... svctm %util``) and of 12.6 with partitions, nvme, dm and md devices; column widths are
taken from the real headers, the numbers are made up, the ``%util`` column is chosen.
"""

import os
import random
from pathlib import Path

import pytest

from mogstored.store.devices import Mount
from mogstored.store.iostat import IostatParser, map_utilisation

DATA = Path(__file__).resolve().parent.parent / "data" / "iostat"

EXPECTED = {
    "sysstat-10-old.txt": [
        {"sda": "1.20", "sda1": "0.40", "sda2": "0.80", "sdb": "12.30", "sdb1": "12.30",
         "dm-0": "0.00", "md0": "5.60"},
        {"sda": "100.00", "sda1": "99.90", "sda2": "0.10", "sdb": "0.00", "sdb1": "0.00",
         "dm-0": "7.25", "md0": "0.00"},
        dict.fromkeys(["sda", "sda1", "sda2", "sdb", "sdb1", "dm-0", "md0"], "0.00"),
    ],
    "sysstat-11.6-nvme.txt": [
        {"nvme0n1": "3.10", "nvme0n1p1": "0.02", "nvme0n1p2": "3.08", "sda": "0.50",
         "dm-0": "3.08", "dm-1": "0.00", "md127": "0.50"},
        {"nvme0n1": "45.00", "nvme0n1p1": "0.00", "nvme0n1p2": "45.00", "sda": "2.00",
         "dm-0": "44.90", "dm-1": "0.10", "md127": "2.00"},
    ],
    "sysstat-12.6-mixed.txt": [
        {"nvme0n1": "10.00", "nvme0n1p1": "9.00", "sda": "0.30", "sda1": "0.20",
         "sdaa": "77.70", "sdaa1": "77.70", "dm-0": "9.00", "md0": "0.20"},
        dict.fromkeys(["nvme0n1", "nvme0n1p1", "sda", "sda1", "sdaa", "sdaa1", "dm-0", "md0"],
                      "0.00"),
    ],
    "sysstat-12.6-recorded-vda.txt": [{"vda": "5.23"}, {"vda": "0.00"}, {"vda": "0.00"}],
}

SAMPLES = sorted(EXPECTED)


def sample(name: str) -> bytes:
    return (DATA / name).read_bytes()


def feed_chunks(chunks) -> list[dict[str, str]]:
    p = IostatParser()
    out = []
    for c in chunks:
        out += p.feed(c)
    return out


@pytest.mark.parametrize("name", SAMPLES)
def test_whole_output_in_one_burst(name):
    assert feed_chunks([sample(name)]) == EXPECTED[name]


@pytest.mark.parametrize("name", SAMPLES)
def test_byte_by_byte(name):
    data = sample(name)
    assert feed_chunks(data[i:i + 1] for i in range(len(data))) == EXPECTED[name]


@pytest.mark.parametrize("name", SAMPLES)
def test_split_at_every_byte(name):
    data = sample(name)
    for i in range(len(data) + 1):
        assert feed_chunks([data[:i], data[i:]]) == EXPECTED[name], i


@pytest.mark.parametrize("name", SAMPLES)
def test_random_bursts_spanning_reports(name):
    data = sample(name) * 3
    rng = random.Random(name)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 8)))
        chunks = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
        assert feed_chunks(chunks) == EXPECTED[name] * 3


@pytest.mark.parametrize("name", SAMPLES)
def test_report_completes_only_with_its_terminating_line(name):
    data = sample(name)
    p = IostatParser()
    first_blank_after_data = data.index(b"\n\n", data.index(b"\n", data.index(b"Device")) + 1)
    end_of_data = first_blank_after_data + 1
    assert p.feed(data[:end_of_data]) == []
    assert p.feed(b"\n") == [EXPECTED[name][0]]


def test_report_stalled_mid_line():
    data = sample("sysstat-12.6-mixed.txt")
    stall = data.index(b"md0") + 40  # inside the last data line of report 1
    p = IostatParser()
    assert p.feed(data[:stall]) == []
    for _ in range(3):  # nothing arrives for a while: the pipe reads return nothing new
        assert p.feed(b"") == []
    assert p.feed(data[stall:]) == EXPECTED["sysstat-12.6-mixed.txt"]


def test_header_and_banner_lines_are_ignored_and_names_with_colon_rejected():
    p = IostatParser()
    assert p.feed(b"Linux 2.6.18 (h) \t03/14/2013\n\nDevice:  rrqm/s  %util\n") == []
    assert p.feed(b"sda:1  3.00\nsdb 0.50\ncciss/c0d0 \t 1.5 \t\n"
                  b"vg0-lv_data 12 2.00\n\n") == [
        {"sdb": "0.50", "cciss/c0d0": "1.5", "vg0-lv_data": "2.00"}]


def test_non_numeric_last_field_ends_report():
    assert feed_chunks([b"sda 1 2.00\nsdb 1 2,00\nsdc 1 3.00\n\n"]) == [
        {"sda": "2.00"}, {"sdc": "3.00"}]


def test_restarted_iostat_banner_ends_a_truncated_report():
    out = feed_chunks([b"Device r/s %util\nsda 1.00 4.00\nsd",
                       b"Linux 6.1.0 (h) \t02/20/2024 \t_x86_64_\t(2 CPU)\n\n"])
    assert out == [{"sda": "4.00"}]


def test_overlong_line_is_dropped_as_non_matching():
    p = IostatParser()
    assert p.feed(b"sda 1 1.00\nsdc") == []
    for _ in range(20):
        assert p.feed(b" " * 10000) == []
    assert p.feed(b"3.00\nsdb 1 2.00\n\n") == [{"sda": "1.00"}, {"sdb": "2.00"}]
    assert len(p._buf) == 0


def test_overlong_line_in_one_chunk():
    assert feed_chunks([b"sda 1 1.00\n" + b"x" * 100000, b"\nsdb 1 2.00\n\n"]) == [
        {"sda": "1.00"}, {"sdb": "2.00"}]


# --- map_utilisation -------------------------------------------------------------------

def mount(n: int, source: str, fstype: str = "ext4") -> Mount:
    return Mount(source, f"/mnt/{n}", fstype, os.makedev(8, n))


MOUNTS = {m.st_dev: m for m in [
    mount(1, "/dev/sda1"), mount(2, "/dev/sda2"), mount(3, "/dev/sdaa1"),
    mount(4, "/dev/nvme0n1p1"), mount(5, "/dev/dm-0"), mount(6, "/dev/md0"),
    mount(7, "tmpfs", "tmpfs"), mount(8, "server:/export", "nfs"), mount(9, "/dev/dm-10"),
    mount(10, "/dev/nvme0n1"),
]}


def test_map_utilisation_partitions_and_overrides():
    report = EXPECTED["sysstat-12.6-mixed.txt"][0]
    assert map_utilisation(report, MOUNTS) == {
        os.makedev(8, 1): "0.20",   # sda1 listed after sda overrides it
        os.makedev(8, 2): "0.30",   # sda2 not listed: whole-disk value
        os.makedev(8, 3): "77.70",  # sdaa1, not sda
        os.makedev(8, 4): "9.00",
        os.makedev(8, 5): "9.00",
        os.makedev(8, 6): "0.20",
        os.makedev(8, 10): "10.00",
    }


def test_map_utilisation_longest_name_wins_regardless_of_order():
    report = {"dm-10": "50.00", "dm-1": "1.00", "sdaa": "7.00", "sda": "3.00"}
    got = map_utilisation(report, MOUNTS)
    assert got[os.makedev(8, 9)] == "50.00"
    assert got[os.makedev(8, 3)] == "7.00"
    assert got[os.makedev(8, 1)] == "3.00"
    assert map_utilisation(dict(reversed(report.items())), MOUNTS) == got


def test_map_utilisation_nothing_matches():
    assert map_utilisation({}, MOUNTS) == {}
    assert map_utilisation({"vdb": "1.00"}, MOUNTS) == {}
