#!/usr/bin/env python3
"""Run chosen tests (files, directories, node ids, ``-k`` selections) N times
and count each test's failures, to find tests that pass or fail by timing.

Each run is a fresh pytest process over the same arguments.  Unless
--no-shuffle, every run takes the files in a new random order and the tests of
each file in a new random order (a hook given to ``pytest.main`` reorders what
pytest collected); a file's tests stay together, so module-scoped fixtures
(one shared daemon) are started once per file and run, as in CI.  A test that
depends on a sibling having run before it shows up as a failure too.  Each
run's whole output goes to --logdir (run-NNN.txt) for the tracebacks; the
summary prints, per test that ever failed, its failure count out of the runs,
and the load average at the start of each run (the machine's neighbours are
part of the result).

    python scripts/flaky.py -n 20 tests/integration/test_crash.py
    python scripts/flaky.py -n 100 tests/integration/test_crash.py -k named_temp
    python scripts/flaky.py -n 3 tests --logdir /tmp/suite   # the whole suite
    python scripts/flaky.py -n 50 -x tests/integration/test_mgmt.py::test_watch

Exit status: 0 if every run passed, 1 otherwise.  Needs only pytest.
"""
from __future__ import annotations

import argparse
import collections
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# pytest -rfE summary lines: "FAILED tests/x.py::t[p] - AssertionError: ..." (ERROR for fixtures)
_OUTCOME = re.compile(r"^(FAILED|ERROR) (.+?)(?: - .*)?$", re.MULTILINE)
_CHILD = "--pytest-run"  # argv[1] of the per-run process: seed (or "-"), then pytest's arguments


class Shuffle:
    """pytest hook object: the collected tests grouped by file, the files and
    the tests inside each in an order drawn from ``seed``."""

    def __init__(self, seed: int) -> None:
        self.rnd = random.Random(seed)

    def pytest_collection_modifyitems(self, items: list) -> None:
        by_file: dict[str, list] = collections.defaultdict(list)
        for item in items:
            by_file[item.nodeid.split("::", 1)[0]].append(item)
        groups = list(by_file.values())
        self.rnd.shuffle(groups)
        for g in groups:
            self.rnd.shuffle(g)
        items[:] = [item for g in groups for item in g]


def child(seed: str, args: list[str]) -> int:
    """One run, as ``python -m pytest`` would run it (cwd first on sys.path)."""
    import pytest

    sys.path.insert(0, os.getcwd())
    return pytest.main(args, plugins=[] if seed == "-" else [Shuffle(int(seed))])


def run_once(args: list[str], seed: int | None, logfile: Path, timeout: float) -> tuple[int, set[str], float]:
    """One pytest process: (exit status, failed test ids, seconds)."""
    start = time.monotonic()
    cmd = [sys.executable, __file__, _CHILD, "-" if seed is None else str(seed),
           "-q", "-rfE", "-p", "no:cacheprovider", *args]
    with open(logfile, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            log.write(f"\nflaky.py: run killed after {timeout:.0f} s\n")
            rc = -1
    failed = {m.group(2) for m in _OUTCOME.finditer(logfile.read_text(errors="replace"))}
    if rc not in (0, 1) and not failed:
        failed = {"<run>"}  # collection error, interrupted, or killed: blame the run itself
    return rc, failed, time.monotonic() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--runs", type=int, default=20, help="runs (default 20)")
    ap.add_argument("-k", dest="keyword", help="pytest -k expression")
    ap.add_argument("-x", "--stop", action="store_true", help="stop after the first failed run")
    ap.add_argument("--no-shuffle", action="store_true", help="keep pytest's order in every run")
    ap.add_argument("--seed", type=int, help="seed of the shuffles (printed; default random)")
    ap.add_argument("--logdir", type=Path, help="where run-NNN.txt go (default: a new temp dir)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per run before it is killed")
    ap.add_argument("tests", nargs="+", help="test files, directories or node ids")
    a = ap.parse_args()

    args = a.tests + (["-k", a.keyword] if a.keyword else [])
    seed = a.seed if a.seed is not None else random.randrange(1 << 32)
    rnd = None if a.no_shuffle else random.Random(seed)
    logdir = a.logdir or Path(tempfile.mkdtemp(prefix="flaky-"))
    logdir.mkdir(parents=True, exist_ok=True)
    print(f"{a.runs} runs of {' '.join(args)}, seed {seed}, logs in {logdir}", flush=True)

    failures: collections.Counter[str] = collections.Counter()
    runs = failed_runs = 0
    for i in range(1, a.runs + 1):
        load = "/".join(f"{x:.1f}" for x in os.getloadavg())
        log = logdir / f"run-{i:03d}.txt"
        run_seed = None if rnd is None else rnd.randrange(1 << 32)
        rc, failed, secs = run_once(args, run_seed, log, a.timeout)
        runs += 1
        failures.update(failed)
        failed_runs += bool(failed or rc)
        tail = log.read_text(errors="replace").strip().rpartition("\n")[2]  # "N passed in S s"
        verdict = "ok" if not (failed or rc) else f"FAILED (rc {rc}): " + " ".join(sorted(failed))
        print(f"run {i}/{a.runs} [{secs:.0f} s, load {load}] {verdict} ({tail})", flush=True)
        if failed and a.stop:
            break

    print(f"\n{runs - failed_runs} of {runs} runs passed")
    for nodeid, n in failures.most_common():
        print(f"  {n:4d}/{runs}  {nodeid}")
    return 1 if failed_runs else 0


if __name__ == "__main__":
    sys.exit(child(sys.argv[2], sys.argv[3:]) if sys.argv[1:2] == [_CHILD] else main())
