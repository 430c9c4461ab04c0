"""The one list of job kinds (worker.kinds) agrees with the tasks that run them and the API schemas
that accept them: a parameter or tensor added on one side only fails here."""
from __future__ import annotations

import pytest

from app.schemas import conv, train
from worker import tasks
from worker.celery_app import celery
from worker.kinds import KINDS

ANSWER = set(conv.AnswerParams.model_fields)


def test_every_kind_has_its_task_registered_under_its_name():
    assert {k.task for k in KINDS.values()} <= set(celery.tasks)
    by_name = {t.name: t for t in (tasks.conv_forward, tasks.conv_backward, tasks.conv_gradcheck, tasks.train,
                                   tasks.predict)}
    assert set(by_name) == {k.task for k in KINDS.values()}


@pytest.mark.parametrize("kind,params,body", [
    ("conv.forward", conv.ConvParams, conv.ForwardBody),
    ("conv.backward", conv.BackwardParams, conv.BackwardBody),
    ("conv.gradcheck", conv.GradcheckParams, conv.GradcheckBody),
])
def test_conv_kinds_match_the_request_schemas(kind, params, body):
    k = KINDS[kind]
    assert set(params.model_fields) - ANSWER == set(k.params)
    assert set(body.model_fields) - set(params.model_fields) == set(k.inputs)
    assert set(k.required) <= set(k.inputs)


def test_train_and_predict_kinds_match_their_schemas():
    assert set(KINDS["train"].params) == set(train.TrainRequest.model_fields) | {
        "input_shape", "n_classes", "layer_shapes", "target_shape", "task", "output_shape"}
    assert KINDS["predict"].inputs == ("x",) and KINDS["predict"].params == ("model_id",)
