"""System call numbers: one table per machine in libc.py; a machine without
one starts with a clear message and safe fallbacks."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mogstored import libc

ROOT = Path(__file__).resolve().parents[2]


def test_this_machine_has_a_table_and_every_module_reads_it() -> None:
    from mogstored.store import fs, fsck, iopool

    assert libc.machine_note() is None
    assert fs._SYS_OPENAT2 == libc.syscall_number("openat2") == 437
    assert (fsck._IOPRIO_SET, fsck._IOPRIO_GET) == (libc.syscall_number("ioprio_set"), libc.syscall_number("ioprio_get"))
    assert iopool._FUTEX == str(libc.syscall_number("futex")).encode()


def test_a_machine_without_a_table_gets_a_note_and_fallbacks(tmp_path: Path) -> None:
    """Pretend to be an unknown machine before anything is imported: the node
    still opens files (openat2's common number), an fsck digest runs at the
    normal I/O priority, and the grower counts a computing step's running
    thread without telling futex() apart."""
    code = f"""
import os
real = os.uname()
os.uname = lambda: os.uname_result((real.sysname, real.nodename, real.release, real.version, "pdp11"))
from mogstored import libc
from mogstored.store import fsck, iopool
from mogstored.store.fs import Docroot
print(libc.machine_note())
os.mkdir({str(tmp_path)!r} + "/dev1")
d = Docroot({str(tmp_path)!r})
os.close(d.open("dev1", os.O_PATH))
with fsck.low_io_priority():
    print("ioprio", fsck._IOPRIO_SET, fsck._IOPRIO_GET)
print("futex", iopool._FUTEX)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("no system call table for pdp11 (mogstored/libc.py): openat2 tried as 437")
    assert lines[1:] == ["ioprio None None", "futex b''"]
