"""``mogstored -t``: the configuration is checked, nothing is started (no
listener bound, no pidfile, no usage file)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HOST

PROG = [sys.executable, "-m", "mogstored"]


def check(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PROG, *args], capture_output=True, text=True, timeout=30, cwd=cwd, check=False,
                          env=dict(os.environ))


@pytest.fixture
def busy_port():
    """A port held by us: a daemon that tried to bind it would fail."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("flag", ["-t", "--test-config"])
def test_good_config_is_ok_and_starts_nothing(tmp_path: Path, busy_port: int, flag: str) -> None:
    (tmp_path / "docroot" / "dev1").mkdir(parents=True)
    conf = tmp_path / "mogstored.conf"
    conf.write_text(f"docroot = {tmp_path}/docroot\nhttplisten = {HOST}:{busy_port}\n"
                    f"mgmtlisten = {HOST}:{busy_port}\npidfile = {tmp_path}/pid\n")
    r = check(tmp_path, flag, f"--config={conf}")
    assert (r.returncode, r.stdout, r.stderr) == (0, "configuration ok\n", "")
    assert not (tmp_path / "pid").exists()
    assert not (tmp_path / "docroot" / "dev1" / "usage").exists()


@pytest.mark.parametrize("text, message", [
    ("docroot = {tmp}/missing\n", "`{tmp}/missing' failed to resolve: No such file or directory"),
    ("docroot = {tmp}/conf\n", "docroot={tmp}/conf is not a directory"),
    ("docroot = {tmp}\nhttplisten = 127.0.0.1:70000\n",
     "failed to parse httplisten=127.0.0.1:70000\nmogstored: failed to load config={tmp}/conf: parser error"),
    ("docroot = {tmp}\nmaxconns = lots\n",
     "failed to parse maxconns=lots\nmogstored: failed to load config={tmp}/conf: parser error"),
])
def test_bad_config_is_reported(tmp_path: Path, text: str, message: str) -> None:
    conf = tmp_path / "conf"
    conf.write_text(text.format(tmp=tmp_path))
    r = check(tmp_path, "-t", f"--config={conf}")
    assert (r.returncode, r.stdout, r.stderr) == (1, "", f"mogstored: {message.format(tmp=tmp_path)}\n")


def test_command_line_errors_are_reported(tmp_path: Path) -> None:
    r = check(tmp_path, "-t", f"--docroot={tmp_path}", "--mgmtlisten=1.2.3")
    assert (r.returncode, r.stdout, r.stderr) == (1, "", "mogstored: failed to parse mgmtlisten=1.2.3\n")
    r = check(tmp_path, "-t", "--bogus")
    assert r.returncode == 64 and r.stdout == ""
