"""POST /v1/train; GET /v1/jobs/{id}/events (server-sent events) and /v1/jobs/{id}/model.

A job is checked completely before it is queued (dataset, every layer's or graph node's shapes
against the targets, loss, optimizer, training options), so an impossible network is a 422 naming
the node and the shapes, never a worker crash.
"""
from __future__ import annotations

import asyncio
import json
import math
import time

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse

from app.api import orphans
from app.api.deps import OwnerDep, SenderDep, SettingsDep, StoreDep, TrainBodyDep
from app.api.errors import ApiError
from app.api.results import JOBS_PATH
from app.jobs.submit import submit
from app.schemas.jobs import ErrorBody, JobView, job_view
from app.schemas.train import DIGITS_EXAMPLE, TrainRequest
from convcore import datasets, nn
from worker import checkpoints, dataset_store, model_names
from worker.kinds import TRAIN
from worker.store import FINAL

router = APIRouter(tags=["training"])
ERRORS = {code: {"model": ErrorBody} for code in (401, 403, 404, 409, 413, 422, 503)}
POLL_S = 0.25        # how often an event stream looks at the job
KEEPALIVE_S = 15.0   # comment lines keep proxies from closing a quiet stream


def train_view(job: dict) -> dict:
    view = job_view(job, JOBS_PATH)
    if job["kind"] == TRAIN.name:
        base = view["links"]["self"]
        view["links"].update(events=f"{base}/events", model=f"{base}/model",
                             predict=f"/v1/models/{job['id']}/predict")
    return view


def check_job(store, req: TrainRequest, owner: str, max_bytes: int, max_dataset_bytes: int) -> dict:
    """The job's parameters for the worker, after every check convcore.nn can make without arrays:
    dataset, model (a list or a graph; its output against the targets), loss, optimizer and the
    training options (convcore.nn.check_job, whose errors name the job's key and the node)."""
    try:
        info = dataset_store.job_dataset_info(store, req.dataset, owner)
    except datasets.DatasetError as exc:
        raise ApiError(422, f"dataset: {exc}", "dataset") from None
    shape, n = tuple(info.input_shape), info.n
    if "id" not in req.dataset:
        target_bytes = math.prod(info.target_shape) * (8 if info.n_classes else 4)  # int64 labels, float32 fields
        size = n * (math.prod(shape) * 4 + target_bytes)
        if size > max_dataset_bytes:
            raise ApiError(422, f"dataset: {req.dataset} would generate {n} samples of shape {list(shape)}, "
                                f"{size} bytes with their targets, over the limit of {max_dataset_bytes} "
                                "bytes: ask for a smaller n or size", "dataset")
    held_out = datasets.validation_count(n, req.validation_split)   # exactly what the worker's split holds out
    if n - held_out < 1:
        raise ApiError(422, f"validation_split={req.validation_split} leaves no training samples out of {n}",
                       "validation_split")
    job = req.model_dump()
    try:
        plan = nn.check_job(job, info, has_validation=held_out > 0)
    except nn.JobError as exc:  # names the key, the node, its type and the shapes
        raise ApiError(422, str(exc), exc.field) from None
    need = nn.footprint(req.model, shape, req.batch_size)
    if need["total"] > max_bytes:
        big = need["largest_layer"]
        raise ApiError(422, f"model: a training step would need about {need['total'] / 2**20:.0f} MiB "
                       f"(activations {need['activations'] / 2**20:.0f} MiB for batch_size={req.batch_size}, "
                       f"parameters and optimizer state {need['parameters'] / 2**20:.0f} MiB), over the limit of "
                       f"{max_bytes / 2**20:.0f} MiB; the largest is {nn.parse_model(req.model).where(big['index'])} "
                       f"with output {big['output_shape']}: use a smaller batch_size or network", "model")
    return {**job, "input_shape": list(shape), "n_classes": info.n_classes, "target_shape": list(info.target_shape),
            "task": plan["task"], "output_shape": plan["output_shape"], "layer_shapes": plan["layer_shapes"]}


@router.post("/train", status_code=202, summary="queue a training job", responses={202: {"model": JobView}, **ERRORS},
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": TrainRequest.model_json_schema(), "example": DIGITS_EXAMPLE}}}})
def train(body: TrainBodyDep, owner: OwnerDep, store: StoreDep, sender: SenderDep,
          settings: SettingsDep) -> JSONResponse:
    doc, _ = body.parse()
    check_size(doc, settings)
    req = TrainRequest.model_validate(doc)
    params = check_job(store, req, owner, settings.max_train_bytes, settings.max_dataset_bytes)
    if "id" in req.dataset:
        dataset_store.keep_dataset(store, req.dataset["id"], settings.result_ttl_s)
    # Answered from the record as written (queued): a re-read could show any later state.
    view = train_view(_submit_named(store, sender, owner, params, req.name))
    return JSONResponse(view, status_code=202, headers={"Location": view["links"]["self"]})


def _submit_named(store, sender, owner: str, params: dict, name: str | None) -> dict:
    """Queue the job; with a model ``name``, only if no other live model of ``owner`` has it (else 409)."""
    if name is None:
        return submit(store, sender, TRAIN, owner, params)
    token, holder = model_names.reserve(store, owner, name)
    if token is None:
        raise ApiError(409, f"the model name {name!r} is taken by {holder}: choose another", "name")
    try:
        job = submit(store, sender, TRAIN, owner, params)
    except BaseException:
        model_names.release(store, owner, name, token)
        raise
    model_names.bind(store, owner, name, token, job["id"])
    return job


def check_size(doc: dict, settings) -> None:
    """Layers and epochs within the service's limits, checked before any other work on the spec (422)."""
    model = doc.get("model")
    layers = model.get("graph") if isinstance(model, dict) else model
    if isinstance(layers, list) and len(layers) > settings.max_train_layers:
        raise ApiError(422, f"model has {len(layers)} layers, over the limit of {settings.max_train_layers} "
                            "(CONVND_MAX_TRAIN_LAYERS)", "model")
    epochs = doc.get("epochs")
    if isinstance(epochs, int) and epochs > settings.max_train_epochs:
        raise ApiError(422, f"epochs={epochs} is over the limit of {settings.max_train_epochs} "
                            "(CONVND_MAX_TRAIN_EPOCHS)", "epochs")


def _training_job(store, job_id: str, owner: str) -> dict:
    job = store.get(job_id, owner=owner)
    if job is None or job["kind"] != TRAIN.name:
        raise ApiError(404, f"no training job {job_id!r} (unknown, expired or not yours)", "id")
    return job


def _watched(store, sender, settings, job_id: str) -> dict | None:
    """The job as it is now (queued again if it had lost its worker: ``orphans``), or None once expired."""
    job = store.get(job_id)
    return None if job is None else orphans.checked(store, sender, settings, job)


def _event(n: int, kind: str, data: dict) -> str:
    return f"id: {n}\nevent: {kind}\ndata: {json.dumps(data)}\n\n"


@router.get("/jobs/{job_id}/events", summary="progress as server-sent events until the job ends",
            responses={200: {"content": {"text/event-stream": {}}}, **ERRORS})
async def events(job_id: str, owner: OwnerDep, store: StoreDep, sender: SenderDep, settings: SettingsDep,
                 request: Request) -> StreamingResponse:
    """``event: progress`` with the job view whenever it changes, then ``event: end`` with the final view."""
    await run_in_threadpool(_training_job, store, job_id, owner)

    async def stream():
        last, n, quiet_since = None, 0, time.monotonic()
        while not await request.is_disconnected():
            job = await run_in_threadpool(_watched, store, sender, settings, job_id)
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
    finished epoch of a running, cancelled or failed one; with keep_best, the best monitored epoch's
    so far. Load it with ``convcore.nn.io.load``."""
    job = _training_job(store, job_id, owner)
    found = checkpoints.model_file(store, job_id, job)
    if found is None:
        raise ApiError(409, f"job {job_id} is {job['state']} and has no finished epoch yet", "id")
    data, epochs = found
    return Response(data, media_type="application/octet-stream", headers={
        "Content-Disposition": f'attachment; filename="model-{job_id}.npz"',
        "X-Epochs-Trained": str(epochs), "X-Job-State": job["state"]})
