"""Slow and idle clients cannot hold the API's connections: half-sent headers get 408 and are
closed, oversized headers 431, a stalled body is closed, and connections past the cap get 503 at
once; requests within the limits (kept-alive, pipelined, sent in pieces) are served."""
from __future__ import annotations

import socket
import time

import pytest
from support.raw_http import read_response

TIMEOUT_S = 1.0  # header deadline and body pause limit of this test's API
MAX_CONNECTIONS = 4
HALF_HEADERS = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: "
BODY_HEAD = (b"POST /v1/conv/forward HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
             b"Content-Length: 200\r\n\r\n")


@pytest.fixture(scope="module")
def slow_api(api_factory):
    # One API process: the connection cap is per process (with the default two on a 2-CPU machine,
    # the kernel would spread the test's connections over both caps).
    return api_factory("slow-clients", http_header_timeout_s=TIMEOUT_S, http_body_timeout_s=TIMEOUT_S,
                       http_max_connections=MAX_CONNECTIONS, api_processes=1)


def connect(api) -> socket.socket:
    host, port = api.url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    return s


def read_until_closed(s: socket.socket, limit_s: float = 10.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started, data = time.monotonic(), b""
    s.settimeout(limit_s)
    try:
        while chunk := s.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {limit_s} s; it sent {data!r}")
    return data, time.monotonic() - started


def wait_idle_connections_closed() -> None:
    time.sleep(TIMEOUT_S + 0.5)  # the fixture's own keep-alive connection counts until its deadline


def test_half_sent_headers_get_408_and_are_closed(slow_api):
    sockets = [connect(slow_api) for _ in range(3)]
    try:
        for s in sockets:
            s.sendall(HALF_HEADERS)
        for s in sockets:
            data, waited = read_until_closed(s)
            assert data.startswith(b"HTTP/1.1 408"), data
            assert waited < TIMEOUT_S + 3
    finally:
        for s in sockets:
            s.close()


def test_a_stalled_body_is_closed(slow_api):
    with connect(slow_api) as s:
        s.sendall(BODY_HEAD + b'{"x": {"shape": [1, ')
        data, waited = read_until_closed(s)
    assert waited < TIMEOUT_S + 3
    assert b"200 OK" not in data


def test_headers_sent_in_pieces_within_the_deadline_are_served(slow_api):
    with connect(slow_api) as s:
        s.sendall(HALF_HEADERS)
        time.sleep(TIMEOUT_S / 3)
        s.sendall(b"1\r\nConnection: close\r\n\r\n")
        data, _ = read_until_closed(s)
    assert data.startswith(b"HTTP/1.1 200"), data


def test_connections_past_the_cap_get_503_at_once(slow_api):
    wait_idle_connections_closed()
    held = [connect(slow_api) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)  # let the server accept them all
        with connect(slow_api) as extra:
            data, waited = read_until_closed(extra)
        assert data.startswith(b"HTTP/1.1 503"), data
        assert waited < 1.0
    finally:
        for s in held:
            s.close()
    wait_idle_connections_closed()
    assert slow_api.client.get("/healthz").status_code == 200  # the server itself is fine


def test_oversized_headers_get_431_and_are_closed(slow_api):
    with connect(slow_api) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 20_000)
        data, waited = read_until_closed(s)
    assert data.startswith(b"HTTP/1.1 431"), data
    assert waited < TIMEOUT_S   # at once, not at the header deadline
    assert slow_api.client.get("/healthz").status_code == 200


def test_headers_just_under_the_cap_are_served(slow_api):
    with connect(slow_api) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nX-Big: " + b"a" * 12_000 + b"\r\n\r\n")
        data, _ = read_until_closed(s)
    assert data.startswith(b"HTTP/1.1 200"), data


def test_each_request_on_a_kept_alive_connection_gets_its_own_header_deadline(slow_api):
    with connect(slow_api) as s:
        for _ in range(3):   # 3 x 0.6 s: past one deadline from the connection's start, within each request's
            time.sleep(TIMEOUT_S * 0.6)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert read_response(s).startswith(b"HTTP/1.1 200")
        s.sendall(HALF_HEADERS)   # and the next one is still bounded
        data, waited = read_until_closed(s)
    assert data.startswith(b"HTTP/1.1 408"), data
    assert waited < TIMEOUT_S + 3


def test_pipelined_requests_are_all_answered(slow_api):
    request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
    with connect(slow_api) as s:
        s.sendall(request * 3 + b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data, _ = read_until_closed(s)
    assert data.count(b"HTTP/1.1 200") == 4, data


def test_a_body_sent_in_pieces_within_the_pause_limit_is_read(slow_api):
    # W's data is one number short: only a server that read the whole body can say so.
    body = b'{"x": {"shape": [1, 1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}, ' \
           b'"W": {"shape": [1, 1, 2], "datatype": "FP32", "data": [1]}}'
    head = (b"POST /v1/conv/forward HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    with connect(slow_api) as s:
        s.sendall(head)
        for i in range(0, len(body), 40):   # pauses of 0.4 s, 1.2 s or more in all
            time.sleep(TIMEOUT_S * 0.4)
            s.sendall(body[i:i + 40])
        data, _ = read_until_closed(s)
    assert data.startswith(b"HTTP/1.1 400"), data
    assert b'"field":"W"' in data.partition(b"\r\n\r\n")[2], data
