"""POST /v1/train; GET /v1/jobs/{id}/events (server-sent events) and /v1/jobs/{id}/model.

A job is checked completely before it is queued (dataset, every layer's shapes, optimizer),
so an impossible network is a 422 naming the layer and the shapes, never a worker crash.
"""
from __future__ import annotations

import math

import asyncio
import json
import time

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse

from app.api.deps import BodyDep, OwnerDep, SettingsDep, StoreDep
from app.api.errors import ApiError
from app.api.results import JOBS_PATH
from app.jobs import training
from app.jobs.store import FINAL
from app.schemas.jobs import ErrorBody, JobView, job_view
from app.schemas.train import DIGITS_EXAMPLE, TrainRequest
from convcore import datasets, nn

router = APIRouter(tags=["training"])
ERRORS = {code: {"model": ErrorBody} for code in (401, 403, 404, 409, 413, 422, 503)}
POLL_S = 0.25        # how often an event stream looks at the job
KEEPALIVE_S = 15.0   # comment lines keep proxies from closing a quiet stream


def train_view(job: dict) -> dict:
    view = job_view(job, JOBS_PATH)
    if job["kind"] == training.KIND:
        base = view["links"]["self"]
        view["links"].update(events=f"{base}/events", model=f"{base}/model",
                             predict=f"/v1/models/{job['id']}/predict")
    return view


def check_job(store, req: TrainRequest, owner: str, max_bytes: int, max_dataset_bytes: int) -> dict:
    """The job's parameters for the worker, after every check convcore.nn can make without arrays."""
    try:
        shape, n_classes, n = training.describe_dataset(store, req.dataset, owner)
    except datasets.DatasetError as exc:
        raise ApiError(422, f"dataset: {exc}", "dataset") from None
    if "id" not in req.dataset and n * math.prod(shape) * 4 > max_dataset_bytes:
        raise ApiError(422, f"dataset: {req.dataset} would generate {n} samples of shape {list(shape)}, "
                            f"{n * math.prod(shape) * 4} bytes as float32, over the limit of {max_dataset_bytes} "
                            "bytes: ask for a smaller n or size", "dataset")
    try:
        shapes = nn.validate_spec(req.model, shape, n_classes)
    except ValueError as exc:  # names the layer, its type and the shapes
        raise ApiError(422, f"model: {exc}", "model") from None
    try:
        nn.make_optimizer(req.optimizer)
    except (ValueError, TypeError) as exc:
        raise ApiError(422, str(exc), "optimizer") from None
    need = nn.footprint(req.model, shape, req.batch_size)
    if need["total"] > max_bytes:
        big = need["largest_layer"]
        raise ApiError(422, f"model: a training step would need about {need['total'] / 2**20:.0f} MiB "
                       f"(activations {need['activations'] / 2**20:.0f} MiB for batch_size={req.batch_size}, "
                       f"parameters and optimizer state {need['parameters'] / 2**20:.0f} MiB), over the limit of "
                       f"{max_bytes / 2**20:.0f} MiB; the largest is layer {big['index']} ({big['type']}) with "
                       f"output {big['output_shape']}: use a smaller batch_size or network", "model")
    if n is not None and n - round(req.validation_split * n) < 1:
        raise ApiError(422, f"validation_split={req.validation_split} leaves no training samples out of {n}",
                       "validation_split")
    return {**req.model_dump(), "input_shape": list(shape), "n_classes": n_classes,
            "layer_shapes": [list(s) for s in shapes]}


@router.post("/train", status_code=202, summary="queue a training job", responses={202: {"model": JobView}, **ERRORS},
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": TrainRequest.model_json_schema(), "example": DIGITS_EXAMPLE}}}})
def train(body: BodyDep, owner: OwnerDep, store: StoreDep, settings: SettingsDep) -> JSONResponse:
    doc, _ = body.parse()
    req = TrainRequest.model_validate(doc)
    params = check_job(store, req, owner, settings.max_train_bytes, settings.max_dataset_bytes)
    if "id" in req.dataset:
        training.keep_dataset(store, req.dataset["id"], settings.result_ttl_s)
    view = train_view(store.get(training.submit_training(store, owner, params)))
    return JSONResponse(view, status_code=202, headers={"Location": view["links"]["self"]})


def _training_job(store, job_id: str, owner: str) -> dict:
    job = store.get(job_id, owner=owner)
    if job is None or job["kind"] != training.KIND:
        raise ApiError(404, f"no training job {job_id!r} (unknown, expired or not yours)", "id")
    return job


def _event(n: int, kind: str, data: dict) -> str:
    return f"id: {n}\nevent: {kind}\ndata: {json.dumps(data)}\n\n"


@router.get("/jobs/{job_id}/events", summary="progress as server-sent events until the job ends",
            responses={200: {"content": {"text/event-stream": {}}}, **ERRORS})
async def events(job_id: str, owner: OwnerDep, store: StoreDep, request: Request) -> StreamingResponse:
    """``event: progress`` with the job view whenever it changes, then ``event: end`` with the final view."""
    await run_in_threadpool(_training_job, store, job_id, owner)

    async def stream():
        last, n, quiet_since = None, 0, time.monotonic()
        while not await request.is_disconnected():
            job = await run_in_threadpool(store.get, job_id)
            if job is None:  # expired while we watched
                yield _event(n + 1, "end", {"id": job_id, "state": "expired"})
                return
            view = train_view(job)
            text = json.dumps(view, sort_keys=True)
            if text != last:
                n, last, quiet_since = n + 1, text, time.monotonic()
                yield _event(n, "end" if job["state"] in FINAL else "progress", view)
            elif time.monotonic() - quiet_since > KEEPALIVE_S:
                quiet_since = time.monotonic()
                yield ": keep-alive\n\n"
            if job["state"] in FINAL:
                return
            await asyncio.sleep(POLL_S)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/jobs/{job_id}/model", summary="the trained model (.npz: parameters + spec)",
            responses={200: {"content": {"application/octet-stream": {}}}, **ERRORS})
def model(job_id: str, owner: OwnerDep, store: StoreDep) -> Response:
    """The parameters of the latest checkpoint: the final model once the job has succeeded, the last
    finished epoch of a running, cancelled or failed one. Load it with ``convcore.nn.io.load``."""
    job = _training_job(store, job_id, owner)
    found = training.model_file(store, job_id, job)
    if found is None:
        raise ApiError(409, f"job {job_id} is {job['state']} and has no finished epoch yet", "id")
    data, epochs = found
    return Response(data, media_type="application/octet-stream", headers={
        "Content-Disposition": f'attachment; filename="model-{job_id}.npz"',
        "X-Epochs-Trained": str(epochs), "X-Job-State": job["state"]})
