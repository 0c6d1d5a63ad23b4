"""The signals of the process lifecycle.

They are blocked from the first instant of the program (the top of
``__main__``, before the slow imports) until a process's handlers are in place
(a worker: until it has its own), so a signal received during start-up takes
effect once serving instead of killing a half-started process (§9).
"""
import os
import select
import signal

LIFECYCLE_SIGNALS = frozenset({signal.SIGQUIT, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2,
                               signal.SIGCHLD, signal.SIGHUP, signal.SIGWINCH})


def hold() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, LIFECYCLE_SIGNALS)


class Waker:
    """What the main thread sleeps on: ``set()`` from any thread, or any signal
    the kernel hands to any thread (``set_wakeup_fd``).  A threading.Event
    would miss a signal delivered to another thread: Python runs handlers only
    in the main thread, once it wakes up for some other reason."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def install(self) -> None:
        """Main thread only, with the handlers."""
        signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)

    def set(self) -> None:
        try:
            os.write(self._w, b"\0")
        except BlockingIOError:
            pass  # already pending

    def wait(self, timeout: float) -> None:
        """Sleep until woken or ``timeout`` seconds pass; the wake-up is consumed."""
        select.select([self._r], [], [], timeout)
        try:
            while os.read(self._r, 4096):
                pass
        except BlockingIOError:
            pass
