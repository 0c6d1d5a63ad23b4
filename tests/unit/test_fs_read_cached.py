"""store/fs.py read_cached: a read the event thread may do because it cannot wait
for a disk, on real filesystems (ext4 on a loop device, tmpfs)."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import mounted, remount_cold
from mogstored.store import fs

DATA = os.urandom(5000)


@contextmanager
def opened(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY)
    try:
        yield fd
    finally:
        os.close(fd)


def read(fd: int, offset: int = 0, length: int = len(DATA)) -> bytes | None:
    buf = bytearray(length)
    ok = fs.read_cached(fd, os.fstat(fd).st_dev, memoryview(buf), offset)
    return bytes(buf) if ok else None


def test_ext4_reads_only_what_the_page_cache_holds(tmp_path: Path) -> None:
    with mounted(tmp_path / "dev1", "ext4", tmp_path, 16) as dev:
        (dev / "f").write_bytes(DATA)
        remount_cold(dev, tmp_path)
        with opened(dev / "f") as fd:
            assert read(fd) is None  # on the disk only: RWF_NOWAIT says EAGAIN
            os.pread(fd, len(DATA), 0)  # now cached
            assert read(fd) == DATA
            assert read(fd, 1000, 100) == DATA[1000:1100]
            assert read(fd, 4000, 2000) is None  # short: past the end


def test_tmpfs_is_read_in_place_while_no_swap_is_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with mounted(tmp_path / "dev1", "tmpfs", tmp_path, 16) as dev:
        (dev / "f").write_bytes(DATA)
        with opened(dev / "f") as fd:
            with pytest.raises(OSError, match="Operation not supported"):
                os.preadv(fd, [bytearray(10)], 0, os.RWF_NOWAIT)  # why tmpfs needs a rule of its own
            monkeypatch.setattr(fs, "_swap_on", lambda: False)
            assert read(fd) == DATA  # its pages are memory
            assert read(fd, 10, 20) == DATA[10:30]
            monkeypatch.setattr(fs, "_swap_on", lambda: True)
            assert read(fd) is None  # a page may be on a swap disk: the pool reads it


def test_swap_areas_are_read_from_proc() -> None:
    lines = Path("/proc/swaps").read_text().splitlines()
    assert fs._swap_on() is (len(lines) > 1)
