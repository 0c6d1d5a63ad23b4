"""DELETE, MKCOL, unknown methods and the GET-only listener (§3.2, §3.7, §3.9)."""
from __future__ import annotations

import socket
from typing import Iterator

import pytest
import requests

from conftest import EPOCH, HOST, Daemon, HttpConn, free_port


@pytest.fixture(scope="module")
def d(shared_daemon: Daemon) -> Daemon:
    (shared_daemon.docroot / "dev1" / "dir" / "sub").mkdir(parents=True)
    return shared_daemon


def generic(status: bytes, conn: bytes = b"keep-alive") -> bytes:
    return (b"HTTP/1.1 %s\r\nStatus: %s\r\nDate: %s\r\nContent-Length: 0\r\n"
            b"Content-Type: text/plain\r\nConnection: %s\r\n\r\n" % (status, status, EPOCH, conn))


def test_delete_204_then_404(d: Daemon) -> None:
    f = d.docroot / "dev1" / "victim"
    f.write_bytes(b"x")
    with d.conn() as c:
        assert c.request(b"DELETE /dev1/victim HTTP/1.1\r\n\r\n").norm() == generic(b"204 No Content")
        assert not f.exists()
        assert c.request(b"DELETE /dev1/victim HTTP/1.1\r\n\r\n").norm() == generic(b"404 Not Found")


def test_delete_with_requests_tracker_style(d: Daemon) -> None:
    (d.docroot / "dev1" / "0").mkdir(exist_ok=True)
    (d.docroot / "dev1" / "0" / "f.fid").write_bytes(b"x")
    assert requests.delete(d.url("/dev1/0/f.fid"), timeout=10).status_code == 204
    assert requests.delete(d.url("//dev1/0/f.fid"), timeout=10).status_code == 404


@pytest.mark.parametrize("path,status", [
    (b"/", b"403 Forbidden"),
    (b"/dev1", b"403 Forbidden"),
    (b"//dev1", b"403 Forbidden"),
    (b"/dev1/", b"403 Forbidden"),
    (b"/dev1/dir", b"403 Forbidden"),
    (b"/dev1/dir/", b"403 Forbidden"),
    (b"/dev1/dir/sub/", b"403 Forbidden"),
    (b"/dev1/../dev1/x", b"403 Forbidden"),
    (b"/dev1/missing/", b"404 Not Found"),
    (b"/dev9", b"403 Forbidden"),
    (b"/dev9/x", b"404 Not Found"),
])
def test_delete_refusals_keep_alive(d: Daemon, path: bytes, status: bytes) -> None:
    with d.conn() as c:
        assert c.request(b"DELETE %s HTTP/1.1\r\n\r\n" % path).norm() == generic(status)
        assert c.request(b"HEAD / HTTP/1.1\r\n\r\n", head_only=True).status == 200
    assert (d.docroot / "dev1" / "dir" / "sub").is_dir()


def test_delete_file_with_trailing_slash_is_not_a_delete(d: Daemon) -> None:
    """`unlink("file/")` fails with ENOTDIR (500); the file stays."""
    f = d.docroot / "dev1" / "keepme"
    f.write_bytes(b"x")
    with d.conn() as c:
        assert c.request(b"DELETE /dev1/keepme/ HTTP/1.1\r\n\r\n").status == 500
    assert f.exists()


@pytest.mark.parametrize("path,status", [
    (b"/dev1/mk/test-write/", b"400 Bad Request"),
    (b"/dev1/mk0/", b"400 Bad Request"),
    (b"/dev1/mk1", b"400 Bad Request"),
    (b"/dev1/../dev1/mk2/", b"403 Forbidden"),
])
def test_mkcol_never_creates(d: Daemon, path: bytes, status: bytes) -> None:
    with d.conn() as c:
        r = c.request(b"MKCOL %s HTTP/1.1\r\nContent-Length: 0\r\n\r\n" % path)
        assert r.norm() == generic(status)
        assert c.request(b"HEAD / HTTP/1.1\r\n\r\n", head_only=True).status == 200
    assert not list((d.docroot / "dev1").glob("mk*"))


@pytest.mark.parametrize("line", [b"POST /dev1/x", b"OPTIONS /", b"get /", b"MOVE /dev1/x", b"PATCH /dev1/x",
                                  b"GET  /", b"Get /"])
def test_unknown_methods_400_close(d: Daemon, line: bytes) -> None:
    with d.conn() as c:
        r = c.request(line + b" HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n")
        assert r.norm() == generic(b"400 Bad Request", b"close")
        assert c.at_eof()  # the pipelined GET is discarded


@pytest.fixture(scope="module")
def getonly(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, int]]:
    """A daemon with an extra httpget listener from a config file."""
    root = tmp_path_factory.mktemp("httpget")
    port = free_port()
    cfg = root / "mogstored.conf"
    cfg.write_text(f"httpgetlisten = {HOST}:{port}\n")
    daemon = Daemon(root, args=(f"--config={cfg}",))
    (daemon.docroot / "dev1" / "f").write_bytes(b"data")
    yield daemon, port
    daemon.kill()


def get_conn(port: int) -> HttpConn:
    return HttpConn(socket.create_connection((HOST, port), timeout=10))


def test_httpget_serves_reads(getonly: tuple[Daemon, int]) -> None:
    _, port = getonly
    with get_conn(port) as c:
        assert c.request(b"GET /dev1/f HTTP/1.1\r\n\r\n").body == b"data"
        assert c.request(b"HEAD /dev1/f HTTP/1.1\r\nRange: bytes=1-2\r\n\r\n", head_only=True).status == 206
        assert c.request(b"GET /dev1/nope HTTP/1.1\r\n\r\n").status == 404


@pytest.mark.parametrize("method", [b"DELETE", b"MKCOL"])
def test_httpget_delete_mkcol_405_keep_alive(getonly: tuple[Daemon, int], method: bytes) -> None:
    daemon, port = getonly
    with get_conn(port) as c:
        assert c.request(b"%s /dev1/f HTTP/1.1\r\n\r\n" % method).norm() == generic(b"405 Method Not Allowed")
        assert c.request(b"GET /dev1/f HTTP/1.1\r\n\r\n").body == b"data"
    assert (daemon.docroot / "dev1" / "f").read_bytes() == b"data"


def test_httpget_put_405_close(getonly: tuple[Daemon, int]) -> None:
    daemon, port = getonly
    with get_conn(port) as c:
        r = c.request(b"PUT /dev1/f HTTP/1.1\r\nContent-Length: 3\r\n\r\nnew")
        assert r.norm() == generic(b"405 Method Not Allowed", b"close")
        assert c.at_eof()
    assert (daemon.docroot / "dev1" / "f").read_bytes() == b"data"
    # The ordinary listener of the same daemon still takes PUTs.
    assert requests.put(daemon.url("/dev1/g"), data=b"x", timeout=10).status_code == 201
