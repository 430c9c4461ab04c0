"""POST /v1/models/{id}/predict: run a training job's model on posted inputs (on a worker).

The model id is the training job's id; the inputs are tensors as in /v1/conv (JSON or binary),
and so are the answers: outputs, classes (INT64: a class per sample or a class map per voxel)
and probabilities, or the predicted field. The model is what GET /v1/jobs/{id}/model serves:
the latest checkpoint, or the best epoch's parameters with keep_best.
"""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from app.api.deps import BodyDep, OwnerDep, SenderDep, SettingsDep, StoreDep
from app.api.errors import ApiError
from app.api.results import answer
from app.core.tensors import TensorError, decode_tensors
from app.jobs.submit import submit
from app.schemas.conv import AnswerParams
from app.schemas.jobs import ErrorBody, JobView
from app.schemas.train import PredictResult
from worker.checkpoints import has_checkpoint
from worker.kinds import PREDICT, TRAIN

router = APIRouter(prefix="/models", tags=["training"])
RESPONSES = {200: {"model": PredictResult}, 202: {"model": JobView},
             **{code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 422, 503)}}
EXAMPLE = {"x": {"shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}}


@router.post("/{model_id}/predict",
             summary="outputs of a trained model: classes (per sample or per voxel) and probabilities, or a field",
             responses=RESPONSES, openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"example": EXAMPLE}}}})
def predict(model_id: str, body: BodyDep, owner: OwnerDep, store: StoreDep, sender: SenderDep,
            settings: SettingsDep) -> Response:
    job = store.get(model_id, owner=owner)
    if job is None or job["kind"] != TRAIN.name:
        raise ApiError(404, f"no model {model_id!r}: models are named by their training job's id "
                            "(unknown, expired or not yours)", "model_id")
    doc, binary = body.parse()
    arrays = decode_tensors(doc, PREDICT.inputs, settings.max_array_bytes, binary)
    params = AnswerParams.model_validate({k: v for k, v in doc.items() if k not in PREDICT.inputs})
    if "x" not in arrays:
        raise TensorError("x", "is required")
    check_model_input(store, job, arrays["x"], model_id)
    job = submit(store, sender, PREDICT, owner, {"model_id": model_id, **params.model_dump(by_alias=True)}, arrays)
    return answer(store, job, params, settings.wait_timeout_s)


def check_model_input(store, job: dict, x, model: str) -> None:
    """``x`` (n, *input_shape) with n >= 1 for the training job's model (422), which must have a
    finished epoch (409); ``model`` is the name the caller used. /v1 and /v2 predict share it."""
    shape = tuple(job["params"]["input_shape"])
    if x.shape[1:] != shape or x.shape[0] < 1:
        raise ApiError(422, f"x must have shape (n, {', '.join(map(str, shape))}) with n >= 1 for model {model}, "
                            f"got {list(x.shape)}", "x")
    if not has_checkpoint(store, job["id"]):
        raise ApiError(409, f"model {model} has no finished epoch yet (training job {job['id']} is "
                            f"{job['state']})", "model_id")
