"""Our responses, read by h11 (an independent HTTP/1.1 client implementation):
framing, keep-alive and pipelining must be what any conformant client expects."""
from __future__ import annotations

import h11
import pytest

from conftest import Daemon

BODY = bytes(range(256)) * 40  # 10240 bytes
PUT_BODY = b"hello"


def _events(raw: bytes, requests: list[h11.Request]) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """Feed ``raw`` (the server's bytes for pipelined ``requests``) to an h11 client."""
    client = h11.Connection(h11.CLIENT)
    results = []
    client.receive_data(raw)
    for req in requests:
        client.send(req)
        if req.method == b"PUT":
            client.send(h11.Data(data=PUT_BODY))
        client.send(h11.EndOfMessage())
        status, headers, body = None, {}, b""
        while True:
            event = client.next_event()
            assert event is not h11.NEED_DATA, f"incomplete response after {results}"
            if isinstance(event, h11.Response):
                status, headers = event.status_code, dict(event.headers)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        results.append((status, headers, body))
        if client.our_state is h11.DONE and client.their_state is h11.DONE:
            client.start_next_cycle()
    return results


def _request(method: str, target: str, extra: list[tuple[str, str]] = (), length: int = 0) -> h11.Request:
    headers = [("Host", "storage"), *extra]
    if method == "PUT":
        headers.append(("Content-Length", str(length)))
    return h11.Request(method=method, target=target, headers=headers)


@pytest.fixture(scope="module")
def node(shared_daemon: Daemon) -> Daemon:
    (shared_daemon.docroot / "dev1" / "h11").write_bytes(BODY)
    return shared_daemon


def test_pipelined_keepalive_responses_frame_correctly(node: Daemon) -> None:
    reqs = [
        _request("GET", "/dev1/h11"),
        _request("HEAD", "/dev1/h11"),
        _request("GET", "/dev1/h11", [("Range", "bytes=10-19")]),
        _request("GET", "/dev1/h11", [("Range", "bytes=999999-")]),
        _request("GET", "/dev1/missing"),
        _request("PUT", "/dev1/0/h11.fid", length=len(PUT_BODY)),
        _request("DELETE", "/dev1/0/h11.fid"),
        _request("MKCOL", "/dev1/0/"),
        _request("GET", "/"),
    ]
    wire = b"".join(
        f"{r.method.decode()} {r.target.decode()} HTTP/1.1\r\n".encode()
        + b"".join(k + b": " + v + b"\r\n" for k, v in r.headers) + b"\r\n"
        + (PUT_BODY if r.method == b"PUT" else b"")
        for r in reqs) + b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"
    with node.http() as s:
        s.sendall(wire)
        raw = b""
        s.settimeout(10)
        while chunk := s.recv(65536):
            raw += chunk
    results = _events(raw, reqs + [_request("GET", "/", [("Connection", "close")])])
    assert [status for status, _, _ in results] == [200, 200, 206, 416, 404, 201, 204, 400, 200, 200]
    assert results[0][2] == BODY
    assert results[1][2] == b"" and results[1][1][b"content-length"] == str(len(BODY)).encode()
    assert results[2][2] == BODY[10:20] and results[2][1][b"content-range"] == f"bytes 10-19/{len(BODY)}".encode()
    assert results[3][1][b"content-range"] == f"bytes */{len(BODY)}".encode()
    assert all(headers[b"connection"] == b"keep-alive" for _, headers, _ in results[:-1])
    assert results[-1][1][b"connection"] == b"close"
