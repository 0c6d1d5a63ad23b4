"""The C library, loaded once, for the few calls Python does not wrap
(accept4 that returns EINTR, openat2, ioprio, prctl, malloc tuning), and the numbers of
the system calls made through ``syscall()`` or read in ``/proc/TID/syscall``.

``libc.name`` is one function object shared by every module: give argtypes
only to a private copy, ``libc["name"]`` (fs.py's openat2 ``syscall`` must not
change the ioprio ``syscall`` of fsck.py)."""
import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)

MACHINE = os.uname().machine
# System call numbers per machine.  x86_64 has its own table; aarch64 and
# riscv64 share the kernel's generic one.
_SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {"openat2": 437, "futex": 202, "ioprio_set": 251, "ioprio_get": 252},
    "aarch64": {"openat2": 437, "futex": 98, "ioprio_set": 30, "ioprio_get": 31},
    "riscv64": {"openat2": 437, "futex": 98, "ioprio_set": 30, "ioprio_get": 31},
}
# Elsewhere: openat2 is new enough (Linux 5.6) to have the same number on every
# architecture with the common numbering (the start-up probe of store/fs.py
# checks it); the others are left unused, see machine_note().
_FALLBACK = {"openat2": 437}
_table = _SYSCALLS.get(MACHINE, _FALLBACK)


def syscall_number(name: str) -> int | None:
    """The number of system call ``name`` on this machine; None if unknown."""
    return _table.get(name)


def machine_note() -> str | None:
    """What start-up says on a machine without a table (None: it has one)."""
    if MACHINE in _SYSCALLS:
        return None
    return (f"no system call table for {MACHINE} (mogstored/libc.py): openat2 tried as {_FALLBACK['openat2']}; "
            "fsck digests run at the normal I/O priority; the I/O pools' grower cannot tell a thread waiting "
            "for the interpreter lock from one computing")


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
