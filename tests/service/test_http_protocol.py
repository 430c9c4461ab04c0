"""The API's HTTP protocol (app/commands/http_limits.py) under uvicorn, on a test app with handlers
of known timing (tests/support/slow_asgi.py), over raw sockets: what the client owes is bounded, and
nothing a well-behaved client does is cut off, with pipelining, answers sent before the body ends,
``Expect: 100-continue``, idle keep-alive and clients that never read their answers.

Deadlines here are 1 s (header and body), uvicorn's keep-alive 5 s, 4 connections at most.
"""
from __future__ import annotations

import re
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest
from support.raw_http import read_response
from support.stack import wait_until

from app.core import processes

pytestmark = pytest.mark.timeout(120)
TIMEOUT_S, MAX_CONNECTIONS = 1.0, 4
SUPPORT = Path(__file__).resolve().parents[1] / "support"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = processes.free_port()
    log = tmp_path_factory.mktemp("http-protocol") / "server.log"
    code = (f"import uvicorn; uvicorn.run('slow_asgi:app', host='127.0.0.1', port={port}, "
            f"http='app.commands.http_limits:LimitedHttpProtocol', limit_concurrency={MAX_CONNECTIONS + 1}, "
            "timeout_keep_alive=5)")
    env = {"PYTHONPATH": f"{SUPPORT}:{ROOT}", "CONVND_HTTP_HEADER_TIMEOUT_S": str(TIMEOUT_S),
           "CONVND_HTTP_BODY_TIMEOUT_S": str(TIMEOUT_S), "CONVND_HTTP_MAX_CONNECTIONS": str(MAX_CONNECTIONS)}
    with open(log, "w") as out:
        proc = processes.spawn([sys.executable, "-c", code], {**processes.os.environ, **env}, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(url + "/any").status_code == 200, "test server", proc, log=log)
    yield port, log
    processes.stop(proc)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def get(path: str, close: bool = False) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: localhost\r\n" + ("Connection: close\r\n" if close else "") + "\r\n").encode()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def until_closed(s: socket.socket, limit_s: float = 10.0) -> tuple[bytes, float, str]:
    """What the server sends until it closes (or resets) the connection, how long that took, and how."""
    started, data = time.monotonic(), b""
    s.settimeout(limit_s)
    try:
        while chunk := s.recv(65536):
            data += chunk
        return data, time.monotonic() - started, "closed"
    except ConnectionResetError:
        return data, time.monotonic() - started, "reset"
    except TimeoutError:
        return data, time.monotonic() - started, "open"


def statuses(data: bytes) -> list[int]:
    return [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


def test_pipelined_requests_slower_than_the_header_deadline_are_answered(server):
    with connect(server[0]) as s:
        s.sendall(get("/any") + get("/any?s=2", close=True))
        data, _, _ = until_closed(s)
    assert statuses(data) == [200, 200], data


def test_a_pipelined_request_split_while_reads_are_paused_is_answered(server):
    third = get("/third", close=True)
    with connect(server[0]) as s:
        s.sendall(get("/any?s=2") + get("/second") + third[:20])   # uvicorn pauses reading behind /second
        time.sleep(0.05)
        s.sendall(third[20:])
        data, _, _ = until_closed(s)
    assert statuses(data) == [200, 200, 200], data


def test_after_an_answer_sent_before_the_body_ended_an_idle_connection_is_closed(server):
    with connect(server[0]) as s:
        s.sendall(b"POST /any HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\n")   # answered unread
        assert read_response(s).startswith(b"HTTP/1.1 200")
        s.sendall(b"abcde")   # the rest of the body, then nothing
        data, waited, how = until_closed(s)
    assert how != "open" and waited < TIMEOUT_S + 3, (how, waited)
    assert data == b""   # no request had begun: closed without an unasked-for 408


def test_an_idle_kept_alive_connection_is_closed_without_an_unasked_for_answer(server):
    with connect(server[0]) as s:
        s.sendall(get("/any"))
        assert read_response(s).startswith(b"HTTP/1.1 200")
        data, waited, how = until_closed(s)
    assert (data, how) == (b"", "closed") and waited < TIMEOUT_S + 3, (data, how, waited)


def test_a_client_waiting_for_100_continue_is_not_counted_as_pausing(server):
    with connect(server[0]) as s:
        # The app reads after 1.9 s, just before the body deadline's second period ends (at ~2 s); the
        # client then pauses 0.3 s, within the limit counted from the 100, not from the period's start.
        s.sendall(b"POST /lateread?s=1.9 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                  b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        s.settimeout(10)
        assert s.recv(4096).startswith(b"HTTP/1.1 100")   # sent once the app reads
        time.sleep(0.3)
        s.sendall(b"abcde")
        data, _, _ = until_closed(s)
    assert statuses(data) == [200] and data.endswith(b"/lateread read 5\n"), data


def test_a_body_the_app_reads_late_is_not_a_client_pause(server):
    with connect(server[0]) as s:
        s.sendall(b"POST /lateread?s=2 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 70000\r\n\r\n"
                  + b"a" * 70000)   # more than uvicorn buffers: it pauses reading until the app reads
        data, _, _ = until_closed(s)
    assert statuses(data) == [200] and data.endswith(b"read 70000\n"), data


def test_complete_headers_over_the_cap_in_one_write_get_431(server):
    with connect(server[0]) as s:
        s.sendall(b"GET /any HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 60_000 + b"\r\n\r\n")
        data, waited, _ = until_closed(s)
    assert statuses(data) == [431] and waited < TIMEOUT_S, data[:200]


def test_a_client_that_never_reads_its_answers_is_cut_off(server):
    with connect(server[0]) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(get("/big?n=200000") * 40)   # 8 MB of answers, none read
        time.sleep(TIMEOUT_S + 3)
        _, _, how = until_closed(s, 5)
    assert how in ("reset", "closed"), how
    assert httpx.get(f"http://127.0.0.1:{server[0]}/any").status_code == 200


def test_every_connection_up_to_the_cap_is_served_and_the_next_refused_in_json(server):
    time.sleep(TIMEOUT_S + 0.5)   # connections of earlier tests closed
    held = [connect(server[0]) for _ in range(MAX_CONNECTIONS - 1)]
    try:
        time.sleep(0.2)
        with connect(server[0]) as last:   # the cap's own connection: served in full
            last.sendall(get("/any", close=True))
            assert statuses(until_closed(last)[0]) == [200]
        held.append(connect(server[0]))
        time.sleep(0.2)
        with connect(server[0]) as extra:
            data, waited, _ = until_closed(extra)
        assert data.startswith(b"HTTP/1.1 503") and b'"detail"' in data and waited < 1.0, data
    finally:
        for s in held:
            s.close()


@pytest.mark.parametrize("size", [20_000, 300_000])
def test_a_body_arriving_with_its_headers_is_not_counted_as_headers(server, size):
    with connect(server[0]) as s:
        s.sendall(b"POST /read HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: "
                  + str(size).encode() + b"\r\n\r\n" + b"a" * size)   # one write: headers and body together
        data, _, _ = until_closed(s)
    assert statuses(data) == [200] and data.endswith(f"read {size}\n".encode()), data[:300]


def test_a_body_answered_unread_cannot_be_trickled_forever(server):
    with connect(server[0]) as s:
        s.sendall(b"POST /any HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000000000\r\n\r\n")
        assert read_response(s).startswith(b"HTTP/1.1 200")   # answered without reading the body
        started = time.monotonic()
        try:
            while time.monotonic() - started < TIMEOUT_S + 4:
                s.sendall(b"x")                   # one byte per half pause limit: each pause is allowed
                time.sleep(TIMEOUT_S / 2)
            cut = False
        except OSError:
            cut = True
    assert cut and time.monotonic() - started < TIMEOUT_S + 3
