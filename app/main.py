"""The FastAPI app: settings, job store, routers, error handlers."""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager

import anyio
import redis
from fastapi import FastAPI

from app.api import errors
from app.api.routes import conv, datasets, health, jobs, models, train
from app.core.config import Settings, get_settings
from app.jobs.store import JobStore

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
        if settings.key_digests:
            log.info("API keys required on /v1 (%d configured)", len(settings.key_digests))
        else:
            log.warning("OPEN MODE: no API keys configured, anyone who reaches this port may use the service")
        yield
        client.close()

    app = FastAPI(title="convnd", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    errors.install(app)
    app.include_router(health.router)
    app.include_router(conv.router, prefix="/v1")
    app.include_router(jobs.router, prefix="/v1")
    app.include_router(train.router, prefix="/v1")
    app.include_router(datasets.router, prefix="/v1")
    app.include_router(models.router, prefix="/v1")
    return app


app = create_app()
