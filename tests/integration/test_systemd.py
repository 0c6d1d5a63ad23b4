"""Socket activation (LISTEN_FDS/LISTEN_PID, §1.3) driven by the units in etc/."""
from __future__ import annotations

import configparser
import os
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path


from conftest import HOST, free_port, read_all, wait_port, QUIET_IOSTAT as IOSTAT, alive, children, wait_for

ETC = Path(__file__).resolve().parents[2] / "etc"


def unit(name: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string((ETC / name).read_text())
    return cp


def test_units_hand_the_configured_sockets_over() -> None:
    service = unit("mogstored.service")["Service"]
    assert service["KillSignal"] == "SIGQUIT" and service["KillMode"] == "mixed"
    assert "--daemonize" not in service["ExecStart"]
    listens = [line for line in (ETC / "mogstored.socket").read_text().splitlines()
               if line.startswith("ListenStream=")]
    assert listens == ["ListenStream=0.0.0.0:7501", "ListenStream=0.0.0.0:7500"]  # the default ports


def test_socket_activated_node_serves_on_inherited_sockets(tmp_path: Path) -> None:
    """The service's ExecStart, run the way systemd runs it with the socket
    unit's sockets (loopback and free ports instead of the defaults)."""
    (tmp_path / "dev1").mkdir()
    mgmt, http = free_port(), free_port()
    conf = tmp_path / "mogstored.conf"
    conf.write_text(f"docroot = {tmp_path}\nhttplisten = {HOST}:{http}\nmgmtlisten = {HOST}:{mgmt}\n")
    program, *args = shlex.split(unit("mogstored.service")["Service"]["ExecStart"])
    assert Path(program).name == "mogstored"
    args = [f"--config={conf}" if a.startswith("--config=") else a for a in args]
    cmd = ["systemd-socket-activate", f"--listen={HOST}:{mgmt}", f"--listen={HOST}:{http}",
           sys.executable, "-m", "mogstored", *args]
    proc = subprocess.Popen(cmd, env=dict(os.environ, **IOSTAT), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(http, proc=proc)
        wait_for(lambda: len(children(proc.pid)) == 2, what="the workers")
        workers = children(proc.pid)
        with socket.create_connection((HOST, http), timeout=10) as s:
            s.sendall(b"GET /dev1/usage HTTP/1.0\r\n\r\n")
            assert read_all(s).startswith(b"HTTP/1.1 200 OK\r\n")
    finally:
        proc.send_signal(signal.SIGQUIT)  # KillSignal, to the main process only (KillMode=mixed)
        err = proc.communicate(timeout=20)[1].decode()
    assert proc.returncode == 0
    assert f"inherited {HOST}:{mgmt} on fd=3" in err and f"inherited {HOST}:{http} on fd=4" in err
    assert not any(alive(w) for w in workers)
