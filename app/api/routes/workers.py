"""GET /v1/workers: the live workers (device, start-up self-test, fast lane) and the queue lengths."""
from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import OwnerDep, SettingsDep, StoreDep
from app.schemas.jobs import ErrorBody
from worker import fastlane, metrics

router = APIRouter(prefix="/workers", tags=["health"])
# What a caller may see of a worker's heartbeat (worker.runtime): its process id, what it computes on,
# the queue it serves and why, its start-up self-test, whether it takes small jobs off the fast lane.
SHOWN = ("id", "device", "device_kind", "serves", "queue", "reason", "selftest", "started_at", "fast_lane")


@router.get("", summary="live workers with their device and self-test result, and queue lengths",
            responses={code: {"model": ErrorBody} for code in (401, 403, 503)})
def list_workers(_: OwnerDep, store: StoreDep, settings: SettingsDep) -> dict:
    """Needs a key when keys are configured, like every /v1 call."""
    workers = [{k: w.get(k) for k in SHOWN} for w in store.workers()]
    names = metrics.queue_names(settings)
    lengths, fast = metrics.queue_lengths(store.r, names), fastlane.lengths(store.r, store.prefix, names)
    return {"workers": sorted(workers, key=lambda w: w["id"]),
            "queues": [{"name": name, "length": n, "fast_lane_length": fast[name]} for name, n in lengths.items()]}
