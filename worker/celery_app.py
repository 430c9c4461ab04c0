"""The Celery app, built from the runtime settings (Celery's ``proj/celery.py`` pattern).

Only the JSON serializer is accepted: messages carry job ids, never arrays. The API builds
its own instance with ``make_celery`` to send tasks by name (``worker.kinds``).
"""
from __future__ import annotations

from celery import Celery

from .settings import RuntimeSettings, get_runtime_settings


def make_celery(settings: RuntimeSettings) -> Celery:
    app = Celery("convnd", broker=settings.redis_url, include=["worker.tasks"])
    app.conf.update(
        task_serializer="json", accept_content=["json"], result_serializer="json",
        task_ignore_result=True,  # results live in the job store, not in Celery's backend
        task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.task_soft_time_limit_s, task_time_limit=settings.task_time_limit_s,
        # The CPU queue; GPU workers consume settings.queue_for("gpu") and the API names the queue of
        # each job's device when it sends (app.jobs.submit.route), so CPU and GPU work never mix.
        task_default_queue=settings.queue, worker_concurrency=settings.worker_concurrency,
        worker_pool=settings.worker_pool, broker_connection_retry_on_startup=True,
        # An unacked message (its worker died) returns to the queue after the visibility timeout;
        # it stays past the longest hard limit so a live task is never delivered twice. Sweeps
        # for such messages run every restore_interval_s (kombu's default is ~100 s).
        broker_transport_options={"visibility_timeout": settings.broker_visibility_timeout_s,
                                  "unacked_restore_interval": settings.restore_interval_s,
                                  "unacked_restore_throttle": 1},
        worker_hijack_root_logger=False,
        # Fail fast when Redis is down, so the API answers 503 instead of hanging.
        broker_connection_timeout=2,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5},
    )
    return app


celery = make_celery(get_runtime_settings())
