"""Symlink policy of §3.4 items 4-5: a devN entry may be a symlink; nothing below devN
resolves through one, for any method, and nothing outside the docroot is read or touched."""
from __future__ import annotations

import os

import pytest

from conftest import Daemon, HttpConn

SECRET = b"outside the docroot"


@pytest.fixture(scope="module")
def d(shared_daemon: Daemon) -> Daemon:
    """dev3 -> a directory outside the docroot; links below dev1 pointing outside and inside."""
    root = shared_daemon.root
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(SECRET)
    (root / "mnt3").mkdir()
    (root / "mnt3" / "f").write_bytes(b"on dev3")
    (shared_daemon.docroot / "dev3").symlink_to(root / "mnt3")
    dev1 = shared_daemon.docroot / "dev1"
    (dev1 / "real").mkdir()
    (dev1 / "real" / "f").write_bytes(b"real")
    links = {
        "lfile": outside / "secret",
        "ldir": outside,
        "dangling": outside / "nothing",
        "inner": dev1 / "real",  # a link that stays inside the device is refused too
        "innerf": dev1 / "real" / "f",
    }
    for name, target in links.items():
        (dev1 / name).symlink_to(target)
    return shared_daemon


@pytest.fixture(autouse=True)
def outside_untouched(d: Daemon) -> None:
    """Every test ends with the outside tree exactly as it was."""
    yield
    outside = d.root / "outside"
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert (outside / "secret").read_bytes() == SECRET
    assert (d.docroot / "dev1" / "real" / "f").read_bytes() == b"real"
    for name in ("lfile", "ldir", "dangling", "inner", "innerf"):
        assert (d.docroot / "dev1" / name).is_symlink()
    assert (d.docroot / "dev3").is_symlink()


def put(c: HttpConn, path: bytes, body: bytes, extra: bytes = b"") -> int:
    r = c.request(b"PUT %s HTTP/1.1\r\nContent-Length: %d\r\n%s\r\n%s" % (path, len(body), extra, body))
    return r.status


def test_symlinked_device_works_for_everything(d: Daemon) -> None:
    mnt = d.root / "mnt3"
    with d.conn() as c:
        assert c.request(b"GET /dev3/f HTTP/1.1\r\n\r\n").body == b"on dev3"
        r = c.request(b"GET /dev3/f HTTP/1.1\r\nRange: bytes=3-\r\n\r\n")
        assert (r.status, r.body) == (206, b"dev3")
        assert c.request(b"HEAD /dev3/f HTTP/1.1\r\n\r\n", head_only=True).header("Content-Length") == b"7"
        assert put(c, b"/dev3/0/000/new.fid", b"new") == 201
        assert put(c, b"/dev3/0/000/new.fid", b"N", b"Content-Range: bytes 0-0/*\r\n") == 201
        assert (mnt / "0" / "000" / "new.fid").read_bytes() == b"New"
        assert c.request(b"DELETE /dev3/0/000/new.fid HTTP/1.1\r\n\r\n").status == 204
        assert not (mnt / "0" / "000" / "new.fid").exists()
        assert c.request(b"GET /dev3 HTTP/1.1\r\n\r\n").status == 403  # a directory


@pytest.mark.parametrize("path", [b"/dev3", b"//dev3", b"/dev1", b"/dev3/"])
def test_delete_device_directory_is_403(d: Daemon, path: bytes) -> None:
    with d.conn() as c:
        assert c.request(b"DELETE %s HTTP/1.1\r\n\r\n" % path).status == 403
    assert (d.root / "mnt3" / "f").exists() and (d.docroot / "dev1").is_dir()


READ_PATHS = [b"/dev1/lfile", b"/dev1/ldir/secret", b"/dev1/dangling", b"/dev1/inner/f", b"/dev1/innerf",
              b"/dev1/ldir", b"/dev1/inner"]


@pytest.mark.parametrize("path", READ_PATHS)
@pytest.mark.parametrize("method,rng", [(b"GET", b""), (b"HEAD", b""), (b"GET", b"Range: bytes=0-3\r\n"),
                                        (b"HEAD", b"Range: bytes=-3\r\n")])
def test_reads_through_symlinks_refused(d: Daemon, path: bytes, method: bytes, rng: bytes) -> None:
    with d.conn() as c:
        r = c.request(b"%s %s HTTP/1.1\r\n%s\r\n" % (method, path, rng), head_only=True)
        assert r.status in (403, 404) and r.header("Content-Length") == b"0"
        assert r.header("Connection") == b"keep-alive"
        assert c.request(b"GET /dev1/real/f HTTP/1.1\r\n\r\n").body == b"real"


@pytest.mark.parametrize("path", [b"/dev1/lfile", b"/dev1/ldir/secret", b"/dev1/ldir/new", b"/dev1/ldir/sub/new",
                                  b"/dev1/dangling", b"/dev1/inner/f", b"/dev1/inner/g", b"/dev1/innerf"])
@pytest.mark.parametrize("extra", [b"", b"Content-Range: bytes 0-1/*\r\n"])
def test_writes_through_symlinks_refused(d: Daemon, path: bytes, extra: bytes) -> None:
    with d.conn() as c:
        c.send(b"PUT %s HTTP/1.1\r\nContent-Length: 2\r\n%s\r\nXX" % (path, extra))
        r = c.response()
        assert r.status == 403 and r.header("Connection") == b"close"
        assert c.at_eof()
    assert not [p for p in (d.docroot / "dev1" / "real").iterdir() if p.name != "f"]


@pytest.mark.parametrize("path", [b"/dev1/lfile", b"/dev1/ldir/secret", b"/dev1/dangling", b"/dev1/inner/f",
                                  b"/dev1/innerf", b"/dev1/ldir", b"/dev1/ldir/"])
def test_delete_through_symlinks_refused(d: Daemon, path: bytes) -> None:
    with d.conn() as c:
        r = c.request(b"DELETE %s HTTP/1.1\r\n\r\n" % path)
        assert r.status == 403 and r.header("Connection") == b"keep-alive"


def test_symlink_swapped_in_after_put(d: Daemon) -> None:
    """A file replaced by a link is refused from then on (no cached resolution)."""
    f = d.docroot / "dev1" / "swap"
    with d.conn() as c:
        assert put(c, b"/dev1/swap", b"mine") == 201
        assert c.request(b"GET /dev1/swap HTTP/1.1\r\n\r\n").body == b"mine"
        f.unlink()
        f.symlink_to(d.root / "outside" / "secret")
        assert c.request(b"GET /dev1/swap HTTP/1.1\r\n\r\n").status == 403
    assert os.readlink(f) == str(d.root / "outside" / "secret")
    f.unlink()
