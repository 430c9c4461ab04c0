"""Queueing a job from the API: arrays into the store, the job id to its task (sent by name), and
waiting for the outcome."""
from __future__ import annotations

import time

from celery import Celery

from app.api.errors import ApiError
from worker import fastlane
from worker.kinds import JobKind
from worker.store import JobStore


def require_worker(store: JobStore, workers: list[dict] | None = None) -> list[dict]:
    """The live workers (``workers`` when already read), or 503 when there is none."""
    workers = store.workers() if workers is None else workers
    if not workers:
        raise ApiError(503, "no worker is answering: start one with `convnd worker` (same REDIS_URL)")
    return workers


def route(workers: list[dict], device: str = "auto") -> tuple[str, str | None]:
    """(device, queue) for a job that asks for ``device`` ("auto", "cpu" or "gpu").

    Each worker's heartbeat names the queue it consumes and that queue's device ("serves");
    "auto" picks the GPU when a GPU worker is up, else the CPU. 503 naming ``device`` when
    no worker serves the asked one (another may start: the request can be retried).
    """
    by_device: dict[str, list[dict]] = {}
    for w in workers:
        by_device.setdefault(w.get("serves", "cpu"), []).append(w)
    chosen = device if device != "auto" else ("gpu" if "gpu" in by_device else "cpu")
    if chosen not in by_device:
        up = ", ".join(f"{len(ws)} {d.upper()}" for d, ws in sorted(by_device.items())) or "none"
        hint = "start one with CONVND_DEVICE=gpu on a machine with a GPU" if chosen == "gpu" else \
            "start one with CONVND_DEVICE=cpu"
        raise ApiError(503, f'device "{chosen}": no {chosen.upper()} worker is answering (workers up: {up}); '
                            f'{hint}, or ask for "device": "auto"', "device")
    return chosen, by_device[chosen][0].get("queue")


# The route this API process last found per asked device: {(key prefix, device): (queue, the largest
# fast-lane bound a live worker of that queue offers, when)}. While fresh, a fast job's lane push rides
# in the step that stores the job (one round trip less, ~0.3 ms); the workers read in that same step
# confirm it, and a wrong guess is withdrawn before the job goes where they say.
ROUTE_MEMORY_S = 1.0
_recent_routes: dict = {}


def _guess_fast_queue(prefix: str, device: str, fast_madds: int | None) -> str | None:
    recent = _recent_routes.get((prefix, device))
    if fast_madds is None or recent is None:
        return None
    queue, bound, seen = recent
    fresh = queue is not None and time.monotonic() - seen < ROUTE_MEMORY_S
    return queue if fresh and bound >= max(fast_madds, 1) else None


def _remember_route(prefix: str, device: str, queue: str | None, workers: list[dict]) -> None:
    _recent_routes[(prefix, device)] = (queue, fastlane.offered(workers, queue), time.monotonic())


def submit(store: JobStore, sender: Celery, kind: JobKind, owner: str, params: dict,
           arrays: dict | None = None, fast_madds: int | None = None) -> dict:
    """Store the job and queue it for the device ``params["device"]`` asks for (default "auto"): on
    that device's fast lane when ``fast_madds`` (its multiply-adds, given when ``worker.fastlane.eligible``)
    is within what a live worker of the queue offers, else as a Celery task on its queue. Returns the
    job record as written (state ``queued``)."""
    unknown = sorted(set(arrays or {}) - set(kind.inputs))
    if unknown:  # a route passing arrays its kind does not read is a programming error
        raise ValueError(f"{kind.name} jobs take no arrays {unknown}")
    # The job is written and the workers read in one round trip; without a worker for it, it is deleted.
    device = params.get("device") or "auto"
    guess = _guess_fast_queue(store.prefix, device, fast_madds)
    push, fields = (None, None) if guess is None else fastlane.queued_on(store.prefix, guess, kind.name)
    job, workers = store.create_reading_workers(kind.name, owner, params, arrays, push=push, fields=fields)
    try:
        _device, queue = route(require_worker(store, workers), device)
    except ApiError:
        if guess is not None:
            fastlane.withdraw(store.r, store.prefix, guess, kind.name, job["id"], store.job_key(job["id"]))
        store.discard(job)
        raise
    _remember_route(store.prefix, device, queue, workers)
    fast = fast_madds is not None and fastlane.served(workers, queue, fast_madds)
    if guess is not None:
        if fast and queue == guess:
            return job   # the guess was right: queued in the step that stored it (its lane is on the record)
        if not fastlane.withdraw(store.r, store.prefix, guess, kind.name, job["id"], store.job_key(job["id"])):
            return job   # a worker of that queue took it already: it runs there
        job = {k: v for k, v in job.items() if k != "lane"}   # withdrawn: the record's lane is gone too
    if fast:
        fastlane.push(store.r, store.prefix, queue, kind.name, job["id"], store.job_key(job["id"]))
        return {**job, "lane": "fast"}
    sender.send_task(kind.task, args=[job["id"]], task_id=job["id"], queue=queue)
    return job


def wait_for(store: JobStore, job: dict, timeout_s: float) -> dict:
    """The job as it is once it has ended or ``timeout_s`` has run out (``job`` if it expired meanwhile;
    ``job`` as given when ``timeout_s`` <= 0: no wait, no re-read)."""
    if timeout_s <= 0:
        return job
    return store.wait_outcome(job["id"], timeout_s, outputs=False)[0] or job


def wait_for_outcome(store: JobStore, job: dict, timeout_s: float) -> tuple[dict, dict | None]:
    """``wait_for`` and, when the job succeeded, its outputs {name: ndarray} (read in the same round
    trip as the wake-up); None when the job has not succeeded."""
    if timeout_s <= 0:
        return job, None
    ended, arrays = store.wait_outcome(job["id"], timeout_s)
    if ended is None:
        return job, None
    return ended, arrays if ended["state"] == "succeeded" else None
