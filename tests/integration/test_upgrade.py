"""SIGUSR2 upgrade and inherited listeners (§1.3, §1.6), with real processes and signals."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import HOST, Daemon, free_port, read_all, wait_port, QUIET_IOSTAT as IOSTAT, alive, children, wait_for


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return int(text) if text.endswith("\n") and text[:-1].isdigit() else None


def stop_orphan(pid: int) -> None:
    """A successor is not our child once its parent has exited: poll for its end."""
    if alive(pid):
        os.kill(pid, signal.SIGQUIT)
        wait_for(lambda: not alive(pid), 15, f"PID {pid} to exit")


def usage_status(port: int) -> int:
    with socket.create_connection((HOST, port), timeout=10) as s:
        s.sendall(b"GET /dev1/usage HTTP/1.0\r\n\r\n")
        return int(read_all(s).split(b" ", 2)[1])


@pytest.fixture(params=[0, 2], ids=["single", "workers"])
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Daemon]:
    args: tuple[str, ...] = (f"--pidfile={tmp_path / 'pid'}",)
    if request.param:
        args += (f"--worker-processes={request.param}",)
    d = Daemon(tmp_path, args=args, env=IOSTAT)
    d.nworkers = request.param  # type: ignore[attr-defined]
    if request.param:
        wait_for(lambda: len(children(d.pid)) == request.param, what="workers")
    yield d
    successors = [p for p in children(d.pid) if p != d.pid]
    new = read_pid(d.root / "pid")
    d.kill()
    for pid in {*successors, *([new] if new else [])} - {d.pid}:
        stop_orphan(pid)


def upgrade(d: Daemon) -> int:
    """SIGUSR2; returns the new PID once the new process owns the pidfile."""
    pidfile, oldbin = d.root / "pid", d.root / "pid.oldbin"
    d.proc.send_signal(signal.SIGUSR2)
    wait_for(lambda: read_pid(oldbin) == d.pid, 5, ".oldbin")
    wait_for(lambda: read_pid(pidfile) not in (None, d.pid), 10, "the new pidfile")
    new = read_pid(pidfile)
    assert new is not None and new in children(d.pid)  # a child of the old master
    assert f"upgrade spawned PID:{new}" in d.stderr()
    if d.nworkers:  # type: ignore[attr-defined]
        wait_for(lambda: len(children(new)) == d.nworkers, what="the new master's workers")  # type: ignore[attr-defined]
    return new


def test_upgrade_then_quit_old_leaves_new_serving(node: Daemon) -> None:
    new = upgrade(node)
    assert usage_status(node.http_port) == 200
    node.proc.send_signal(signal.SIGQUIT)
    assert node.proc.wait(15) == 0
    assert read_pid(node.root / "pid") == new
    assert not (node.root / "pid.oldbin").exists()
    assert usage_status(node.http_port) == 200
    assert alive(new)
    stop_orphan(new)
    assert not (node.root / "pid").exists()


@pytest.mark.parametrize("sig", [signal.SIGQUIT, signal.SIGKILL, signal.SIGABRT], ids=["QUIT", "KILL", "ABRT"])
def test_new_process_dies_old_takes_back_pidfile(node: Daemon, sig: int) -> None:
    new = upgrade(node)
    os.kill(new, sig)
    # The pidfile is rewritten, then .oldbin unlinked (§1.6 step 6): wait for both.
    wait_for(lambda: read_pid(node.root / "pid") == node.pid and not (node.root / "pid.oldbin").exists(),
             15, "the pidfile back and no .oldbin")
    assert not alive(new)  # reaped at once
    assert f"upgrade PID:{new} exited with status=" in node.stderr()
    assert usage_status(node.http_port) == 200
    again = upgrade(node)  # another SIGUSR2 is accepted
    node.proc.send_signal(signal.SIGQUIT)
    assert node.proc.wait(15) == 0
    stop_orphan(again)


def test_usr2_while_upgrade_runs_is_refused(node: Daemon) -> None:
    new = upgrade(node)
    node.proc.send_signal(signal.SIGUSR2)
    wait_for(lambda: f"upgrade already running on PID:{new}" in node.stderr(), 5, "the refusal")
    assert read_pid(node.root / "pid") == new


def test_client_loop_through_upgrade_and_quit_has_no_failure(node: Daemon) -> None:
    """A client hammering the node sees every request answered while the
    binary is upgraded and the old master is told to quit."""
    stop = threading.Event()
    ok = [0]
    failures: list[str] = []

    def client() -> None:
        while not stop.is_set():
            try:
                status = usage_status(node.http_port)
            except (OSError, ValueError, IndexError) as e:
                failures.append(f"{time.monotonic():.3f} {e!r}")
                continue
            if status == 200:
                ok[0] += 1
            else:
                failures.append(f"status {status}")

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        new = upgrade(node)
        time.sleep(0.3)
        print(f"{time.monotonic():.3f} QUIT")
        node.proc.send_signal(signal.SIGQUIT)
        assert node.proc.wait(15) == 0
        print(f"{time.monotonic():.3f} old master gone")
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    print(f"upgrade under load: {ok[0]} answered, {len(failures)} failed {failures}")
    assert not failures and ok[0] > 50
    stop_orphan(new)


# -- CMOGSTORED_FD by hand (§1.6 step 4) ---------------------------------------------------

def run_with_fds(tmp_path: Path, value: str, fds: tuple[int, ...] = (), args: tuple[str, ...] = ()
                 ) -> subprocess.Popen[bytes]:
    (tmp_path / "dev1").mkdir(exist_ok=True)
    env = dict(os.environ, CMOGSTORED_FD=value, **IOSTAT)
    cmd = [sys.executable, "-m", "mogstored", f"--docroot={tmp_path}", *args]
    return subprocess.Popen(cmd, env=env, pass_fds=fds, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def listener() -> socket.socket:
    s = socket.socket()
    s.bind((HOST, 0))
    s.listen(16)
    return s


@pytest.mark.parametrize("value,message", [
    ("3;", "CMOGSTORED_FD contained invalid byte: 59"),
    ("99999999999999999999", "strtuol failed to parse: 99999999999999999999: Numerical result out of range"),
    ("2147483648", "inherited fd=2147483648 is too large"),
    ("999", "getsockname(fd=999) failed: Bad file descriptor"),
])
def test_bad_cmogstored_fd_is_fatal(tmp_path: Path, value: str, message: str) -> None:
    proc = run_with_fds(tmp_path, value, args=(f"--httplisten={HOST}:{free_port()}",))
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert f": {message}\n" in err.decode()


def test_cmogstored_fd_not_a_socket_or_duplicate(tmp_path: Path) -> None:
    r, w = os.pipe()
    proc = run_with_fds(tmp_path, str(r), (r,))
    assert proc.communicate(timeout=20)[1].decode().endswith(
        f"getsockname(fd={r}) failed: Socket operation on non-socket\n")
    with listener() as s:
        twin = os.dup(s.fileno())
        proc = run_with_fds(tmp_path, f"{s.fileno()},{twin}", (s.fileno(), twin))
        port = s.getsockname()[1]
        assert f"duplicate listener {HOST}:{port} on fd={twin}" in proc.communicate(timeout=20)[1].decode()
        assert proc.returncode == 1
    for fd in (r, w, twin):
        os.close(fd)


def test_inherited_listener_is_used_and_unused_ones_closed(tmp_path: Path) -> None:
    with listener() as used, listener() as unused:
        port = used.getsockname()[1]
        proc = run_with_fds(tmp_path, f"{used.fileno()},{unused.fileno()}", (used.fileno(), unused.fileno()),
                            (f"--httplisten={HOST}:{port}", f"--mgmtlisten={HOST}:{free_port()}"))
        used.close()
        unused_fd = unused.fileno()
        try:
            wait_port(port, proc=proc)
            assert usage_status(port) == 200
        finally:
            proc.send_signal(signal.SIGQUIT)
            err = proc.communicate(timeout=20)[1].decode()
    assert proc.returncode == 0
    assert f"inherited {HOST}:{port} on fd=" in err
    assert f"closing unused inherited fd={unused_fd}" in err
