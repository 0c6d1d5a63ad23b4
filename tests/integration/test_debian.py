"""The Debian package (debian/, scripts/build-deb.sh): built with Debian's
python3, installed on this machine, its /usr/bin/mogstored run on a temporary
docroot and loopback ports, then purged with whatever it created."""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from conftest import HOST, free_port, read_all, read_until, wait_port

REPO = Path(__file__).resolve().parents[2]
SYSTEM_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8",  # Debian's python3, no PYTHONPATH
              "DEBIAN_FRONTEND": "noninteractive"}
APT_LOCK = ("-o", "DPkg::Lock::Timeout=300")  # another apt on this machine finishes first


def run(*cmd: str, timeout: float = 300) -> str:
    """In / (not this checkout: ``python3 -c`` would import it from the cwd)."""
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=SYSTEM_ENV, cwd="/", check=False)
    assert r.returncode == 0, f"{cmd}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def test_package_builds_installs_serves_and_purges(tmp_path: Path) -> None:
    started = time.monotonic()
    run(str(REPO / "scripts" / "build-deb.sh"), str(tmp_path / "out"), timeout=600)
    built = time.monotonic()
    [deb] = (tmp_path / "out").glob("mogstored_*_all.deb")
    had_user, had_mogdata = user_exists("mogstored"), os.path.lexists("/var/mogdata")
    try:
        run("apt-get", *APT_LOCK, "install", "-y", "-q", str(deb))
        files = run("dpkg", "-L", "mogstored").split()
        for path in ("/usr/bin/mogstored", "/usr/share/man/man1/mogstored.1.gz", "/etc/mogilefs/mogstored.conf",
                     "/lib/systemd/system/mogstored.service", "/lib/systemd/system/mogstored.socket",
                     *(f"/usr/share/doc/mogstored/examples/{kit}" for kit in
                       ("mogstored-rules.yml", "mogstored-rules.test.yml", "mogstored.json"))):
            assert path in files, path
        assert run("dpkg-query", "-W", "-f=${Conffiles}", "mogstored").split()[0] == "/etc/mogilefs/mogstored.conf"
        unit = Path("/lib/systemd/system/mogstored.service").read_text()
        assert "ExecStart=/usr/bin/mogstored --config=/etc/mogilefs/mogstored.conf" in unit
        assert "User=mogstored" in unit
        assert Path("/usr/bin/mogstored").read_text().startswith("#!/usr/bin/python3\n")
        assert run("/usr/bin/python3", "-c", "import mogstored; print(mogstored.__file__)") == \
            "/usr/lib/python3/dist-packages/mogstored/__init__.py\n"
        assert run("man", "-w", "mogstored") == "/usr/share/man/man1/mogstored.1.gz\n"
        assert user_exists("mogstored")
        if not had_mogdata:
            assert pwd.getpwuid(os.stat("/var/mogdata").st_uid).pw_name == "mogstored"
        assert run("/usr/bin/mogstored", "-t", "--config=/etc/mogilefs/mogstored.conf") == "configuration ok\n"
        serve_put_get_size(tmp_path)
    finally:
        run("apt-get", *APT_LOCK, "purge", "-y", "-q", "mogstored")
        if not had_user and user_exists("mogstored"):
            run("deluser", "--system", "mogstored")
        if not had_mogdata and os.path.isdir("/var/mogdata"):
            os.rmdir("/var/mogdata")  # empty: the test wrote elsewhere
    assert not os.path.exists("/usr/bin/mogstored") and not os.path.exists("/etc/mogilefs/mogstored.conf")
    print(f"debian package: built in {built - started:.1f}s, installed, served and purged in "
          f"{time.monotonic() - built:.1f}s")


def serve_put_get_size(tmp_path: Path) -> None:
    """The installed command under Debian's python3, stopped by its PID."""
    docroot = tmp_path / "docroot"
    (docroot / "dev1").mkdir(parents=True)
    http, mgmt, metrics = free_port(), free_port(), free_port()
    with open(tmp_path / "stderr.log", "wb") as err:
        proc = subprocess.Popen(["/usr/bin/mogstored", f"--docroot={docroot}", f"--httplisten={HOST}:{http}",
                                 f"--mgmtlisten={HOST}:{mgmt}", f"--metricslisten={HOST}:{metrics}"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err, cwd="/",
                                env=dict(SYSTEM_ENV, MOG_IOSTAT_CMD="sleep 3600"))
    try:
        wait_port(http, proc=proc)
        assert Path(f"/proc/{proc.pid}/exe").resolve() == Path("/usr/bin/python3").resolve()
        body = b"stored by the Debian package\n"
        with socket.create_connection((HOST, http), timeout=30) as s:
            s.sendall(b"PUT /dev1/0/000/000/0000000001.fid HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            assert read_all(s).startswith(b"HTTP/1.1 201 ")
        with socket.create_connection((HOST, http), timeout=30) as s:
            s.sendall(b"GET /dev1/0/000/000/0000000001.fid HTTP/1.0\r\n\r\n")
            head, _, got = read_all(s).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ") and got == body
        with socket.create_connection((HOST, mgmt), timeout=30) as s:
            s.sendall(b"size /dev1/0/000/000/0000000001.fid\r\n")
            assert read_until(s, b"\r\n") == b"/dev1/0/000/000/0000000001.fid %d\r\n" % len(body)
        with socket.create_connection((HOST, metrics), timeout=30) as s:  # Debian's prometheus_client
            s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            assert b'\nmogstored_http_requests_total{method="PUT",status="201"} 1.0\n' in read_all(s)
    finally:
        proc.send_signal(signal.SIGQUIT)
        assert proc.wait(30) == 0, (tmp_path / "stderr.log").read_text()
    shutil.rmtree(docroot)
