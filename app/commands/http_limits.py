"""Slow and idle clients cannot hold the API's connections open (used by ``convnd api``).

uvicorn closes idle keep-alive connections but bounds neither the time a client may take
to send a request's headers (its keep-alive timer stops at the first byte), nor their size
with httptools, nor the time a client may leave its answers unread, nor the number of open
connections (``limit_concurrency`` answers 503 only once a request's headers are in). So this
protocol adds five bounds, from the settings:

- headers: a request's headers must be complete within ``http_header_timeout_s`` of the
  connection becoming idle (opened, or the previous answer sent); else 408 (or, when no byte of
  a request came, a silent close) and the connection is closed;
- header size: request line and headers of at most MAX_HEADER_BYTES; else 431 and closed;
- body: while a request body is being read, no pause may last ``http_body_timeout_s`` (and a
  body the app answered without reading is drained for at most that long in all);
- answers: a client that reads nothing of an answer for ``http_body_timeout_s`` is closed;
- connections: past ``http_max_connections`` open connections a new one gets 503 and is
  closed at once, so half-sent requests cannot exhaust file descriptors.

The client's deadlines are suspended while the server has the turn: while it is reading
nothing (uvicorn pauses reads for a pipelined request or a body the app has not read yet), or
waits to send ``100 Continue``, or is still answering an earlier request.

It is uvicorn's httptools protocol (llhttp, C): it costs the API ~0.8 ms less CPU per small
request than the pure-Python h11 protocol (docs/benchmarks.md, "The service").
"""
from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.core.config import get_settings

log = logging.getLogger("convnd.http")

MAX_HEADER_BYTES = 16 * 1024   # request line + headers


def _raw_response(status: int, reason: str, detail: str) -> bytes:
    body = json.dumps({"detail": detail, "field": None}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


class _HeadersTooLarge(Exception):
    """Raised in a parser callback: httptools stops and uvicorn calls send_400_response."""


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds above.

    What the client owes (``_phase``) is recomputed from the connection's state after every event
    (``_update``): "headers" while the server is idle or a request's headers are incomplete,
    "body" while its body is, None while the server has the turn. A deadline starts when the
    phase changes; the body's also restarts with every chunk (a limit on each pause).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        s = get_settings()
        self._timeouts = {"headers": s.http_header_timeout_s, "body": s.http_body_timeout_s}
        self._max_connections = s.http_max_connections
        self._phase: str | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._held = False              # the server held the turn when the deadline last ran out
        self._write_stall: asyncio.TimerHandle | None = None
        self._in_message = False        # on_message_begin .. on_message_complete
        self._headers_done = False      # on_headers_complete .. on_message_complete
        self._raw_header_bytes = 0      # bytes received while headers were due (a partial header is buffered)
        self._parsed_header_bytes = 0   # request line + headers the parser reported for this message
        self._too_large = False
        self._running = None            # the cycle uvicorn is running (self.cycle is the last parsed one)

    # ---- connection ------------------------------------------------------------------------
    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._max_connections:
            log.warning("more than %d connections open: refusing one", self._max_connections)
            transport.write(_raw_response(503, "Service Unavailable", "too many open connections; retry later"))
            transport.close()
            return
        self._update()

    def connection_lost(self, exc) -> None:
        self._cancel()
        if self._write_stall is not None:
            self._write_stall.cancel()
        # uvicorn marks only the last parsed cycle disconnected; a pipelined request may be the one running.
        running = self._running
        if running is not None and not running.response_complete:
            running.disconnected = True
            running.message_event.set()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._phase == "headers":
            self._raw_header_bytes += len(data)
        super().data_received(data)
        if self.transport.is_closing():
            return
        # Raw bytes bound what httptools buffers of an incomplete header (the state after this chunk:
        # one chunk may also hold the end of the headers and part of the body); complete request lines
        # and headers are counted exactly by the parser callbacks.
        if self._client_phase() == "headers" and self._raw_header_bytes > MAX_HEADER_BYTES:
            self._refuse_large_headers()
            return
        # A pause limit restarts with every chunk, unless the body is one the app has already answered:
        # then it is only drained, for at most one body timeout in all (a trickle cannot hold the slot).
        answered = self.cycle is not None and self.cycle.response_complete
        self._update(restart=self._phase == "body" and not answered)

    # ---- parser callbacks ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_message, self._headers_done = True, False
        self._parsed_header_bytes, self._too_large = 0, False

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._headers_done = True

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_message = self._headers_done = False
        # The next message's raw count starts with the next chunk (this one may hold another's body).
        self._raw_header_bytes = 0

    def _start_asgi_task(self, cycle, app) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._update()

    def send_400_response(self, msg: str) -> None:
        if self._too_large:
            self._refuse_large_headers()
            return
        super().send_400_response(msg)

    # ---- writes the client does not read ---------------------------------------------------
    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_stall is None:
            self._write_stall = self.loop.call_later(self._timeouts["body"], self._stalled_reader)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_stall is not None:
            self._write_stall.cancel()
            self._write_stall = None

    def _stalled_reader(self) -> None:
        self._write_stall = None
        if not self.transport.is_closing():
            log.info("closing a connection from %s: the client read nothing of its answer for %g s",
                     self.client, self._timeouts["body"])
            sock = self.transport.get_extra_info("socket")
            if sock is not None:   # a reset, so the kernel drops the unread answer instead of sending it on
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()   # close() would wait for the unread answer to drain first

    # ---- deadlines -------------------------------------------------------------------------
    def _server_busy(self) -> bool:
        """An answer under way or pipelined requests waiting: the server has the turn."""
        return bool(self.pipeline) or (self.cycle is not None and not self.cycle.response_complete)

    def _client_phase(self) -> str | None:
        if self._in_message:
            return "body" if self._headers_done else "headers"
        return None if self._server_busy() else "headers"

    def _update(self, restart: bool = False) -> None:
        """Follow what the client owes now; a new phase (or ``restart``) starts its deadline."""
        phase = self._client_phase()
        if phase == self._phase and not restart:
            return
        self._cancel()
        self._phase, self._held = phase, False
        if phase is not None:
            self._deadline = self.loop.call_later(self._timeouts[phase], self._timed_out)

    def _cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _server_holds_the_turn(self) -> bool:
        """Whether the client's silence is the server's doing: reads paused; a body not yet asked
        for (``100 Continue`` not sent); the next request's headers while an answer is under way.
        Also true once more just after it held: the client's pause starts when the server hands the
        turn back (a client sends its body only once the 100 arrives), not when the period began."""
        cycle = self.cycle
        if self.flow.read_paused:
            held = True
        elif self._phase == "body":
            held = cycle is not None and cycle.waiting_for_100_continue and not cycle.response_complete
        else:
            held = self._server_busy()
        held_before, self._held = self._held, held
        return held or held_before

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._client_phase() != self._phase:   # the turn moved on since the deadline was set
            self._update()
            return
        if self._server_holds_the_turn():   # not the client's delay: wait again
            self._deadline = self.loop.call_later(self._timeouts[self._phase], self._timed_out)
            return
        log.info("closing a connection from %s: request %s not received within %g s",
                 self.client, self._phase, self._timeouts[self._phase])
        if self._phase == "headers" and self._in_message:   # part of a request came: say why it ends
            self.transport.write(_raw_response(408, "Request Timeout", "request headers not received in time"))
        self.transport.close()

    # ---- header size -----------------------------------------------------------------------
    def _count_header_bytes(self, n: int) -> None:
        self._parsed_header_bytes += n
        if self._parsed_header_bytes > MAX_HEADER_BYTES:
            self._too_large = True
            raise _HeadersTooLarge

    def _refuse_large_headers(self) -> None:
        """431 and close; only close while an earlier request is still being answered (a 431
        written now would land inside that answer)."""
        log.info("closing a connection from %s: request headers over %d bytes", self.client, MAX_HEADER_BYTES)
        self._cancel()
        if not self._server_busy():
            self.transport.write(_raw_response(431, "Request Header Fields Too Large",
                                               f"request line and headers must fit in {MAX_HEADER_BYTES} bytes"))
        self.transport.close()
