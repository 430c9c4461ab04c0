"""Queueing a job from the API: arrays into the store, the job id to its task (sent by name), and
waiting for the outcome."""
from __future__ import annotations

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
    job, workers = store.create_reading_workers(kind.name, owner, params, arrays)
    try:
        _device, queue = route(require_worker(store, workers), params.get("device") or "auto")
    except ApiError:
        store.discard(job)
        raise
    if fast_madds is not None and fastlane.served(workers, queue, fast_madds):
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
