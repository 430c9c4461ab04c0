"""The v2 models a key can see: the convolution ops, and every training job's model (by job id or name).

``conv_forward`` and ``conv_backward`` are always there (ready while a worker is up). A training
job is a model from its first finished epoch on (the parameters /v1/models/{id}/predict uses: its
latest checkpoint, or its best epoch's when the job keeps the best, ``nn.final_model_arrays``);
before that it is LOADING, and UNAVAILABLE if it ended without one.
"""
from __future__ import annotations

from dataclasses import dataclass

from app.api.errors import ApiError
from app.schemas.v2 import CONV_BACKWARD, CONV_FORWARD, STATIC_MODELS, VERSION
from convcore.nn.losses import LABEL_LOSSES, loss_name
from worker import model_names
from worker.checkpoints import has_checkpoint
from worker.kinds import CONV_PARAMS, TRAIN
from worker.store import JobStore

PLATFORM = "convnd"
INDEX_LIMIT = 1000  # newest training jobs listed by the repository index


def _tensor(name: str, shape: list[int], datatype: str = "FP32") -> dict:
    return {"name": name, "datatype": datatype, "shape": shape}


ND = [-1, -1, -1]  # (n, c, d_1..d_N): rank 3 or more, every dimension variable
CONV_NOTES = {"shapes": "x (n, c_I, d_1..d_N), W (c_O, c_I/groups, k_1..k_N), b (c_O,), y and gy (n, c_O, o_1..o_N); "
                        "N >= 1 spatial dimensions, so the rank is 3 or more",
              "datatypes": "FP32 or FP64 inputs; outputs have the inputs' datatype",
              "parameters": ", ".join(CONV_PARAMS)}
STATIC_IO = {
    CONV_FORWARD: ([_tensor("x", ND), _tensor("W", ND), _tensor("b", [-1])], [_tensor("y", ND)]),
    CONV_BACKWARD: ([_tensor("gy", ND), _tensor("x", ND), _tensor("W", ND)],
                    [_tensor("gx", ND), _tensor("gW", ND), _tensor("gb", [-1])]),
}


@dataclass(frozen=True)
class Model:
    """A model as asked for: ``name`` as in the URL; ``job`` the training job of a trained model."""

    name: str
    job: dict | None = None

    @property
    def trained(self) -> bool:
        return self.job is not None

    @property
    def output_names(self) -> tuple:
        return tuple(t["name"] for t in io(self)[1])


def _not_found(name: str) -> ApiError:
    return ApiError(404, f"no model {name!r} (unknown, expired or not yours): the models are "
                         f"{', '.join(STATIC_MODELS)} and your training jobs by id or by name; "
                         "POST /v2/repository/index lists them", "model_name")


def resolve(store: JobStore, owner: str, name: str, version: str | None = None) -> Model:
    """The model ``name`` (a static model, a training job's id or its name) for ``owner``; 404 otherwise."""
    if version not in (None, VERSION):
        raise ApiError(404, f"model {name!r} has no version {version!r}; its only version is {VERSION!r}", "version")
    if name in STATIC_MODELS:
        return Model(name)
    job = store.get(name, owner=owner)
    if job is None:
        job_id = model_names.holder(store, owner, name)
        job = store.get(job_id, owner=owner) if job_id else None
    if job is None or job["kind"] != TRAIN.name:
        raise _not_found(name)
    return Model(name, job)


def task_of(params: dict) -> str:
    """classify, segment or regress (jobs queued before dense targets carry no task: go by the loss)."""
    return params.get("task") or ("classify" if loss_name(params["loss"]) in LABEL_LOSSES
                                  else "regress")


def io(model: Model) -> tuple[list, list]:
    """(inputs, outputs) metadata: name, datatype, shape with -1 for variable dimensions.

    A classifier's outputs are logits (n, C), probabilities (n, C) when its loss takes logits, and
    predictions INT64 (n,); a segmenter's the same per voxel ((n, C, d...), (n, d...)); a field
    regressor's the field as ``outputs`` (n, c, d...)."""
    if not model.trained:
        return STATIC_IO[model.name]
    params = model.job["params"]
    out_shape = params.get("output_shape") or [params["n_classes"]]
    inputs = [_tensor("x", [-1, *params["input_shape"]])]
    if task_of(params) == "regress":
        return inputs, [_tensor("outputs", [-1, *out_shape])]
    outputs = [_tensor("logits", [-1, *out_shape])]
    if loss_name(params["loss"]) in LABEL_LOSSES:
        outputs.append(_tensor("probabilities", [-1, *out_shape]))
    outputs.append(_tensor("predictions", [-1, *out_shape[1:]], "INT64"))
    return inputs, outputs


def epochs_trained(job: dict) -> int:
    """Finished epochs as the job reports them (its checkpoint is written just before)."""
    history = (job["result"] or {}).get("history") or (job["progress"] or {}).get("history") or []
    return len(history)


def state(store: JobStore, model: Model) -> tuple[str, str]:
    """(READY | LOADING | UNAVAILABLE, reason)."""
    if not model.trained:
        return ("READY", "") if store.workers() else ("UNAVAILABLE", "no worker is answering")
    job = model.job
    if has_checkpoint(store, job["id"]):
        running = job["state"] in ("queued", "running")
        return "READY", (f"training: {epochs_trained(job)} of {job['params']['epochs']} epochs done, "
                         "the latest checkpoint is served (with keep_best, its best epoch so far)"
                         if running else "")
    if job["state"] in ("queued", "running"):
        return "LOADING", f"training job {job['state']}, no finished epoch yet"
    error = (job["error"] or {}).get("message", "")
    return "UNAVAILABLE", f"training job {job['state']} without a finished epoch" + (f": {error}" if error else "")


def metadata(store: JobStore, model: Model) -> dict:
    inputs, outputs = io(model)
    doc = {"name": model.name, "versions": [VERSION], "platform": PLATFORM, "inputs": inputs, "outputs": outputs}
    if not model.trained:
        return {**doc, "parameters": dict(CONV_NOTES)}
    job, params = model.job, model.job["params"]
    return {**doc, "parameters": {
        "job_id": job["id"], "model_name": params.get("name") or "", "state": job["state"],
        "task": task_of(params), "input_shape": ",".join(map(str, params["input_shape"])),
        "n_classes": params["n_classes"],
        "epochs_trained": epochs_trained(job), "epochs": params["epochs"],
        "loss": loss_name(params["loss"])}}


def index(store: JobStore, owner: str, ready_only: bool = False) -> list[dict]:
    """Triton's repository index: every model ``owner`` can see, newest training jobs first."""
    entries = []
    models = [Model(name) for name in STATIC_MODELS]
    for job_id in store.list_ids(owner, INDEX_LIMIT):
        job = store.get(job_id, owner=owner)
        if job is not None and job["kind"] == TRAIN.name:
            models.append(Model(job_id, job))
    for model in models:
        model_state, reason = state(store, model)
        if ready_only and model_state != "READY":
            continue
        entry = {"name": model.name, "version": VERSION, "state": model_state, "reason": reason}
        if model.trained and model.job["params"].get("name"):
            entry["alias"] = model.job["params"]["name"]
        entries.append(entry)
    return entries
