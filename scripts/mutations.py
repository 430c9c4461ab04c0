"""The mutations scripts/mutation_check.py applies, one at a time, and the tests meant to catch each.

Each replaces one exact string (it must occur once in the file) by a plausible bug. ``tests``
are pytest arguments (node ids, files, ``-k`` filters), kept short: the tests that should fail,
not the whole suite. When the code moves and a string goes stale the check says so; update it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple
    why: str = ""


GRADCHECK = "tests/convcore/test_gradcheck.py"
MODES = "tests/convcore/test_padding_modes.py"
VS_JAX = "tests/convcore/test_conv_vs_jax.py"
TASKS = "tests/service/test_tasks.py"

MUTATIONS = [
    # ---- convcore: gradcheck and its diagnosis -------------------------------------------
    Mutation("convcore gradcheck: finite-difference verdict forced to passed=True",
             "convcore/gradcheck.py",
             "err <= atol + rtol * scale)", "True)",
             (f"{GRADCHECK}::test_wrong_conv_backward_fails_the_finite_difference_check",),
             "a wrong conv_backward must make gradcheck fail"),
    Mutation("convcore gradcheck: finite differences ignore rtol",
             "convcore/gradcheck.py",
             "err <= atol + rtol * scale)", "err <= atol + 1e-5 * scale)",
             (f"{GRADCHECK}::test_finite_difference_verdict_follows_rtol_and_atol",)),
    Mutation("convcore gradcheck: finite differences ignore atol",
             "convcore/gradcheck.py",
             "err <= atol + rtol * scale)", "err <= 1e-8 + rtol * scale)",
             (f"{GRADCHECK}::test_finite_difference_verdict_follows_rtol_and_atol",)),
    Mutation("convcore gradcheck: finite differences ignore eps",
             "convcore/gradcheck.py",
             "numeric = fd_fn(x, W, b, gy, params, picked, eps)",
             "numeric = fd_fn(x, W, b, gy, params, picked, 1e-6)",
             (f"{GRADCHECK}::test_finite_difference_step_is_eps",)),
    Mutation("convcore gradcheck diagnosis: mean over channels ignores groups",
             "convcore/gradcheck_diagnose.py",
             '"gx": [(g.out_channels // g.groups, "mean_over_channels"',
             '"gx": [(g.out_channels, "mean_over_channels"',
             (f"{GRADCHECK}::test_mean_over_channels_counts_the_channels_of_one_group",)),
    Mutation("convcore gradcheck diagnosis: missing channel sum ignores groups",
             "convcore/gradcheck_diagnose.py",
             "keep = [grp * per + j for grp in range(g.groups)]", "keep = [j]",
             (f"{GRADCHECK}::test_missing_channel_sum_in_each_group",)),
    Mutation("convcore gradcheck diagnosis: sign not recognised",
             "convcore/gradcheck_diagnose.py",
             "if factor < 0:", "if factor < -1:",
             (GRADCHECK, "-k", "wrong_input_gradients or wrong_bias_gradients or strided_grouped")),
    # ---- convcore: float32 -----------------------------------------------------------------
    Mutation("convcore float32-only error of 5e-5 relative in y",
             "convcore/conv.py",
             "        y = self._engine.forward()\n",
             "        y = self._engine.forward()\n        if y.dtype.itemsize == 4:\n            y *= 1 + 5e-5\n",
             (VS_JAX, "-k", "functions_match_jax and float32")),
    Mutation("convcore float32-only error of 5e-5 relative in gx",
             "convcore/conv.py",
             '            gx, gW = self._engine.backward(gy, "x" in need, "W" in need)\n',
             '            gx, gW = self._engine.backward(gy, "x" in need, "W" in need)\n'
             '            if gx is not None and gx.dtype.itemsize == 4:\n                gx *= 1 + 5e-5\n',
             (VS_JAX, "-k", "functions_match_jax and float32")),
    # ---- convcore: padding and its adjoint ------------------------------------------------
    Mutation("convcore padding: reflect adjoint off by one on the low side (symmetric)",
             "convcore/padding.py",
             "return -t if t < 0 else 2 * (size - 1) - t", "return -t - 1 if t < 0 else 2 * (size - 1) - t",
             (MODES, "-k", "reflect and not random")),
    Mutation("convcore padding: circular adjoint wraps negative cells to their mirror",
             "convcore/padding.py",
             "return t % size", "return abs(t) % size",
             (MODES, "-k", "circular and not random")),
    Mutation("convcore padding: replicate pads as numpy 'symmetric' (equal only for 1-cell pads)",
             "convcore/padding.py",
             '"replicate": "edge"}', '"replicate": "symmetric"}',
             (MODES, "-k", "replicate and not random")),
    Mutation("convcore padding: zeros adjoint crops at the high pad",
             "convcore/padding.py",
             "inner = g[_along(axis, slice(lo, lo + size))]", "inner = g[_along(axis, slice(hi, hi + size))]",
             (VS_JAX, "-k", "functions_match_jax and float64")),
    # ---- convcore: the convolution ------------------------------------------------------------
    Mutation("convcore conv: gb misses the sum over the batch",
             "convcore/conv.py",
             "gb = gy.sum(axis=(0,) + tuple(range(2, gy.ndim)))", "gb = gy[0].sum(axis=tuple(range(1, gy.ndim - 1)))",
             (VS_JAX, "-k", "functions_match_jax and float64")),
    Mutation("convcore conv: bias subtracted",
             "convcore/conv.py",
             "y += b.reshape((1, -1) + (1,) * self.geometry.ndim)",
             "y -= b.reshape((1, -1) + (1,) * self.geometry.ndim)",
             (VS_JAX, "-k", "functions_match_jax and float64")),
    Mutation("convcore layout: depth_to_space interleaves phase and position the wrong way",
             "convcore/layout.py",
             "order = (0, 1) + sum(((2 + n + j, 2 + j) for j in range(n)), ())",
             "order = (0, 1) + sum(((2 + j, 2 + n + j) for j in range(n)), ())",
             (VS_JAX, "-k", "functions_match_jax and float64")),
    Mutation("convcore reduction: stride dropped on dims with two outputs",
             "convcore/reduction.py",
             "1 if o == 1 else s", "1 if o <= 2 else s",
             (VS_JAX, "-k", "functions_match_jax and float64")),
    Mutation("convcore fft: forward multiplies by W's spectrum unconjugated (a convolution)",
             "convcore/fft_conv.py",
             "Wc = self.W_spectrum().conj().swapaxes(-1, -2)", "Wc = self.W_spectrum().swapaxes(-1, -2)",
             (VS_JAX, "-k", "functions_match_jax and float64 and fft")),
    Mutation("convcore fft: gW from gy's spectrum unconjugated",
             "convcore/fft_conv.py",
             "G.conj().swapaxes(-1, -2)", "G.swapaxes(-1, -2)",
             (VS_JAX, "-k", "functions_match_jax and float64 and fft")),
    Mutation("convcore direct: gx with the filters not flipped",
             "convcore/direct_conv.py",
             "flip = (slice(None),) * 3 + (slice(None, None, -1),) * N",
             "flip = (slice(None),) * 3 + (slice(None),) * N",
             (VS_JAX, "-k", "functions_match_jax and float64 and direct")),
    Mutation("convcore direct: strided outputs read in place at stride 1",
             "convcore/direct_conv.py",
             "strides = (math.prod(red.qx),) + tuple(s * st for s, st in zip(red.out_stride, grid.strides))",
             "strides = (math.prod(red.qx),) + tuple(grid.strides)",
             ("tests/convcore/test_direct_blocks.py", "-k", "many_blocks and in-place and float64")),
    Mutation("convcore direct: the output space's ring cropped from the wrong end",
             "convcore/direct_conv.py",
             "Y = Y.reshape((g, O) + space.dims)[..., :geom.out_spatial[-1]]",
             "Y = Y.reshape((g, O) + space.dims)[..., -geom.out_spatial[-1]:]",
             (VS_JAX, "-k", "functions_match_jax and float64 and direct")),
    # ---- worker: the job store's one-step scripts ---------------------------------------------
    Mutation("worker store: finishing a job keeps its inputs",
             "worker/store_scripts.py",
             "for name in string.gmatch(inputs, '[^,]+') do redis.call('DEL', job .. ':in:' .. name) end",
             "for name in string.gmatch(inputs, '[^,]+') do end",
             ("tests/service/test_store_scripts.py", "-k", "finish_in_one_step")),
    Mutation("worker store: a second final state overwrites the first",
             "worker/store_scripts.py",
             "if (not s) or (not string.find(ARGV[1], ',' .. s .. ',', 1, true)) then return 0 end\nlocal inputs",
             "if not s then return 0 end\nlocal inputs",
             ("tests/service/test_store_scripts.py", "-k", "finish_in_one_step")),
    # ---- worker: every request parameter reaches convcore ----------------------------------
    Mutation("worker drops padding_mode from a job's parameters",
             "worker/kinds.py",
             "return {k: params[k] for k in CONV_PARAMS if k in params}",
             'return {k: params[k] for k in CONV_PARAMS if k in params and k != "padding_mode"}',
             (f"{TASKS}::test_padding_mode_and_algorithm_reach_convcore",)),
    Mutation("worker drops algorithm from a job's parameters",
             "worker/kinds.py",
             "return {k: params[k] for k in CONV_PARAMS if k in params}",
             'return {k: params[k] for k in CONV_PARAMS if k in params and k != "algorithm"}',
             (f"{TASKS}::test_padding_mode_and_algorithm_reach_convcore",)),
    Mutation("worker ignores gradcheck's eps",
             "worker/ops.py",
             'eps=params.get("eps", 1e-6)', "eps=1e-6",
             (TASKS, "-k", "gradcheck")),
    Mutation("worker ignores gradcheck's rtol",
             "worker/ops.py",
             'rtol=params.get("rtol", 1e-5)', "rtol=1e-5",
             (TASKS, "-k", "gradcheck")),
    Mutation("worker ignores gradcheck's atol",
             "worker/ops.py",
             'atol=params.get("atol", 1e-8)', "atol=1e-8",
             (TASKS, "-k", "gradcheck")),
]
