"""The C library, loaded once, for the few calls Python does not wrap
(accept4 that returns EINTR, openat2, ioprio, prctl).

``libc.name`` is one function object shared by every module: give argtypes
only to a private copy, ``libc["name"]`` (fs.py's openat2 ``syscall`` must not
change the ioprio ``syscall`` of fsck.py)."""
import ctypes

libc = ctypes.CDLL(None, use_errno=True)


def trim_heap() -> None:
    """Give back to the kernel the malloc heap that start-up freed (compiled
    and generated code, .pyc reads): about 1 MiB resident otherwise.  glibc
    only; elsewhere the heap stays as it is."""
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim(0)
