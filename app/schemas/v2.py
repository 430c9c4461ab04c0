"""Open Inference Protocol (v2 REST) bodies: inference request and response, metadata, repository index.

The request is read by the route itself (so the binary-data extension and the size limit work);
these models validate its JSON header and document the endpoints.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

CONV_FORWARD, CONV_BACKWARD = "conv_forward", "conv_backward"
STATIC_MODELS = (CONV_FORWARD, CONV_BACKWARD)
VERSION = "1"  # every model has this one version
# A training job's optional model name: no clash with the static models or with job ids (32 hex digits).
MODEL_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a trained model (matching MODEL_NAME_PATTERN is checked by the schema)."""
    if name in STATIC_MODELS:
        return f"{name!r} is a built-in model"
    if len(name) == 32 and all(c in "0123456789abcdef" for c in name):
        return f"{name!r} looks like a job id"
    return None


class RequestInput(BaseModel):
    """A tensor: ``data`` row-major (flat or nested), or ``parameters.binary_data_size`` with a binary body."""

    model_config = ConfigDict(extra="forbid")
    name: str
    shape: list = Field(..., examples=[[1, 1, 4]])
    datatype: str = Field(..., examples=["FP32"], description="FP32 or FP64")
    parameters: dict | None = None
    data: list | None = Field(None, examples=[[1.0, 2.0, 3.0, 4.0]])


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    parameters: dict | None = Field(None, description='{"binary_data": true} returns it as raw bytes')


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "id": "42", "parameters": {"padding": 1},
        "inputs": [{"name": "x", "shape": [1, 1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
                   {"name": "W", "shape": [1, 1, 3], "datatype": "FP32", "data": [1, 0, -1]}],
        "outputs": [{"name": "y"}]}]})
    id: str | None = Field(None, description="echoed in the response")
    model_name: str | None = Field(None, description="ignored: the URL names the model (KServe's client sends it)")
    model_version: str | None = Field(None, description="ignored, likewise")
    parameters: dict | None = Field(None, description="the model's parameters (conv_*: stride, padding, dilation, "
                                    "groups, padding_mode, algorithm) and binary_data_output")
    inputs: list[RequestInput] = Field(..., min_length=1)
    outputs: list[RequestOutput] | None = Field(None, description="the outputs to return (all when left out)")


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict | None = None
    data: list | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict = Field(..., description="job_id (see /v1/jobs), device, compute_s, ...")
    outputs: list[ResponseOutput]


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(..., description="-1 for a variable dimension")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]
    parameters: dict = Field(..., description="trained models: job_id, state, n_classes, epochs_trained, ...")


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Readiness(BaseModel):
    ready: bool
    name: str | None = None
    reason: str | None = None


class IndexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ready: bool = Field(False, description="only the models ready for inference")


class IndexEntry(BaseModel):
    name: str
    version: str
    state: str = Field(..., description="READY, LOADING (training, no finished epoch yet) or UNAVAILABLE")
    reason: str
    alias: str | None = Field(None, description="the training job's model name, if it was given one")


class V2Error(BaseModel):
    error: str
