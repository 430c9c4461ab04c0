"""SGD and Adam against torch.optim over several steps with the same gradient sequence (float64)."""
import numpy as np
import pytest
import torch

from convcore import nn

SGD_CASES = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, weight_decay=0.01),
    dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.001),
    dict(lr=0.05, momentum=0.9, dampening=0.3),
]
ADAM_CASES = [dict(lr=0.01), dict(lr=0.003, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.02)]


def run_both(ours, theirs_cls, kw, steps=6):
    rng = np.random.default_rng(0)
    params = {"0.W": rng.standard_normal((3, 4)), "0.b": rng.standard_normal(3)}
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    topt = theirs_cls(list(tparams.values()), **kw)
    for _ in range(steps):
        grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}
        ours.step(params, grads)
        for k, t in tparams.items():
            t.grad = torch.tensor(grads[k])
        topt.step()
        for k in params:
            np.testing.assert_allclose(params[k], tparams[k].detach().numpy(), rtol=1e-12, atol=1e-14)
    return ours


@pytest.mark.parametrize("kw", SGD_CASES, ids=str)
def test_sgd_matches_torch(kw):
    run_both(nn.SGD(**kw), torch.optim.SGD, kw)


@pytest.mark.parametrize("kw", ADAM_CASES, ids=str)
def test_adam_matches_torch(kw):
    run_both(nn.Adam(**kw), torch.optim.Adam, kw)


def test_state_round_trip_continues_identically():
    kw = dict(lr=0.01)
    a = run_both(nn.Adam(**kw), torch.optim.Adam, kw, steps=3)
    b = nn.Adam(**kw)
    b.load_state_dict(a.state_dict())
    assert b.steps == 3 and set(b.state) == {"m.0.W", "m.0.b", "v.0.W", "v.0.b"}
    p1, p2 = {"0.W": np.ones((3, 4)), "0.b": np.ones(3)}, {"0.W": np.ones((3, 4)), "0.b": np.ones(3)}
    g = {"0.W": np.full((3, 4), 0.5), "0.b": np.full(3, -0.5)}
    a.step(p1, g)
    b.step(p2, g)
    np.testing.assert_array_equal(p1["0.W"], p2["0.W"])


@pytest.mark.parametrize("spec, message", [
    ({"type": "rmsprop"}, "optimizer type must be one of"),
    ({"type": "sgd", "lr": -1}, "lr must be"),
    ({"type": "sgd", "lr": 0.1, "nesterov": True}, "nesterov needs momentum > 0"),
    ({"type": "adam", "betas": [0.9]}, "betas must be a pair"),
    ({"type": "adam", "beta": 0.9}, r"unknown option\(s\) \['beta'\]"),
])
def test_make_optimizer_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        nn.make_optimizer(spec)


def test_make_optimizer_round_trips_spec():
    opt = nn.make_optimizer({"type": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True})
    assert nn.optimizer_spec(opt)["nesterov"] is True
    assert isinstance(nn.make_optimizer(nn.optimizer_spec(opt)), nn.SGD)
