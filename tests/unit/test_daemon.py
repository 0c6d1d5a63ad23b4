"""Daemonising, pidfile, RLIMIT_NOFILE and the --daemonize checks (reference §1.1.2, §1.5)."""
from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mogstored import log
from mogstored.process import daemon
from mogstored.config.file import StartupError
from mogstored.config.daemonize import validate_daemonize
from mogstored.process.daemon import Pidfile, raise_nofile

REPO = Path(__file__).resolve().parents[2]


# --- validate_daemonize ------------------------------------------------------------------

def test_validate_accepts_absolute_paths():
    validate_daemonize([("config", "/etc/m.conf"), ("pidfile", None), ("docroot", "/d")],
                       [("pidfile", "/p"), ("docroot", "/d")], {"PATH": "/bin"})


def test_validate_merged_values_only_when_configs_pass():
    with pytest.raises(StartupError) as e:
        validate_daemonize([("config", "/c"), ("docroot", "rel")], [("docroot", "also-rel")],
                           {"PATH": "/bin"})
    assert str(e.value).splitlines() == [
        "docroot=rel must use an absolute path",
        "relative paths are incompatible with --daemonize and SIGUSR2 upgrades",
    ]


def test_validate_path_unset_stops_at_once():
    with pytest.raises(StartupError) as e:
        validate_daemonize([], [("pidfile", "p")], {})
    assert str(e.value) == "pidfile=p must use an absolute path\nPATH environment must be set"


def test_validate_only_first_path_offender():
    with pytest.raises(StartupError) as e:
        validate_daemonize([], [], {"PATH": "/a:b:c"})
    assert str(e.value).splitlines()[0] == "PATH environment contains relative path: b:c"


# --- raise_nofile ------------------------------------------------------------------------

class FakeLimits:
    """Stands in for the resource module: a limit pair and an optional ceiling."""

    RLIMIT_NOFILE = daemon.resource.RLIMIT_NOFILE
    RLIM_INFINITY = daemon.resource.RLIM_INFINITY

    def __init__(self, soft: int, hard: int, ceiling: int | None = None) -> None:
        self.limits = (soft, hard)
        self.ceiling = ceiling
        self.calls: list[tuple[int, int]] = []

    def getrlimit(self, which: int) -> tuple[int, int]:
        return self.limits

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        self.calls.append(limits)
        if self.ceiling is not None and limits[0] > self.ceiling:
            raise OSError(1, "Operation not permitted")
        self.limits = limits


@pytest.fixture
def warnings(monkeypatch) -> list[str]:
    seen: list[str] = []
    monkeypatch.setattr(log, "warning", seen.append)
    return seen


def fake(monkeypatch, *args: int | None) -> FakeLimits:
    limits = FakeLimits(*args)
    monkeypatch.setattr(daemon, "resource", limits)
    return limits


def test_nofile_raised_to_maxconns(monkeypatch, warnings):
    limits = fake(monkeypatch, 1024, 65536)
    raise_nofile(2000)
    assert limits.limits == (2000, 65536) and warnings == []


def test_nofile_default_is_10000(monkeypatch, warnings):
    limits = fake(monkeypatch, 1024, 65536)
    raise_nofile(0)
    assert limits.limits == (10000, 65536)


def test_nofile_never_lowered(monkeypatch, warnings):
    limits = fake(monkeypatch, 4096, 4096)
    raise_nofile(100)
    assert limits.calls == [] and warnings == []


def test_nofile_hard_limit_too_low(monkeypatch, warnings):
    limits = fake(monkeypatch, 512, 1024)
    raise_nofile(2000)
    assert limits.limits == (1024, 1024)
    assert warnings == ["RLIMIT_NOFILE max=1024 less than wanted value=2000"]


def test_nofile_retries_64_lower(monkeypatch, warnings):
    limits = fake(monkeypatch, 1024, 65536, 1900)
    raise_nofile(2000)
    assert limits.limits == (1872, 65536)
    assert warnings == [
        "failed to set RLIMIT_NOFILE max=65536 cur=2000 (maxconns=2000)",
        "failed to set RLIMIT_NOFILE max=65536 cur=1936 (maxconns=2000)",
        "set RLIMIT_NOFILE max=65536 cur=1872 (maxconns=2000)",
    ]


def test_nofile_stuck(monkeypatch, warnings):
    limits = fake(monkeypatch, 1024, 65536, 1000)
    raise_nofile(1100)
    assert limits.limits == (1024, 65536)
    assert warnings == [
        "failed to set RLIMIT_NOFILE max=65536 cur=1100 (maxconns=1100)",
        "failed to set RLIMIT_NOFILE max=65536 cur=1036 (maxconns=1100)",
        "RLIMIT_NOFILE stuck at  max=65536 cur=1024 (maxconns=1100)",
    ]


def test_nofile_real_process():
    code = (
        "import resource; from mogstored.process.daemon import raise_nofile\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096))\n"
        "raise_nofile(3000); print(*resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=30, check=True).stdout
    assert out == "3000 4096\n"


# --- Pidfile -----------------------------------------------------------------------------

def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_pidfile_created_written_removed(tmp_path):
    path = tmp_path / "m.pid"
    old = os.umask(0o022)
    try:
        pidfile = Pidfile.open(str(path))
    finally:
        os.umask(old)
    assert pidfile.path == str(path)
    assert path.stat().st_mode & 0o777 == 0o644
    pidfile.write(os.getpid())
    assert path.read_text() == f"{os.getpid()}\n"
    pidfile.remove()
    assert not path.exists()


def test_pidfile_fd_is_close_on_exec(tmp_path):
    pidfile = Pidfile.open(str(tmp_path / "m.pid"))
    assert fcntl.fcntl(pidfile._fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    pidfile.write(1)


def test_pidfile_live_pid_refused(tmp_path):
    path = tmp_path / "m.pid"
    path.write_text(f"{os.getppid()}\n")
    with pytest.raises(StartupError) as e:
        Pidfile.open(str(path))
    assert str(e.value) == f"already running on PID: {os.getppid()}"
    assert path.read_text() == f"{os.getppid()}\n"


@pytest.mark.parametrize("content", ["", "garbage", "123", f"{dead_pid()}\n", "0\n", "own"])
def test_pidfile_stale_content_overwritten(tmp_path, content):
    path = tmp_path / "m.pid"
    path.write_text(f"{os.getpid()}\n" if content == "own" else content)
    pidfile = Pidfile.open(str(path))
    pidfile.write(4242)
    assert path.read_text() == "4242\n"


def test_pidfile_open_failure(tmp_path):
    with pytest.raises(StartupError) as e:
        Pidfile.open(str(tmp_path / "no" / "m.pid"))
    assert str(e.value) == f"failed to open pidfile({tmp_path}/no/m.pid): No such file or directory"


def test_pidfile_write_failure_is_logged(tmp_path, monkeypatch):
    errors: list[str] = []
    monkeypatch.setattr(log, "error", errors.append)
    path = tmp_path / "m.pid"
    path.write_text("")
    Pidfile(str(path), os.open(path, os.O_RDONLY)).write(1)
    assert len(errors) == 1
    assert re.fullmatch(rf"failed to write pidfile\({path}\): .+\. continuing\.\.\.", errors[0])


def test_pidfile_remove_leaves_foreign_content(tmp_path):
    path = tmp_path / "m.pid"
    pidfile = Pidfile.open(str(path))
    pidfile.write(os.getpid())
    path.write_text("1\n")  # e.g. an upgraded process took it over
    pidfile.remove()
    assert path.read_text() == "1\n"


def test_pidfile_remove_when_already_gone(tmp_path):
    path = tmp_path / "m.pid"
    pidfile = Pidfile.open(str(path))
    pidfile.write(os.getpid())
    path.unlink()
    pidfile.remove()


# --- daemonize (real forks) ----------------------------------------------------------------

DAEMON_SCRIPT = r"""
import json, os, sys, time
from mogstored.process import daemon
out, mode = sys.argv[1], sys.argv[2]
ready = daemon.daemonize(argv0="launcher")
time.sleep(0.3)  # a launcher that did not wait would be gone by now
fds = {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in map(int, os.listdir("/proc/self/fd"))
       if os.path.exists(f"/proc/self/fd/{fd}")}
import fcntl
pipes = [fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC != 0
         for fd, target in fds.items() if target.startswith("pipe:")]
info = {"pid": os.getpid(), "sid": os.getsid(0), "cwd": os.getcwd(),
        "stdio": [fds.get(0), fds.get(1), fds.get(2)], "pipes_cloexec": pipes}
with open(out + ".tmp", "w") as f:
    json.dump(info, f)
os.rename(out + ".tmp", out)
if mode == "die":
    os._exit(3)
ready()
deadline = time.time() + 20
while not os.path.exists(out + ".stop") and time.time() < deadline:
    time.sleep(0.05)
"""


def launch(tmp_path: Path, mode: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", DAEMON_SCRIPT, str(tmp_path / "info.json"), mode],
        capture_output=True, text=True, timeout=30, env=env,
    )


def stop(tmp_path: Path, pid: int) -> None:
    (tmp_path / "info.json.stop").write_text("")
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def test_daemonize_launcher_waits_for_ready(tmp_path):
    # capture_output returning at all shows the daemon holds none of the launcher's pipes
    result = launch(tmp_path, "ready")
    info = json.loads((tmp_path / "info.json").read_text())  # written before ready()
    try:
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
        os.kill(info["pid"], 0)  # the daemon lives on after the launcher exited
        assert info["sid"] not in (os.getsid(0), info["pid"])  # new session, not its leader
        assert info["cwd"] == "/"
        assert info["stdio"] == ["/dev/null"] * 3
        assert info["pipes_cloexec"] == [True]  # the readiness pipe, not yet reported
    finally:
        stop(tmp_path, info["pid"])


def test_daemonize_error_when_daemon_dies(tmp_path):
    result = launch(tmp_path, "die")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "launcher: daemonization error, check syslog\n"
