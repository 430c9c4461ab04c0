"""Fixtures of the service tests only; the stack itself (Valkey, the worker, API subprocesses) and
the helpers the test modules import live in tests/support/stack.py and are shared with tests/ui.

``app_client`` is the API in this process (FastAPI's TestClient, no HTTP server) whose jobs the
real worker answers; ``worker_runtime`` sets up the worker's per-process state here so task bodies
can be called directly.
"""
from __future__ import annotations

import uuid

import httpx
import pytest
from support.stack import SMALL_LIMITS, in_process_api


@pytest.fixture(scope="session")
def api(api_factory, worker):
    """The open API (no keys), with a 2 MiB body / 1 MiB array limit."""
    return api_factory("open", **SMALL_LIMITS)


@pytest.fixture(scope="session")
def client(api) -> httpx.Client:
    return api.client


@pytest.fixture(scope="session")
def app_client(redis_url, base_env, worker):
    """The open API in this process (2 MiB body / 1 MiB array limits); the real worker runs its jobs."""
    with in_process_api(redis_url, base_env["CONVND_KEY_PREFIX"], base_env["CONVND_QUEUE"]) as test_client:
        yield test_client


@pytest.fixture
def store(redis_url, request):
    """A JobStore on the real server under a fresh key prefix (named after the test module), with
    a 60 s TTL; its keys are deleted afterwards."""
    import redis

    from worker.store import JobStore

    client = redis.Redis.from_url(redis_url)
    s = JobStore(client, f"convnd-{request.module.__name__}-{uuid.uuid4().hex[:8]}", ttl_s=60)
    yield s
    for key in client.scan_iter(f"{s.prefix}:*"):
        client.delete(key)
    client.close()


@pytest.fixture
def worker_runtime(redis_url):
    """The worker's per-process state set up in this process under a fresh key prefix (no heartbeat,
    no Celery worker): call task functions directly. Yields the job store."""
    from worker import runtime
    from worker.settings import RuntimeSettings

    runtime.reset()
    runtime.init_process(RuntimeSettings(REDIS_URL=redis_url, key_prefix=f"convnd-unit-{uuid.uuid4().hex[:8]}"),
                         heartbeat=False)
    store = runtime.store()
    yield store
    for key in store.r.scan_iter(f"{store.prefix}:*"):
        store.r.delete(key)
    runtime.reset()


@pytest.fixture(scope="session")
def train_api(api_factory, worker):
    """The open API with a 200 kB dataset limit (uploads over it are 413)."""
    return api_factory("train", max_dataset_bytes=200_000, **SMALL_LIMITS)
