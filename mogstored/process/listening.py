"""The node's listening sockets: the ones the options ask for, each bound or
taken over from a socket already open on its address (inherited at start-up,
§1.6; the running ones at a reload)."""
from __future__ import annotations

import socket
from dataclasses import dataclass

from mogstored.config import listeners
from mogstored.config.options import Options, Service, StartupError

Available = dict[tuple[str, int], socket.socket]  # open listening sockets by bound address


@dataclass
class Listener:
    kind: str  # "http", "httpget", "mgmt" or "metrics"
    service: Service | None  # None: the node-wide metrics listener
    sock: socket.socket


def open_listeners(opts: Options, available: Available) -> list[Listener]:
    """Every listener ``opts`` asks for, in CMOGSTORED_FD order (per service mgmt,
    http, httpget; then metrics).  A socket of ``available`` is taken (removed
    from it) where one is open on the address.  If one fails to bind, the
    sockets bound here are closed again and ``available``'s are left open."""
    result: list[Listener] = []
    taken = list(available.values())
    try:
        for svc in opts.services:
            wanted = [("mgmt", svc.mgmtlisten)]
            if opts.server != "none":
                wanted += [("http", svc.httplisten), ("httpget", svc.httpgetlisten)]
            for kind, addr in wanted:
                if addr is not None:
                    result.append(Listener(kind, svc, listeners.bind(addr, available)))
        if opts.metricslisten is not None:
            result.append(Listener("metrics", None, listeners.bind(opts.metricslisten, available)))
    except StartupError:
        for lst in result:
            if not any(lst.sock is s for s in taken):
                lst.sock.close()
        raise
    return result


def by_address(running: list[Listener]) -> Available:
    return {lst.sock.getsockname()[:2]: lst.sock for lst in running}


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"
