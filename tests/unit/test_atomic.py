"""store.atomic: unnamed PUT files, naming them into place, and the failure paths, on
the real filesystem under the test's temp dir."""
from __future__ import annotations

import errno
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


# -- the O_TMPFILE commit's failures, at the calls it makes (FUSE, the disk-error tests'
# failing filesystem, refuses O_TMPFILE, so they are faulted here) -----------------------
def failing(monkeypatch: pytest.MonkeyPatch, call: str, after: int = 0) -> list[tuple]:
    """Make ``os.<call>`` raise EIO from its ``after``-th call on; returns the calls made."""
    real = getattr(os, call)
    calls: list[tuple] = []

    def fake(*args: object, **kwargs: object) -> object:
        calls.append(args)
        if len(calls) > after:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(*args, **kwargs)

    monkeypatch.setattr(atomic.os, call, fake)
    return calls


@pytest.mark.parametrize("old, replacing", [(None, False), (b"old", True), (b"old", False)],
                         ids=["new name", "replacing", "replacing, not known"])
def test_unnamed_commit_link_failure_names_nothing(tmp_path: Path, dirfd: int, monkeypatch: pytest.MonkeyPatch,
                                                   old: bytes | None, replacing: bool) -> None:
    if old is not None:
        (tmp_path / "a.fid").write_bytes(old)
    fd, tmp = write_new(dirfd, "a.fid", b"new")
    assert tmp is None  # O_TMPFILE
    real = atomic._link  # the one call that names the file, by descriptor or through /proc (both params)
    calls: list[str] = []

    def link(fd: int, dirfd: int, name: str) -> None:
        calls.append(name)
        if len(calls) > (0 if replacing or old is None else 1):
            raise OSError(errno.EIO, os.strerror(errno.EIO), name)
        real(fd, dirfd, name)

    monkeypatch.setattr(atomic, "_link", link)
    try:
        with pytest.raises(OSError) as e:
            atomic.commit(fd, tmp, dirfd, "a.fid", durable=False, replacing=replacing)
    finally:
        os.close(fd)
    assert e.value.errno == errno.EIO
    # A known replacement links under a temp name at once; otherwise the name itself is tried first.
    assert atomic._TMP_NAME.match(calls[0]) if replacing else calls[0] == "a.fid"
    assert all(atomic._TMP_NAME.match(n) for n in calls[1:])
    assert os.listdir(tmp_path) == ([] if old is None else ["a.fid"])
    if old is not None:
        assert (tmp_path / "a.fid").read_bytes() == old


def test_unnamed_commit_rename_failure_keeps_the_old_file_and_drops_the_temp_link(
        tmp_path: Path, dirfd: int, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.fid").write_bytes(b"old")
    fd, tmp = write_new(dirfd, "a.fid", b"new")
    calls = failing(monkeypatch, "rename")
    try:
        with pytest.raises(OSError):
            atomic.commit(fd, tmp, dirfd, "a.fid", durable=False, replacing=True)
    finally:
        os.close(fd)
    assert len(calls) == 1 and atomic._TMP_NAME.match(calls[0][0])  # the temp link, renamed over a.fid
    assert os.listdir(tmp_path) == ["a.fid"] and (tmp_path / "a.fid").read_bytes() == b"old"


def test_durable_commit_fdatasync_failure_names_nothing(tmp_path: Path, dirfd: int,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    fd, tmp = write_new(dirfd, "a.fid", b"new")
    failing(monkeypatch, "fdatasync")
    link = failing(monkeypatch, "link", after=1)
    try:
        with pytest.raises(OSError):
            atomic.commit(fd, tmp, dirfd, "a.fid", durable=True)
    finally:
        os.close(fd)
    assert not link and os.listdir(tmp_path) == []


def test_durable_commit_directory_fsync_failure_is_unsynced_and_named(tmp_path: Path, dirfd: int,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller learns that the name exists (nothing left to discard)."""
    fd, tmp = write_new(dirfd, "a.fid", b"new")
    failing(monkeypatch, "fsync")
    try:
        with pytest.raises(atomic.Unsynced):
            atomic.commit(fd, tmp, dirfd, "a.fid", durable=True)
    finally:
        os.close(fd)
    assert os.listdir(tmp_path) == ["a.fid"] and (tmp_path / "a.fid").read_bytes() == b"new"
