"""Sidechannel over real sockets: Appendix A, grammar and replies of §4.2–4.4/§4.7,
framing of §4.1, paths confined to the docroot (§8) and digests that agree with HTTP (§5.8)."""
from __future__ import annotations

import hashlib
import os
import socket
import threading
import time

import pytest

from conftest import BlockedOpens, Daemon, http_get, named_threads, read_all, read_lines, read_until, wait_for

ABC_MD5 = "900150983cd24fb0d6963f7d28e17f72"
ABC_SHA1 = "a9993e364706816aba3e25717850c26c9cd0d89d"
BAD_PATH = b"ERROR: uri invalid (contains ..)\r\n"
LONGEST = "/dev16777215/0/000/000/0123456789.fid"  # 37 bytes: the longest accepted PATH


@pytest.fixture(scope="module")
def node(shared_daemon: Daemon) -> Daemon:
    """The shared daemon with ``/dev1/a.fid`` = ``abc``."""
    (shared_daemon.docroot / "dev1" / "a.fid").write_bytes(b"abc")
    return shared_daemon


def assert_silent(sock: socket.socket, wait: float = 0.3) -> None:
    """Nothing arrives (and the connection stays open) for ``wait`` seconds."""
    sock.settimeout(wait)
    with pytest.raises(TimeoutError):
        sock.recv(1)


def assert_dropped(sock: socket.socket) -> None:
    """The server closed (or reset) the connection without a reply."""
    try:
        assert read_all(sock, timeout=5) == b""
    except ConnectionResetError:
        pass


# -- Appendix A, §4.3, §4.4 ---------------------------------------------------

@pytest.mark.parametrize("line, reply", [
    (b"size /dev1/a.fid\r\n", b"/dev1/a.fid 3\r\n"),
    (b"size /dev1/missing.fid\r\n", b"/dev1/missing.fid -1\r\n"),
    (b"size /dev9/x.fid\r\n", b"/dev9/x.fid -1\r\n"),
    (b"size /\r\n", b"/ -1\r\n"),
    (b"size /dev1/../x\r\n", BAD_PATH),
    (b"size /..\r\n", BAD_PATH),
    (b"MD5 /dev1/a.fid\r\n", f"/dev1/a.fid MD5={ABC_MD5}\r\n".encode()),
    (b"MD5 /dev1/a.fid fsck\r\n", f"/dev1/a.fid MD5={ABC_MD5}\r\n".encode()),
    (b"MD5 /dev1/a.fid create_close\r\n", f"/dev1/a.fid MD5={ABC_MD5}\r\n".encode()),
    (b"SHA-1 /dev1/a.fid\r\n", f"/dev1/a.fid SHA-1={ABC_SHA1}\r\n".encode()),
    (b"SHA-1 /dev1/a.fid replicate\r\n", f"/dev1/a.fid SHA-1={ABC_SHA1}\r\n".encode()),
    (b"SHA-1 /dev1/a.fid fsck\r\n", f"/dev1/a.fid SHA-1={ABC_SHA1}\r\n".encode()),
    (b"MD5 /dev1/missing.fid\r\n", b"/dev1/missing.fid MD5=-1\r\n"),
    (b"MD5 /dev1/missing.fid fsck\r\n", b"/dev1/missing.fid MD5=-1\r\n"),
    (b"SHA-1 /dev1/missing.fid\r\n", b"/dev1/missing.fid SHA-1=-1\r\n"),
    (b"MD5 /dev1\r\n", b"ERR read /dev1 at 0 failed\r\n"),
    (b"SHA-1 /dev1 fsck\r\n", b"ERR read /dev1 at 0 failed\r\n"),
    (b"MD5 /dev1/../dev1/a.fid\r\n", BAD_PATH),
    (b"SHA-1 /dev1/.. fsck\r\n", BAD_PATH),
    (b"server aio_threads = 20\r\n", b"\r\n"),
    (b"server aio_threads=20\r\n", b"\r\n"),
    (b"SERVER AIO_THREADS =20\r\n", b"\r\n"),
    (b"server aio_threads = 0\r\n", b"\r\n"),
    (b"server aio_threads = 1000\r\n", b"\r\n"),
    (b"\r\n", b"\r\n"),
    (b"\n", b"\r\n"),
    (b" \t \r\n", b"\r\n"),
    (b"hello world\r\n", b"ERROR: unknown command: hello\r\n"),
], ids=repr)
def test_appendix_a(node: Daemon, line: bytes, reply: bytes) -> None:
    assert node.mgmt_cmd(line) == reply


def test_size_of_directory_is_its_st_size(node: Daemon) -> None:
    assert node.mgmt_cmd(b"size /dev1\r\n") == b"/dev1 %d\r\n" % os.stat(node.docroot / "dev1").st_size


@pytest.mark.parametrize("verb", [b"size", b"MD5", b"SHA-1"])
def test_path_length_limit(node: Daemon, verb: bytes) -> None:
    """37 bytes is the longest PATH; 38 gets the ``..`` text (kept on purpose, §8)."""
    assert len(LONGEST) == 37
    suffix = {b"size": b"-1", b"MD5": b"MD5=-1", b"SHA-1": b"SHA-1=-1"}[verb]
    assert node.mgmt_cmd(verb + b" " + LONGEST.encode() + b"\r\n") == LONGEST.encode() + b" " + suffix + b"\r\n"
    assert node.mgmt_cmd(verb + b" " + LONGEST.encode() + b"x\r\n") == BAD_PATH
    assert node.mgmt_cmd(verb + b" /" + b"d" * 37 + b"\r\n") == BAD_PATH


@pytest.mark.parametrize("line, token", [
    (b"hello", b"hello"),
    (b"  hello world", b"hello"),
    (b"\thello", b"hello"),
    (b"WTF", b"WTF"),
    (b"size /foo bar", b"size"),
    (b"size bad", b"size"),
    (b"a\rb", b"a"),
    (b"size  /dev1/a.fid", b"size"),
    (b"size /dev1/a.fid ", b"size"),
    (b" size /dev1/a.fid", b"size"),
    (b"size /dev1/a_b.fid", b"size"),
    (b"size dev1/a.fid", b"size"),
    (b"md5 /dev1/a.fid", b"md5"),
    (b"SIZE /dev1/a.fid", b"SIZE"),
    (b"SHA1 /dev1/a.fid", b"SHA1"),
    (b"SHA-256 /dev1/a.fid", b"SHA-256"),
    (b"MD5 /dev1/a.fid fs-ck", b"MD5"),
    (b"MD5 /dev1/a.fid fsck extra", b"MD5"),
    (b"watch now", b"watch"),
    (b"WATCH", b"WATCH"),
    (b"server aio_threads  = 1", b"server"),
    (b"server aio_threads = x", b"server"),
    (b"server aio_threads = -1", b"server"),
    (b"server aio_mode = x", b"server"),
    (b"show service", b"show"),
    (b"shutdown now", b"shutdown"),
    (b"shutdown graceful ", b"shutdown"),
    (b"Shutdown", b"Shutdown"),
    (b" \rx", b""),
], ids=repr)
def test_unknown_command(node: Daemon, line: bytes, token: bytes) -> None:
    """Echo the first token; the connection stays usable (§4.7)."""
    with node.mgmt() as s:
        s.sendall(line + b"\r\n" + b"size /dev1/a.fid\n")
        assert read_lines(s, 2) == [b"ERROR: unknown command: " + token + b"\r\n", b"/dev1/a.fid 3\r\n"]


@pytest.mark.parametrize("line", [b"watch\n", b"watch\r\n"])
def test_watch_accepted_without_reply(node: Daemon, line: bytes) -> None:
    """No greeting and no error; later input on the connection is ignored (§4.5)."""
    with node.mgmt() as s:
        s.sendall(line)
        assert_silent(s)
        s.sendall(b"size /dev1/a.fid\r\nhello\r\n")
        assert_silent(s)


# -- framing (§4.1) ------------------------------------------------------------

def test_byte_by_byte(node: Daemon) -> None:
    with node.mgmt() as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for b in b"size /dev1/a.fid\r\nMD5 /dev1/a.fid\n":
            s.send(bytes((b,)))
            time.sleep(0.002)
        assert read_lines(s, 2) == [b"/dev1/a.fid 3\r\n", f"/dev1/a.fid MD5={ABC_MD5}\r\n".encode()]


def test_lf_and_crlf_both_answer_crlf(node: Daemon) -> None:
    with node.mgmt() as s:
        s.sendall(b"size /dev1/a.fid\nsize /dev1/a.fid\r\n\nhello\n")
        assert read_lines(s, 4) == [b"/dev1/a.fid 3\r\n"] * 2 + [b"\r\n", b"ERROR: unknown command: hello\r\n"]


def test_hundred_pipelined_commands_answered_in_order(node: Daemon) -> None:
    sizes = {i: i * 7 % 50 for i in range(40)}
    for i, n in sizes.items():
        (node.docroot / "dev2" / f"p{i}.fid").write_bytes(b"x" * n)
    requests, expected = [], []
    for i in range(100):
        kind, j = i % 5, i % 40
        if kind == 0:
            requests.append(f"size /dev2/p{j}.fid")
            expected.append(f"/dev2/p{j}.fid {sizes[j]}")
        elif kind == 1:
            requests.append(f"MD5 /dev2/p{j}.fid")
            expected.append(f"/dev2/p{j}.fid MD5={hashlib.md5(b'x' * sizes[j]).hexdigest()}")
        elif kind == 2:
            requests.append(f"SHA-1 /dev2/missing{i} fsck")
            expected.append(f"/dev2/missing{i} SHA-1=-1")
        elif kind == 3:
            requests.append(f"cmd{i}")
            expected.append(f"ERROR: unknown command: cmd{i}")
        else:
            requests.append("")
            expected.append("")
    with node.mgmt() as s:
        s.sendall("".join(r + "\r\n" for r in requests).encode())
        assert read_lines(s, 100) == [(e + "\r\n").encode() for e in expected]


def test_longest_line_is_answered(node: Daemon) -> None:
    """495 bytes plus LF is exactly the 496-byte limit, terminator included."""
    with node.mgmt() as s:
        s.sendall(b"y" * 495 + b"\n")
        assert read_lines(s, 1) == [b"ERROR: unknown command: " + b"y" * 495 + b"\r\n"]


@pytest.mark.parametrize("data", [b"z" * 496, b"z" * 496 + b"\r\n", b"size /dev1/a.fid\r\n" + b"z" * 600])
def test_overlong_line_drops_connection(node: Daemon, data: bytes) -> None:
    """Commands before the long line are still answered; the others keep being served."""
    with node.mgmt() as s:
        s.sendall(data)
        answered = data.startswith(b"size")
        if answered:
            assert read_until(s, b"\r\n") == b"/dev1/a.fid 3\r\n"
        assert_dropped(s)
    assert node.mgmt_cmd(b"size /dev1/a.fid\r\n") == b"/dev1/a.fid 3\r\n"


def test_client_half_close_still_answered(node: Daemon) -> None:
    with node.mgmt() as s:
        s.sendall(b"size /dev1/a.fid\r\nMD5 /dev1/a.fid\r\n")
        s.shutdown(socket.SHUT_WR)
        assert read_all(s) == f"/dev1/a.fid 3\r\n/dev1/a.fid MD5={ABC_MD5}\r\n".encode()


def test_fifo_does_not_hang(node: Daemon) -> None:
    """Regression: a FIFO below devN blocked a pool thread in open() for good."""
    os.mkfifo(node.docroot / "dev2" / "fifo")
    with node.mgmt() as s:
        s.sendall(b"MD5 /dev2/fifo\r\nsize /dev2/fifo\r\n")
        assert read_lines(s, 2, timeout=3) == [b"/dev2/fifo MD5=d41d8cd98f00b204e9800998ecf8427e\r\n",
                                               b"/dev2/fifo 0\r\n"]


# -- paths stay inside the docroot ---------------------------------------------

def test_double_slash_stays_inside_docroot(node: Daemon) -> None:
    """1.2.1 looked up ``//etc/passwd`` as an absolute path (§8); echo PATH unchanged."""
    assert node.mgmt_cmd(b"size //etc/passwd\r\n") == b"//etc/passwd -1\r\n"
    assert node.mgmt_cmd(b"MD5 //etc/passwd\r\n") == b"//etc/passwd MD5=-1\r\n"
    (node.docroot / "etc").mkdir(exist_ok=True)
    (node.docroot / "etc" / "passwd").write_bytes(b"abc")
    assert node.mgmt_cmd(b"size //etc/passwd\r\n") == b"//etc/passwd 3\r\n"
    assert node.mgmt_cmd(b"SHA-1 //etc/passwd\r\n") == f"//etc/passwd SHA-1={ABC_SHA1}\r\n".encode()
    assert node.mgmt_cmd(b"size //dev1/a.fid\r\n") == b"//dev1/a.fid 3\r\n"


@pytest.fixture(scope="module")
def symlinks(node: Daemon, tmp_path_factory: pytest.TempPathFactory) -> Daemon:
    """Symlinks below dev1 (to a file, a directory, outside) and dev3 → a directory outside."""
    outside = tmp_path_factory.mktemp("outside")
    (outside / "f.fid").write_bytes(b"abc")
    dev1 = node.docroot / "dev1"
    (dev1 / "sub").mkdir()
    (dev1 / "sub" / "in.fid").write_bytes(b"abc")
    (dev1 / "ln-file.fid").symlink_to("a.fid")
    (dev1 / "ln-out.fid").symlink_to(outside / "f.fid")
    (dev1 / "ln-dir").symlink_to("sub")
    (dev1 / "ln-etc").symlink_to("/etc/passwd")
    (node.docroot / "dev3").symlink_to(outside)
    return node


@pytest.mark.parametrize("path", ["/dev1/ln-file.fid", "/dev1/ln-out.fid", "/dev1/ln-dir/in.fid",
                                  "/dev1/ln-etc", "/dev1/ln-dir"])
def test_symlink_below_device_is_missing(symlinks: Daemon, path: str) -> None:
    p = path.encode()
    assert symlinks.mgmt_cmd(b"size " + p + b"\r\n") == p + b" -1\r\n"
    assert symlinks.mgmt_cmd(b"MD5 " + p + b"\r\n") == p + b" MD5=-1\r\n"
    assert symlinks.mgmt_cmd(b"SHA-1 " + p + b" fsck\r\n") == p + b" SHA-1=-1\r\n"


def test_device_itself_may_be_a_symlink(symlinks: Daemon) -> None:
    assert symlinks.mgmt_cmd(b"size /dev3/f.fid\r\n") == b"/dev3/f.fid 3\r\n"
    assert symlinks.mgmt_cmd(b"MD5 /dev3/f.fid\r\n") == f"/dev3/f.fid MD5={ABC_MD5}\r\n".encode()
    assert symlinks.mgmt_cmd(b"SHA-1 /dev3/f.fid fsck\r\n") == f"/dev3/f.fid SHA-1={ABC_SHA1}\r\n".encode()
    assert symlinks.mgmt_cmd(b"size /dev1/sub/in.fid\r\n") == b"/dev1/sub/in.fid 3\r\n"


# -- digests: big files, HTTP agreement, concurrency ---------------------------

def test_big_file_digest_matches_hashlib_and_http(node: Daemon) -> None:
    """40-httpfile.t (§5.8): sidechannel and GET agree for 100 MiB; after DELETE both miss."""
    path = node.docroot / "dev1" / "big.fid"
    block = os.urandom(1 << 20)
    md5 = hashlib.md5()
    with open(path, "wb") as f:
        for i in range(100):
            chunk = block[i:] + block[:i]
            f.write(chunk)
            md5.update(chunk)
    want = f"/dev1/big.fid MD5={md5.hexdigest()}\r\n".encode()
    status, body = http_get(node, "/dev1/big.fid")
    assert status == 200 and len(body) == 100 << 20
    assert hashlib.md5(body).hexdigest() == md5.hexdigest()
    del body
    assert node.mgmt_cmd(b"MD5 /dev1/big.fid\r\n") == want
    assert node.mgmt_cmd(b"size /dev1/big.fid\r\n") == b"/dev1/big.fid %d\r\n" % (100 << 20)
    with node.http() as s:
        s.sendall(b"DELETE /dev1/big.fid HTTP/1.0\r\n\r\n")
        assert read_all(s).startswith(b"HTTP/1.1 204 No Content\r\n")
    assert node.mgmt_cmd(b"MD5 /dev1/big.fid\r\n") == b"/dev1/big.fid MD5=-1\r\n"
    assert http_get(node, "/dev1/big.fid")[0] == 404


def test_small_file_digest_matches_http(node: Daemon) -> None:
    (node.docroot / "dev2" / "four.fid").write_bytes(b"\x00\xffab")
    assert http_get(node, "/dev2/four.fid")[1] == b"\x00\xffab"
    want = hashlib.md5(b"\x00\xffab").hexdigest()
    assert node.mgmt_cmd(b"MD5 /dev2/four.fid\r\n") == f"/dev2/four.fid MD5={want}\r\n".encode()


def test_concurrent_digests(node: Daemon) -> None:
    """Many connections, each pipelining digests of several files, all answered right."""
    files = {}
    for i in range(8):
        data = os.urandom(1 << 20) * (i % 3 + 1)
        name = f"/dev{i % 2 + 1}/c{i}.fid"
        (node.docroot / name[1:]).write_bytes(data)
        files[name] = data
    results: dict[int, list[bytes]] = {}

    def client(n: int) -> None:
        jobs = [(("MD5", "SHA-1")[(n + k) % 2], list(files)[(n + k) % len(files)], " fsck" * (k % 2))
                for k in range(3)]
        with node.mgmt() as s:
            s.sendall("".join(f"{alg} {p}{reason}\r\n" for alg, p, reason in jobs).encode())
            got = read_lines(s, 3, timeout=30)
        want = [f"{p} {alg}={hashlib.new(alg.replace('-', ''), files[p]).hexdigest()}\r\n".encode()
                for alg, p, _ in jobs]
        results[n] = [g == w or (g, w) for g, w in zip(got, want)]

    threads = [threading.Thread(target=client, args=(n,)) for n in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {n: [True] * 3 for n in range(24)}


# -- server aio_threads ---------------------------------------------------------

def _wait_threads(pid: int, pred, timeout: float = 1.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        n = named_threads(pid, "io:dev1")
        if pred(n) or time.monotonic() > deadline:
            return n
        time.sleep(0.01)


def test_aio_threads_changes_os_threads(daemon: Daemon) -> None:
    """§4.7 Clone: the thread count must change within a second; out-of-range values do
    nothing.  Requests blocked in the kernel hold at most N threads of their device's
    pool; a pool with threads has exactly N right after the command."""
    assert daemon.mgmt_cmd(b"server aio_threads = 1\r\n") == b"\r\n"
    time.sleep(0.2)  # the main thread applies it
    blocked = BlockedOpens(daemon, 1, 4)
    try:
        assert _wait_threads(daemon.pid, lambda n: n == 1) == 1
        assert daemon.mgmt_cmd(b"server aio_threads = 0\r\n") == b"\r\n"
        assert daemon.mgmt_cmd(b"server aio_threads = 101\r\n") == b"\r\n"
        time.sleep(0.3)
        assert named_threads(daemon.pid, "io:dev1") == 1
        assert daemon.mgmt_cmd(b"server aio_threads=6\r\n") == b"\r\n"
        assert _wait_threads(daemon.pid, lambda n: n == 6) == 6  # 4 for the requests, 2 idle
    finally:
        blocked.release()
    assert blocked.results == [201] * 4
    assert daemon.mgmt_cmd(b"server aio_threads = 1\r\n") == b"\r\n"
    assert _wait_threads(daemon.pid, lambda n: n == 1) == 1  # idle surplus leaves at once
    assert daemon.mgmt_cmd(b"size /dev1\r\n").startswith(b"/dev1 ")


def _tasks(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_aio_threads_shows_in_the_thread_count_like_cmogstored(tmp_path) -> None:
    """cmogstored's test/mgmt.rb test_aio_threads: on a docroot without devices the
    number of /proc/PID/task entries changes after ``server aio_threads = 1``, and
    again after ``= 6`` (the shared pool, the node's own, is brought to N)."""
    d = Daemon(tmp_path, devices=())
    try:
        assert d.mgmt_cmd(b"WTF\r\n") == b"ERROR: unknown command: WTF\r\n"
        before = _tasks(d.pid)
        assert named_threads(d.pid, "io:shared") == 0  # nothing to do yet: no thread
        assert d.mgmt_cmd(b"server aio_threads = 1\r\n") == b"\r\n"
        wait_for(lambda: _tasks(d.pid) != before, timeout=1.0, what="a new thread count")
        # A new thread names itself once it runs: its /proc entry comes first.
        wait_for(lambda: named_threads(d.pid, "io:shared") == 1, timeout=1.0, what="1 shared thread")
        one = _tasks(d.pid)
        assert d.mgmt_cmd(b"server aio_threads=6\r\n") == b"\r\n"
        wait_for(lambda: _tasks(d.pid) != one, timeout=1.0, what="a new thread count")
        wait_for(lambda: named_threads(d.pid, "io:shared") == 6, timeout=1.0, what="6 shared threads")
        assert d.mgmt_cmd(b"WTF\r\n") == b"ERROR: unknown command: WTF\r\n"
    finally:
        d.kill()


def test_aio_threads_brings_pools_with_threads_to_n(tmp_path) -> None:
    """A device pool that has threads gets exactly N at once, in both directions."""
    d = Daemon(tmp_path, devices=(1,))
    try:
        dev1 = lambda: named_threads(d.pid, "io:dev1")  # noqa: E731
        with d.conn() as c:  # a PUT runs in dev1's pool: it has a thread (for 10 s idle)
            assert c.request(b"PUT /dev1/f HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx").status == 201
        assert d.mgmt_cmd(b"server aio_threads = 7\r\n") == b"\r\n"
        wait_for(lambda: dev1() == 7, timeout=5.0, what="7 dev1 threads")
        assert d.mgmt_cmd(b"server aio_threads = 2\r\n") == b"\r\n"
        wait_for(lambda: dev1() == 2, timeout=5.0, what="2 dev1 threads")
        assert http_get(d, "/dev1/f") == (200, b"x")
    finally:
        d.kill()
