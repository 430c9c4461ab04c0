"""All service settings in one place, read from the environment (prefix ``CONVND_``).

``REDIS_URL`` is also read without the prefix, so the usual variable works for
the API, the workers and ``convnd up`` alike.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class Settings(BaseSettings):
    """Service configuration; every field is an environment variable ``CONVND_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="CONVND_", extra="ignore")

    redis_url: str = Field(DEFAULT_REDIS_URL, validation_alias=AliasChoices("REDIS_URL", "CONVND_REDIS_URL"),
                           description="Broker and job store. Unset: `convnd up` starts an embedded server.")
    host: str = Field("127.0.0.1", description="API bind address.")
    port: int = Field(8000, description="API port.")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated API keys, kept only as SHA-256 digests. None: open mode.")
    api_key_hashes: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated SHA-256 hex digests of API keys.")
    result_ttl_s: int = Field(86400, gt=0, description="Lifetime of a job, its arrays and its result (s).")
    wait_timeout_s: float = Field(30.0, ge=0, description="How long a POST waits for the result before 202.")
    max_body_bytes: int = Field(256 * 2**20, gt=0, description="Largest request body (bytes) -> 413.")
    max_array_bytes: int = Field(128 * 2**20, gt=0, description="Largest single array (bytes) -> 413.")
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
    api_threads: int = Field(200, gt=0, description="Threads serving requests; each waiting POST holds one.")
    max_attempts: int = Field(3, gt=0, description="Deliveries of a convolution job whose worker died before "
                              "it fails (WorkerLost).")
    train_max_attempts: int = Field(3, gt=0, description="Deliveries of a training job before it fails.")
    max_train_bytes: int = Field(8 * 2**30, gt=0, description="Largest estimated memory of a training step "
                                 "(activations of one batch + parameters and optimizer state) -> 422.")
    max_dataset_bytes: int = Field(128 * 2**20, gt=0, description="Largest uploaded dataset (bytes) -> 413.")
    dataset_ttl_s: int = Field(86400, gt=0, description="Lifetime of an uploaded dataset (s).")

    @field_validator("api_keys", "api_key_hashes", mode="before")
    @classmethod
    def _split_commas(cls, value):
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("api_keys")
    @classmethod
    def _hash_keys(cls, value):
        # Keys are kept only as digests, so a dump of the settings never shows one.
        return [hash_key(k) for k in value]

    @field_validator("api_key_hashes")
    @classmethod
    def _check_hashes(cls, value):
        bad = [h for h in value if len(h) != 64 or any(c not in "0123456789abcdef" for c in h.lower())]
        if bad:
            raise ValueError(f"api_key_hashes must be SHA-256 hex digests (64 hex chars), got {bad}")
        return [h.lower() for h in value]

    @property
    def key_digests(self) -> list[str]:
        """SHA-256 digests of every accepted API key."""
        return self.api_keys + self.api_key_hashes

    @property
    def broker_visibility_timeout_s(self) -> int:
        """Past the longest task, so a live task's message is never handed to a second worker."""
        return self.visibility_timeout_s or max(self.task_time_limit_s, self.train_time_limit_s) + 60

    @property
    def worker_liveness_s(self) -> float:
        """A worker whose last heartbeat is older than this counts as gone."""
        return 3 * self.worker_heartbeat_s


def hash_key(key: str) -> str:
    """SHA-256 hex digest of an API key (what the service stores and compares)."""
    return hashlib.sha256(key.encode()).hexdigest()


@lru_cache
def get_settings() -> Settings:
    return Settings()
