"""POST /v1/conv/forward, /backward, /gradcheck: validate, queue, wait (or 202), answer."""
from __future__ import annotations

import math

import numpy as np
from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel

from app.api.conv_limits import FORWARD_NEEDS, GRADCHECK_NEEDS, check_conv
from app.api.deps import BodyDep, OwnerDep, SenderDep, SettingsDep, StoreDep
from app.api.errors import ApiError
from app.api.results import answer
from app.core.tensors import MAX_DIMS, TensorError, decode_tensors
from app.jobs.submit import submit
from app.schemas.conv import (BackwardBody, BackwardParams, ConvParams, ConvResult, ForwardBody,
                              GradcheckBody, GradcheckParams)
from app.schemas.jobs import ErrorBody, JobView
from worker import fastlane
from worker.kinds import BACKWARD, FORWARD, GRADCHECK, JobKind

router = APIRouter(prefix="/conv", tags=["convolution"])
ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 403, 413, 422, 503)}


def _doc(body_model: type[BaseModel]) -> dict:
    """OpenAPI for a body the route reads itself (so the binary form and size limit work)."""
    schema = body_model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)  # Tensor is already in components (response models use it)
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": schema,
                             "example": body_model.model_config["json_schema_extra"]["examples"][0]},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                     "description": "Binary-data extension: JSON header of "
                                                    "Inference-Header-Content-Length bytes, then raw blobs."}}}}


RESPONSES = {200: {"model": ConvResult}, 202: {"model": JobView}, **ERRORS}


def _read(body, settings, kind: JobKind, params_model):
    """Body -> (validated params, {name: ndarray}), with the kind's required tensors present."""
    doc, binary = body.parse()
    arrays = decode_tensors(doc, kind.inputs, settings.max_array_bytes, binary)
    params = params_model.model_validate({k: v for k, v in doc.items() if k not in kind.inputs})
    _require(arrays, *kind.required)
    return params, arrays


def _require(arrays: dict, *names: str) -> None:
    for name in names:
        if name not in arrays:
            raise TensorError(name, "is required")


def _check(x_shape, W_shape, params: ConvParams, settings, need, dtype=None, **arrays) -> fastlane.Work:
    """Shapes, dtypes and every allocation of the job, before anything is queued (``conv_limits``);
    ``dtype`` defaults to the arrays' own. Returns the job's size."""
    if dtype is None:
        dtype = next((a.dtype for a in arrays.values() if a is not None), np.dtype(np.float64))
    return check_conv(x_shape, W_shape, params.conv_kwargs(), dtype, need, settings, **arrays)


def _run(kind: JobKind, params: ConvParams, arrays, owner, store, sender, settings,
         work: fastlane.Work | None = None) -> Response:
    fast_madds = work.madds if fastlane.eligible(kind.name, work, settings.fast_lane_max_madds) else None
    job = submit(store, sender, kind, owner, params.model_dump(by_alias=True), arrays, fast_madds)
    return answer(store, job, params, settings.wait_timeout_s)


@router.post("/forward", summary="y = conv(x, W) + b", responses=RESPONSES, openapi_extra=_doc(ForwardBody))
def forward(body: BodyDep, owner: OwnerDep, store: StoreDep, sender: SenderDep, settings: SettingsDep) -> Response:
    params, a = _read(body, settings, FORWARD, ConvParams)
    work = _check(a["x"].shape, a["W"].shape, params, settings, FORWARD_NEEDS, x=a["x"], W=a["W"], b=a.get("b"))
    return _run(FORWARD, params, a, owner, store, sender, settings, work)


@router.post("/backward", summary="gx, gW, gb for gy = dL/dy", responses=RESPONSES,
             openapi_extra=_doc(BackwardBody))
def backward(body: BodyDep, owner: OwnerDep, store: StoreDep, sender: SenderDep, settings: SettingsDep) -> Response:
    params, a = _read(body, settings, BACKWARD, BackwardParams)
    work = _check(a["x"].shape, a["W"].shape, params, settings, params.need, x=a["x"], W=a["W"], gy=a["gy"])
    return _run(BACKWARD, params, a, owner, store, sender, settings, work)


@router.post("/gradcheck", summary="finite-difference check of the gradients", responses=RESPONSES,
             openapi_extra=_doc(GradcheckBody))
def gradcheck(body: BodyDep, owner: OwnerDep, store: StoreDep, sender: SenderDep, settings: SettingsDep) -> Response:
    params, a = _read(body, settings, GRADCHECK, GradcheckParams)
    if "x" in a or "W" in a:
        _require(a, "x", "W")
        # Finite differences run in float64 whatever the posted dtype.
        _check(a["x"].shape, a["W"].shape, params, settings, GRADCHECK_NEEDS, np.float64, x=a["x"], W=a["W"],
               b=a.get("b"), gy=a.get("gy"))
    elif params.x_shape is None or params.W_shape is None:
        raise ApiError(422, "gradcheck needs either tensors x and W, or x_shape and W_shape (with a seed)", "x")
    else:
        for name, shape in (("x_shape", params.x_shape), ("W_shape", params.W_shape)):
            if len(shape) > MAX_DIMS:
                raise ApiError(422, f"{name} has {len(shape)} dimensions, at most {MAX_DIMS} are supported", name)
            if any(d < 0 for d in shape):
                raise ApiError(422, f"{name} must hold non-negative sizes, got {shape}", name)
            if 8 * math.prod(shape) > settings.max_array_bytes:  # drawn as float64
                raise ApiError(413, f"{name}={shape} exceeds the limit of {settings.max_array_bytes} bytes", name)
        _check(params.x_shape, params.W_shape, params, settings, GRADCHECK_NEEDS, np.float64)
    return _run(GRADCHECK, params, a, owner, store, sender, settings)
