"""POST /v1/conv/forward, /backward, /gradcheck: validate, queue, wait (or 202), answer."""
from __future__ import annotations

import math

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel

from app.api.deps import BodyDep, OwnerDep, SettingsDep, StoreDep
from app.api.errors import ApiError
from app.api.results import accepted, outcome
from app.core.tensors import TensorError, decode_tensors
from app.jobs.submit import submit
from app.schemas.conv import (BackwardBody, BackwardParams, ConvParams, ConvResult, ForwardBody,
                              GradcheckBody, GradcheckParams)
from app.schemas.jobs import ErrorBody, JobView
from convcore import make_geometry
from convcore.geometry import check_arrays

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


def _read(body, settings, fields: tuple, params_model):
    """Body -> (validated params, {name: ndarray})."""
    doc, binary = body.parse()
    arrays = decode_tensors(doc, fields, settings.max_array_bytes, binary)
    params = params_model.model_validate({k: v for k, v in doc.items() if k not in fields})
    return params, arrays


def _require(arrays: dict, *names: str) -> None:
    for name in names:
        if name not in arrays:
            raise TensorError(name, "is required")


def _check(x_shape, W_shape, params: ConvParams, max_bytes: int, **arrays) -> None:
    """convcore's own shape and dtype checks, before anything is queued (422 with its message),
    and a 413 when padding or the output would make the worker allocate more than ``max_bytes``."""
    try:
        geom = make_geometry(x_shape, W_shape, **{k: v for k, v in params.conv_kwargs().items() if k != "algorithm"})
        if arrays:
            check_arrays(geom, **arrays)
    except (ValueError, TypeError) as exc:
        raise ApiError(422, str(exc)) from None
    padded = geom.batch * geom.in_channels * math.prod(geom.padded)
    for what, count, field in (("the padded input", padded, "padding"), ("the output", math.prod(geom.out_shape), "x")):
        if 8 * count > max_bytes:
            raise ApiError(413, f"{what} would hold {count} values ({8 * count} bytes as float64) for "
                                f"{geom.describe()}, over the limit of {max_bytes} bytes", field)


def _run(kind, params: ConvParams, arrays, owner, store, settings) -> Response:
    job_id = submit(store, kind, owner, params.model_dump(by_alias=True), arrays)
    if not params.async_ and store.wait(job_id, settings.wait_timeout_s):
        return outcome(store, store.get(job_id), params.binary_data_output)
    return accepted(store.get(job_id))


@router.post("/forward", summary="y = conv(x, W) + b", responses=RESPONSES, openapi_extra=_doc(ForwardBody))
def forward(body: BodyDep, owner: OwnerDep, store: StoreDep, settings: SettingsDep) -> Response:
    params, a = _read(body, settings, ("x", "W", "b"), ConvParams)
    _require(a, "x", "W")
    _check(a["x"].shape, a["W"].shape, params, settings.max_array_bytes, x=a["x"], W=a["W"], b=a.get("b"))
    return _run("conv.forward", params, a, owner, store, settings)


@router.post("/backward", summary="gx, gW, gb for gy = dL/dy", responses=RESPONSES,
             openapi_extra=_doc(BackwardBody))
def backward(body: BodyDep, owner: OwnerDep, store: StoreDep, settings: SettingsDep) -> Response:
    params, a = _read(body, settings, ("gy", "x", "W"), BackwardParams)
    _require(a, "gy", "x", "W")
    _check(a["x"].shape, a["W"].shape, params, settings.max_array_bytes, x=a["x"], W=a["W"], gy=a["gy"])
    return _run("conv.backward", params, a, owner, store, settings)


@router.post("/gradcheck", summary="finite-difference check of the gradients", responses=RESPONSES,
             openapi_extra=_doc(GradcheckBody))
def gradcheck(body: BodyDep, owner: OwnerDep, store: StoreDep, settings: SettingsDep) -> Response:
    params, a = _read(body, settings, ("x", "W", "b", "gy", "gx", "gW", "gb"), GradcheckParams)
    if "x" in a or "W" in a:
        _require(a, "x", "W")
        _check(a["x"].shape, a["W"].shape, params, settings.max_array_bytes, x=a["x"], W=a["W"], b=a.get("b"), gy=a.get("gy"))
    elif params.x_shape is None or params.W_shape is None:
        raise ApiError(422, "gradcheck needs either tensors x and W, or x_shape and W_shape (with a seed)", "x")
    else:
        _check(params.x_shape, params.W_shape, params, settings.max_array_bytes)
        for name, shape in (("x_shape", params.x_shape), ("W_shape", params.W_shape)):
            if 8 * math.prod(shape) > settings.max_array_bytes:
                raise ApiError(413, f"{name}={shape} exceeds the limit of {settings.max_array_bytes} bytes", name)
    return _run("conv.gradcheck", params, a, owner, store, settings)
