"""Run convcore on a case and compare every output with an independent reference."""
from __future__ import annotations

import re

import numpy as np
import pytest
from conv_oracles import ConvCase, Reference, assert_close, cast

import convcore
from convcore.engines import unsupported_reason


def run_convcore(backend, case: ConvCase, ref: Reference, dtype, algorithm, *, layer=False,
                 memory_budget=None):
    """(y, gx, gW, gb) as NumPy arrays from convcore on ``backend``.

    ``layer=False`` goes through conv_forward + conv_backward; ``layer=True``
    through one Convolution whose backward reuses what forward kept.
    """
    x, W, b, gy = (None if a is None else backend.asarray(a) for a in cast(ref, dtype))
    if layer:
        op = convcore.Convolution(algorithm=algorithm, memory_budget=memory_budget, **case.params)
        y = op.forward(x, W, b)
        grads = op.backward(gy)
        assert op.algorithm_used in convcore.engines.engine_names()
        assert algorithm == "auto" or op.algorithm_used == algorithm
        assert op.geometry.out_shape == tuple(y.shape)
    else:
        y = convcore.conv_forward(x, W, b, algorithm=algorithm, **case.params)
        grads = convcore.conv_backward(gy, x, W, algorithm=algorithm, **case.params)
    assert isinstance(y, backend.xp.ndarray), f"y came back as {type(y).__name__}, not on {backend.name}"
    return tuple(backend.to_numpy(a) for a in (y, grads.gx, grads.gW, grads.gb))


def refused(backend, case: ConvCase, algorithm: str) -> bool:
    """Whether engine ``algorithm`` cannot run ``case`` on ``backend`` (``convcore.engines.unsupported_reason``,
    e.g. winograd with a kernel other than 3 or on a GPU). Then asking for it by name must raise that
    reason, from the layer and from ``estimate_memory``, which this checks before returning True."""
    if algorithm == "auto":
        return False
    geom = convcore.make_geometry(case.x_shape, case.W_shape, **case.params)
    why = unsupported_reason(algorithm, geom, "cpu" if backend.xp is np else "gpu")
    if why is None:
        return False
    x, W = (backend.asarray(np.ones(s)) for s in (case.x_shape, case.W_shape))
    with pytest.raises(ValueError, match=re.escape(why)):
        convcore.Convolution(algorithm=algorithm, **case.params).forward(x, W)
    with pytest.raises(ValueError, match=re.escape(why)):
        convcore.estimate_memory(case.x_shape, case.W_shape, np.float32, algorithm=algorithm,
                                 device=None if backend.xp is np else backend.xp, **case.params)
    return True


def check_case(backend, case: ConvCase, ref: Reference, dtype, algorithm, **kwargs) -> None:
    """convcore's y, gx, gW and gb match ``ref`` within the dtype's tolerance, in the input dtype (or,
    for an engine that cannot run the case, it says so: ``refused``)."""
    if refused(backend, case, algorithm):
        return
    y, gx, gW, gb = run_convcore(backend, case, ref, dtype, algorithm, **kwargs)
    context = f"[{case}, {np.dtype(dtype)}, algorithm={algorithm}]"
    magnitudes = ref.magnitudes or {}
    if ref.gb is None:
        # conv_backward has no b argument: gb is the sum of gy whether or not forward had a bias.
        ref = ref._replace(gb=ref.gy.sum(axis=(0,) + tuple(range(2, ref.gy.ndim))))
    for name, got in (("y", y), ("gx", gx), ("gW", gW), ("gb", gb)):
        assert_close(name, got, getattr(ref, name), dtype, context, magnitudes.get(name))


class _NumpyBackend:
    """The host backend alone, for tests of CPU-only paths (the ``backend`` fixture runs each test on
    every backend): ``check_case(NUMPY, ...)``."""
    name, xp = "numpy", np

    @staticmethod
    def asarray(a):
        return np.asarray(a)

    @staticmethod
    def to_numpy(a):
        return np.asarray(a)


NUMPY = _NumpyBackend()
