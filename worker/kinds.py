"""The one list of job kinds: name, Celery task, input arrays and parameters.

Routes read the input names from here (which tensors a body may carry), submission sends
the task by its name, and the tasks load exactly these inputs and pass these parameters on.
"""
from __future__ import annotations

from dataclasses import dataclass

# convcore.Convolution's keyword arguments a convolution job may carry.
CONV_PARAMS = ("stride", "padding", "dilation", "groups", "padding_mode", "algorithm")
GRADCHECK_PARAMS = ("x_shape", "W_shape", "bias", "datatype", "seed", "eps", "atol", "rtol", "samples")
TRAIN_PARAMS = ("model", "dataset", "optimizer", "loss", "epochs", "batch_size", "seed", "validation_split",
                "schedule", "clip_norm", "monitor", "early_stopping", "keep_best",
                "input_shape", "n_classes", "layer_shapes", "target_shape", "task", "output_shape",
                "name",    # the model's optional name (/v2/models/<name>); the task does not read it
                "device")  # the device asked for (routing: which queue); kept so a redelivery can follow it


@dataclass(frozen=True)
class JobKind:
    name: str              # the job record's ``kind``
    task: str              # the Celery task's name (stable: queued messages carry it)
    inputs: tuple = ()     # arrays the job may carry, in the order a binary body sends them
    required: tuple = ()   # of those, the ones it must carry
    params: tuple = ()     # parameters the task reads


FORWARD = JobKind("conv.forward", "worker.tasks.conv_forward", ("x", "W", "b"), ("x", "W"), CONV_PARAMS)
BACKWARD = JobKind("conv.backward", "worker.tasks.conv_backward", ("gy", "x", "W"), ("gy", "x", "W"),
                   CONV_PARAMS + ("need",))
GRADCHECK = JobKind("conv.gradcheck", "worker.tasks.conv_gradcheck", ("x", "W", "b", "gy", "gx", "gW", "gb"), (),
                    CONV_PARAMS + GRADCHECK_PARAMS)
TRAIN = JobKind("train", "worker.training.train", (), (), TRAIN_PARAMS)
PREDICT = JobKind("predict", "worker.training.predict", ("x",), ("x",), ("model_id",))

KINDS = {k.name: k for k in (FORWARD, BACKWARD, GRADCHECK, TRAIN, PREDICT)}


def conv_kwargs(params: dict) -> dict:
    """The convolution parameters of a job, as convcore's keyword arguments."""
    return {k: params[k] for k in CONV_PARAMS if k in params}
