"""Crashes during PUT (issue 10): ``kill -9`` of the node or of a worker while 50
PUTs are in flight, on a loop-mounted ext4 ``devN`` and on tmpfs.  After it the
docroot holds the old files and complete new ones, never a temp or partial file;
named temp files (where O_TMPFILE is refused) are swept when a device is found."""
from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import HOST, Daemon, children, http_get, mounted, stray_temps, usage_being_replaced, wait_for

CLIENTS = 50
PUTS_PER_CLIENT = 6
HELD = 10  # more clients, each holding back the second half of one PUT's body until after the kill
BODY = 64 << 10
PIECE = 8 << 10
NO_TMPFILE = {"MOG_NO_TMPFILE": "1"}  # the named-temp-file fallback


def is_temp(p: Path) -> bool:
    return p.name.endswith(".tmp")


def unnamed_dirs(pid: int) -> set[str]:
    """Directories in which ``pid`` holds an unnamed (O_TMPFILE) file open:
    /proc shows such an fd as ``<dir>/#<inode> (deleted)``."""
    dirs = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if link.endswith(" (deleted)") and "/#" in link:
            dirs.add(link.rpartition("/#")[0])
    return dirs


class Load:
    """50 clients each sending PUTs piecemeal, and HELD clients whose PUT stops
    mid-body until :meth:`release`: a kill before that finds them in flight."""

    def __init__(self, port: int, dev: str, tag: str, old: dict[str, bytes]) -> None:
        self.port = port
        self.bodies: dict[str, bytes] = {}
        self.created: set[str] = set()
        self.broken = 0  # clients whose PUT the kill cut off
        self._lock = threading.Lock()
        self._gate = threading.Event()
        # each in its own new directory, so an unnamed file open there is its own
        self.held = [f"{dev}/0/h{c:02d}/{tag}held.fid" for c in range(HELD)]
        olds = sorted(old)
        self.plan: list[list[str]] = []
        for c in range(CLIENTS):
            paths = []
            for i in range(PUTS_PER_CLIENT):
                n = c * PUTS_PER_CLIENT + i
                # every fifth PUT replaces an old file
                rel = olds[n // 5 % len(olds)] if n % 5 == 0 else f"{dev}/0/{c:03d}/{tag}{i}.fid"
                paths.append(rel)
                self.bodies.setdefault(rel, b"")
            self.plan.append(paths)
        for rel in [rel for paths in self.plan for rel in paths] + self.held:
            if not self.bodies.get(rel):
                self.bodies[rel] = os.urandom(BODY)
        self.threads = [threading.Thread(target=self._client, args=(p,)) for p in self.plan]
        self.threads += [threading.Thread(target=self._client, args=([rel], True)) for rel in self.held]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def release(self) -> None:
        """The held clients send the rest of their bodies."""
        self._gate.set()

    def join(self) -> None:
        self.release()
        for t in self.threads:
            t.join(30)
            assert not t.is_alive()

    def in_flight(self, docroot: Path, pids: list[int]) -> dict[int, set[str]]:
        """Per node process, the held PUTs whose new file it has created: a
        named temp file next to the target (its pid is in the name), or an
        unnamed one open in the target's directory."""
        seen: dict[int, set[str]] = {pid: set() for pid in pids}
        dirs = {pid: unnamed_dirs(pid) for pid in pids}
        for rel in self.held:
            target = docroot / rel
            for pid in pids:
                if str(target.parent) in dirs[pid] or any(target.parent.glob(f"{target.name}.*.{pid}.tmp")):
                    seen[pid].add(rel)
        return seen

    def _client(self, paths: list[str], hold: bool = False) -> None:
        rnd = random.Random()
        for rel in paths:
            body = self.bodies[rel]
            try:
                with socket.create_connection((HOST, self.port), timeout=20) as s:
                    s.sendall(b"PUT /%s HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % (rel.encode(), len(body)))
                    for off in range(0, len(body), PIECE):
                        if hold and off == len(body) // 2:
                            self._gate.wait(60)
                        s.sendall(body[off:off + PIECE])
                        time.sleep(rnd.random() * 0.004)
                    head = s.recv(4096)
            except OSError:
                head = b""  # the node died under us
            with self._lock:
                if not head.startswith(b"HTTP/1.1 201 "):
                    self.broken += 1
                    return
                self.created.add(rel)


def files(docroot: Path) -> dict[str, bytes]:
    """Every regular file below the devices but the usage files (and the
    temp name of one a live node is replacing)."""
    return {str(p.relative_to(docroot)): p.read_bytes() for p in docroot.rglob("*")
            if p.is_file() and p.name != "usage" and not usage_being_replaced(p)}


def seed(docroot: Path, dev: str) -> dict[str, bytes]:
    old = {}
    for i in range(12):
        rel = f"{dev}/old/{i}.fid"
        path = docroot / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        old[rel] = b"old %d " % i * 1000
        path.write_bytes(old[rel])
    return old


def check_docroot(docroot: Path, old: dict[str, bytes], loads: list[Load]) -> None:
    """Exactly the old files and complete new ones; every 201 target holds the
    bytes of its last 201 (or of a PUT after it, which may have completed)."""
    found = files(docroot)
    assert not [rel for rel in found if rel.endswith(".tmp")]
    for rel, data in found.items():
        sent = [load.bodies[rel] for load in loads if rel in load.bodies]
        assert sent or rel in old, f"unexpected file {rel}"
        assert data in (*sent, old.get(rel)), f"{rel}: partial or mixed content ({len(data)} bytes)"
    for r, load in enumerate(loads):
        for rel in load.created:
            later = [lo.bodies[rel] for lo in loads[r:] if rel in lo.bodies]
            assert found.get(rel) in later, f"{rel} got a 201 but does not hold its body"
    for rel in old:
        assert rel in found, f"old file {rel} lost"


def check_replacement_links(docroot: Path, temps: list[Path], old: dict[str, bytes], load: Load) -> None:
    """With O_TMPFILE a body has no name until complete.  Only replacing an
    existing file takes a second name for an instant (link under a temp name,
    rename over the target): a kill in that instant leaves that link, complete,
    for the next start's sweep."""
    for p in temps:
        target = str(p.relative_to(docroot)).rsplit(".", 3)[0]
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            continue  # a live worker's sweep removed it since the listing
        if target.endswith("/usage"):  # the usage file is replaced the same way
            assert data.startswith(b"available: "), f"{p}: not a complete usage file"
            continue
        assert target in old, f"{p}: a temp name for a new file"
        assert data == load.bodies[target], f"{p}: not the complete new body"


def crash_rounds(tmp_path: Path, dev: str, env: dict[str, str], rounds: int, leaves_temps: bool) -> None:
    old = seed(tmp_path / "docroot", dev)
    loads: list[Load] = []
    for r in range(rounds):
        d = Daemon(tmp_path, env=env)
        try:
            if r:  # whatever the previous crash left has been swept at start-up
                wait_for(lambda: not stray_temps(d.docroot), what="temp files swept")
                check_docroot(d.docroot, old, loads)
            load = Load(d.http_port, dev, f"r{r}-", old)
            loads.append(load)
            load.start()
            try:
                wait_for(lambda: len(load.created) >= 40, timeout=30, what="40 PUTs created")
                wait_for(lambda: len(load.in_flight(d.docroot, [d.pid])[d.pid]) == HELD, timeout=30,
                         what=f"the {HELD} held PUTs' files created")
                d.proc.send_signal(signal.SIGKILL)
                d.proc.wait()
            finally:
                load.join()
            assert load.broken >= HELD, "the kill cut off fewer PUTs than were held in flight"
        finally:
            d.kill()
        temps = [p for p in d.docroot.rglob("*") if is_temp(p)]
        if leaves_temps:
            held = [rel for rel in load.held if any(p.name.startswith(Path(rel).name + ".") for p in temps)]
            assert held == load.held, "a PUT in flight at the kill left no temp file"
        else:
            check_replacement_links(d.docroot, temps, old, load)
    d = Daemon(tmp_path, env=env)
    try:
        wait_for(lambda: not stray_temps(d.docroot), what="temp files swept")
        check_docroot(d.docroot, old, loads)
        some = sorted(loads[-1].created)[0]
        assert http_get(d, "/" + some) == (200, loads[-1].bodies[some])
    finally:
        d.kill()


@pytest.mark.parametrize("fstype", ["ext4", "tmpfs"])
def test_kill_9_during_50_puts(tmp_path: Path, fstype: str) -> None:
    with mounted(tmp_path / "docroot" / "dev1", fstype, tmp_path, 128):
        crash_rounds(tmp_path, "dev1", {}, rounds=3, leaves_temps=False)


def test_kill_9_with_named_temp_files_then_swept(tmp_path: Path) -> None:
    """Where O_TMPFILE is refused, a crash leaves temp files; the next start removes them."""
    with mounted(tmp_path / "docroot" / "dev1", "ext4", tmp_path, 128):
        crash_rounds(tmp_path, "dev1", NO_TMPFILE, rounds=2, leaves_temps=True)


@pytest.mark.parametrize("fstype", ["ext4", "tmpfs"])
def test_kill_9_of_a_worker_during_50_puts(tmp_path: Path, fstype: str) -> None:
    with mounted(tmp_path / "docroot" / "dev1", fstype, tmp_path, 128):
        old = seed(tmp_path / "docroot", "dev1")
        loads = []
        d = Daemon(tmp_path, args=("--worker-processes=2",))
        try:
            for r in range(2):
                workers = wait_for(lambda: len(children(d.pid)) == 2 and children(d.pid), what="2 workers")
                load = Load(d.http_port, "dev1", f"w{r}-", old)
                loads.append(load)
                load.start()
                try:
                    wait_for(lambda: len(load.created) >= 40, timeout=30, what="40 PUTs created")
                    seen = wait_for(lambda: (s := load.in_flight(d.docroot, workers))
                                    and sum(map(len, s.values())) == HELD and s,
                                    timeout=30, what=f"the {HELD} held PUTs' files created")
                    victim = max(workers, key=lambda w: len(seen[w]))
                    os.kill(victim, signal.SIGKILL)
                finally:
                    load.join()
                assert load.broken >= len(seen[victim]) > 0, "the kill cut off fewer PUTs than the worker held"
                wait_for(lambda: victim not in children(d.pid), what="the dead worker reaped")
                check_replacement_links(d.docroot, stray_temps(d.docroot), old, load)
                # the respawned worker sweeps what the dead one left
                wait_for(lambda: not stray_temps(d.docroot), what="temp files swept")
                check_docroot(d.docroot, old, loads)
            assert d.stderr().count("died with status=") == 2
        finally:
            d.kill()


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_sweep_removes_only_our_dead_old_temp_files(tmp_path: Path) -> None:
    docroot = tmp_path / "docroot"
    dev1 = docroot / "dev1" / "0" / "000"
    dev1.mkdir(parents=True)
    dead, past = dead_pid(), time.time() - 3600
    strays = [dev1 / f"1.fid.0123abcd.{dead}.tmp", docroot / "dev1" / f"x.89abcdef.{dead}.tmp"]
    kept = [
        dev1 / f"2.fid.0123abcd.{os.getpid()}.tmp",  # its writer is alive
        dev1 / "3.fid.tmp",  # not our pattern
        dev1 / f"4.fid.0123ABCD.{dead}.tmp",  # not our pattern (upper-case hex)
        dev1 / "5.fid",
    ]
    for p in strays + kept:
        p.write_bytes(b"x")
        os.utime(p, (past, past))
    young = dev1 / f"6.fid.01234567.{dead}.tmp"  # written after the node started
    link = dev1 / f"7.fid.01234567.{dead}.tmp"
    os.symlink("5.fid", link)
    d = Daemon(tmp_path, devices=(1,), env={"MOG_DISK_USAGE_INTERVAL": "1"})
    try:
        wait_for(lambda: not any(p.exists() for p in strays), what="strays removed")
        young.write_bytes(b"y")
        # logged once the sweep is done, an instant after the last unlink
        wait_for(lambda: "dev1: removed 2 temp file(s) left by a crash" in d.stderr(), what="the sweep's log line")
        # a device appearing at run time is swept in its turn
        (docroot / "dev3").mkdir()
        late = docroot / "dev3" / f"8.fid.fedcba98.{dead}.tmp"
        late.write_bytes(b"z")
        os.utime(late, (past, past))
        wait_for(lambda: not late.exists(), what="new device swept")
        assert all(p.exists() for p in kept) and young.exists() and link.is_symlink()
    finally:
        d.kill()
