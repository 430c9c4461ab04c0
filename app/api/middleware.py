"""ASGI middlewares: a JSON 500 for anything unexpected, the Host check, CORS.

Pure ASGI (not ``BaseHTTPMiddleware``), so streaming answers (server-sent events) pass untouched.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import uuid

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

log = logging.getLogger("convnd.api")

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


async def _send_json(send, status: int, body: dict) -> None:
    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]})
    await send({"type": "http.response.body", "body": raw})


class CatchAll:
    """Anything a route did not turn into an answer: the traceback goes to the log under a reference,
    the client gets ``{"detail", "field"}`` with status 500 and that reference, no internals."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:  # noqa: BLE001 - the point of this middleware
            ref = uuid.uuid4().hex[:12]
            log.exception("unhandled error %s on %s %s", ref, scope.get("method"), scope.get("path"))
            if not started:  # else the answer is under way: nothing valid can be sent any more
                await _send_json(send, 500, {"detail": f"internal server error (reference {ref} in the server "
                                                       "log)", "field": None})


def host_allowed(host_header: str, allowed: tuple[str, ...]) -> bool:
    """``host[:port]`` (or ``[v6]:port``) is one of ``allowed`` (names compared without the port)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1:host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host in allowed


class HostCheck:
    """Refuses (400) a request whose Host header is not one of ``allowed``: a page on a foreign site
    whose name was rebound to 127.0.0.1 must not reach a service bound to loopback."""

    def __init__(self, app, allowed: tuple[str, ...]):
        self.app, self.allowed = app, allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            headers = dict(scope.get("headers") or [])
            host = headers.get(b"host", b"").decode("latin-1")
            if not host_allowed(host, self.allowed):
                return await _send_json(send, 400, {"detail": f"Host header {host!r} is not allowed here; set "
                                                              "CONVND_ALLOWED_HOSTS to accept it", "field": "Host"})
        return await self.app(scope, receive, send)


def allowed_hosts(settings) -> tuple[str, ...] | None:
    """The Host names to accept, or None for any: explicit ``allowed_hosts``, else loopback names only
    when the API is bound to a loopback address."""
    if settings.allowed_hosts:
        return None if "*" in settings.allowed_hosts else tuple(h.lower().strip("[]") for h in settings.allowed_hosts)
    bind = settings.host.strip("[]")
    try:
        loopback = bind == "localhost" or ipaddress.ip_address(bind).is_loopback
    except ValueError:
        loopback = False
    return LOOPBACK_HOSTS if loopback else None


def install(app: FastAPI, settings) -> None:
    """Add the middlewares (the last added runs first): catch-all outermost, then Host, then CORS."""
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=False,
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type", "Accept",
                                          "Inference-Header-Content-Length"],
                           expose_headers=["Location", "Inference-Header-Content-Length"])
    hosts = allowed_hosts(settings)
    if hosts is not None:
        app.add_middleware(HostCheck, allowed=hosts)
    app.add_middleware(CatchAll)
