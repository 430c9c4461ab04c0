"""Request and response bodies of the /v1/conv endpoints.

``*Params`` models validate the non-array fields; the ``*Body`` models add the tensors
for the OpenAPI docs (tensors are decoded separately, JSON or binary).
"""
from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from convcore.engines import engine_devices
from worker.kinds import CONV_PARAMS

from .tensor import Tensor

IntOrInts = Union[int, list[int]]
Padding = Union[int, Literal["valid", "same", "full"], list[Union[int, list[int]]]]


class AnswerParams(BaseModel):
    """How a job-running POST answers (wait for the result, or 202 at once; arrays as JSON or bytes) and
    which device runs it."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    async_: bool = Field(False, alias="async", description="Answer 202 with a job id at once.")
    binary_data_output: bool = Field(False, description="Return arrays as raw bytes (binary-data extension).")
    device: Literal["auto", "cpu", "gpu"] = Field(
        "auto", description="Where the job runs: a GPU worker, a CPU worker, or auto (a GPU worker when one is "
                            "up, else a CPU worker); 503 when no worker serves the asked device.")


class ConvParams(AnswerParams):
    """convcore's parameters, plus how to answer."""

    stride: IntOrInts = 1
    padding: Padding = 0
    dilation: IntOrInts = 1
    groups: int = 1
    padding_mode: Literal["zeros", "circular", "reflect", "replicate"] = "zeros"
    algorithm: Literal["auto", "fft", "direct", "winograd"] = Field(
        "auto", description="The engine: auto picks one per layer shape; winograd (3^N kernels, stride 1) "
                            "runs on CPU workers only, so it sends device auto to the CPU.")

    @field_validator("algorithm")
    @classmethod
    def _not_on_a_gpu(cls, algorithm: str, info: ValidationInfo) -> str:
        if info.data.get("device") == "gpu" and algorithm != "auto" and "gpu" not in engine_devices(algorithm):
            raise ValueError(f'algorithm "{algorithm}" runs on CPU workers only; ask for "device": "cpu" or '
                             f'"auto", or another algorithm')
        return algorithm

    @model_validator(mode="after")
    def _host_only_engine(self):
        """A CPU-only engine sends ``device: auto`` to a CPU worker."""
        if self.algorithm != "auto" and "gpu" not in engine_devices(self.algorithm):
            self.device = "cpu"
        return self

    def conv_kwargs(self) -> dict:
        return self.model_dump(include=set(CONV_PARAMS))


class BackwardParams(ConvParams):
    need: list[Literal["x", "W", "b"]] = Field(["x", "W", "b"], description="Gradients to compute.")


class GradcheckParams(ConvParams):
    x_shape: list[int] | None = Field(None, description="Without arrays: shape of x drawn from `seed`.")
    W_shape: list[int] | None = Field(None, description="Without arrays: shape of W drawn from `seed`.")
    bias: bool = Field(True, description="Without arrays: draw a bias too.")
    datatype: Literal["FP32", "FP64"] = "FP64"
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Without arrays: the generator's seed.")
    eps: float = Field(1e-6, gt=0, description="Finite-difference step: eps * max(1, |entry|).")
    atol: float = Field(1e-8, ge=0)
    rtol: float = Field(1e-5, ge=0)
    samples: int = Field(16, ge=1, le=1000, description="At most this many entries of each gradient are checked by finite differences.")


X = Tensor.model_validate({"shape": [1, 1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]})
W = Tensor.model_validate({"shape": [1, 1, 2], "datatype": "FP32", "data": [1, -1]})


class ForwardBody(ConvParams):
    x: Tensor
    W: Tensor
    b: Tensor | None = None
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"x": X.model_dump(exclude_none=True), "W": W.model_dump(exclude_none=True), "padding": 0}]})


class BackwardBody(BackwardParams):
    gy: Tensor
    x: Tensor
    W: Tensor
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"gy": {"shape": [1, 1, 3], "datatype": "FP32", "data": [1, 1, 1]},
         "x": X.model_dump(exclude_none=True), "W": W.model_dump(exclude_none=True), "need": ["x", "W"]}]})


class GradcheckBody(GradcheckParams):
    x: Tensor | None = None
    W: Tensor | None = None
    b: Tensor | None = None
    gy: Tensor | None = None
    gx: Tensor | None = Field(None, description="Your own gradient to check (likewise gW, gb).")
    gW: Tensor | None = None
    gb: Tensor | None = None
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"x_shape": [2, 3, 5, 5, 5], "W_shape": [4, 3, 2, 2, 2], "padding": 1, "seed": 7}],
        # tensors x and W, or the shapes to draw them from
        "anyOf": [{"required": ["x", "W"]}, {"required": ["x_shape", "W_shape"]}]})


class ConvResult(BaseModel):
    """200 answer (arrays under their names: y, or gx/gW/gb)."""

    job_id: str
    state: str
    algorithm: str | None = None
    device: str | None = None
    compute_s: float | None = None
    timings: dict
    y: Tensor | None = None
    gx: Tensor | None = None
    gW: Tensor | None = None
    gb: Tensor | None = None
    report: dict | None = Field(None, description="gradcheck: per-gradient errors and ok flags.")
