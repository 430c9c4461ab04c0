"""Answers carrying a job's outcome: the result (JSON or binary arrays), an error, or 202."""
from __future__ import annotations

from fastapi.responses import JSONResponse, Response

from app.api.errors import ApiError
from app.core.tensors import (
    BINARY_CONTENT_TYPE,
    HEADER_LENGTH,
    dumps_json,
    encode_binary,
    encode_tensor,
)
from app.jobs.submit import wait_for_outcome
from app.schemas.jobs import job_view
from worker.store import FINAL, JobStore

JOBS_PATH = "/v1/jobs"


def accepted(job: dict) -> JSONResponse:
    """202 with the job's view and where to find it."""
    view = job_view(job, JOBS_PATH)
    return JSONResponse(view, status_code=202, headers={"Location": view["links"]["self"]})


def outcome(store: JobStore, job: dict, binary: bool, arrays: dict | None = None) -> Response:
    """200 with the result of a succeeded job; the stored error of a failed one; 409 otherwise.
    ``arrays``: its outputs when already read (else they are read here)."""
    state = job["state"]
    if state == "failed":
        error = job["error"] or {}
        raise ApiError(int(error.get("status", 500)), error.get("message", "the job failed"))
    if state != "succeeded":
        raise ApiError(409, f"job {job['id']} is {state}, it has no result", "id")
    meta = dict(job["result"] or {})
    names = meta.pop("outputs", [])
    if arrays is None:
        arrays = store.get_arrays(job["id"], "out", names)
    doc = {"job_id": job["id"], "state": state, **meta, "timings": job_view(job, JOBS_PATH)["timings"]}
    if binary:
        content, n = encode_binary({**doc, **arrays})
        return Response(content, media_type=BINARY_CONTENT_TYPE, headers={HEADER_LENGTH: str(n)})
    answer_doc = {**doc, **{k: encode_tensor(v, k) for k, v in arrays.items()}}   # 422 on NaN/Inf
    # orjson, arrays as arrays: ~10x json.dumps (whose float formatting was the API's largest CPU cost
    # on a small forward), and float32 values in their shortest form (~45 % fewer bytes to send and parse).
    return Response(dumps_json(answer_doc), media_type="application/json")


def answer(store, job: dict, params, timeout_s: float) -> Response:
    """The outcome once the job has ended within ``timeout_s`` (unless ``async``); else 202 with its state.

    An async job is answered from the record just written (queued): re-reading it could show
    any later state, depending on how fast a worker is."""
    if not params.async_:
        job, arrays = wait_for_outcome(store, job, timeout_s)
        if job["state"] in FINAL:
            return outcome(store, job, params.binary_data_output, arrays)
    return accepted(job)
