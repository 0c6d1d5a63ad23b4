"""The C library, loaded once, for the few calls Python does not wrap
(accept4 that returns EINTR, openat2, ioprio, prctl).

``libc.name`` is one function object shared by every module: give argtypes
only to a private copy, ``libc["name"]`` (fs.py's openat2 ``syscall`` must not
change the ioprio ``syscall`` of fsck.py)."""
import ctypes

libc = ctypes.CDLL(None, use_errno=True)
