"""The C library, loaded once, for the few calls Python does not wrap
(accept4 that returns EINTR, openat2, ioprio, prctl, malloc tuning).

``libc.name`` is one function object shared by every module: give argtypes
only to a private copy, ``libc["name"]`` (fs.py's openat2 ``syscall`` must not
change the ioprio ``syscall`` of fsck.py)."""
import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)


def trim_heap() -> None:
    """Give back to the kernel the malloc heap that start-up freed (compiled
    and generated code, .pyc reads): about 1 MiB resident otherwise.  glibc
    only; elsewhere the heap stays as it is."""
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


M_ARENA_MAX = -8  # mallopt(3)
MALLOC_ARENAS = 2


def limit_malloc_arenas() -> None:
    """At most two malloc arenas, unless the operator set ``MALLOC_ARENA_MAX``.

    glibc gives threads that allocate at the same time arenas of their own (up to
    8 per CPU) and keeps the memory they held: under varied concurrent load the
    node's RSS doubled (26 to 54 MiB over 100,000 fuzzed connections,
    scripts/fuzz.py) while its Python objects stayed as many; with two arenas it
    stays within 4 MiB of where it started.  The interpreter lock serialises
    nearly every allocation anyway.  glibc only."""
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is not None and "MALLOC_ARENA_MAX" not in os.environ:
        mallopt(M_ARENA_MAX, MALLOC_ARENAS)
