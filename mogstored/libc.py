"""The C library, loaded once, for the few calls Python does not wrap
(accept4 that returns EINTR, openat2, ioprio, prctl)."""
import ctypes

libc = ctypes.CDLL(None, use_errno=True)
