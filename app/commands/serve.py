"""``convnd api`` and ``convnd worker``: one service process each, configured by the environment."""
from __future__ import annotations

import os

from app.core.config import get_settings


def register(sub) -> None:
    s = get_settings()
    api = sub.add_parser("api", help="run the HTTP API (uvicorn)")
    api.add_argument("--host", default=s.host, help=f"bind address (default {s.host})")
    api.add_argument("--port", type=int, default=s.port, help=f"port (default {s.port})")
    api.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    api.set_defaults(func=run_api)

    worker = sub.add_parser("worker", help="run a Celery worker that executes convolution jobs")
    worker.add_argument("--concurrency", type=int, default=s.worker_concurrency)
    worker.add_argument("--pool", default=s.worker_pool, choices=["prefork", "solo", "threads"])
    worker.add_argument("--loglevel", default=s.log_level)
    worker.set_defaults(func=run_worker)


def run_api(args) -> int:
    import uvicorn

    uvicorn.run("app.main:app", host=args.host, port=args.port, workers=args.workers,
                log_level=get_settings().log_level.lower())
    return 0


def run_worker(args) -> int:
    os.environ["CONVND_WORKER_POOL"] = args.pool  # the signal hooks read the pool from the settings
    get_settings.cache_clear()
    from worker.celery_app import celery

    celery.worker_main(["worker", f"--loglevel={args.loglevel}", f"--concurrency={args.concurrency}",
                        f"--pool={args.pool}", f"--queues={get_settings().queue}",
                        f"--hostname=convnd-{os.getpid()}@%h", "--without-gossip", "--without-mingle"])
    return 0
