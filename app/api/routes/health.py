"""GET /healthz (the process is alive) and GET /readyz (Redis and at least one worker answer)."""
from __future__ import annotations

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import StoreDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="the API process is alive")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Redis reachable and workers answering, with each worker's device",
            responses={503: {"description": "Redis down or no worker"}})
def readyz(store: StoreDep) -> JSONResponse:
    try:
        store.r.ping()
        workers = store.workers()
    except redis.RedisError as exc:
        return JSONResponse({"status": "unavailable", "redis": f"unreachable: {exc}", "workers": []}, 503)
    body = {"status": "ok" if workers else "unavailable", "redis": "ok",
            "workers": [{"id": w["id"], "device": w["device"]} for w in workers]}
    return JSONResponse(body, 200 if workers else 503)
