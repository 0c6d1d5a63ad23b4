"""The signals of the process lifecycle.

They are blocked from the first instant of the program (the top of
``__main__``, before the slow imports) until a process's handlers are in place
(a worker: until it has its own), so a signal received during start-up takes
effect once serving instead of killing a half-started process (§9).
"""
import signal

LIFECYCLE_SIGNALS = frozenset({signal.SIGQUIT, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2,
                               signal.SIGCHLD, signal.SIGHUP, signal.SIGWINCH})


def hold() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, LIFECYCLE_SIGNALS)
