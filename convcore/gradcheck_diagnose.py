"""Why a user's gradient is wrong: rebuild each classic mistake and see which one reproduces it.

For a convolution y = x (*) W (cross-correlation), the classic mistakes of
hand-written (e.g. ``scipy.signal.fftconvolve``) backward passes are rebuilt
from the same x, W, gy with convcore itself:

    gx: kernel not flipped / transposed instead of flipped (backward run with
        flip(W), T(flip(W)), T(W); T reverses the order of the spatial axes, as
        ``kernel.T`` does), only one output channel summed, a crop of the "full"
        result shifted by a few entries (mode="same" misalignment);
    gW: gy not flipped (a convolution where a correlation is needed), the
        gradient flipped, only one sample summed, a shifted crop;
    gb: only one sample summed;
    all: one constant factor, named when it is -1 (sign), 1/n (mean over the
        batch), 1/channels or 1/positions (mean instead of sum), otherwise
        reported as-is (e.g. a learning rate multiplied into the gradient).

Candidates are tried by increasing number of causes; the first level with a
match wins. A candidate equal (up to a factor) to the correct gradient is
skipped: it cannot be told apart, e.g. flip(W) for a symmetric kernel.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from .conv import conv_backward
from .padding import pad

DIAGNOSIS_RTOL = 1e-4   # a candidate matches when max|u - a C| <= this * max|u|
MAX_SHIFTS = 1000       # shift vectors tried per candidate (all combinations below this)
MAX_SINGLES = 8         # channels / samples tried from each end for "only one contributes"


@dataclass
class Cause:
    """One diagnosed cause: a stable ``code``, an explanation and its numbers."""

    code: str
    message: str
    details: dict = field(default_factory=dict)


def _spatial_flip(a):
    return a[(slice(None), slice(None)) + (slice(None, None, -1),) * (a.ndim - 2)]


def _spatial_transpose(a):
    """Reverse the order of the spatial axes (what ``kernel.T`` does to one kernel)."""
    return a.transpose((0, 1) + tuple(range(a.ndim - 1, 1, -1)))


class Diagnoser:
    """Builds candidate wrong gradients for one convolution and matches them to a user's."""

    def __init__(self, x, W, gy, correct, params, geom):
        self.x, self.W, self.gy, self.correct = x, W, gy, correct
        self.params, self.geom = params, geom
        self._cache = {}

    # ---- entry points ---------------------------------------------------------
    def diagnose(self, name, u) -> list:
        """Causes that reproduce u (shape already equal to the correct gradient's)."""
        if not np.all(np.isfinite(u)):
            return [Cause("non_finite", f"{name} holds NaN or inf values ({int(np.sum(~np.isfinite(u)))} "
                                        f"entries): an overflow or a division by zero upstream")]
        if not np.any(u):
            return [Cause("all_zero", f"{name} is all zeros: the gradient was never computed or "
                                      f"accumulated into a fresh array")]
        correct = self.correct[name]
        for level in self._levels(name):
            found = None
            for causes, make in level:
                candidate = make()
                if candidate is None or (causes and _fit(candidate, correct) is not None):
                    continue
                factor = _fit(u, candidate)
                if factor is None:
                    continue
                full = list(causes) + self._factor_causes(name, factor)
                if not full:   # matches the correct gradient itself: only rounding differs
                    rel = float(np.max(np.abs(u - correct)) / np.max(np.abs(correct)))
                    full = [Cause("precision", f"{name} agrees with the correct gradient to {rel:.2g} "
                                               f"(relative) but not within rtol: float32 rounding or "
                                               f"too tight a tolerance, not a wrong formula",
                                  {"max_rel_error": rel})]
                if found is None or len(full) < len(found):
                    found = full
                if len(full) == len(causes) > 0:   # reproduced exactly, without a factor
                    return full
            if found:
                return found
        return [Cause("unknown", f"{name} matches none of the known mistakes (kernel flip/transpose, "
                                 f"missing sums, shifted crop, constant factor) alone or in pairs")]

    def wrong_shape(self, name, shape) -> list:
        """A wrong_shape cause, with a hint when the shape is a recognisable one."""
        g = self.geom
        d, o, ke = g.spatial, g.out_spatial, g.dilated_kernel
        n, c_in, c_out = g.batch, g.in_channels, g.out_channels
        full_x = tuple(a + b - 1 for a, b in zip(o, ke))
        full_w = tuple(a + b - 1 for a, b in zip(d, o))
        known = {
            "gx": {(n, c_in) + o: "the output's spatial shape: fftconvolve(gy, ..., mode='same') gives "
                                  "gy's size; the input gradient is the 'full' result cropped to x's size",
                   (n, c_in) + full_x: "the uncropped mode='full' result; crop it at the forward padding",
                   (n, c_in) + g.padded: "the padded input's shape; drop the padding cells (adjoint of the pad)",
                   (n, c_out, c_in) + d: "one term per output channel: the sum over output channels is missing",
                   _without_batch(g): "no batch axis: gradients must be per sample"},
            "gW": {(g.out_channels, g.kernel_shape[1]) + d: "the input's spatial shape: mode='same' where the "
                                                            "weight gradient is the 'valid' correlation (size k)",
                   (g.out_channels, g.kernel_shape[1]) + full_w: "the uncropped mode='full' result; the "
                                                                 "weight gradient is its 'valid' part",
                   (n,) + g.kernel_shape: "one gradient per sample: the sum over the batch is missing"},
            "gb": {(n, c_out): "one bias gradient per sample: the sum over the batch is missing",
                   (c_out,) + o: "the sum over output positions is missing",
                   (n, c_out) + o: "the sums over the batch and over output positions are missing",
                   (): "summed over the channels too: gb has one entry per output channel"},
        }[name]
        expected = self.correct[name].shape
        hint = known.get(tuple(shape), "not a shape this layer's gradients take")
        return [Cause("wrong_shape", f"{name} has shape {tuple(shape)}, expected {expected}: {hint}",
                      {"expected": list(expected), "got": list(shape)})]

    # ---- candidate levels -------------------------------------------------------
    def _levels(self, name):
        zero = [((), lambda: self.correct[name])]
        if name == "gx":
            kernels = self._kernel_variants()
            channels = self._channel_variants()
            shifts = self._shift_variants("gx", self.W, None)
            one = ([(c, (lambda Wv=Wv: self._gx(Wv))) for c, Wv in kernels]
                   + [(c, (lambda gyv=gyv: self._gx(self.W, gyv))) for c, gyv in channels] + shifts)
            two = (lambda: [item for c, Wv in kernels for item in self._shift_variants("gx", Wv, c)]
                   + [(ck + cc, (lambda Wv=Wv, gyv=gyv: self._gx(Wv, gyv)))
                      for ck, Wv in kernels for cc, gyv in channels])
        elif name == "gW":
            flipped_gy = (Cause("gy_not_flipped", "the weight gradient is a convolution of x with gy; it "
                                "must be the valid *correlation* (fftconvolve(x, gy flipped in every "
                                "spatial axis, 'valid')): gy was not flipped"),)
            flipped_gW = (Cause("gradient_flipped", "gW is flipped in every spatial axis: it is the "
                                "gradient of the flipped kernel. If your forward is fftconvolve(x, K) "
                                "(a true convolution), pass W = K flipped and gW = gK flipped: gradcheck "
                                "uses the cross-correlation convention"),)
            samples = self._sample_variants()
            gyf = _spatial_flip(self.gy)
            one = ([(flipped_gy, lambda: self._gW(gyf)),
                    (flipped_gW, lambda: _spatial_flip(self.correct["gW"]))]
                   + [(c, (lambda n=n: self._gW(self.gy[n:n + 1], n))) for c, n in samples]
                   + self._shift_variants("gW", self.gy, None))
            two = (lambda: self._shift_variants("gW", gyf, flipped_gy)
                   + [(flipped_gy + c, (lambda n=n: self._gW(gyf[n:n + 1], n))) for c, n in samples])
        else:
            one = [(c, (lambda n=n: self.gy[n].sum(axis=tuple(range(1, self.gy.ndim - 1)))))
                   for c, n in self._sample_variants()]
            two = list
        yield zero
        yield one
        yield two()

    def _kernel_variants(self):
        W, N = self.W, self.geom.ndim
        note = " (in 1-D kernel.T does nothing, so kernel.T in place of a flip leaves it unflipped)"
        variants = [("kernel_not_flipped", "kernel not flipped: the input gradient convolves gy with the "
                     "kernel flipped relative to the forward (for a forward fftconvolve(x, K) it is "
                     "fftconvolve(gy, K[::-1, ..., ::-1]); for a forward correlation with W it is "
                     "fftconvolve(gy, W))" + (note if N == 1 else ""), _spatial_flip(W))]
        if W.shape[2:] == W.shape[:1:-1]:   # T keeps the shape only for a kernel like k x k
            variants += [("kernel_transposed", "kernel transposed (kernel.T reverses the order of the "
                          "axes) where it must be flipped in every axis (kernel[::-1, ..., ::-1]); the "
                          "w^T of the FFT paper means the flipped kernel", _spatial_transpose(_spatial_flip(W))),
                         ("kernel_flipped_and_transposed", "kernel flipped *and* transposed: only the "
                          "flip in every axis is needed", _spatial_transpose(W))]
        out, seen = [], [W]
        for code, message, Wv in variants:
            if not any(np.array_equal(Wv, s) for s in seen):
                seen.append(Wv)
                out.append(((Cause(code, message),), Wv))
        return out

    def _channel_variants(self):
        g = self.geom
        per = g.out_channels // g.groups
        if per < 2:
            return []
        out = []
        for j in _ends(per):
            keep = [grp * per + j for grp in range(g.groups)]
            gyv = np.zeros_like(self.gy)
            gyv[:, keep] = self.gy[:, keep]
            where = f"output channel {j}" + (" of each group" if g.groups > 1 else "")
            out.append(((Cause("missing_channel_sum", f"only {where} contributes: the input gradient "
                                "must sum over all output channels (a '=' where '+=' belongs, or a "
                                "loop that keeps the last term)", {"channel": j}),), gyv))
        return out

    def _sample_variants(self):
        return [((Cause("missing_batch_sum", f"only sample {n} contributes: the parameter gradient must "
                        f"sum over the batch (a '=' where '+=' belongs)", {"sample": n}),), n)
                for n in (_ends(self.geom.batch) if self.geom.batch > 1 else [])]

    def _shift_variants(self, name, variant, base_causes):
        """Crops of the un-cropped gradient at offsets other than the right one."""
        if name == "gx" and self.geom.padding_mode != "zeros":
            return []
        size = self.geom.dilated_kernel if name == "gx" else self.geom.kernel
        reach = tuple(max(1, k - 1) for k in size)
        out = []
        for shift in _shift_vectors(reach):
            cause = Cause("shifted", f"shifted by {shift} entries (per spatial axis) against the correct "
                          f"gradient: an off-by-one / half-kernel misalignment, typical of fftconvolve "
                          f"mode='same' (it centres even kernels one cell differently) or of cropping the "
                          f"'full' result at the wrong offset", {"shift": list(shift)})
            out.append(((base_causes or ()) + (cause,),
                        lambda shift=shift: self._extended(name, variant, base_causes, reach)(shift)))
        return out

    # ---- gradients of variants ------------------------------------------------
    def _backward(self, gy, x, W, need, **overrides):
        return conv_backward(gy, x, W, need=need, **dict(self.params, **overrides))

    def _gx(self, Wv, gyv=None):
        return self._backward(self.gy if gyv is None else gyv, self.x, Wv, ("x",)).gx

    def _gW(self, gyv, n=None):
        x = self.x if n is None else self.x[n:n + 1]
        return self._backward(gyv, x, self.W, ("W",)).gW

    def _extended(self, name, variant, base_causes, reach):
        """shift -> the gradient cropped ``shift`` entries away from the right window."""
        key = (name,) + tuple(c.code for c in base_causes or ())
        if key not in self._cache:
            self._cache[key] = (self._extended_gx if name == "gx" else self._extended_gW)(variant, reach)
        return self._cache[key]

    def _extended_gx(self, Wv, reach):
        # The gradient w.r.t. the zero-padded input is the whole "full" convolution; a
        # zero margin beyond it stands for what fftconvolve's "full" mode has there.
        g = self.geom
        x_pad = np.pad(self.x, ((0, 0), (0, 0)) + g.pads)
        grad = self._backward(self.gy, x_pad, Wv, ("x",), padding=0).gx
        grad = np.pad(grad, ((0, 0), (0, 0)) + tuple((r, r) for r in reach))
        starts = tuple(r + lo for r, (lo, _) in zip(reach, g.pads))
        return lambda shift: _window(grad, starts, shift, g.spatial)

    def _extended_gW(self, gyv, reach):
        # Correlating with a kernel 2*reach wider over an input with reach*dilation
        # zeros each side keeps the output shape and yields the lags outside 0..k-1.
        g = self.geom
        x_pad = pad(np, self.x, g.pads, g.padding_mode)
        x_pad = np.pad(x_pad, ((0, 0), (0, 0)) + tuple((r * dl, r * dl) for r, dl in zip(reach, g.dilation)))
        W_wide = np.zeros(g.kernel_shape[:2] + tuple(k + 2 * r for k, r in zip(g.kernel, reach)))
        grad = self._backward(gyv, x_pad, W_wide, ("W",), padding=0, padding_mode="zeros").gW
        return lambda shift: _window(grad, reach, shift, g.kernel)

    # ---- constant factors --------------------------------------------------------
    def _factor_causes(self, name, factor) -> list:
        if abs(factor - 1) <= 1e-6:
            return []
        g = self.geom
        positions = math.prod(g.out_spatial)
        named = {"gx": [(g.out_channels // g.groups, "mean_over_channels", "the output channels")],
                 "gW": [(g.batch, "mean_over_batch", "the batch")],
                 "gb": [(g.batch, "mean_over_batch", "the batch"),
                        (positions, "mean_over_positions", "the output positions"),
                        (g.batch * positions, "mean_over_batch_and_positions",
                         "the batch and the output positions")]}[name]
        causes = []
        if factor < 0:
            causes.append(Cause("sign_flipped", f"the sign of {name} is flipped (it is minus the "
                                f"gradient): descend with -lr * gradient, but pass back +gradient",
                                {"factor": -1.0}))
        size = abs(factor)
        for count, code, what in named:
            if count > 1 and abs(size * count - 1) <= 1e-6:
                causes.append(Cause(code, f"averaged over {what} ({count}) where the chain rule sums: "
                                    f"{name} is 1/{count} of the correct one", {"factor": size}))
                return causes
        if abs(size - 1) > 1e-6:
            causes.append(Cause("scaled", f"{name} is the correct gradient times {size:.6g}: a constant "
                                f"factor such as a learning rate applied to the gradient that is passed "
                                f"back (apply the learning rate only in the parameter update)",
                                {"factor": size}))
        return causes


def _without_batch(g):
    return (g.in_channels,) + g.spatial


def _window(a, starts, shift, shape):
    """a[:, :, start+shift : start+shift+size] per spatial axis (a view)."""
    index = tuple(slice(s + d, s + d + n) for s, d, n in zip(starts, shift, shape))
    return a[(slice(None), slice(None)) + index]


def _shift_vectors(reach):
    """Non-zero shift vectors with |shift_j| <= reach_j, smallest first.

    All combinations when there are at most MAX_SHIFTS, else single-axis and
    diagonal shifts only.
    """
    ranges = [range(-r, r + 1) for r in reach]
    if math.prod(len(r) for r in ranges) <= MAX_SHIFTS:
        vectors = [v for v in itertools.product(*ranges) if any(v)]
    else:
        N = len(reach)
        vectors = [tuple(s if j == axis else 0 for j in range(N))
                   for axis in range(N) for s in ranges[axis] if s]
        vectors += [(s,) * N for s in range(-min(reach), min(reach) + 1) if s]
    return sorted(set(vectors), key=lambda v: (sum(map(abs, v)), v))


def _ends(count):
    """Indices from both ends of range(count), at most MAX_SINGLES each."""
    return sorted(set(range(min(count, MAX_SINGLES))) | set(range(max(0, count - MAX_SINGLES), count)))


def _fit(u, candidate):
    """The factor a with u == a * candidate (to DIAGNOSIS_RTOL), or None.

    A single entry fits any factor, so there only a = 1 counts.
    """
    cc = float(np.vdot(candidate, candidate))
    if cc == 0.0:
        return None
    a = float(np.vdot(u, candidate)) / cc
    if u.size < 2 and abs(a - 1) > 1e-9:
        return None
    scale = float(np.max(np.abs(u)))
    if float(np.max(np.abs(u - a * candidate))) <= DIAGNOSIS_RTOL * scale:
        return a
    return None
