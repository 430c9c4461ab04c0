"""The FastAPI app: settings, job store, task sender, routers, error handlers."""
from __future__ import annotations

import gc
import logging
from contextlib import asynccontextmanager

import anyio
import redis
from fastapi import FastAPI

from app.api import docs, errors, middleware, openapi
from app.api.http_metrics import HttpInstruments, HttpMetrics
from app.api.routes import conv, datasets, health, jobs, metrics, models, train, v2, workers
from app.core.config import Settings, get_settings
from app.ui import pages
from worker.celery_app import make_celery
from worker.store import JobStore

log = logging.getLogger("convnd.api")

DESCRIPTION = """N-D convolution on Celery workers (CPU or GPU).
Arrays are Open Inference Protocol tensors `{"shape", "datatype": "FP32"|"FP64", "data"}`,
or raw bytes with the binary-data extension (see the README)."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        logging.basicConfig(level=settings.log_level)
        # Each POST that waits for its result holds a thread for up to wait_timeout_s: allow
        # many more than anyio's default 40, so waiting calls cannot starve /readyz and the rest.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, health_check_interval=30)
        app.state.store = JobStore(client, settings.key_prefix, settings.result_ttl_s)
        # What start-up made (modules, routes, models) is never garbage: keep it out of the collector's
        # scans, ~0.3-0.5 ms less CPU per request under load (docs/benchmarks.md, "The service").
        gc.collect()
        gc.freeze()
        if settings.key_digests:
            log.info("API keys required on /v1 (%d configured)", len(settings.key_digests))
        else:
            log.warning("OPEN MODE: no API keys configured, anyone who reaches this port may use the service")
        yield
        gc.unfreeze()   # an app built in a longer-lived process (tests, an embedding) can be collected again
        client.close()

    app = FastAPI(title="convnd", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None)  # /docs from local assets: app.api.docs
    app.state.settings = settings
    app.state.celery = make_celery(settings)  # sends tasks by name; connects on first send
    errors.install(app)
    app.include_router(health.router)
    app.include_router(conv.router, prefix="/v1")
    app.include_router(jobs.router, prefix="/v1")
    app.include_router(train.router, prefix="/v1")
    app.include_router(datasets.router, prefix="/v1")
    app.include_router(models.router, prefix="/v1")
    app.include_router(workers.router, prefix="/v1")
    app.include_router(v2.router)  # the Open Inference Protocol: /v2/...
    app.state.metrics_registry, instruments_registry = metrics.make_registry(app)
    app.add_middleware(HttpMetrics, instruments=HttpInstruments(instruments_registry))
    app.include_router(metrics.router)
    pages.install(app)  # the dashboard: / -> /ui/
    middleware.install(app, settings)  # added last: its catch-all wraps everything above
    openapi.install(app)
    docs.install(app, app.title)
    return app


app = create_app()
