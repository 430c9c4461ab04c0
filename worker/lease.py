"""A worker's exclusive, expiring claim on a training job, and the thread that renews it.

Keys: ``p:job:<id>:lease`` (string: id of the worker process training the job; expires unless renewed),
``p:leased`` (set of ids of training jobs ever claimed and not yet seen ended: what ``sweep_orphans`` checks).

A training job shown ``running`` with no lease has lost its worker without a redelivery on the
way (e.g. Redis went away: its failure could not be recorded and its message was acked):
``recover_orphan`` queues it again (it resumes from its checkpoint; after ``train_max_attempts``
deliveries it fails with the reason). The API calls it when it reads a job, workers periodically.
"""
from __future__ import annotations

import logging
import threading
import time

from .store import FINAL, JobStore

log = logging.getLogger("convnd.worker")

# Renew / release only a lease we still hold (compare-and-set on its value).
_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class Lease:
    """A claim on ``job_id`` by ``holder`` that lasts ``ttl_s`` unless renewed."""

    def __init__(self, store: JobStore, job_id: str, holder: str, ttl_s: float):
        self.r, self.key, self.holder, self.job_id = store.r, lease_key(store, job_id), holder, job_id
        self.index = leased_index(store)
        self.ttl_ms = max(int(ttl_s * 1000), 100)
        self._renew, self._release = self.r.register_script(_RENEW), self.r.register_script(_RELEASE)

    def acquire(self) -> bool:
        if not self.r.set(self.key, self.holder, nx=True, px=self.ttl_ms):
            return False
        self.r.sadd(self.index, self.job_id)  # watched by sweep_orphans until it ends
        return True

    def renew(self) -> bool:
        """False when the claim was lost (it expired and another worker took the job)."""
        return bool(self._renew(keys=[self.key], args=[self.holder, self.ttl_ms]))

    def release(self) -> None:
        try:
            self._release(keys=[self.key], args=[self.holder])
        except Exception as exc:  # noqa: BLE001 - Redis away: the claim expires on its own
            log.warning("lease release failed (it expires by itself): %s", exc)


class Renewer:
    """Renews the lease from a thread (a long step or evaluation must not let it expire);
    ``lost`` is set once the claim has gone to someone else."""

    def __init__(self, lease: Lease):
        self.lease, self.lost, self._done = lease, threading.Event(), threading.Event()
        threading.Thread(target=self._run, name="convnd-lease", daemon=True).start()

    def _run(self) -> None:
        while not self._done.wait(self.lease.ttl_ms / 3000):
            try:
                if not self.lease.renew():
                    self.lost.set()  # presumed dead and taken over: stop without touching the job
                    return
            except Exception as exc:  # noqa: BLE001 - Redis restarting: try again next period
                log.warning("lease renewal failed: %s", exc)

    def stop(self) -> None:
        self._done.set()


# running and no lease -> queued (atomic: a worker taking the lease meanwhile keeps the job running)
_ORPHAN = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'state', 'queued', 'worker', '', 'requeued_at', ARGV[1])
return 1
"""


def lease_key(store: JobStore, job_id: str) -> str:
    return f"{store.job_key(job_id)}:lease"


def leased_index(store: JobStore) -> str:
    return f"{store.prefix}:leased"


def recover_orphan(store: JobStore, job: dict, send) -> dict:
    """``job`` (a record), queued again through ``send(job_id)`` when it is a training job left
    ``running`` that no worker holds; the record as it is now."""
    if job.get("kind") != "train" or job.get("state") != "running":
        return job
    key = store.job_key(job["id"])
    if not store.r.eval(_ORPHAN, 2, key, lease_key(store, job["id"]), repr(time.time())):
        return job
    log.warning("training job %s was running with no worker holding it: queued again", job["id"])
    send(job["id"])
    return store.get(job["id"]) or job


def sweep_orphans(store: JobStore, send) -> int:
    """``recover_orphan`` for every claimed training job not yet seen ended; how many were queued again."""
    recovered = 0
    for raw in store.r.smembers(leased_index(store)):
        job_id = raw.decode()
        job = store.get(job_id)
        if job is None or job["state"] in FINAL:
            store.r.srem(leased_index(store), job_id)
        elif recover_orphan(store, job, send) is not job:
            recovered += 1
    return recovered


class OrphanSweeper:
    """``sweep_orphans`` at most every ``every_s``, from a worker's heartbeat thread. A requeued job goes
    to ``queue`` (this worker's: it can run it) unless it asked for a device: then to that device's queue
    (``queue_for(device)``), so a job that asked for the GPU never runs on a CPU worker, nor the reverse."""

    def __init__(self, store: JobStore, queue: str | None, every_s: float, queue_for):
        self.store, self.queue, self.every_s, self.queue_for, self._next = store, queue, every_s, queue_for, 0.0

    def queue_of(self, job_id: str) -> str | None:
        job = self.store.get(job_id) or {}
        device = (job.get("params") or {}).get("device") or "auto"
        return self.queue if device == "auto" else self.queue_for(device)

    def send(self, job_id: str) -> None:
        from .celery_app import celery  # the worker's own app (set up by the time a heartbeat runs)
        from .kinds import TRAIN

        celery.send_task(TRAIN.task, args=[job_id], task_id=job_id, queue=self.queue_of(job_id))

    def maybe_run(self) -> None:
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.every_s
        try:
            sweep_orphans(self.store, self.send)
        except Exception as exc:  # noqa: BLE001 - Redis restarting: next period
            log.warning("orphan sweep failed: %s", exc)
