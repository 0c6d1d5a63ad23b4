"""The narrow interface a connection has to its serving process."""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

T = TypeVar("T")


class Control(Protocol):
    """What a connection may ask of its serving process."""

    quitting: bool  # graceful shutdown under way: finish, then close

    def request_shutdown(self) -> None: ...
    def request_usage_pass(self) -> None: ...
    def set_aio_threads(self, n: int) -> None: ...
    def iostat_running(self) -> bool: ...
    def retry_open(self, fn: Callable[[], T]) -> T:
        """``fn()`` (a file open), retried once if descriptors ran out (§3.10)."""
        ...
