"""The conftest check that fails a daemon test on a failed client."""
from __future__ import annotations

from conftest import client_failures


def test_failed_client_lines_are_found() -> None:
    log = ("mogstored[12]: expired 0 idle connections (>5 sec)\n"
           "mogstored[12]: client fd=17 failed: AttributeError(\"'NoneType' object has no attribute 'x'\")\n"
           "mogstored[12]: closing fd=9 failed: OSError(9, 'Bad file descriptor')\n")
    assert client_failures(log) == [log.splitlines()[1], log.splitlines()[2]]


def test_ordinary_errors_are_not_failures() -> None:
    log = ("mogstored[12]: PUT /dev1/x failed from 127.0.0.1:4000 after 3 bytes: premature EOF\n"
           "mogstored[12]: accept4() failed with: Too many open files\n")
    assert client_failures(log) == []
