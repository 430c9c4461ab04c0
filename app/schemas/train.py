"""Bodies and answers of the training endpoints (POST /v1/train, /v1/datasets, /v1/models/{id}/predict)."""
from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationInfo,
    field_validator,
)

from convcore.engines import engine_devices, engine_names

from .v2 import MODEL_NAME_PATTERN, name_problem

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

    model: list[dict] | dict = Field(..., description="Layer specs in order, e.g. "
                                     '{"type": "conv", "out_channels": 8, "kernel_size": 3, "padding": "same"}, '
                                     'or a graph {"graph": [node, ...], "output": "<name>"} whose nodes may name '
                                     'their "input" / "inputs" (skip connections; see docs/training.md).')
    dataset: dict = Field(..., description='Built-in {"name": "digits"|"shapes3d"|"synthetic"|"segmentation3d"|'
                                           '"field", options...} or an uploaded {"id": "<from POST /v1/datasets>"}.')
    optimizer: dict = Field(default_factory=lambda: {"type": "adam", "lr": 0.001},
                            description='{"type": "sgd", "lr", "momentum", "weight_decay", "nesterov"} or '
                                        '{"type": "adam", "lr", "betas", "eps", "weight_decay"}.')
    loss: str | dict = Field("cross_entropy", description='"cross_entropy" (per voxel for per-voxel labels), '
                             '"dice", "mse", "l1", or {"type": "cross_entropy", "class_weights": [...]}.')
    # strict: true is not 1 epoch, nor "3" three (a JSON number, as every client sends)
    epochs: int = Field(10, ge=1, le=1000, strict=True)
    batch_size: int = Field(32, ge=1, le=65536, strict=True)
    seed: int = Field(0, ge=0, le=2**63 - 1, strict=True)
    validation_split: float = Field(0.2, ge=0.0, lt=1.0, strict=True,
                                    description="Held-out fraction: round(fraction * n) samples, stratified by class.")
    device: Literal["auto", "cpu", "gpu"] = Field(
        "auto", validate_default=True,
        description="Where the job trains: a GPU worker, a CPU worker, or auto (a GPU worker when one is up, else "
                    "a CPU worker; a CPU worker when a layer names a CPU-only algorithm); 503 when no worker serves "
                    "the asked device.")
    # Training options (convcore.nn.options): checked by convcore.nn.check_job, errors name the key.
    schedule: dict | None = Field(None, description='{"type": "constant"|"step"|"cosine", "warmup_epochs", '
                                                    '"step_size", "gamma" (step), "min_lr" (cosine)}.')
    clip_norm: float | None = Field(None, strict=True, description="Clip the gradients' global L2 norm to this (> 0).")
    monitor: str = Field("val_loss", description="Metric for early_stopping / keep_best: val_loss, train_loss, "
                                                 "val_accuracy, val_dice, val_iou or val_mae.")
    early_stopping: dict | None = Field(None, description='{"patience": 5, "min_delta": 0.0}.')
    keep_best: StrictBool = Field(False, description="The model file is the best monitored epoch's parameters.")
    name: str | None = Field(None, pattern=MODEL_NAME_PATTERN, description="A name for the trained model, unique "
                             "per key while its job lives: /v2/models/<name> as well as /v2/models/<job id>.")

    @field_validator("name")
    @classmethod
    def _model_name(cls, name: str | None) -> str | None:
        problem = name and name_problem(name)
        if problem:
            raise ValueError(f"{problem}: choose another name")
        return name

    @field_validator("device")
    @classmethod
    def _host_only_engines(cls, device: str, info: ValidationInfo) -> str:
        """A layer naming an engine that runs on CPU workers only (winograd) sends ``device: auto``
        to the CPU, and makes ``device: gpu`` a 422 (it would fail at the first step there)."""
        model = info.data.get("model")
        layers = model.get("graph", []) if isinstance(model, dict) else model or []
        if not isinstance(layers, list):   # "graph": null or 5: check_job names it (422)
            return device
        names = {layer.get("algorithm") for layer in layers if isinstance(layer, dict)}
        host_only = sorted(n for n in names if isinstance(n, str) and n in engine_names()
                           and "gpu" not in engine_devices(n))
        if not host_only:
            return device
        if device == "gpu":
            raise ValueError(f'layers with algorithm "{host_only[0]}" run on CPU workers only; ask for '
                             f'"device": "cpu" or "auto", or another algorithm')
        return "cpu"


class DatasetInfo(BaseModel):
    id: str
    n: int = Field(..., description="samples")
    input_shape: list[int] = Field(..., description="per-sample shape (c, d_1, ..., d_N) or (features,)")
    target_shape: list[int] = Field([], description="per-sample shape of y: [] for a class per sample, "
                                                    "[d_1, ..., d_N] for a class per voxel, [c, d_1, ..., d_N] "
                                                    "for a field")
    task: str = Field("classify", description="classify, segment or regress (a field; n_classes 0)")
    n_classes: int
    nbytes: int
    created_at: float
    expires_in_s: int


class PredictResult(BaseModel):
    model_id: str
    epochs_trained: int
    task: str = Field(..., description="classify, segment or regress")
    predictions: list[int] | None = Field(None, description="argmax class of every sample (classify)")
    outputs: dict = Field(..., description="network outputs (n, *output_shape), a tensor: logits (n, C) or "
                                           "(n, C, d_1..d_N), or the field (n, c, d_1..d_N)")
    classes: dict | None = Field(None, description="argmax over channels, an INT64 tensor (n,) or the class map "
                                                   "(n, d_1..d_N) (classify, segment)")
    probabilities: dict | None = Field(None, description="softmax over channels (cross_entropy, dice), a tensor "
                                                         "like outputs")
    device: str
    compute_s: float
