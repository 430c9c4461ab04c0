"""Bodies and answers of the training endpoints (POST /v1/train, /v1/datasets, /v1/models/{id}/predict)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DIGITS_EXAMPLE = {
    "model": [{"type": "conv", "out_channels": 16, "kernel_size": 3, "padding": "same"}, {"type": "relu"},
              {"type": "maxpool", "kernel_size": 2},
              {"type": "conv", "out_channels": 32, "kernel_size": 3, "padding": "same"}, {"type": "relu"},
              {"type": "maxpool", "kernel_size": 2}, {"type": "flatten"}, {"type": "dense", "out_features": 10}],
    "dataset": {"name": "digits"},
    "optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.001, "nesterov": True},
    "loss": "cross_entropy", "epochs": 15, "batch_size": 32, "seed": 0, "validation_split": 0.2}


class TrainRequest(BaseModel):
    """A training job. Layer, dataset and optimizer options are checked by convcore.nn before queueing."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [DIGITS_EXAMPLE]})

    model: list[dict] = Field(..., min_length=1, description="Layer specs in order, e.g. "
                              '{"type": "conv", "out_channels": 8, "kernel_size": 3, "padding": "same"}.')
    dataset: dict = Field(..., description='Built-in {"name": "digits"|"shapes3d"|"synthetic", options...} '
                                           'or an uploaded {"id": "<from POST /v1/datasets>"}.')
    optimizer: dict = Field(default_factory=lambda: {"type": "adam", "lr": 0.001},
                            description='{"type": "sgd", "lr", "momentum", "weight_decay", "nesterov"} or '
                                        '{"type": "adam", "lr", "betas", "eps", "weight_decay"}.')
    loss: Literal["cross_entropy", "softmax_cross_entropy", "mse"] = "cross_entropy"
    epochs: int = Field(10, ge=1, le=1000)
    batch_size: int = Field(32, ge=1, le=65536)
    seed: int = Field(0, ge=0, le=2**63 - 1)
    validation_split: float = Field(0.2, ge=0.0, lt=1.0, description="Held-out fraction, stratified by class.")


class DatasetInfo(BaseModel):
    id: str
    n: int = Field(..., description="samples")
    input_shape: list[int] = Field(..., description="per-sample shape (c, d_1, ..., d_N) or (features,)")
    n_classes: int
    nbytes: int
    created_at: float
    expires_in_s: int


class PredictResult(BaseModel):
    model_id: str
    epochs_trained: int
    predictions: list[int] = Field(..., description="argmax class of every sample")
    outputs: dict = Field(..., description="network outputs (n, n_classes), a tensor")
    probabilities: dict | None = Field(None, description="softmax of the outputs (cross-entropy models), a tensor")
    device: str
    compute_s: float
