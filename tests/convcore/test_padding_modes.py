"""padding_mode "circular", "reflect", "replicate": forward and all gradients.

JAX has no padding modes, so: PyTorch (F.pad(mode) + conv1d/2d/3d, autograd) for
N <= 3, and for N = 4, 5 JAX on an input padded by numpy.pad, with gx from jax.vjp
through jnp.pad + conv (an independent adjoint of the padding). The generated
cases always pad at least one side (else the mode has no effect) and reach N = 5.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from conv_checks import check_case
from conv_oracles import ConvCase, assert_close, cached_reference, jax_reference, torch_reference
from conv_strategies import conv_cases, note_seed, reproducible
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import convcore

MODES = ("circular", "reflect", "replicate")

TORCH_CASES = [
    ConvCase((2, 2, 9), (3, 2, 3), padding=[(2, 1)], seed=1),
    ConvCase((1, 3, 8), (3, 1, 5), padding="same", groups=3, dilation=2, seed=2),
    ConvCase((2, 2, 7, 6), (2, 2, 3, 3), padding=[(1, 2), (2, 0)], stride=(2, 1), seed=3),
    ConvCase((1, 2, 6, 5), (4, 2, 3, 2), padding="full", seed=4),
    ConvCase((1, 2, 5, 4, 6), (2, 1, 3, 2, 3), padding=(1, 2, 1), groups=2, stride=2, seed=5),
]
JAX_CASES = [
    ConvCase((2, 2, 5, 4, 4, 5), (2, 2, 3, 2, 3, 2), padding=[(1, 2), (1, 0), (2, 1), 1], stride=(1, 2, 1, 1),
             seed=6),
    ConvCase((1, 2, 4, 4, 3, 4, 4), (2, 1, 2, 3, 2, 2, 3), padding=1, groups=2, dilation=(1, 1, 2, 1, 1),
             seed=7),
]


def with_mode(case: ConvCase, mode: str) -> ConvCase:
    return ConvCase(case.x_shape, case.W_shape, bias=case.bias, stride=case.stride, padding=case.padding,
                    dilation=case.dilation, groups=case.groups, padding_mode=mode, seed=case.seed)


@functools.lru_cache(maxsize=None)
def reference(table: str, index: int, mode: str):
    if table == "torch":
        return torch_reference(with_mode(TORCH_CASES[index], mode))
    return jax_reference(with_mode(JAX_CASES[index], mode))


@pytest.mark.parametrize("algorithm", ["fft", "direct"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("index", range(len(TORCH_CASES)), ids=[f"N{c.ndim}-{i}" for i, c in enumerate(TORCH_CASES)])
def test_modes_match_pytorch(backend, index, mode, dtype, algorithm):
    check_case(backend, with_mode(TORCH_CASES[index], mode), reference("torch", index, mode), dtype, algorithm)


@pytest.mark.parametrize("algorithm", ["fft", "direct", "auto"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("index", range(len(JAX_CASES)), ids=[f"N{c.ndim}-{i}" for i, c in enumerate(JAX_CASES)])
def test_modes_in_4d_and_5d_match_jax_on_padded_input(backend, index, mode, algorithm):
    case = with_mode(JAX_CASES[index], mode)
    check_case(backend, case, reference("jax", index, mode), np.float64, algorithm, layer=True)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_modes_mean_what_pytorch_convnd_means(backend, ndim, mode):
    """torch.nn.ConvNd(padding_mode=...) itself, not our reading of it, is the reference."""
    torch.manual_seed(ndim)
    layer = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)[ndim - 1](
        2, 3, kernel_size=3, padding=2, padding_mode=mode, dtype=torch.float64)
    x = torch.randn((2, 2) + (5,) * ndim, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    gy = torch.randn_like(y)
    y.backward(gy)
    xb, Wb, bb, gyb = (backend.asarray(t.detach().numpy()) for t in (x, layer.weight, layer.bias, gy))
    ours = convcore.Convolution(padding=2, padding_mode=mode)
    y_ours = ours.forward(xb, Wb, bb)
    grads = ours.backward(gyb)
    assert_close("y", backend.to_numpy(y_ours), y.detach().numpy(), np.float64)
    assert_close("gx", backend.to_numpy(grads.gx), x.grad.numpy(), np.float64)
    assert_close("gW", backend.to_numpy(grads.gW), layer.weight.grad.numpy(), np.float64)
    assert_close("gb", backend.to_numpy(grads.gb), layer.bias.grad.numpy(), np.float64)


@reproducible
@settings(max_examples=30, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
@given(case=conv_cases(padding_modes=MODES, max_ndim=5), algorithm=st.sampled_from(["fft", "direct", "auto"]))
def test_random_mode_configs_match_pytorch_or_jax(backend, case, algorithm):
    note_seed()
    ref = cached_reference(case)
    for dtype in (np.float64, np.float32):
        check_case(backend, case, ref, dtype, algorithm)
