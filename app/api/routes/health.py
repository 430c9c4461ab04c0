"""GET /healthz (the process is alive) and GET /readyz (Redis and at least one worker answer)."""
from __future__ import annotations

import logging

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import StoreDep

router = APIRouter(tags=["health"])
log = logging.getLogger("convnd.api")


@router.get("/healthz", summary="the API process is alive")
async def healthz() -> dict:   # async: no thread-pool hop (about a millisecond of wake-ups on a small VM)
    return {"status": "ok"}


@router.get("/readyz", summary="Redis reachable and workers answering, with each worker's device and self-test",
            responses={503: {"description": "Redis down or no worker"}})
def readyz(store: StoreDep) -> JSONResponse:
    try:
        store.r.ping()
        workers = store.workers()
    except redis.RedisError as exc:  # its address and the driver's text go to the log only
        log.warning("readyz: Redis unreachable: %s", exc)
        return JSONResponse({"status": "unavailable", "redis": "unreachable", "workers": []}, 503)
    body = {"status": "ok" if workers else "unavailable", "redis": "ok",
            "workers": [_worker_view(w) for w in workers],
            "devices": {d: sum(w.get("serves", "cpu") == d for w in workers) for d in ("cpu", "gpu")}}
    return JSONResponse(body, 200 if workers else 503)


def _worker_view(w: dict) -> dict:
    """What a worker process computes on (``device``: "cpu" or the GPU's name), which queue it serves
    (``serves``: the device jobs ask for), why, and its start-up self-test."""
    # No id (hostname:pid) here: /readyz answers anyone; /v1/workers shows more to a key holder.
    return {"device": w["device"], "device_kind": w.get("device_kind", "cpu"),
            "gpu": w.get("gpu"), "serves": w.get("serves", "cpu"), "reason": w.get("reason"),
            "selftest": w.get("selftest")}
