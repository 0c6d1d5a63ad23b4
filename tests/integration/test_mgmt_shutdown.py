"""Sidechannel ``shutdown`` (§4.7, §6.5) as mogstored-shutdown.t drives it (§5.8)."""
from __future__ import annotations

import hashlib
import select
import socket
import subprocess
import time

import pytest

from conftest import HOST, Daemon, read_all


def assert_exits_zero(d: Daemon, timeout: float = 4.0) -> None:
    """The test-suite polls 10 × 0.4 s for the process to be gone."""
    try:
        assert d.proc.wait(timeout) == 0
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {timeout}s after shutdown")


@pytest.mark.parametrize("line", [b"shutdown\n", b"shutdown\r\n", b"shutdown graceful\r\n",
                                  b"shutdown   graceful\n"])
def test_shutdown_eof_then_exit(daemon: Daemon, line: bytes) -> None:
    assert daemon.mgmt_cmd(b"\r\n") == b"\r\n"  # serving
    with daemon.mgmt() as s:
        s.sendall(line)
        readable, _, _ = select.select([s], [], [], 2.0)
        assert readable, "no EOF within 2 s"
        assert read_all(s, timeout=2) == b""  # no reply at all
    assert_exits_zero(daemon)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((HOST, daemon.mgmt_port), timeout=1).close()


def test_pipelined_commands_before_shutdown_are_answered(daemon: Daemon) -> None:
    (daemon.docroot / "dev1" / "a.fid").write_bytes(b"abc")
    with daemon.mgmt() as idle, daemon.mgmt() as s:
        assert daemon.mgmt_cmd(b"\r\n") == b"\r\n"
        s.sendall(b"size /dev1/a.fid\r\nMD5 /dev1/a.fid\r\nhello\r\n\r\nshutdown\r\n")
        assert read_all(s, timeout=2) == (b"/dev1/a.fid 3\r\n/dev1/a.fid MD5=900150983cd24fb0d6963f7d28e17f72\r\n"
                                          b"ERROR: unknown command: hello\r\n\r\n")
        assert read_all(idle, timeout=2) == b""  # idle connections are closed too
    assert_exits_zero(daemon)


def test_digest_in_progress_completes(daemon: Daemon) -> None:
    """A digest running when another connection says ``shutdown`` is finished and answered."""
    data = bytes(range(256)) * (200 << 12)  # 200 MiB: several scheduling slices
    (daemon.docroot / "dev2" / "big.fid").write_bytes(data)
    want = f"/dev2/big.fid SHA-1={hashlib.sha1(data).hexdigest()}\r\n".encode()
    with daemon.mgmt() as s:
        s.sendall(b"SHA-1 /dev2/big.fid\r\n")
        time.sleep(0.2)
        daemon.mgmt_cmd(b"shutdown\r\n")
        assert read_all(s, timeout=10) == want
    assert_exits_zero(daemon)
