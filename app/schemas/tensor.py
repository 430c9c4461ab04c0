"""The Open Inference Protocol tensor object, for the OpenAPI docs (decoding is in app.core.tensors)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class BinaryParameters(BaseModel):
    binary_data_size: int = Field(..., ge=0, description="Bytes of this tensor in the binary part of the body.")


class Tensor(BaseModel):
    """``{"shape", "datatype", "data"}``; ``data`` row-major, flat or nested, or left out with
    ``parameters.binary_data_size`` when the raw bytes follow the JSON header."""

    shape: list[int] = Field(..., examples=[[1, 1, 4]])
    datatype: Literal["FP32", "FP64"]
    data: list | None = Field(None, examples=[[1.0, 2.0, 3.0, 4.0]])
    parameters: BinaryParameters | None = None
