"""Which paths a method may touch (§3.4), and the status of a failed file
operation (§3.5, §3.6.4): the HTTP policy in one place."""
from __future__ import annotations

import enum
import errno

from mogstored.http.head import is_put_path


def refusal(method: str, path: str) -> int | None:
    """The status refusing ``path`` to ``method`` before any disk is touched, or None.

    ``..`` never reaches the file system; PUT follows the Clone rule of §3.4;
    DELETE never removes a device directory or a top-level entry."""
    if ".." in path:
        return 400 if method == "PUT" else 403
    if method == "PUT":
        return None if is_put_path(path) else 400
    if method == "DELETE" and "/" not in path.lstrip("/"):
        return 403
    return None


class Op(enum.IntEnum):
    """The column of :data:`ERRNO_STATUS`."""

    READ = 0  # GET/HEAD open or stat
    WRITE = 1  # PUT open, write or commit
    DELETE = 2


#   errno            READ WRITE DELETE
ERRNO_STATUS = {
    errno.ENOENT: (404, 404, 404),
    errno.EACCES: (403, 403, 403),
    errno.ELOOP: (403, 403, 403),  # a symlink below devN (§3.4 item 4)
    errno.EPERM: (500, 403, 403),
    errno.EISDIR: (500, 500, 403),
    errno.EINVAL: (500, 400, 500),
    errno.ENOSPC: (500, 507, 500),
    errno.EFBIG: (500, 507, 500),
    errno.ERANGE: (500, 507, 500),
    errno.EDQUOT: (500, 507, 500),
}


def status_for(err: int | None, op: Op) -> int:
    """The status for a file operation ``op`` that failed with ``err`` (500 for any other)."""
    row = ERRNO_STATUS.get(err or 0)
    return 500 if row is None else row[op]
