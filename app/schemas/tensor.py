"""The Open Inference Protocol tensor object, for the OpenAPI docs (decoding is in app.core.tensors)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class BinaryParameters(BaseModel):
    binary_data_size: int = Field(..., ge=0, description="Bytes of this tensor in the binary part of the body.")


class Tensor(BaseModel):
    """``{"shape", "datatype", "data"}``; ``data`` row-major, flat or nested, or left out with
    ``parameters.binary_data_size`` when the raw bytes follow the JSON header."""

    # data, or parameters.binary_data_size with the binary form: one of the two is required
    model_config = ConfigDict(json_schema_extra={"anyOf": [
        {"required": ["data"], "properties": {"data": {"type": "array"}}},
        {"required": ["parameters"], "properties": {"parameters": {"type": "object",
                                                                  "required": ["binary_data_size"]}}}]})

    shape: list[int] = Field(..., examples=[[1, 1, 4]])
    datatype: Literal["FP32", "FP64"]
    data: list | None = Field(None, examples=[[1.0, 2.0, 3.0, 4.0]])
    parameters: BinaryParameters | None = None
