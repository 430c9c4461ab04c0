"""Public entry points: ``conv_forward``, ``conv_backward`` and the reusable ``Convolution``.

Shapes (cross-correlation, as PyTorch/JAX):
    x (n, c_I, d_1..d_N), W (c_O, c_I // groups, k_1..k_N), b (c_O,), y/gy (n, c_O, o_1..o_N)
"""
from __future__ import annotations

from numbers import Integral
from typing import NamedTuple

from . import autoselect, backend, resources
from .engines import engine_names, make_engine
from .geometry import check_arrays, make_geometry

GRADIENTS = ("x", "W", "b")


class ConvGrads(NamedTuple):
    """Gradients of a convolution; an entry not asked for is None."""
    gx: object
    gW: object
    gb: object


def algorithms() -> tuple:
    """What ``algorithm=`` accepts: "auto" and every registered engine."""
    return ("auto",) + engine_names()


def __getattr__(name):
    # ALGORITHMS was a fixed tuple before the registry; kept readable for old imports.
    if name == "ALGORITHMS":
        return algorithms()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_algorithm(algorithm) -> str:
    """``algorithm`` if it is "auto" or a registered engine; else ValueError naming the choices."""
    if not isinstance(algorithm, str) or algorithm not in algorithms():
        raise ValueError(f"algorithm must be one of {algorithms()}, got {algorithm!r}")
    return algorithm


class Convolution:
    """A convolution with fixed parameters that keeps what its backward pass needs.

    ``forward(x, W, b)`` transforms x and W once (FFT) or builds the column matrix
    once (direct); ``backward(gy)`` then reuses them, so a layer never transforms
    its input twice. ``algorithm`` is "auto" or any registered engine (``convcore.algorithms()``);
    ``algorithm_used`` tells which engine ran and ``budget_used`` the working-set budget it had.
    """

    def __init__(self, *, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros",
                 algorithm="auto", memory_budget=None, autotune=None):
        check_algorithm(algorithm)
        self.params = dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                           padding_mode=padding_mode)
        if memory_budget is not None and (isinstance(memory_budget, bool) or not isinstance(memory_budget, Integral)
                                          or memory_budget <= 0):
            raise ValueError(f"memory_budget must be a positive int (bytes) or None, got {memory_budget!r}")
        memory_budget = None if memory_budget is None else int(memory_budget)
        self.algorithm = algorithm
        self.memory_budget = memory_budget   # None: CONVCORE_MEMORY_BUDGET_MB or the device's free memory
        # With "auto": time close calls (True), decide by the cost model alone (False: the choice
        # depends only on the shapes, so seeded runs repeat bit for bit), or CONVCORE_AUTOTUNE (None).
        self.autotune = autotune
        self.budget_used = None
        self.algorithm_used = None
        self.geometry = None
        self.device = None
        self._engine = None

    def prepare(self, x, W, b=None, gy=None):
        """Check the arrays, resolve the geometry and pick the algorithm."""
        xp = backend.get_array_module(("x", x), ("W", W), ("b", b), ("gy", gy))
        if self.geometry is not None and self.geometry.in_shape == x.shape and self.geometry.kernel_shape == W.shape:
            geom = self.geometry   # a layer calls with the same shapes every step: resolved once
        else:
            geom = make_geometry(x.shape, W.shape, **self.params)
        check_arrays(geom, x, W, b, gy)
        budget = self.memory_budget or resources.memory_budget(xp)
        name, engine = self.algorithm, None
        if name == "auto":
            name, engine = autoselect.choose(xp, geom, x, W, budget, self.autotune)
        self.geometry, self.algorithm_used, self.budget_used = geom, name, budget
        self.device = backend.device_name(xp)
        self._engine = engine or make_engine(name, xp, geom, x, W, budget)
        return self

    def forward(self, x, W, b=None):
        """y (n, c_O, o...) = x (n, c_I, d...) correlated with W (c_O, c_I/g, k...) + b (c_O,)."""
        self.prepare(x, W, b)
        forward = type(self._engine).forward
        if b is not None and getattr(forward, "adds_bias", False) and not hasattr(forward, "__wrapped__"):
            return self._engine.forward(bias=b)   # added as y is written
        y = self._engine.forward()
        if b is not None:
            y += b.reshape((1, -1) + (1,) * self.geometry.ndim)
        return y

    def backward(self, gy, x=None, W=None, need=GRADIENTS) -> ConvGrads:
        """Gradients (gx, gW, gb) of a loss given gy = dL/dy (n, c_O, o...).

        With x and W omitted, reuses the arrays and spectra of the last ``forward``.
        """
        need = check_need(need)
        if x is not None or W is not None:
            if x is None or W is None:
                raise ValueError("backward needs both x and W, or neither (to reuse forward's)")
            self.prepare(x, W, gy=gy)
        elif self._engine is None:
            raise ValueError("backward without x and W needs a forward call first")
        else:
            check_arrays(self.geometry, self._engine.x, self._engine.W, gy=gy)
            backend.get_array_module(("x", self._engine.x), ("gy", gy))
        gx, gW = (None, None)
        if "x" in need or "W" in need:
            gx, gW = self._engine.backward(gy, "x" in need, "W" in need)
        gb = None
        if "b" in need:
            gb = gy.sum(axis=(0,) + tuple(range(2, gy.ndim)))
        return ConvGrads(gx, gW, gb)


def check_need(need) -> tuple:
    if isinstance(need, str):
        need = (need,)
    try:
        need = tuple(need)
    except TypeError:
        raise TypeError(f"need must name gradients among {GRADIENTS} (a name or a sequence of names), "
                        f"got {need!r}") from None
    unknown = [v for v in need if v not in GRADIENTS]
    if unknown:
        raise ValueError(f"need must name gradients among {GRADIENTS}, got unknown {unknown}")
    return need


def conv_forward(x, W, b=None, *, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros",
                 algorithm="auto"):
    """N-D convolution (cross-correlation) forward pass.

    x: (n, c_I, d_1..d_N), W: (c_O, c_I // groups, k_1..k_N), b: (c_O,) or None
    -> y: (n, c_O, o_1..o_N), on x's device and in x's dtype.
    """
    op = Convolution(stride=stride, padding=padding, dilation=dilation, groups=groups,
                     padding_mode=padding_mode, algorithm=algorithm)
    return op.forward(x, W, b)


def conv_backward(gy, x, W, *, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros",
                  algorithm="auto", need=GRADIENTS) -> ConvGrads:
    """Gradients of ``conv_forward`` for gy = dL/dy (n, c_O, o_1..o_N).

    Returns ConvGrads(gx (n, c_I, d...), gW (c_O, c_I // groups, k...), gb (c_O,)),
    each None unless named in ``need``.
    """
    op = Convolution(stride=stride, padding=padding, dilation=dilation, groups=groups,
                     padding_mode=padding_mode, algorithm=algorithm)
    return op.backward(gy, x, W, need=need)
