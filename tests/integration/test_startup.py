"""Start-up through the real program: exit codes, messages, daemonising, the
pidfile, which listeners open (§1.1, §1.5, §1.7)."""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from conftest import HOST, QUIET_IOSTAT, Daemon, alive, free_port, quit_blocked, read_until, wait_for, wait_port

PROG = [sys.executable, "-m", "mogstored"]


def run(*args: str, cwd: Path | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PROG, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=dict(os.environ, **QUIET_IOSTAT))


def wait_gone(pid: int, timeout: float = 15) -> None:
    wait_for(lambda: not alive(pid), timeout, f"PID {pid} to exit")


@pytest.mark.parametrize("args, code, out, err", [
    (("--version",), 0, "mogstored 0.1.0\n", ""),
    (("-V",), 0, "mogstored 0.1.0\n", ""),
    (("--bogus",), 64, "", "mogstored: unrecognized option '--bogus'\n"
                            "Try 'mogstored --help' or 'mogstored --usage' for more information.\n"),
    (("--httplisten=666.0.0.1:80",), 1, "", "mogstored: failed to parse httplisten=666.0.0.1:80\n"),
    (("--docroot=/nonexistent/x",), 1, "", "mogstored: `/nonexistent/x' failed to resolve: No such file or directory\n"),
    (("--server=nginx",), 1, "", "mogstored: E: 'server = nginx' not understood by cmogstored\n"),  # §1.1, verbatim
])
def test_exit_codes_and_messages(args: tuple[str, ...], code: int, out: str, err: str) -> None:
    r = run(*args)
    assert r.returncode == code
    assert r.stdout == out
    assert r.stderr == err


def test_help_lists_the_options() -> None:
    r = run("--help")
    assert r.returncode == 0 and r.stderr == ""
    for option in ("--config=<file>", "--daemonize", "--docroot=<path>", "--httplisten=<ip:port>",
                   "--maxconns=<number>", "--mgmtlisten=<ip:port>", "--pidfile=<path>"):
        assert option in r.stdout


def test_bind_failure_is_reported(tmp_path: Path) -> None:
    (tmp_path / "dev1").mkdir()
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run(f"--docroot={tmp_path}", f"--httplisten={HOST}:{port}", f"--mgmtlisten={HOST}:{free_port()}")
    assert r.returncode == 1
    assert r.stderr == f"mogstored: addr={HOST}:{port} failed to bind+listen: Address already in use\n"


def test_daemonize_writes_pidfile_before_launcher_exits(tmp_path: Path) -> None:
    (tmp_path / "dev1").mkdir()
    pidfile = tmp_path / "mogstored.pid"
    http, mgmt = free_port(), free_port()
    # The launcher's stdout/stderr pipes must reach EOF as soon as it exits:
    # subprocess.run reading them to EOF would hang otherwise.
    r = run("--daemonize", f"--docroot={tmp_path}", f"--httplisten={HOST}:{http}",
            f"--mgmtlisten={HOST}:{mgmt}", f"--pidfile={pidfile}", timeout=20)
    assert r.returncode == 0, r.stderr
    pid = int(pidfile.read_text())
    assert pidfile.read_text() == f"{pid}\n"
    try:
        assert (tmp_path / "dev1" / "usage").exists()
        assert requests.get(f"http://{HOST}:{http}/", timeout=5).status_code == 200
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        for fd in (0, 1, 2):
            assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"
        again = run("--daemonize", f"--docroot={tmp_path}", f"--httplisten={HOST}:{free_port()}",
                    f"--mgmtlisten={HOST}:{free_port()}", f"--pidfile={pidfile}")
        assert again.returncode == 1
        assert again.stderr == f"mogstored: already running on PID: {pid}\n"
    finally:
        os.kill(pid, signal.SIGQUIT)
        wait_gone(pid)
    assert not pidfile.exists()


def test_daemonize_refuses_relative_paths(tmp_path: Path) -> None:
    r = run("--daemonize", "--docroot=rel", "--pidfile=pid", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr == ("mogstored: pidfile=pid must use an absolute path\n"
                        "mogstored: docroot=rel must use an absolute path\n"
                        "mogstored: relative paths are incompatible with --daemonize and SIGUSR2 upgrades\n")


def test_stale_pidfile_is_replaced(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    pidfile.write_text("999999999\n")
    d = Daemon(tmp_path, args=(f"--pidfile={pidfile}",))
    try:
        # Listeners are bound before the pidfile is written; once answered, it is (§1.5).
        assert d.mgmt_cmd(b"size /dev1\r\n").startswith(b"/dev1 ")
        assert pidfile.read_text() == f"{d.pid}\n"
        assert d.stop() == 0
        assert not pidfile.exists()
    finally:
        d.kill()


def test_server_none_opens_only_the_sidechannel(tmp_path: Path) -> None:
    http = free_port()
    d = Daemon(tmp_path, http=False, args=(f"--httplisten={HOST}:{http}", "--server=none"))
    try:
        assert d.mgmt_cmd(b"size /dev1\r\n").startswith(b"/dev1 ")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((HOST, http), timeout=2)
    finally:
        d.kill()


def test_only_mgmtlisten_means_no_http(tmp_path: Path) -> None:
    d = Daemon(tmp_path, http=False)
    try:
        assert d.mgmt_cmd(b"\r\n") == b"\r\n"
        # No default HTTP listener was added: the sidechannel was configured.
        out = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout
        mine = [line for line in out.splitlines() if f"pid={d.pid}," in line]
        assert len(mine) == 1 and f":{d.mgmt_port}" in mine[0]
    finally:
        d.kill()


def test_only_httplisten_means_no_usage_files(tmp_path: Path) -> None:
    d = Daemon(tmp_path, mgmt=False)
    try:
        assert requests.get(d.url("/"), timeout=5).status_code == 200
        assert requests.get(d.url("/dev1/usage"), timeout=5).status_code == 404
        assert not (d.docroot / "dev1" / "usage").exists()
    finally:
        d.kill()


def test_signal_during_start_up_takes_effect(tmp_path: Path) -> None:
    """§9: a SIGQUIT that arrives while the node starts still stops it."""
    (tmp_path / "dev1").mkdir()
    port = free_port()
    proc = subprocess.Popen([*PROG, f"--docroot={tmp_path}", f"--httplisten={HOST}:{port}",
                             f"--mgmtlisten={HOST}:{free_port()}"], stderr=subprocess.DEVNULL,
                            env=dict(os.environ, **QUIET_IOSTAT))
    try:
        # Once the node holds the signal (its first statement), while it is still importing:
        # a tight loop, since start-up lasts only tens of ms on an idle machine.
        deadline = time.monotonic() + 10
        while not quit_blocked(proc.pid):
            assert time.monotonic() < deadline, "start-up never began"
        proc.send_signal(signal.SIGQUIT)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_multi_serves_one_service_per_config(tmp_path: Path) -> None:
    """--multi: each config file is its own docroot with its own listeners,
    in one process (§1.2.4); one file in the Perl format, one in YAML."""
    ports = {name: (free_port(), free_port()) for name in ("a", "b")}
    for name, dev in (("a", 1), ("b", 5)):
        (tmp_path / name / f"dev{dev}").mkdir(parents=True)
    (tmp_path / "a.conf").write_text(
        f"docroot = {tmp_path / 'a'}\nhttplisten = {HOST}:{ports['a'][0]}\nmgmtlisten = {HOST}:{ports['a'][1]}\n")
    (tmp_path / "b.yaml").write_text(
        f"docroot: {tmp_path / 'b'}\nhttplisten: {HOST}:{ports['b'][0]}\nmgmtlisten: {HOST}:{ports['b'][1]}\n")
    proc = subprocess.Popen([*PROG, "--multi", f"--config={tmp_path / 'a.conf'}", f"--config={tmp_path / 'b.yaml'}"],
                            stderr=subprocess.DEVNULL, env=dict(os.environ, **QUIET_IOSTAT))
    try:
        for http, _ in ports.values():
            wait_port(http, proc=proc)
        a, b = (f"http://{HOST}:{ports[n][0]}" for n in ("a", "b"))
        assert requests.get(f"{a}/dev1/usage", timeout=5).text.splitlines()[2] == f"disk: {tmp_path / 'a' / 'dev1'}"
        assert requests.get(f"{b}/dev5/usage", timeout=5).text.splitlines()[2] == f"disk: {tmp_path / 'b' / 'dev5'}"
        assert requests.get(f"{b}/dev1/usage", timeout=5).status_code == 404
        with socket.create_connection((HOST, ports["b"][1]), timeout=5) as s:
            s.sendall(b"size /dev5\r\nsize /dev1\r\n")
            assert read_until(s, b"/dev1 -1\r\n").endswith(b"/dev1 -1\r\n")
    finally:
        proc.send_signal(signal.SIGQUIT)
        assert proc.wait(15) == 0


def test_quit_delivered_to_any_thread_stops_the_node(tmp_path: Path) -> None:
    """The kernel may hand a process-directed SIGQUIT to any thread that does
    not block it; the main thread must wake up for it at once (not at its next
    periodic wake-up, an hour away here)."""
    d = Daemon(tmp_path, env={"MOG_DISK_USAGE_INTERVAL": "3600"})
    try:
        assert d.mgmt_cmd(b"\r\n") == b"\r\n"  # serving: every thread exists
        quit_bit = 1 << (signal.SIGQUIT - 1)
        others = [int(t) for t in os.listdir(f"/proc/{d.pid}/task")
                  if int(t) != d.pid and not _sigblk(d.pid, t) & quit_bit]
        assert others
        tgkill = 234 if os.uname().machine == "x86_64" else 131
        assert ctypes.CDLL(None).syscall(tgkill, d.pid, others[-1], signal.SIGQUIT) == 0
        assert d.proc.wait(10) == 0
    finally:
        d.kill()


def _sigblk(pid: int, tid: str) -> int:
    for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
        if line.startswith("SigBlk:"):
            return int(line.split()[1], 16)
    raise AssertionError("no SigBlk")
