"""v2 inference: a request for a model -> the job /v1 would queue for it -> the protocol's response.

conv_forward and conv_backward queue ``conv.forward`` / ``conv.backward`` jobs and a trained model
a ``predict`` job, with the parameters /v1 stores, so they show up in /v1/jobs and run on the
same workers. Parameters come as request ``parameters``: numbers, lists, or JSON text of them
(``"padding": "[[1, 0], [2, 2]]"``), since some clients can only send strings and numbers.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from pydantic import ValidationError

from app.api.conv_limits import FORWARD_NEEDS, check_conv
from app.api.errors import ApiError, echo, validation_detail
from app.api.routes.models import check_model_input
from app.api.v2_models import Model
from app.core.v2_tensors import decode_inputs, require
from app.schemas.conv import AnswerParams, BackwardParams, ConvParams
from app.schemas.v2 import CONV_BACKWARD, CONV_FORWARD, InferRequest
from worker.fastlane import Work
from worker.kinds import BACKWARD, CONV_PARAMS, FORWARD, PREDICT, JobKind

# Request parameters of the protocol (Triton's), accepted by every model; only binary_data_output is used.
PROTOCOL_PARAMS = ("binary_data_output", "timeout", "priority")
JSON_TEXT_PARAMS = ("stride", "padding", "dilation", "groups")  # may come as JSON text
GRADIENT_OF = {"gx": "x", "gW": "W", "gb": "b"}


@dataclass
class Plan:
    """The job to queue, and which outputs go back how."""

    kind: JobKind
    params: dict
    arrays: dict
    outputs: list = field(default_factory=list)  # [(name, binary)] in the order they are returned
    work: Work | None = None   # a convolution's size (the fast lane's bound); None for a trained model


def _parameters(req: InferRequest, model: Model, known: tuple) -> dict:
    """The request's model parameters (protocol ones removed); 400 naming any the model does not take."""
    params = {k: v for k, v in (req.parameters or {}).items() if k not in PROTOCOL_PARAMS}
    unknown = sorted(set(params) - set(known))
    if unknown:
        takes = f"its parameters are {', '.join(known)}" if known else "it takes no parameters"
        raise ApiError(400, f"model {model.name} has no parameter {', '.join(map(repr, unknown))}; {takes}",
                       "parameters")
    return params


def _requested_outputs(req: InferRequest, model: Model) -> list[tuple[str, bool]]:
    """[(output name, binary)]: the requested outputs, or every output of the model."""
    default = (req.parameters or {}).get("binary_data_output", False)
    if not isinstance(default, bool):
        raise ApiError(400, f"parameters.binary_data_output must be true or false, got {echo(default)}",
                       "binary_data_output")
    names = model.output_names
    if not req.outputs:
        return [(n, default) for n in names]
    chosen = []
    for out in req.outputs:
        if out.name not in names:
            raise ApiError(400, f"model {model.name} has no output {echo(out.name)}; its outputs are "
                                f"{', '.join(names)}", "outputs")
        if out.name in (n for n, _ in chosen):
            raise ApiError(400, f"output {echo(out.name)} is requested twice", "outputs")
        binary = (out.parameters or {}).get("binary_data", default)
        if not isinstance(binary, bool):
            raise ApiError(400, f"output {echo(out.name)}: parameters.binary_data must be true or false, "
                                f"got {echo(binary)}", "outputs")
        chosen.append((out.name, binary))
    return chosen


def _conv_params(raw: dict, model_cls, **extra):
    """Request parameters -> ConvParams/BackwardParams; JSON text of numbers and lists is read first."""
    values = {}
    for k, v in raw.items():
        if k in JSON_TEXT_PARAMS and isinstance(v, str):
            try:
                v = json.loads(v)
            except ValueError:
                pass  # 'same', 'valid', 'full' for padding; anything else is refused by the schema
            except RecursionError:   # JSON text nested past the parser's depth: no parameter is
                raise ApiError(400, f"parameters.{k}: JSON text nested too deeply", "parameters") from None
        values[k] = v
    try:
        return model_cls.model_validate({**values, **extra})
    except ValidationError as exc:
        errors = [{**e, "loc": ("parameters", *e["loc"])} for e in exc.errors()]
        raise ApiError(400, validation_detail(errors)[0], "parameters") from None


def parse_request(doc: dict) -> InferRequest:
    """The request's JSON header, validated; 400 naming the input by its name (``inputs.x.shape``)."""
    try:
        return InferRequest.model_validate(doc)
    except ValidationError as exc:
        inputs = doc.get("inputs") if isinstance(doc.get("inputs"), list) else []

        def named(loc):
            if len(loc) > 1 and loc[0] == "inputs" and isinstance(loc[1], int) and loc[1] < len(inputs):
                name = inputs[loc[1]].get("name") if isinstance(inputs[loc[1]], dict) else None
                if isinstance(name, str):
                    return ("inputs", name, *loc[2:])
            return loc

        errors = [{**e, "loc": named(e["loc"])} for e in exc.errors()]
        raise ApiError(400, validation_detail(errors)[0], "inputs") from None


def plan(store, model: Model, req: InferRequest, binary: bytes, settings) -> Plan:
    """Check the request for ``model`` completely (400/409/413 naming what is wrong); the job to queue."""
    inputs = [i.model_dump() for i in req.inputs]
    outputs = _requested_outputs(req, model)
    if model.trained:
        return _plan_predict(store, model, req, inputs, binary, settings.max_array_bytes, outputs)
    kind = FORWARD if model.name == CONV_FORWARD else BACKWARD
    raw = _parameters(req, model, CONV_PARAMS)
    a = decode_inputs(inputs, model.name, kind.inputs, settings.max_array_bytes, binary)
    require(a, model.name, *kind.required)
    if model.name == CONV_BACKWARD:  # compute only the gradients asked for
        params = _conv_params(raw, BackwardParams, need=[GRADIENT_OF[n] for n, _ in outputs])
        work = check_conv(a["x"].shape, a["W"].shape, params.conv_kwargs(), a["x"].dtype, params.need, settings,
                   x=a["x"], W=a["W"], gy=a["gy"])
    else:
        params = _conv_params(raw, ConvParams)
        work = check_conv(a["x"].shape, a["W"].shape, params.conv_kwargs(), a["x"].dtype, FORWARD_NEEDS, settings,
                   x=a["x"], W=a["W"], b=a.get("b"))
    return Plan(kind, params.model_dump(by_alias=True), a, outputs, work)


def _plan_predict(store, model: Model, req, inputs, binary, max_bytes, outputs) -> Plan:
    _parameters(req, model, ())
    arrays = decode_inputs(inputs, model.name, PREDICT.inputs, max_bytes, binary)
    require(arrays, model.name, "x")
    check_model_input(store, model.job, arrays["x"], model.name)  # a 422 there is a 400 in v2
    params = {"model_id": model.job["id"], **AnswerParams().model_dump(by_alias=True)}
    return Plan(PREDICT, params, arrays, outputs)


def outputs_of(store, job: dict, model: Model) -> dict:
    """{output name: ndarray} of a succeeded job, under the model's output names."""
    meta = job["result"] or {}
    arrays = store.get_arrays(job["id"], "out", meta.get("outputs", []))
    if not model.trained:
        return arrays
    # predict's arrays: outputs (logits or a field), classes (argmax, int64), probabilities
    names = {"outputs": "logits", "classes": "predictions"} if "classes" in arrays else {}
    return {names.get(k, k): v for k, v in arrays.items()}


def response_parameters(job: dict) -> dict:
    """The job's id and its scalar result metadata (device, compute_s, algorithm, epochs_trained)."""
    meta = job["result"] or {}
    scalars = {k: v for k, v in meta.items()
               if k not in ("outputs", "model_id") and isinstance(v, (str, int, float, bool))}
    return {"job_id": job["id"], **scalars}

