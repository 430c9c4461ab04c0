"""``convnd api`` and ``convnd worker``: one service process each, configured by the environment."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import warnings

from app.core import processes
from app.core.config import get_settings
from worker.settings import get_runtime_settings


def register(sub) -> None:
    s = get_settings()
    api = sub.add_parser("api", help="run the HTTP API (uvicorn)")
    api.add_argument("--host", default=s.host, help=f"bind address (default {s.host})")
    api.add_argument("--port", type=processes.port_number, default=s.port, help=f"port (default {s.port})")
    api.add_argument("--workers", type=int, default=s.api_processes,
                     help="API processes sharing the port (default $CONVND_API_PROCESSES, else 2 where two "
                          "CPUs are usable, else 1)")
    api.set_defaults(func=run_api)

    worker = sub.add_parser("worker", help="run a Celery worker that executes convolution and training jobs")
    worker.add_argument("--concurrency", type=_positive, default=s.worker_concurrency,
                        help=f"jobs run at once, one process each (default $CONVND_WORKER_CONCURRENCY "
                             f"or {s.worker_concurrency})")
    worker.add_argument("--pool", default=s.worker_pool, choices=["prefork", "solo", "threads"],
                        help=f"Celery pool: prefork isolates each job in a child process that a hard time "
                             f"limit can kill; solo runs jobs in the worker itself (default {s.worker_pool})")
    worker.add_argument("--loglevel", default=s.log_level, type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                        help=f"DEBUG, INFO, WARNING or ERROR (default $CONVND_LOG_LEVEL or {s.log_level})")
    worker.add_argument("--no-root-warning", action="store_true",
                        help="don't print Celery's warning about running as root (convnd up passes it and "
                             "says so once); the worker accepts only JSON messages, never pickle")
    worker.set_defaults(func=run_worker)


def _positive(text: str) -> int:
    """An argparse type: a count of at least 1 (Celery's own refusal of -1 was a traceback)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: at least 1")
    return value


def run_api(args) -> int:
    import uvicorn

    from app.core.config import default_api_processes

    s = get_settings()
    if args.workers is None:
        args.workers = default_api_processes()
    if args.workers < 1:
        print(f"convnd api: --workers must be at least 1, got {args.workers}", file=sys.stderr)
        return 2
    metrics_dir = None
    if args.workers > 1:
        given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if given:   # the operator's folder (to be emptied between runs, as prometheus-client asks)
            os.makedirs(given, exist_ok=True)
        else:
            # Each process counts its HTTP requests in files here, so that /metrics, answered by
            # whichever process a scrape reaches, sums them all (app/api/routes/metrics.py).
            metrics_dir = tempfile.mkdtemp(prefix="convnd-api-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        # uvicorn's default loop ("auto") is uvloop, a dependency on Linux and macOS: ~0.3 ms less
        # API CPU per small request than asyncio's (docs/benchmarks.md, "The service").
        uvicorn.run("app.main:app", host=args.host, port=args.port, workers=args.workers,
                    log_level=s.log_level.lower(), http="app.commands.http_limits:LimitedHttpProtocol",
                    # The protocol refuses connections past the cap (JSON 503); uvicorn's own check (a
                    # plain-text 503 at >= its limit, connections or requests in progress) one above it
                    # only bounds pipelined requests.
                    limit_concurrency=s.http_max_connections + 1,
                    timeout_keep_alive=5)  # an idle keep-alive connection is closed after 5 s
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def run_worker(args) -> int:
    os.environ["CONVND_WORKER_POOL"] = args.pool  # the signal hooks read the pool from the settings
    get_settings.cache_clear()
    get_runtime_settings.cache_clear()
    if args.no_root_warning:
        from celery.exceptions import SecurityWarning

        warnings.filterwarnings("ignore", category=SecurityWarning, message="You're running the worker with superuser")
    from worker import devices, runtime
    from worker.celery_app import celery

    # The device and so the queue (CPU and GPU work wait apart), decided before Celery forks its pool.
    try:
        plan = devices.plan(get_runtime_settings(), args.concurrency)
    except (devices.DeviceUnavailable, ValueError) as exc:
        print(f"convnd worker: {exc}", file=sys.stderr)
        return 2
    print(f"convnd worker: {plan.device} ({plan.reason}); queue {plan.queue}", file=sys.stderr, flush=True)
    runtime.set_plan(plan)
    celery.worker_main(["worker", f"--loglevel={args.loglevel}", f"--concurrency={args.concurrency}",
                        f"--pool={args.pool}", f"--queues={plan.queue}",
                        f"--hostname=convnd-{os.getpid()}@%h", "--without-gossip", "--without-mingle"])
    return 0
