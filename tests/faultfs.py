"""A passthrough FUSE filesystem that fails on demand: the disk of the disk-error tests.

    python faultfs.py BACKING MOUNTPOINT CONTROL_SOCKET

Mounts BACKING at MOUNTPOINT (direct_io, no attribute, entry or negative
caching, so every call the node makes reaches this process) and serves a unix
socket at CONTROL_SOCKET, one JSON object a line each way:

    {"cmd": "set", "faults": [{"op": "read", "path": "/big*.fid", "errno": "EIO", "after": 65536}]}
    {"cmd": "fired"}    -> {"fired": [{"op": "read", "path": "/big1.fid", "errno": "EIO", "offset": 65536}]}
    {"cmd": "clear"}    -> faults and the fired record emptied

A fault names an operation (``getattr``, ``open``, ``create``, ``read``,
``write``, ``fsync`` (fsync and fdatasync), ``fdatasync`` (only that),
``fsyncdir``, ``rename`` (matched on either name), ``link``, ``unlink``,
``mkdir``), an fnmatch pattern on the path below the mount (``/a/b.fid``), an
errno name and, for ``read`` and ``write``, an optional byte offset: only
calls reaching past ``after`` fail.  (Not cut short at ``after``: FUSE takes a
short read for the end of the file.  The kernel splits large reads and writes
into requests of at most 128 KiB, so a multiple of that fails the call there.)  ``skip``: so many matching calls pass first.  Every failure returned
is recorded.

It runs in its own process so that a FUSE call stuck in it can never hang the
test process, which only talks to it over the socket.
"""
from __future__ import annotations

import errno
import fnmatch
import json
import os
import socketserver
import sys
import threading
from typing import Any

import mfusepy as fuse


class FaultFS(fuse.Operations):
    """Every call goes to the same path below ``root``, unless a fault matches it."""

    use_ns = True

    def __init__(self, root: str) -> None:
        self.root = root
        self._mutex = threading.Lock()
        self.faults: list[dict[str, Any]] = []
        self.fired: list[dict[str, Any]] = []

    # -- faults ------------------------------------------------------------------
    def _fail(self, op: str, path: str, offset: int = 0, size: int = 0, *names: str) -> None:
        """Raise the errno of the first fault matching the call, if any."""
        with self._mutex:
            for f in self.faults:
                if f["op"] != op or not any(fnmatch.fnmatchcase(p, f["path"]) for p in (path, *names)):
                    continue
                if f.get("skip", 0) > 0:
                    f["skip"] -= 1
                    continue
                if offset + size <= f.get("after", -1):
                    continue
                err = getattr(errno, f["errno"])
                self.fired.append({"op": op, "path": path, "errno": f["errno"], "offset": offset})
                raise fuse.FuseOSError(err)

    def control(self, msg: dict[str, Any]) -> dict[str, Any]:
        with self._mutex:
            if msg["cmd"] == "set":
                self.faults = list(msg["faults"])
            elif msg["cmd"] == "clear":
                self.faults, self.fired = [], []
            return {"fired": list(self.fired)}

    def _real(self, path: str) -> str:
        return self.root + path

    # -- metadata ------------------------------------------------------------------
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        self._fail("getattr", path)
        st = os.fstat(fh) if fh is not None else os.lstat(self._real(path))
        attrs = {k: getattr(st, k) for k in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size",
                                              "st_ino", "st_blocks", "st_blksize")}
        attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        return attrs

    def access(self, path: str, amode: int) -> int:
        if not os.access(self._real(path), amode):
            raise fuse.FuseOSError(errno.EACCES)
        return 0

    def readlink(self, path: str) -> str:
        return os.readlink(self._real(path))

    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self._real(path))
        return {k: getattr(sv, k) for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                                            "f_files", "f_ffree", "f_favail", "f_flag", "f_namemax")}

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._real(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.chown(self._real(path), uid, gid, follow_symlinks=False)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        if times is None:
            os.utime(self._real(path), follow_symlinks=False)
        else:
            os.utime(self._real(path), ns=times, follow_symlinks=False)
        return 0

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        os.truncate(fh if fh is not None else self._real(path), length)
        return 0

    # -- directories -----------------------------------------------------------
    def mkdir(self, path: str, mode: int) -> int:
        self._fail("mkdir", path)
        os.mkdir(self._real(path), mode)
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self._real(path))
        return 0

    def opendir(self, path: str) -> int:
        return os.open(self._real(path), os.O_RDONLY | os.O_DIRECTORY)

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._real(path))]

    def releasedir(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        self._fail("fsyncdir", path)
        os.fsync(fh)
        return 0

    # -- names -------------------------------------------------------------------
    def unlink(self, path: str) -> int:
        self._fail("unlink", path)
        os.unlink(self._real(path))
        return 0

    def rename(self, old: str, new: str) -> int:
        self._fail("rename", old, 0, 0, new)
        os.rename(self._real(old), self._real(new))
        return 0

    def link(self, target: str, source: str) -> int:
        self._fail("link", target, 0, 0, source)
        os.link(self._real(source), self._real(target))
        return 0

    def symlink(self, target: str, source: str) -> int:
        os.symlink(source, self._real(target))
        return 0

    # -- files -------------------------------------------------------------------
    def open(self, path: str, flags: int) -> int:
        self._fail("open", path)
        return os.open(self._real(path), flags)

    def create(self, path: str, mode: int, flags: int = os.O_WRONLY) -> int:
        self._fail("create", path)
        return os.open(self._real(path), flags | os.O_CREAT, mode)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        self._fail("read", path, offset, size)
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        self._fail("write", path, offset, len(data))
        return os.pwrite(fh, data, offset)

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        self._fail("fsync", path)
        if datasync:
            self._fail("fdatasync", path)
            os.fdatasync(fh)
        else:
            os.fsync(fh)
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0


def serve_control(fs: FaultFS, sock_path: str) -> None:
    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for line in self.rfile:
                self.wfile.write(json.dumps(fs.control(json.loads(line))).encode() + b"\n")

    server = socketserver.ThreadingUnixStreamServer(sock_path, Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()


def main() -> None:
    backing, mountpoint, control = sys.argv[1:4]
    fs = FaultFS(os.path.realpath(backing))
    serve_control(fs, control)
    # direct_io: reads and writes bypass the page cache; the zero timeouts make the
    # kernel ask again for every lookup and attribute; hard_remove: an unlink of an
    # open file is an unlink (not a rename to .fuse_hidden*, which a rename fault hits).
    fuse.FUSE(fs, mountpoint, foreground=True, direct_io=True, hard_remove=True, attr_timeout=0,
              entry_timeout=0, negative_timeout=0, fsname="faultfs")


if __name__ == "__main__":
    main()
