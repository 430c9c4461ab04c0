"""HTTP request counts and latencies by route and status, for GET /metrics (prometheus-client).

A plain ASGI middleware (not ``BaseHTTPMiddleware``, which would buffer streamed answers). The
route label is the matched route's template (``/v1/jobs/{job_id}``), so ids do not multiply the
series; a path no route matches counts as ``<unmatched>``. Latency is measured until the answer's
headers are sent: a server-sent event stream would otherwise count its whole life. These live in
the API process's memory, or, when ``convnd api`` runs several processes on one port, in files
that /metrics sums over them (app/api/routes/metrics.py, ``make_registry``).
"""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class HttpInstruments:
    """The request counter and latency histogram, in ``registry``."""

    def __init__(self, registry: CollectorRegistry):
        self.requests = Counter("convnd_http_requests", "HTTP requests answered, by method, route and status",
                                ["method", "route", "status"], registry=registry)
        self.latency = Histogram("convnd_http_request_duration_seconds",
                                 "Time from a request's arrival to its answer's headers, by method and route",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, registry=registry)


class HttpMetrics:
    """ASGI middleware counting every HTTP request into ``instruments``."""

    def __init__(self, app, instruments: HttpInstruments):
        self.app, self.requests, self.latency = app, instruments.requests, instruments.latency

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), []

        async def send_and_time(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])
                self.latency.labels(scope["method"], _route(scope)).observe(time.perf_counter() - start)
            await send(message)

        try:
            await self.app(scope, receive, send_and_time)
        finally:
            # No answer started: the app raised (the server answers 500) or the client left first.
            self.requests.labels(scope["method"], _route(scope), str(status[0] if status else 500)).inc()


def _route(scope) -> str:
    """The matched route's template with its router's prefix (``/v1/jobs/{job_id}``)."""
    route = scope.get("route")
    template = getattr(route, "path_format", None)
    if template is None:  # a mounted app (the dashboard's static files) or no match at all
        mount = scope.get("root_path", "")
        return f"{mount}/{{path}}" if mount and scope.get("endpoint") is not None else "<unmatched>"
    return _prefix(scope["path"], route.path_regex) + template


def _prefix(path: str, regex) -> str:
    """The leading segments of ``path`` that the route's own pattern leaves out: a route included
    with a prefix keeps its template without it (FastAPI includes routers lazily)."""
    if regex.match(path):
        return ""
    parts = path.split("/")
    for k in range(2, len(parts)):
        if regex.match("/" + "/".join(parts[k:])):
            return "/".join(parts[:k])
    return ""
