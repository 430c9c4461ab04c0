"""The API's settings: the runtime settings every process reads (``worker.settings``) plus
what only the HTTP front end needs (bind address, keys, request limits, waiting).

Read from the environment (prefix ``CONVND_``; ``REDIS_URL`` also without it), so the API,
the workers and ``convnd up`` share one set of variable names.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from worker.settings import DEFAULT_REDIS_URL, RuntimeSettings

__all__ = ["DEFAULT_REDIS_URL", "Settings", "get_settings", "hash_key"]


def default_api_processes() -> int:
    """Two API processes where two whole CPUs are usable (affinity mask and cgroup quota), else one.

    One Python process spends ~4 ms of CPU on a small job request (HTTP, validation, Redis), so
    it caps near 200 requests/s on its core; a second one on a 2-core machine served 1.1-1.9x the
    small requests per second at the same p50 (docs/benchmarks.md, "The service"). More than two
    would take cores from the workers, which do the convolutions. Called when ``convnd api``
    starts, not when settings are read: it imports convcore, which other commands do without."""
    from convcore.resources import cpu_count

    # whole CPUs only: 1.5 CPUs' worth of time is not room for a second busy process
    return 2 if cpu_count(whole=True) >= 2 else 1


class Settings(RuntimeSettings):
    """API configuration; every field is an environment variable ``CONVND_<NAME>``."""

    host: str = Field("127.0.0.1", description="API bind address.")
    port: int = Field(8000, description="API port.")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated API keys, kept only as SHA-256 digests. None: open mode.")
    api_key_hashes: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated SHA-256 hex digests of API keys.")
    wait_timeout_s: float = Field(30.0, ge=0, description="How long a POST waits for the result before 202.")
    max_body_bytes: int = Field(256 * 2**20, gt=0, description="Largest request body (bytes) -> 413.")
    max_array_bytes: int = Field(128 * 2**20, gt=0, description="Largest single array (bytes) -> 413.")
    max_json_bytes: int = Field(32 * 2**20, gt=0, description="Largest JSON body (bytes) -> 413: parsing JSON takes "
                                "several times its size in memory; send large arrays in the binary form.")
    max_job_bytes: int = Field(2 * 2**30, gt=0, description="Largest estimated memory of one convolution job "
                               "(inputs, padded/dilated copies, output, engine buffers) -> 413 naming the parameter.")
    max_train_spec_bytes: int = Field(2**20, gt=0, description="Largest POST /v1/train body (bytes) -> 413.")
    max_train_layers: int = Field(500, gt=0, description="Most layers in a training job's model -> 422.")
    max_train_epochs: int = Field(1000, gt=0, description="Most epochs of a training job -> 422.")
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated Host header values accepted ('*': any). Default: any, "
        "except when bound to a loopback address: localhost, 127.0.0.1 and [::1] only (DNS rebinding).")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated origins allowed to call the API from a browser (CORS). "
                                          "Default: none.")
    api_threads: int = Field(200, gt=0, description="Threads serving requests, per API process; each waiting POST "
                             "holds one.")
    api_processes: int | None = Field(None, gt=0, le=64,
                                      description="`convnd api` processes (uvicorn workers) sharing the port; "
                                      "/metrics sums their HTTP counters. The connection cap and threads are per "
                                      "process. Default: 2 where two whole CPUs are usable, else 1.")
    max_train_bytes: int = Field(8 * 2**30, gt=0, description="Largest estimated memory of a training step "
                                 "(activations of one batch + parameters and optimizer state) -> 422.")
    max_dataset_bytes: int = Field(128 * 2**20, gt=0, description="Largest uploaded dataset (bytes) -> 413.")
    dataset_ttl_s: int = Field(86400, gt=0, description="Lifetime of an uploaded dataset (s).")
    metrics_token: str | None = Field(None, description="Bearer token for GET /metrics (a scraper's credential); "
                                      "with API keys on, /metrics needs it or a key.")
    # Slow or idle clients (app/commands/http_limits.py): uvicorn itself bounds neither.
    http_header_timeout_s: float = Field(10.0, gt=0, description="A request's headers must arrive within this "
                                         "long of the connection opening or of the previous answer (s) -> 408, "
                                         "closed.")
    http_body_timeout_s: float = Field(30.0, gt=0, description="Longest pause while reading a request body, and "
                                       "longest a client may leave its answer unread (s) -> closed.")
    http_max_connections: int = Field(500, gt=0, description="Open connections per API process; more are answered "
                                      "503 and closed.")
    # `convnd up`'s embedded Redis-protocol server (app/commands/up.py)
    data_dir: str | None = Field(None, description="`convnd up`: the embedded server's data folder (append-only "
                                 "file). Default: $XDG_DATA_HOME/convnd or ~/.local/share/convnd.")
    redis_maxmemory: str | None = Field(None, description="`convnd up`: the embedded server's memory limit "
                                        "(512mb, 4gb, bytes), noeviction. Default: a quarter of the RAM.")

    @field_validator("api_keys", "api_key_hashes", "allowed_hosts", "cors_origins", mode="before")
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


def hash_key(key: str) -> str:
    """SHA-256 hex digest of an API key (what the service stores and compares)."""
    return hashlib.sha256(key.encode()).hexdigest()


@lru_cache
def get_settings() -> Settings:
    return Settings()
