"""POST /v1/models/{id}/predict: run a training job's latest model on posted inputs (on a worker).

The model id is the training job's id; the inputs are tensors as in /v1/conv (JSON or binary).
"""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from app.api.deps import BodyDep, OwnerDep, SettingsDep, StoreDep
from app.api.errors import ApiError
from app.api.results import accepted, outcome
from app.core.tensors import TensorError, decode_tensors
from app.schemas.conv import AnswerParams
from app.jobs import training
from app.schemas.jobs import ErrorBody, JobView
from app.schemas.train import PredictResult

router = APIRouter(prefix="/models", tags=["training"])
RESPONSES = {200: {"model": PredictResult}, 202: {"model": JobView},
             **{code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 422, 503)}}
EXAMPLE = {"x": {"shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}}


@router.post("/{model_id}/predict", summary="class probabilities and predictions of a trained model",
             responses=RESPONSES, openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"example": EXAMPLE}}}})
def predict(model_id: str, body: BodyDep, owner: OwnerDep, store: StoreDep, settings: SettingsDep) -> Response:
    job = store.get(model_id, owner=owner)
    if job is None or job["kind"] != training.KIND:
        raise ApiError(404, f"no model {model_id!r}: models are named by their training job's id "
                            "(unknown, expired or not yours)", "model_id")
    doc, binary = body.parse()
    arrays = decode_tensors(doc, ("x",), settings.max_array_bytes, binary)
    params = AnswerParams.model_validate({k: v for k, v in doc.items() if k != "x"})
    if "x" not in arrays:
        raise TensorError("x", "is required")
    shape = tuple(job["params"]["input_shape"])
    if arrays["x"].shape[1:] != shape or arrays["x"].shape[0] < 1:
        raise ApiError(422, f"x must have shape (n, {', '.join(map(str, shape))}) with n >= 1 for this model, "
                            f"got {list(arrays['x'].shape)}", "x")
    if not store.r.exists(training.ckpt_key(store, model_id)):
        raise ApiError(409, f"model {model_id} has no finished epoch yet (job {job['state']})", "model_id")
    job_id = training.submit_predict(store, owner, {"model_id": model_id, **params.model_dump(by_alias=True)},
                                     arrays)
    if not params.async_ and store.wait(job_id, settings.wait_timeout_s):
        return outcome(store, store.get(job_id), params.binary_data_output)
    return accepted(store.get(job_id))
