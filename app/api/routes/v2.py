"""The Open Inference Protocol (v2 REST, as Triton and KServe speak it) beside /v1: same keys, limits, jobs.

Health and server metadata are open (as /healthz); model endpoints need a key when keys are set.
Inference waits for its job like /v1 (up to CONVND_WAIT_TIMEOUT_S); a job still queued or running
then is answered 202 with its id, whose result /v1/jobs/{id}/result gives later (the protocol has
no asynchronous form; its clients report the 202's ``error`` text). Errors are ``{"error": message}``.
"""
from __future__ import annotations

from typing import Annotated

import redis
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from app.api import v2_models
from app.api.deps import (JSON_CONTENT_TYPE, Body, OwnerDep, SenderDep, SettingsDep, StoreDep, read_body_within,
                          read_limited)
from app.api.errors import ApiError
from app.api.results import JOBS_PATH
from app.api.v2_errors import V2Route
from app.api.v2_infer import outputs_of, parse_request, plan, response_parameters
from app.core.tensors import BINARY_CONTENT_TYPE, HEADER_LENGTH
from app.core.v2_tensors import response_body
from app.jobs.submit import submit, wait_for
from app.schemas.jobs import job_view
from app.schemas.v2 import (VERSION, IndexEntry, IndexRequest, InferRequest, InferResponse, ModelMetadata,
                            Readiness, ServerMetadata, V2Error)
from worker import fastlane
from worker.store import FINAL


async def read_v2_body(request: Request, settings: SettingsDep) -> Body:
    """The body as /v1 reads it, except that a body without Content-Type is JSON when no browser sent it:
    tritonclient and KServe's client send their JSON requests without one. A browser's cross-site POST
    always carries ``Origin`` (and a typeless body is the one form it may send without asking first),
    so such requests still need the JSON Content-Type."""
    headers = request.headers
    if "content-type" not in headers and HEADER_LENGTH not in headers and "origin" not in headers:
        raw = await read_limited(request, min(settings.max_json_bytes, settings.max_body_bytes))
        return Body(raw, JSON_CONTENT_TYPE, None)
    return await read_body_within(request, settings, settings.max_json_bytes)


V2BodyDep = Annotated[Body, Depends(read_v2_body)]

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"], route_class=V2Route)
ERRORS = {code: {"model": V2Error} for code in (400, 401, 403, 404, 409, 413, 503)}
EXTENSIONS = ["binary_tensor_data", "model_repository"]  # the repository one read only: index, no load/unload
MODEL = "/models/{model_name}"
VERSIONED = "/models/{model_name}/versions/{version}"


@router.get("", response_model=ServerMetadata, summary="server name, version and protocol extensions")
def server_metadata(request: Request) -> dict:
    return {"name": request.app.title, "version": request.app.version, "extensions": EXTENSIONS}


@router.get("/health/live", summary="the API process is alive", responses={200: {"content": {
    "application/json": {"example": {"live": True}}}}})
def live() -> dict:
    return {"live": True}


@router.get("/health/ready", response_model=Readiness, responses={400: {"model": Readiness}},
            summary="Redis reachable and at least one worker up (400 when not, as the protocol says)")
def ready(store: StoreDep) -> JSONResponse:
    try:
        store.r.ping()
        reason = None if store.workers() else "no worker is answering"
    except redis.RedisError as exc:
        reason = f"the job store (Redis) is unreachable: {exc}"
    return JSONResponse({"ready": reason is None, **({"reason": reason} if reason else {})},
                        status_code=200 if reason is None else 400)


@router.get(MODEL, response_model=ModelMetadata, responses=ERRORS, summary="a model's inputs and outputs")
@router.get(VERSIONED, response_model=ModelMetadata, responses=ERRORS, include_in_schema=False)
def model_metadata(model_name: str, owner: OwnerDep, store: StoreDep, version: str | None = None) -> dict:
    return v2_models.metadata(store, v2_models.resolve(store, owner, model_name, version))


@router.get(MODEL + "/ready", response_model=Readiness, responses=ERRORS,
            summary="200 when the model can answer now, 400 with the reason when not")
@router.get(VERSIONED + "/ready", response_model=Readiness, responses=ERRORS, include_in_schema=False)
def model_ready(model_name: str, owner: OwnerDep, store: StoreDep, version: str | None = None) -> JSONResponse:
    state, reason = v2_models.state(store, v2_models.resolve(store, owner, model_name, version))
    body = {"name": model_name, "ready": state == "READY", **({"reason": reason} if reason else {})}
    return JSONResponse(body, status_code=200 if state == "READY" else 400)


def _inlined(schema: dict) -> dict:
    """A model's JSON schema with its $defs written in place (the app's components do not hold them)."""
    defs = schema.pop("$defs", {})

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: walk(v) for k, v in node.items()}
        return [walk(v) for v in node] if isinstance(node, list) else node

    return walk(schema)


INFER_DOC = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": _inlined(InferRequest.model_json_schema()),
                         "example": InferRequest.model_config["json_schema_extra"]["examples"][0]},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                 "description": "Binary-data extension: JSON header of "
                                                "Inference-Header-Content-Length bytes, then the raw inputs."}}}}


@router.post(MODEL + "/infer", response_model=InferResponse, responses={202: {"model": V2Error}, **ERRORS},
             summary="run a model (a job on a worker, as /v1)", openapi_extra=INFER_DOC)
@router.post(VERSIONED + "/infer", response_model=InferResponse, responses=ERRORS, include_in_schema=False,
             openapi_extra=INFER_DOC)
def infer(model_name: str, body: V2BodyDep, owner: OwnerDep, store: StoreDep, sender: SenderDep,
          settings: SettingsDep, version: str | None = None) -> Response:
    model = v2_models.resolve(store, owner, model_name, version)
    doc, binary = body.parse()
    req = parse_request(doc)
    job_plan = plan(store, model, req, binary, settings)
    fast = fastlane.eligible(job_plan.kind.name, job_plan.work, settings.fast_lane_max_madds)
    job = submit(store, sender, job_plan.kind, owner, job_plan.params, job_plan.arrays,
                 job_plan.work.madds if fast else None)
    job = wait_for(store, job, settings.wait_timeout_s)
    if job["state"] not in FINAL:
        return _still_running(job, model_name, req.id, settings.wait_timeout_s)
    if job["state"] != "succeeded":
        error = job["error"] or {}
        raise ApiError(int(error.get("status", 500)), error.get("message", f"the job {job['state']}"))
    arrays = outputs_of(store, job, model)
    doc = {"model_name": model_name, "model_version": VERSION, **({"id": req.id} if req.id is not None else {}),
           "parameters": response_parameters(job)}
    content, header_length = response_body(doc, [(n, arrays[n], b) for n, b in job_plan.outputs])
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type=BINARY_CONTENT_TYPE, headers={HEADER_LENGTH: str(header_length)})


def _still_running(job: dict, model_name: str, request_id: str | None, waited_s: float) -> JSONResponse:
    view = job_view(job, JOBS_PATH)
    body = {"error": f"job {job['id']} is still {job['state']} after {waited_s:g} s; its result will be at "
                     f"{view['links']['result']}",
            "model_name": model_name, **({"id": request_id} if request_id is not None else {}),
            "job_id": job["id"], "state": job["state"], "links": view["links"]}
    return JSONResponse(body, status_code=202, headers={"Location": view["links"]["self"]})


@router.post("/repository/index", response_model=list[IndexEntry], response_model_exclude_none=True, responses=ERRORS,
             summary="the models this key can see, with their state (read only: no load/unload)")
def repository_index(body: V2BodyDep, owner: OwnerDep, store: StoreDep) -> list[dict]:
    req = IndexRequest.model_validate(body.parse()[0]) if body.raw.strip() else IndexRequest()
    return v2_models.index(store, owner, req.ready)


@router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False)
def unknown(path: str) -> JSONResponse:
    """Any other /v2 path: the protocol's 404 (not /v1's error form)."""
    return JSONResponse({"error": f"no v2 endpoint /v2/{path}"}, status_code=404)
