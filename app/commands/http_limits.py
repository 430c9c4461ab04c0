"""Slow and idle clients cannot hold the API's connections open (used by ``convnd api``).

uvicorn closes idle keep-alive connections but bounds neither the time a client may take
to send a request's headers (its keep-alive timer stops at the first byte) nor the number
of open connections (``limit_concurrency`` answers 503 only once a request's headers are
in). So this protocol adds three bounds, from the settings:

- headers: a request's headers must be complete within ``http_header_timeout_s`` of the
  connection opening (or of the previous response); else 408 and the connection is closed;
- body: while a request body is being read, no pause may last ``http_body_timeout_s``
  (a pause counts only while the server wants more; a paused read is the app's doing);
- connections: past ``http_max_connections`` open connections a new one gets 503 and is
  closed at once, so half-sent requests cannot exhaust file descriptors.
"""
from __future__ import annotations

import asyncio
import json
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.core.config import get_settings

log = logging.getLogger("convnd.http")


def _raw_response(status: int, reason: str, detail: str) -> bytes:
    body = json.dumps({"detail": detail, "field": None}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline, a body pause limit and a connection cap."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        s = get_settings()
        self._timeouts = {"headers": s.http_header_timeout_s, "body": s.http_body_timeout_s}
        self._max_connections = s.http_max_connections
        self._phase: str | None = None  # "headers", "body", or None when no request is being read
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._max_connections:
            log.warning("more than %d connections open: refusing one", self._max_connections)
            transport.write(_raw_response(503, "Service Unavailable", "too many open connections; retry later"))
            transport.close()
            return
        self._track()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._track(more_data=True)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._track()

    def connection_lost(self, exc) -> None:
        self._cancel()
        super().connection_lost(exc)

    def _track(self, more_data: bool = False) -> None:
        """Set the deadline for what the client must send next (h11's view of the request)."""
        state = self.conn.their_state
        phase = "headers" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
        # The header deadline runs from the start of the request, not from its latest byte;
        # the body's is a limit on each pause, so every chunk restarts it.
        if phase != self._phase or (phase == "body" and more_data):
            self._cancel()
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
