"""Run convcore on a case and compare every output with an independent reference."""
from __future__ import annotations

import numpy as np

import convcore
from conv_oracles import ConvCase, Reference, assert_close, cast


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
        assert op.algorithm_used in ("fft", "direct")
        assert algorithm == "auto" or op.algorithm_used == algorithm
        assert op.geometry.out_shape == tuple(y.shape)
    else:
        y = convcore.conv_forward(x, W, b, algorithm=algorithm, **case.params)
        grads = convcore.conv_backward(gy, x, W, algorithm=algorithm, **case.params)
    assert isinstance(y, backend.xp.ndarray), f"y came back as {type(y).__name__}, not on {backend.name}"
    return tuple(backend.to_numpy(a) for a in (y, grads.gx, grads.gW, grads.gb))


def check_case(backend, case: ConvCase, ref: Reference, dtype, algorithm, **kwargs) -> None:
    """convcore's y, gx, gW and gb match ``ref`` within the dtype's tolerance, in the input dtype."""
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
