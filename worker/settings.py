"""Settings every process of the service reads: where Redis is, how jobs are kept and run.

Read from the environment (prefix ``CONVND_``); ``REDIS_URL`` is also read without the
prefix. The API's own settings (bind address, keys, request limits) extend this class in
``app.core.config``; a worker reads only these.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class RuntimeSettings(BaseSettings):
    """The job runtime's configuration; every field is an environment variable ``CONVND_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="CONVND_", extra="ignore")

    redis_url: str = Field(DEFAULT_REDIS_URL, validation_alias=AliasChoices("REDIS_URL", "CONVND_REDIS_URL"),
                           description="Broker and job store. Unset: `convnd up` starts an embedded server.")
    result_ttl_s: int = Field(86400, gt=0, description="Lifetime of a job, its arrays and its result (s).")
    task_soft_time_limit_s: int = Field(600, gt=0, description="Soft time limit of a task (s).")
    task_time_limit_s: int = Field(660, gt=0, description="Hard time limit of a task (s); worker child is killed.")
    worker_concurrency: int = Field(1, gt=0, description="Worker processes per `convnd worker`.")
    worker_pool: Literal["prefork", "solo", "threads"] = Field("prefork", description="Celery pool.")
    worker_heartbeat_s: float = Field(2.0, gt=0, description="How often a worker announces itself.")
    queue: str = Field("convnd", description="Celery queue the API sends to and workers consume.")
    key_prefix: str = Field("convnd", description="Prefix of every Redis key the service writes.")
    log_level: str = Field("INFO", description="Log level of API and workers.")
    # Training jobs (docs/training.md)
    train_soft_time_limit_s: int = Field(14400, gt=0, description="Soft time limit of a training task (s).")
    train_time_limit_s: int = Field(14460, gt=0, description="Hard time limit of a training task (s).")
    visibility_timeout_s: int | None = Field(
        None, gt=0, description="Redis transport: an unacked message (its worker was killed) is redelivered "
                                "after this long. Default: the longest task time limit + 60 s.")
    restore_interval_s: int = Field(10, gt=0, description="How often workers look for such messages (s).")
    train_lease_s: float = Field(10.0, gt=0, description="A training job's claim by its worker lasts this long "
                                                         "unless renewed; a redelivered job waits it out.")
    fast_lane_max_madds: int = Field(
        50_000_000, ge=0, description="Forward and backward jobs of at most this many multiply-adds skip Celery's "
                                      "message path: a thread in each worker process takes them from a Redis list "
                                      "(worker/fastlane.py). 0 turns the fast lane off.")
    max_attempts: int = Field(3, gt=0, description="Deliveries of a convolution job whose worker died before "
                              "it fails (WorkerLost).")
    train_max_attempts: int = Field(3, gt=0, description="Deliveries of a training job before it fails.")
    # Devices (worker/devices.py): which device a worker computes on, and so which queue it serves.
    device: Literal["auto", "cpu", "gpu"] = Field(
        "auto", description="Worker device: gpu (exit at start-up unless a GPU passes the self-test), cpu, or "
                            "auto (the GPU when one passes the self-test, else the CPU).")
    gpu_ids: str = Field("", description="GPUs a worker may use, e.g. `0,1` (default: every visible one); "
                                         "worker process i binds GPU i mod count.")
    selftest_timeout_s: float = Field(120.0, gt=0, description="Longest the start-up GPU probe may take (s): "
                                                               "the first CuPy kernels are compiled then.")
    test_only_cpu_serves_gpu_queue: bool = Field(
        False, description="TESTS ONLY: a CPU worker consumes the GPU queue, so routing can be tested on a "
                           "machine without a GPU. Never set it in a deployment.")

    @property
    def broker_visibility_timeout_s(self) -> int:
        """Past the longest task, so a live task's message is never handed to a second worker."""
        return self.visibility_timeout_s or max(self.task_time_limit_s, self.train_time_limit_s) + 60

    def queue_for(self, device: str) -> str:
        """The Celery queue of ``device`` ("cpu" or "gpu"): GPU work never waits in a CPU worker's queue."""
        return self.queue if device == "cpu" else f"{self.queue}.gpu"

    @property
    def worker_liveness_s(self) -> float:
        """A worker whose last heartbeat is older than this counts as gone."""
        return 3 * self.worker_heartbeat_s


@lru_cache
def get_runtime_settings() -> RuntimeSettings:
    return RuntimeSettings()
