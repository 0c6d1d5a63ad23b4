"""store: unnamed PUT files, naming them into place, and the failure paths, on
the real filesystem under the test's temp dir."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from mogstored import store


@pytest.fixture
def dirfd(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def write_new(dirfd: int, name: str, data: bytes) -> tuple[int, str | None]:
    fd, tmp = store.create(dirfd, name)
    os.write(fd, data)
    return fd, tmp


def test_body_has_no_name_until_committed(tmp_path: Path, dirfd: int) -> None:
    fd, tmp = write_new(dirfd, "a.fid", b"new")
    try:
        assert tmp is None and os.listdir(tmp_path) == []
        store.commit(fd, tmp, dirfd, "a.fid", durable=True)
    finally:
        os.close(fd)
    assert os.listdir(tmp_path) == ["a.fid"] and (tmp_path / "a.fid").read_bytes() == b"new"


def test_commit_replaces_an_existing_file_and_leaves_no_link(tmp_path: Path, dirfd: int) -> None:
    (tmp_path / "a.fid").write_bytes(b"old")
    fd, tmp = write_new(dirfd, "a.fid", b"new")
    try:
        store.commit(fd, tmp, dirfd, "a.fid", durable=False)
    finally:
        os.close(fd)
    assert os.listdir(tmp_path) == ["a.fid"] and (tmp_path / "a.fid").read_bytes() == b"new"


def test_failed_commit_leaves_the_old_target_and_no_name(tmp_path: Path, dirfd: int) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep").write_bytes(b"x")
    fd, tmp = write_new(dirfd, "d", b"new")
    try:
        with pytest.raises(OSError):
            store.commit(fd, tmp, dirfd, "d", durable=False)  # a non-empty directory is in the way
    finally:
        os.close(fd)
    assert os.listdir(tmp_path) == ["d"] and os.listdir(tmp_path / "d") == ["keep"]


def test_named_fallback_when_o_tmpfile_is_refused(tmp_path: Path, dirfd: int,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "_use_tmpfile", False)
    fd, tmp = write_new(dirfd, "a.fid", b"new")
    try:
        assert tmp is not None and store._TMP_NAME.match(tmp) and os.listdir(tmp_path) == [tmp]
        store.commit(fd, tmp, dirfd, "a.fid", durable=True)
    finally:
        os.close(fd)
    assert os.listdir(tmp_path) == ["a.fid"] and (tmp_path / "a.fid").read_bytes() == b"new"
