"""Raw-socket HTTP helpers for the tests of the API's connection limits."""
from __future__ import annotations

import re
import socket


def read_response(s: socket.socket) -> bytes:
    """One whole answer on a kept-alive connection (headers, then content-length bytes), nothing more."""
    s.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        assert chunk, f"closed before a whole answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: *(\d+)", head, re.IGNORECASE).group(1))
    while len(body) < length:
        body += s.recv(4096)
    assert len(body) == length, (head, body)   # nothing of a later answer read here
    return head + b"\r\n\r\n" + body
