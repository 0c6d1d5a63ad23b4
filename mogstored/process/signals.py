"""Signal policy, all of it: which signals the lifecycle uses, when they are
held, and what each does in a serving process (the master takes them with
sigtimedwait instead: process/arbiter.py).

They are blocked from the first instant of the program (the top of
``__main__``, before the slow imports) until a process's handlers are in place
(a worker: until it has its own), so a signal received during start-up takes
effect once serving instead of killing a half-started process (§9).
"""
import os
import select
import signal
from collections.abc import Callable

LIFECYCLE_SIGNALS = frozenset({signal.SIGQUIT, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2,
                               signal.SIGCHLD, signal.SIGHUP, signal.SIGWINCH})
STOP_SIGNALS = frozenset({signal.SIGQUIT, signal.SIGTERM, signal.SIGINT})  # graceful shutdown
STOP_SIGNAL = signal.SIGQUIT  # what a worker sends its master for ``shutdown``
UPGRADE_SIGNAL = signal.SIGUSR2
RELOAD_SIGNAL = signal.SIGHUP
# The signal that kicks an acceptor out of accept4 (EINTR).  USR1 is otherwise a
# no-op, as in cmogstored; its handler does nothing.
KICK_SIGNAL = signal.SIGUSR1


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


def install_serving(waker: Waker, on_stop: Callable[[], None], on_upgrade: Callable[[], None] | None,
                    on_reload: Callable[[], None] | None) -> None:
    """A serving process: QUIT/TERM/INT stop it gracefully; USR2 upgrades and
    HUP reloads unless it is a worker (``on_upgrade``, ``on_reload`` None: the
    master replaces workers instead); WINCH is ignored; USR1 only interrupts
    accept4.  Then the signals held since start-up are let in."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda s, f: on_stop())
    signal.signal(signal.SIGWINCH, signal.SIG_IGN)
    if on_reload is None:
        signal.signal(RELOAD_SIGNAL, signal.SIG_IGN)
    else:
        signal.signal(RELOAD_SIGNAL, lambda s, f: on_reload())
    if on_upgrade is None:
        signal.signal(UPGRADE_SIGNAL, signal.SIG_IGN)
    else:
        signal.signal(UPGRADE_SIGNAL, lambda s, f: on_upgrade())
        signal.signal(signal.SIGCHLD, lambda s, f: waker.set())  # the upgrade child died?
    signal.signal(KICK_SIGNAL, lambda s, f: None)
    signal.siginterrupt(KICK_SIGNAL, True)
    waker.install()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, LIFECYCLE_SIGNALS)
