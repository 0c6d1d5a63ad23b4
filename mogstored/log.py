"""Logging as cmogstored does it: syslog (LOG_DAEMON, LOG_PID), mirrored on stderr
as ``cmogstored[<pid>]: <message>`` while the process is not daemonised.

No per-request logging: only notable events, so the hot path never formats text.
"""
from __future__ import annotations

import os
import sys
import syslog
import threading

IDENT = "cmogstored"  # §1.8: the ident and stderr prefix operators grep for
_lock = threading.Lock()
_to_stderr = True
_opened = False


def open_syslog() -> None:
    global _opened
    syslog.openlog(IDENT, syslog.LOG_PID, syslog.LOG_DAEMON)
    _opened = True


def detach_stderr() -> None:
    """After daemonising only syslog receives messages."""
    global _to_stderr
    _to_stderr = False


def _emit(priority: int, message: str) -> None:
    if _opened:
        try:
            syslog.syslog(priority, message)
        except (OSError, ValueError):
            pass
    if _to_stderr:
        line = f"{IDENT}[{os.getpid()}]: {message}\n"
        with _lock:
            try:
                sys.stderr.write(line)
                sys.stderr.flush()
            except (OSError, ValueError):
                pass


def error(message: str) -> None:
    _emit(syslog.LOG_ERR, message)


def warning(message: str) -> None:
    _emit(syslog.LOG_WARNING, message)


def info(message: str) -> None:
    _emit(syslog.LOG_INFO, message)
