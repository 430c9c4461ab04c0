"""Queueing a job from the API: arrays into the store, the job id to its task (sent by name), and
waiting for the outcome."""
from __future__ import annotations

from celery import Celery

from app.api.errors import ApiError
from worker.kinds import JobKind
from worker.store import JobStore


def require_worker(store: JobStore) -> list[dict]:
    workers = store.workers()
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
           arrays: dict | None = None) -> dict:
    """Store the job and queue its task on the queue of the device ``params["device"]`` asks for
    (default "auto"); returns the job record as written (state ``queued``)."""
    unknown = sorted(set(arrays or {}) - set(kind.inputs))
    if unknown:  # a route passing arrays its kind does not read is a programming error
        raise ValueError(f"{kind.name} jobs take no arrays {unknown}")
    _device, queue = route(require_worker(store), params.get("device") or "auto")
    job = store.create(kind.name, owner, params, arrays)
    sender.send_task(kind.task, args=[job["id"]], task_id=job["id"], queue=queue)
    return job


def wait_for(store: JobStore, job: dict, timeout_s: float) -> dict:
    """The job as it is once it has ended or ``timeout_s`` has run out (``job`` if it expired meanwhile)."""
    store.wait(job["id"], timeout_s)
    return store.get(job["id"]) or job
