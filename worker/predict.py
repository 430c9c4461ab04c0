"""What a prediction job computes: a training job's model on the posted inputs.

The model is the job's latest checkpoint, or its best epoch when the job keeps the best
(``nn.final_model_arrays``), exactly what GET /v1/jobs/{id}/model downloads.
"""
from __future__ import annotations

import time

from convcore import backend, nn

from . import runtime
from .checkpoints import load_checkpoint


def predict_op(xp, arrays: dict, params: dict):
    """Dense outputs of the model for ``x`` (n, *input_shape), by the job's task (``nn.predict_outputs``):

    - outputs (n, *output_shape): logits (n, C) / (n, C, d...) or the field (n, c, d...);
    - classes int64 (n,) / (n, d...): argmax over channels (classify, segment);
    - probabilities like outputs: softmax over channels (cross_entropy, dice).
    Meta: task, epochs_trained, and ``predictions`` (the class list) for whole-sample classifiers.
    """
    store = runtime.store()
    ckpt = load_checkpoint(store, params["model_id"])
    model_job = store.get(params["model_id"])
    if ckpt is None or model_job is None:
        raise ValueError(f"model {params['model_id']} has expired")
    job_params = model_job["params"]
    start = time.perf_counter()
    model = nn.io.model_from_arrays(nn.final_model_arrays(ckpt[0]), xp=xp)
    # Jobs queued before dense targets existed carry no task: nn.predict_outputs goes by the loss.
    # batches no larger in memory than the training step the API checked before it queued that job
    batch = min(64, nn.evaluation_batch(model, job_params.get("batch_size", 32)))
    result = nn.predict_outputs(model, arrays["x"], loss=job_params["loss"], task=job_params.get("task"),
                                batch_size=batch)
    host = {k: backend.to_host(v) for k, v in result.items()}
    task = job_params.get("task") or ("regress" if "classes" not in host else
                                      "classify" if host["classes"].ndim == 1 else "segment")
    meta = {"model_id": params["model_id"], "task": task, "epochs_trained": int(ckpt[0]["epoch"]),
            "device": backend.device_name(xp), "compute_s": time.perf_counter() - start}
    if task == "classify":
        meta["predictions"] = host["classes"].tolist()
    return meta, host
