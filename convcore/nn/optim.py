"""Optimizers over a flat dict of parameters, updated in place, with the same update rules as
``torch.optim.SGD`` and ``torch.optim.Adam``. The learning rate scales the parameter step only;
momentum and moment buffers hold gradients (so changing lr mid-run does not rescale them).

``state_dict()`` returns plain arrays (for .npz checkpoints); ``load_state_dict`` restores them.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from .layers.base import check_float


class Optimizer:
    def __init__(self, lr, weight_decay=0.0):
        self.lr = check_float("lr", lr, 0.0, 1e3)
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        self.base_lr = self.lr    # what a learning-rate schedule scales; ``lr`` is the current rate
        self.weight_decay = check_float("weight_decay", weight_decay, 0.0, 1.0)
        self.state: dict = {}     # name -> array, e.g. "momentum.0.W"
        self.steps = 0

    def step(self, params: dict, grads: dict) -> None:
        """Update every ``params[name]`` in place from ``grads[name]``."""
        self.steps += 1
        for name, p in params.items():
            g = grads[name]
            if self.weight_decay:
                g = g + p.dtype.type(self.weight_decay) * p   # L2 folded into the gradient, as torch
            p -= self._direction(name, p, g)

    def _direction(self, name, p, g):
        raise NotImplementedError

    def state_dict(self) -> dict:
        out = {"steps": np.asarray(self.steps, dtype=np.int64)}
        for k, v in self.state.items():
            out[k] = v.copy() if get_array_module(v) is np else v.get()  # a snapshot, on the host
        return out

    def load_state_dict(self, state: dict, xp=np) -> None:
        self.steps = int(state["steps"])
        self.state = {k: xp.array(v, copy=True) for k, v in state.items() if k != "steps"}


class SGD(Optimizer):
    """p -= lr * d, with buf = momentum * buf + (1 - dampening) * g (buf = g at the first step)
    and d = g + momentum * buf (Nesterov) or buf."""

    def __init__(self, lr=0.01, momentum=0.0, weight_decay=0.0, nesterov=False, dampening=0.0):
        super().__init__(lr, weight_decay)
        self.momentum = check_float("momentum", momentum, 0.0, 1.0)
        self.dampening = check_float("dampening", dampening, 0.0, 1.0)
        if not isinstance(nesterov, bool):
            raise ValueError(f"nesterov must be true or false, got {nesterov!r}")
        if nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError(f"nesterov needs momentum > 0 and dampening 0, got momentum={momentum!r}, "
                             f"dampening={dampening!r}")
        self.nesterov = nesterov

    def _direction(self, name, p, g):
        lr = p.dtype.type(self.lr)
        if not self.momentum:
            return lr * g
        key = "momentum." + name
        buf = self.state.get(key)
        if buf is None:
            buf = g.copy()
        else:
            buf *= p.dtype.type(self.momentum)
            buf += p.dtype.type(1 - self.dampening) * g
        self.state[key] = buf
        d = g + p.dtype.type(self.momentum) * buf if self.nesterov else buf
        return lr * d


class Adam(Optimizer):
    """p -= lr * m_hat / (sqrt(v_hat) + eps), bias-corrected first and second moments."""

    def __init__(self, lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(lr, weight_decay)
        if not isinstance(betas, (list, tuple)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair [beta1, beta2], got {betas!r}")
        self.betas = (check_float("betas[0]", betas[0], 0.0, 1.0, high_open=True),
                      check_float("betas[1]", betas[1], 0.0, 1.0, high_open=True))
        self.eps = check_float("eps", eps, 0.0, 1.0)
        if self.eps == 0:   # a parameter whose gradients are all 0 would step by 0/0: "diverged" at once
            raise ValueError(f"eps must be in (0, 1], got {eps!r}")

    def _direction(self, name, p, g):
        xp = get_array_module(p)
        t = p.dtype.type
        b1, b2 = self.betas
        m = self.state.get("m." + name)
        v = self.state.get("v." + name)
        if m is None:
            m, v = xp.zeros_like(p), xp.zeros_like(p)
        m *= t(b1)
        m += t(1 - b1) * g
        v *= t(b2)
        v += t(1 - b2) * (g * g)
        self.state["m." + name], self.state["v." + name] = m, v
        c1, c2 = 1 - b1 ** self.steps, 1 - b2 ** self.steps
        return t(self.lr / c1) * m / (xp.sqrt(v) / t(c2 ** 0.5) + t(self.eps))


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def make_optimizer(spec: dict) -> Optimizer:
    """An optimizer from a job's ``optimizer`` dict, e.g. {"type": "adam", "lr": 0.001}."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"optimizer must be an object with a 'type' among {sorted(OPTIMIZERS)}, got {spec!r}")
    kind = spec["type"]
    if kind not in OPTIMIZERS:
        raise ValueError(f"optimizer type must be one of {sorted(OPTIMIZERS)}, got {kind!r}")
    options = {k: v for k, v in spec.items() if k != "type"}
    from .spec import construct  # local import: spec imports the layers, not optim
    return construct(OPTIMIZERS[kind], options, f"optimizer ({kind})")


def optimizer_spec(opt: Optimizer) -> dict:
    if isinstance(opt, SGD):
        return {"type": "sgd", "lr": opt.lr, "momentum": opt.momentum, "weight_decay": opt.weight_decay,
                "nesterov": opt.nesterov, "dampening": opt.dampening}
    return {"type": "adam", "lr": opt.lr, "betas": list(opt.betas), "eps": opt.eps,
            "weight_decay": opt.weight_decay}
