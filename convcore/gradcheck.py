"""Gradient checks: conv_backward against finite differences, and a user's own gradients.

``gradcheck(x, W, b, gy, ...)`` works in float64 on the CPU with the loss

    L(x, W, b) = sum(gy * conv_forward(x, W, b))        so dL/dy = gy,

and (1) compares ``conv_backward`` with central finite differences of L, and
(2) when the user passes gx / gW / gb, compares them with the correct gradients
and names the likely cause of a mismatch. Every cause is found by *building* the
wrong gradient that bug would produce from the same inputs (e.g. running the
backward with the kernel transposed instead of flipped) and checking that it
reproduces the user's array, up to one fitted constant factor, never guessed from
the size of the error.

Shapes: x (n, c_I, d_1..d_N), W (c_O, c_I // groups, k_1..k_N), b (c_O,),
gy (n, c_O, o_1..o_N); gx, gW, gb have the shapes of x, W, b.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from numbers import Integral, Real

import numpy as np

from . import backend
from .conv import conv_backward, conv_forward
from .gradcheck_diagnose import Cause, Diagnoser
from .geometry import make_geometry

DEFAULT_MAX_CHECKS = 512      # finite-difference entries per gradient when max_checks is None
_STACK_BYTES = 32 * 2**20     # memory for one batch of perturbed copies


@dataclass
class FiniteDifferenceCheck:
    """conv_backward's gradient ``name`` against central finite differences of L.

    Errors are over the ``checked`` entries (of ``total``); ``max_rel_error`` is
    the max absolute error divided by the largest |finite difference| checked.
    """

    name: str
    max_abs_error: float
    max_rel_error: float
    checked: int
    total: int
    sampled: bool
    passed: bool


@dataclass
class UserGradientCheck:
    """A user's gradient ``name`` against the correct one (conv_backward's)."""

    name: str
    expected_shape: tuple
    got_shape: tuple
    max_abs_error: float | None   # None when the shapes differ
    max_rel_error: float | None   # relative to max |correct gradient|
    passed: bool
    causes: list = field(default_factory=list)   # Cause entries, empty when passed

    @property
    def cause_codes(self) -> list:
        return [c.code for c in self.causes]


@dataclass
class GradcheckReport:
    """Result of ``gradcheck``: ``passed`` is True when every check below passed."""

    passed: bool
    finite_differences: dict   # name -> FiniteDifferenceCheck
    user: dict                 # name -> UserGradientCheck (only those given)
    settings: dict             # shapes, convolution parameters, eps, rtol, atol, seed

    @property
    def wrong(self) -> list:
        """Names of the user's gradients that did not match."""
        return [name for name, check in self.user.items() if not check.passed]

    def to_dict(self) -> dict:
        """Plain, JSON-serialisable dict."""
        return _plain(asdict(self))

    def __str__(self) -> str:
        lines = [f"gradcheck {'PASSED' if self.passed else 'FAILED'}"]
        for c in self.finite_differences.values():
            lines.append(f"  conv_backward {c.name}: max abs err {c.max_abs_error:.3g}, rel "
                         f"{c.max_rel_error:.3g} over {c.checked}/{c.total} entries "
                         f"{'ok' if c.passed else 'WRONG'}")
        for c in self.user.values():
            if c.max_abs_error is None:
                lines.append(f"  your {c.name}: shape {c.got_shape}, expected {c.expected_shape} WRONG")
            else:
                lines.append(f"  your {c.name}: max abs err {c.max_abs_error:.3g}, rel "
                             f"{c.max_rel_error:.3g} {'ok' if c.passed else 'WRONG'}")
            lines.extend(f"    - [{cause.code}] {cause.message}" for cause in c.causes)
        return "\n".join(lines)


def gradcheck(x, W, b=None, gy=None, *, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros",
              algorithm="auto", gx=None, gW=None, gb=None, eps=1e-6, rtol=1e-5, atol=1e-8, seed=0,
              max_checks=None) -> GradcheckReport:
    """Check conv_backward by finite differences and, if given, the user's gx / gW / gb.

    x (n, c_I, d...), W (c_O, c_I // groups, k...), b (c_O,) or None, gy (n, c_O, o...)
    or None (then drawn from ``seed``). All are converted to float64 NumPy arrays.
    A gradient passes when max|error| <= atol + rtol * max|reference|. ``eps``: the central
    differences' step, eps * max(1, |entry|) (relative for entries larger than 1).
    ``max_checks``: finite-difference entries per gradient, chosen at random
    (``seed``) when the array is larger; None means DEFAULT_MAX_CHECKS. The
    report says how many entries were checked. gb is checked when b or gb is given.
    """
    params = dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                  padding_mode=padding_mode, algorithm=algorithm)
    _check_settings(eps, rtol, atol, seed, max_checks)
    x, W = _float64("x", x), _float64("W", W)
    geom = make_geometry(x.shape, W.shape, **{k: v for k, v in params.items() if k != "algorithm"})
    b = None if b is None else _float64("b", b)
    if b is not None and b.shape != (geom.out_channels,):
        raise ValueError(f"b must have shape (c_out,) = ({geom.out_channels},), got {b.shape}")
    rng = np.random.default_rng(seed)
    gy_given = gy is not None
    if gy is None:
        gy = rng.standard_normal(geom.out_shape)
    gy = _float64("gy", gy)
    if gy.shape != geom.out_shape:
        raise ValueError(f"gy must have the output's shape {geom.out_shape} for {geom.describe()}, "
                         f"got {gy.shape}")
    user = {name: _float64(name, a)
            for name, a in (("gx", gx), ("gW", gW), ("gb", gb)) if a is not None}
    with_b = b is not None or "gb" in user
    need = ("x", "W", "b") if with_b else ("x", "W")
    correct = conv_backward(gy, x, W, need=need, **params)
    correct = {"gx": correct.gx, "gW": correct.gW, "gb": correct.gb if with_b else None}

    limit = DEFAULT_MAX_CHECKS if max_checks is None else int(max_checks)
    fd = {"gx": _check_fd("gx", _fd_x, x, W, b, gy, params, correct["gx"], rng, limit, eps, rtol, atol),
          "gW": _check_fd("gW", _fd_W, x, W, b, gy, params, correct["gW"], rng, limit, eps, rtol, atol)}
    if with_b:
        b0 = np.zeros(geom.out_channels) if b is None else b
        fd["gb"] = _check_fd("gb", _fd_b, x, W, b0, gy, params, correct["gb"], rng, limit, eps, rtol, atol)

    diagnoser = Diagnoser(x, W, gy, correct, params, geom)
    checks = {name: _check_user(name, u, correct[name], diagnoser, rtol, atol) for name, u in user.items()}
    passed = all(c.passed for c in fd.values()) and all(c.passed for c in checks.values())
    settings = dict(x_shape=x.shape, W_shape=W.shape, out_shape=geom.out_shape, pads=geom.pads,
                    stride=geom.stride, dilation=geom.dilation, groups=geom.groups,
                    padding_mode=padding_mode, algorithm=algorithm, eps=eps, rtol=rtol, atol=atol,
                    seed=seed, gy_given=gy_given)
    return GradcheckReport(passed, fd, checks, settings)


# ---- finite differences -------------------------------------------------------
def _check_fd(name, fd_fn, x, W, b, gy, params, analytic, rng, limit, eps, rtol, atol):
    total = analytic.size
    if total <= limit:
        picked = np.arange(total)
    else:
        picked = np.sort(rng.choice(total, size=limit, replace=False))
    numeric = fd_fn(x, W, b, gy, params, picked, eps)
    err = float(np.max(np.abs(numeric - analytic.reshape(-1)[picked])))
    scale = float(np.max(np.abs(numeric)))
    rel = err / scale if scale > 0 else err
    return FiniteDifferenceCheck(name, err, rel, int(picked.size), int(total), picked.size < total,
                                 err <= atol + rtol * scale)


def _perturb(rows, base, local, eps):
    """2P copies of ``base`` (flattened rows): row 2p has +step at local[p], row 2p+1 has -step,
    step = eps * max(1, |value|): relative for large entries, whose outputs are large too (with
    x and W near 1e8, a step of 1e-6 moved outputs near 1e16 by 1e2, and their rounding, ~1 each,
    made the exact gradients read 1.5e-2 wrong).

    Returns (stack, h) with h the exact float64 distance between the two values.
    """
    P = len(local)
    stack = np.repeat(base.reshape(1, -1), 2 * P, axis=0)
    values = base.reshape(-1)[local]
    step = eps * np.maximum(1.0, np.abs(values))
    plus, minus = values + step, values - step
    stack[2 * np.arange(P), local] = plus
    stack[2 * np.arange(P) + 1, local] = minus
    return stack.reshape((2 * P,) + rows), plus - minus


def _chunks(indices, row_bytes):
    step = max(1, min(64, _STACK_BYTES // max(2 * row_bytes, 1)))
    return [indices[i:i + step] for i in range(0, len(indices), step)]


def _fd_x(x, W, b, gy, params, picked, eps):
    """dL/dx at flat indices ``picked``: each sample's perturbed copies run as one batch."""
    out = np.empty(len(picked))
    n_idx, local = np.divmod(picked, x[0].size)
    for n in np.unique(n_idx):
        sel = np.flatnonzero(n_idx == n)
        for part in _chunks(sel, x[0].nbytes + gy[0].nbytes):
            stack, h = _perturb(x.shape[1:], x[n], local[part], eps)
            y = conv_forward(stack, W, None, **params)             # (2P, c_O, o...)
            diff = (y[0::2] - y[1::2]).reshape(len(part), -1)      # y(x+) - y(x-)
            out[part] = diff @ gy[n].reshape(-1) / h
    return out


def _fd_W(x, W, b, gy, params, picked, eps):
    """dL/dW: the perturbed filters of one group run as the output channels of one call."""
    out = np.empty(len(picked))
    groups = params["groups"]
    per_group_out, per_group_in = W.shape[0] // groups, W.shape[1]
    o_idx, local = np.divmod(picked, W[0].size)
    single = dict(params, groups=1)
    for g in np.unique(o_idx // per_group_out):
        xg = x[:, g * per_group_in:(g + 1) * per_group_in]
        sel = np.flatnonzero(o_idx // per_group_out == g)
        for part in _chunks(sel, W[0].nbytes + gy[:, 0].nbytes):
            stacks = [_perturb(W.shape[1:], W[o], local[p:p + 1], eps) for p, o in zip(part, o_idx[part])]
            Ws = np.concatenate([s for s, _ in stacks])           # (2P, c_I/g, k...)
            h = np.array([hh[0] for _, hh in stacks])
            y = conv_forward(xg, Ws, None, **single)              # (n, 2P, o...)
            diff = y[:, 0::2] - y[:, 1::2]                        # (n, P, o...)
            weights = gy[:, o_idx[part]]                          # (n, P, o...)
            out[part] = (diff * weights).sum(axis=(0,) + tuple(range(2, diff.ndim))) / h
    return out


def _fd_b(x, W, b, gy, params, picked, eps):
    """dL/db: one pair of forward calls per checked bias entry (c_O is small)."""
    out = np.empty(len(picked))
    for i, o in enumerate(picked):
        stack, h = _perturb(b.shape, b, np.array([o]), eps)
        y_plus = conv_forward(x, W, stack[0], **params)
        y_minus = conv_forward(x, W, stack[1], **params)
        out[i] = float(np.sum(gy * (y_plus - y_minus))) / h[0]
    return out


# ---- the user's gradients --------------------------------------------------------
def _check_user(name, u, correct, diagnoser, rtol, atol):
    if u.shape != correct.shape:
        return UserGradientCheck(name, correct.shape, u.shape, None, None, False,
                                 diagnoser.wrong_shape(name, u.shape))
    scale = float(np.max(np.abs(correct)))
    err = float(np.max(np.abs(u - correct))) if np.all(np.isfinite(u)) else math.inf
    rel = err / scale if scale > 0 else err
    passed = err <= atol + rtol * scale
    causes = [] if passed else diagnoser.diagnose(name, u)
    return UserGradientCheck(name, correct.shape, u.shape, err, rel, passed, causes)


# ---- argument checks ---------------------------------------------------------------
def _float64(name, a):
    a = backend.to_host(a)
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy or cupy ndarray, got {type(a).__name__}")
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"{name} must hold real floating-point values, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float64)


def _check_settings(eps, rtol, atol, seed, max_checks):
    for name, value, positive in (("eps", eps, True), ("rtol", rtol, False), ("atol", atol, False)):
        if not isinstance(value, Real) or isinstance(value, bool):
            raise TypeError(f"{name} must be a real number, got {value!r}")
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'} and finite, got {value!r}")
    if not isinstance(seed, Integral) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if seed < 0:   # NumPy's own message ("expected non-negative integer") names no argument
        raise ValueError(f"seed must be >= 0, got {seed}")
    if max_checks is not None:
        if not isinstance(max_checks, Integral) or isinstance(max_checks, bool):
            raise TypeError(f"max_checks must be a positive int or None, got {max_checks!r}")
        if max_checks < 1:
            raise ValueError(f"max_checks must be >= 1, got {max_checks}")


def _plain(value):
    """Tuples to lists and NumPy scalars to Python numbers, recursively (for json.dumps)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


__all__ = ["gradcheck", "GradcheckReport", "FiniteDifferenceCheck", "UserGradientCheck", "Cause",
           "DEFAULT_MAX_CHECKS"]
