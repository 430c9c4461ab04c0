"""Slow and idle clients cannot hold the API's connections open (used by ``convnd api``).

uvicorn closes idle keep-alive connections but bounds neither the time a client may take
to send a request's headers (its keep-alive timer stops at the first byte), nor their size
with httptools, nor the number of open connections (``limit_concurrency`` answers 503 only
once a request's headers are in). So this protocol adds four bounds, from the settings:

- headers: a request's headers must be complete within ``http_header_timeout_s`` of the
  connection opening (or of the previous response); else 408 and the connection is closed;
- header size: request line and headers of at most MAX_HEADER_BYTES; else 431 and closed;
- body: while a request body is being read, no pause may last ``http_body_timeout_s``
  (a pause counts only while the server wants more; a paused read is the app's doing);
- connections: past ``http_max_connections`` open connections a new one gets 503 and is
  closed at once, so half-sent requests cannot exhaust file descriptors.

It is uvicorn's httptools protocol (llhttp, C): it costs the API ~0.8 ms less CPU per small
request than the pure-Python h11 protocol (docs/benchmarks.md, "The service").
"""
from __future__ import annotations

import asyncio
import json
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.core.config import get_settings

log = logging.getLogger("convnd.http")

MAX_HEADER_BYTES = 16 * 1024   # request line + headers


def _raw_response(status: int, reason: str, detail: str) -> bytes:
    body = json.dumps({"detail": detail, "field": None}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline and size cap, a body pause limit and a
    connection cap.

    What the client must send next (its phase) follows the parser's callbacks: "headers" from the
    connection's start or the previous response until the headers are parsed, "body" until the
    message is complete, None while the server has the turn (a request being answered, or whole
    pipelined requests waiting for it).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        s = get_settings()
        self._timeouts = {"headers": s.http_header_timeout_s, "body": s.http_body_timeout_s}
        self._max_connections = s.http_max_connections
        self._phase: str | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._in_message = False   # between on_message_begin and on_message_complete

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._max_connections:
            log.warning("more than %d connections open: refusing one", self._max_connections)
            transport.write(_raw_response(503, "Service Unavailable", "too many open connections; retry later"))
            transport.close()
            return
        self._enter("headers")

    def data_received(self, data: bytes) -> None:
        if self._phase == "headers":
            self._header_bytes += len(data)
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self._phase == "headers" and self._header_bytes > MAX_HEADER_BYTES:
            log.info("closing a connection from %s: request headers over %d bytes", self.client, MAX_HEADER_BYTES)
            self._cancel()
            self.transport.write(_raw_response(431, "Request Header Fields Too Large",
                                               f"request line and headers must fit in {MAX_HEADER_BYTES} bytes"))
            self.transport.close()
        elif self._phase == "body":
            self._enter("body")   # a limit on each pause: every chunk restarts it

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_message = True
        if self._phase is None:   # a pipelined request after whole ones: its headers are due now
            self._enter("headers")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._enter("body")

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_message = False
        self._enter(None)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The next request's headers are due unless the client is mid-message (its callbacks
        # keep the phase) or whole pipelined requests wait for the server.
        if not self.transport.is_closing() and not self._in_message and not self.pipeline:
            self._enter("headers")

    def connection_lost(self, exc) -> None:
        self._cancel()
        super().connection_lost(exc)

    def _enter(self, phase: str | None) -> None:
        """Start ``phase``'s deadline (the header deadline runs from the start of the request,
        not from its latest byte: entering "headers" again is only done at a request's start)."""
        self._cancel()
        if phase == "headers" and self._phase != "headers":
            self._header_bytes = 0
        self._phase = phase
        if phase is not None:
            self._deadline = self.loop.call_later(self._timeouts[phase], self._timed_out)

    def _cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._phase == "body" and self.flow.read_paused:  # the app is not reading: not the client's fault
            self._deadline = self.loop.call_later(self._timeouts["body"], self._timed_out)
            return
        log.info("closing a connection from %s: request %s not received within %.0f s",
                 self.client, self._phase, self._timeouts[self._phase])
        if self._phase == "headers":  # no response has begun, so a 408 can still be sent
            self.transport.write(_raw_response(408, "Request Timeout", "request headers not received in time"))
        self.transport.close()
