"""store.atomic: unnamed PUT files, naming them into place, and the failure paths, on
the real filesystem under the test's temp dir."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from mogstored.store import atomic


@pytest.fixture(params=[True, False], ids=["by-fd", "via-proc"])
def dirfd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[int]:
    """The test's directory, with unnamed files linked by fd (AT_EMPTY_PATH) or through /proc."""
    monkeypatch.setattr(atomic, "_by_fd", request.param)
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def test_linking_by_fd_is_probed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Root may link by fd (CAP_DAC_READ_SEARCH); the test seam forces /proc."""
    if os.geteuid() == 0:
        assert atomic._can_link_by_fd()
    monkeypatch.setenv("MOG_LINK_VIA_PROC", "1")
    assert not atomic._can_link_by_fd()


def write_new(dirfd: int, name: str, data: bytes) -> tuple[int, str | None]:
    fd, tmp = atomic.create(dirfd, name)
    os.write(fd, data)
    return fd, tmp


def test_body_has_no_name_until_committed(tmp_path: Path, dirfd: int) -> None:
    fd, tmp = write_new(dirfd, "a.fid", b"new")
    try:
        assert tmp is None and os.listdir(tmp_path) == []
        atomic.commit(fd, tmp, dirfd, "a.fid", durable=True)
    finally:
        os.close(fd)
    assert os.listdir(tmp_path) == ["a.fid"] and (tmp_path / "a.fid").read_bytes() == b"new"


def test_commit_replaces_an_existing_file_and_leaves_no_link(tmp_path: Path, dirfd: int) -> None:
    (tmp_path / "a.fid").write_bytes(b"old")
    fd, tmp = write_new(dirfd, "a.fid", b"new")
    try:
        atomic.commit(fd, tmp, dirfd, "a.fid", durable=False)
    finally:
        os.close(fd)
    assert os.listdir(tmp_path) == ["a.fid"] and (tmp_path / "a.fid").read_bytes() == b"new"


def test_failed_commit_leaves_the_old_target_and_no_name(tmp_path: Path, dirfd: int) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep").write_bytes(b"x")
    fd, tmp = write_new(dirfd, "d", b"new")
    try:
        with pytest.raises(OSError):
            atomic.commit(fd, tmp, dirfd, "d", durable=False)  # a non-empty directory is in the way
    finally:
        os.close(fd)
    assert os.listdir(tmp_path) == ["d"] and os.listdir(tmp_path / "d") == ["keep"]


def test_named_fallback_when_o_tmpfile_is_refused(tmp_path: Path, dirfd: int,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(atomic, "_use_tmpfile", False)
    fd, tmp = write_new(dirfd, "a.fid", b"new")
    try:
        assert tmp is not None and atomic._TMP_NAME.match(tmp) and os.listdir(tmp_path) == [tmp]
        atomic.commit(fd, tmp, dirfd, "a.fid", durable=True)
    finally:
        os.close(fd)
    assert os.listdir(tmp_path) == ["a.fid"] and (tmp_path / "a.fid").read_bytes() == b"new"


# -- replace_file: the usage file's way in -------------------------------------------
USAGE = b"available: 1\ndevice: /dev/x\n"


@pytest.mark.parametrize("tmpfile", [True, False], ids=["O_TMPFILE", "named temp"])
def test_replace_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmpfile: bool) -> None:
    monkeypatch.setattr(atomic, "_use_tmpfile", tmpfile)
    atomic.replace_file(str(tmp_path), "usage", b"old", 0o640)
    atomic.replace_file(str(tmp_path), "usage", USAGE, 0o640)
    usage = tmp_path / "usage"
    assert usage.read_bytes() == USAGE
    assert usage.stat().st_mode & 0o777 == 0o640
    assert os.listdir(tmp_path) == ["usage"]


def test_replace_file_error_keeps_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "usage").write_bytes(b"old")
    monkeypatch.setattr(atomic, "_use_tmpfile", False)  # a named temp: it must go too

    def fail(fd: int, mode: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fchmod", fail)
    with pytest.raises(OSError):
        atomic.replace_file(str(tmp_path), "usage", USAGE, 0o644)
    assert (tmp_path / "usage").read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["usage"]


def test_replace_file_over_a_directory_fails_and_leaves_no_temp(tmp_path: Path) -> None:
    (tmp_path / "usage").mkdir()
    (tmp_path / "usage" / "x").write_bytes(b"")
    with pytest.raises(OSError):
        atomic.replace_file(str(tmp_path), "usage", USAGE, 0o644)
    assert os.listdir(tmp_path) == ["usage"]


def test_replace_file_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        atomic.replace_file(str(tmp_path / "gone"), "usage", USAGE, 0o644)
