"""GET /metrics in Prometheus text format.

Job outcomes, durations and training epochs are counters that the processes changing a job's
state keep in Redis (``worker.metrics``), so any API process answers for all of them; queue
lengths and live workers are read from Redis at scrape time; HTTP requests and latencies are the
API's own (``app.api.http_metrics``): this process's, or all its processes' when it runs several
(see ``make_registry``). With API keys on, a scrape needs a key or
``CONVND_METRICS_TOKEN``, sent as ``Authorization: Bearer <token>`` (or ``X-API-Key``).
"""
from __future__ import annotations

import hmac
import os
from collections import Counter

import redis
from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from app.api.deps import get_owner
from app.api.errors import ApiError
from app.schemas.jobs import ErrorBody
from worker import fastlane, metrics
from worker.kinds import KINDS
from worker.store import FINAL

router = APIRouter(tags=["health"])


class JobCollector:
    """At each scrape: the job counters every process keeps in Redis, queue lengths and workers."""

    def __init__(self, app):
        self.app = app

    def collect(self):
        store, settings = self.app.state.store, self.app.state.settings
        up = GaugeMetricFamily("convnd_store_up", "1 when the job store (Redis) answered this scrape")
        try:
            counts = metrics.read(store.r, store.prefix)
            devices = Counter(w["device"] for w in store.workers())
            queues = metrics.queue_lengths(store.r, metrics.queue_names(settings))
            fast = fastlane.lengths(store.r, store.prefix, metrics.queue_names(settings))
        except redis.RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up

        jobs = CounterMetricFamily("convnd_jobs", "Jobs that reached each final state", labels=["kind", "state"])
        for kind in sorted(set(KINDS) | {kind for kind, _ in counts["jobs"]}):
            for state in FINAL:
                jobs.add_metric([kind, state], counts["jobs"].get((kind, state), 0))
        yield jobs

        durations = HistogramMetricFamily("convnd_job_duration_seconds",
                                          "Time from a job's submission to its final state", labels=["kind"])
        bounds = [str(b) for b in metrics.DURATION_BUCKETS] + ["+Inf"]
        for kind, d in sorted(counts["durations"].items()):
            durations.add_metric([kind], list(zip(bounds, d["buckets"])), d["sum"])
        yield durations

        yield CounterMetricFamily("convnd_training_epochs", "Training epochs finished, in every worker",
                                  value=counts["epochs"])
        queue = GaugeMetricFamily("convnd_queue_length", "Messages waiting in each Celery queue", labels=["queue"])
        for name, length in queues.items():
            queue.add_metric([name], length)
        yield queue
        lanes = GaugeMetricFamily("convnd_fast_lane_length", "Small jobs waiting on each queue's fast lane "
                                  "(worker/fastlane.py)", labels=["queue"])
        for name, length in fast.items():
            lanes.add_metric([name], length)
        yield lanes
        workers = GaugeMetricFamily("convnd_workers", "Live worker processes by device", labels=["device"])
        for device, n in sorted({"cpu": 0, **devices}.items()):
            workers.add_metric([device], n)
        yield workers


def make_registry(app) -> tuple[CollectorRegistry, CollectorRegistry]:
    """(the registry /metrics exposes, the one the HTTP instruments are made in): the app's own,
    not the global one, so each app built in a process has its own.

    With several API processes on one port (``convnd api --workers N`` sets PROMETHEUS_MULTIPROC_DIR
    before they start) each keeps its HTTP counts in files of that folder, and /metrics, answered by
    whichever process a scrape reaches, reads them all; the job metrics come from Redis anyway.
    """
    exposed = CollectorRegistry(auto_describe=False)
    exposed.register(JobCollector(app))
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        return exposed, exposed
    multiprocess.MultiProcessCollector(exposed, path=folder)
    return exposed, CollectorRegistry(auto_describe=False)   # the files, not this, are what is read


def _check_access(request: Request) -> None:
    """Open when neither keys nor a metrics token are configured; else the token or a valid key."""
    settings = request.app.state.settings
    token = settings.metrics_token
    if not settings.key_digests and not token:
        return
    auth = request.headers.get("authorization", "")
    presented = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("x-api-key")
    if token and presented and hmac.compare_digest(presented.encode(), token.encode()):
        return
    if settings.key_digests:
        get_owner(settings, None, presented)  # 401 without a key, 403 with one that is not valid
        return
    raise ApiError(403 if presented else 401, "/metrics needs `Authorization: Bearer <CONVND_METRICS_TOKEN>`",
                   "Authorization", headers={"WWW-Authenticate": "Bearer"})


@router.get("/metrics", summary="Prometheus metrics (text format)",
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, 401: {"model": ErrorBody},
                       403: {"model": ErrorBody}})
def prometheus_metrics(request: Request) -> Response:
    _check_access(request)
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
