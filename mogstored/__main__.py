"""Start-up in the order of §1.5: options, listeners, pidfile, daemonise,
pidfile write, first usage pass, threads; then serve until a graceful stop."""
from __future__ import annotations

from mogstored.process import signals

signals.hold()  # before the imports below, which take most of start-up

import os
import sys

from mogstored import log
from mogstored.config import listeners
from mogstored.config.cli import EarlyExit, UsageError, load_options
from mogstored.config.options import StartupError
from mogstored.libc import limit_malloc_arenas, machine_note
from mogstored.process.arbiter import Arbiter, first_usage_pass
from mogstored.process.daemon import Pidfile, daemonize, raise_nofile
from mogstored.process.listening import open_listeners
from mogstored.process.reload import Reload
from mogstored.process.server import serve
from mogstored.process.upgrade import Upgrade


def program_name() -> str:
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else "mogstored"
    return "mogstored" if argv0.endswith("__main__.py") else argv0


def main(argv: list[str] | None = None) -> int:
    signals.hold()  # also when main() is called without running this module
    argv0 = program_name()
    args = sys.argv[1:] if argv is None else argv
    try:
        opts = load_options(args, argv0, os.environ)
    except EarlyExit as e:
        sys.stdout.write(e.text)
        return e.code
    except UsageError as e:
        sys.stderr.write(str(e))
        return 64
    except StartupError as e:
        sys.stderr.write("".join(f"{argv0}: {line}\n" for line in str(e).splitlines()))
        return 1
    if opts.test_config:  # parsed, paths resolved, listen addresses well-formed; nothing bound
        sys.stdout.write("configuration ok\n")
        return 0
    log.open_syslog()
    limit_malloc_arenas()  # before any thread starts (workers inherit it)
    if (note := machine_note()) is not None:
        log.error(note)
    raise_nofile(opts.maxconns)
    try:
        inherited = listeners.inherit(os.environ)
        bound = open_listeners(opts, inherited)
        listeners.close_unused(inherited)
        pidfile = Pidfile.open(opts.pidfile) if opts.pidfile else None
    except StartupError as e:
        sys.stderr.write(f"{argv0}: {e}\n")
        return 1
    ready = daemonize(argv0) if opts.daemonize else None
    if pidfile is not None:
        pidfile.write(os.getpid())
    upgrade = Upgrade(opts.pidfile, [lst.sock for lst in bound])
    reload = Reload(args, argv0, opts, upgrade)
    if opts.worker_processes:
        first_usage_pass(opts.services)
        if ready is not None:
            ready()
        status = Arbiter(bound, opts.worker_processes, opts.iostat, upgrade, opts.stallseconds, reload).run()
    else:
        status = serve(bound, opts.worker_processes, opts.iostat, upgrade=upgrade, ready=ready,
                       stall_seconds=opts.stallseconds, reload=reload)
    if pidfile is not None:
        pidfile.remove()
    upgrade.finish()
    return status


if __name__ == "__main__":
    sys.exit(main())
