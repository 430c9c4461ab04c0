"""Bad arguments raise ValueError / TypeError whose message names the argument and the values."""
from __future__ import annotations

import re

import numpy as np
import pytest

import convcore


def arr(shape, dtype=np.float64):
    return np.ones(shape, dtype=dtype)


# (description, x shape, W shape, keyword arguments, exception, regex the message must match)
GEOMETRY_ERRORS = [
    ("channels not matching", (2, 4, 8), (3, 3, 3), {}, ValueError,
     r"channels do not match: x has c_in=4.*c_in // groups = 4.*W shape \(3, 3, 3\)"),
    ("groups not dividing c_in", (2, 4, 8), (3, 2, 3), {"groups": 3}, ValueError,
     r"groups=3 must divide both c_in=4.*c_out=3"),
    ("groups not dividing c_out", (2, 4, 8), (3, 2, 3), {"groups": 2}, ValueError,
     r"groups=2 must divide both c_in=4.*c_out=3"),
    ("non-positive groups", (2, 4, 8), (3, 4, 3), {"groups": 0}, ValueError, r"groups must be a positive int, got 0"),
    ("kernel larger than padded input", (1, 1, 4), (1, 1, 7), {"padding": 1}, ValueError,
     r"kernel larger than the padded input: dilated kernel \(7,\) vs padded input \(6,\)"),
    ("dilated kernel larger than input", (1, 1, 6, 6), (1, 1, 3, 3), {"dilation": (1, 3)}, ValueError,
     r"dilated kernel \(3, 7\) vs padded input \(6, 6\)"),
    ("too many stride values", (1, 1, 6, 6), (1, 1, 3, 3), {"stride": (1, 2, 3)}, ValueError,
     r"stride needs one value per spatial dim \(2\), got 3: \(1, 2, 3\)"),
    ("too few dilation values", (1, 1, 6, 6, 6), (1, 1, 3, 3, 3), {"dilation": (1, 2)}, ValueError,
     r"dilation needs one value per spatial dim \(3\), got 2"),
    ("wrong number of padding entries", (1, 1, 6, 6), (1, 1, 3, 3), {"padding": [(1, 1)]}, ValueError,
     r"padding needs one entry per spatial dim \(2\), got 1"),
    ("padding pair of three", (1, 1, 6, 6), (1, 1, 3, 3), {"padding": [(1, 2, 3), 0]}, ValueError,
     r"padding entries must be ints or \(low, high\) int pairs, got \(1, 2, 3\)"),
    ("padding entry a float", (1, 1, 6, 6), (1, 1, 3, 3), {"padding": [1.5, 1]}, ValueError,
     r"padding entries must be ints or \(low, high\) int pairs, got 1\.5 in padding=\[1\.5, 1\]"),
    ("padding entry None", (1, 1, 6, 6), (1, 1, 3, 3), {"padding": [None, 1]}, ValueError,
     r"padding entries must be ints or \(low, high\) int pairs, got None"),
    ("padding entry a 0-d array", (1, 1, 6, 6), (1, 1, 3, 3), {"padding": [np.array(1), 1]}, ValueError,
     r"padding entries must be ints or \(low, high\) int pairs, got array\(1\)"),
    ("padding a dict", (1, 1, 6, 6), (1, 1, 3, 3), {"padding": {1: 2, 3: 4}}, TypeError,
     r"padding must be an int, a sequence or a string, got \{1: 2, 3: 4\}"),
    ("stride as bytes", (1, 1, 6, 6), (1, 1, 3, 3), {"stride": b"\x01\x01"}, TypeError,
     r"stride must be an int or a sequence of 2 ints, got b'"),
    ("dilation a dict", (1, 1, 6), (1, 1, 3), {"dilation": {1: 1}}, TypeError,
     r"dilation must be an int or a sequence of 1 ints, got \{1: 1\}"),
    ("negative padding", (1, 1, 6, 6), (1, 1, 3, 3), {"padding": (1, -1)}, ValueError,
     r"padding must be >= 0, got \(1, -1\)"),
    ("unknown padding word", (1, 1, 6), (1, 1, 3), {"padding": "half"}, ValueError,
     r"padding must be .*'valid', 'same', 'full'.*got 'half'"),
    ("zero stride", (1, 1, 6, 6), (1, 1, 3, 3), {"stride": (1, 0)}, ValueError,
     r"stride must be >= 1 in every dim, got stride=\(1, 0\)"),
    ("negative dilation", (1, 1, 6), (1, 1, 3), {"dilation": -1}, ValueError,
     r"dilation must be >= 1 in every dim, got dilation=\(-1,\)"),
    ("float stride", (1, 1, 6), (1, 1, 3), {"stride": 1.5}, TypeError, r"stride must be an int .*got 1\.5"),
    ("'same' with stride 2", (1, 1, 6, 6), (1, 1, 3, 3), {"padding": "same", "stride": (1, 2)}, ValueError,
     r"padding='same' needs stride 1 in every dim, got stride=\(1, 2\)"),
    ("unknown padding_mode", (1, 1, 6), (1, 1, 3), {"padding_mode": "mirror"}, ValueError,
     r"padding_mode must be one of \('zeros', 'circular', 'reflect', 'replicate'\), got 'mirror'"),
    ("reflect padding as large as the input", (1, 1, 3), (1, 1, 3), {"padding": 3, "padding_mode": "reflect"},
     ValueError, r"padding_mode='reflect' needs padding < input size; dim 0 has size 3 and padding \(3, 3\)"),
    ("circular padding larger than the input", (1, 1, 3, 5), (1, 1, 2, 2),
     {"padding": [(0, 0), (6, 0)], "padding_mode": "circular"}, ValueError,
     r"padding_mode='circular' needs padding <= input size; dim 1 has size 5 and padding \(6, 0\)"),
    ("x without spatial dims", (2, 3), (3, 3, 3), {}, ValueError, r"x must have shape .* got shape \(2, 3\)"),
    ("W of another N", (2, 3, 8, 8), (3, 3, 3), {}, ValueError,
     r"W must have shape .* got W shape \(3, 3, 3\) for x shape \(2, 3, 8, 8\)"),
    ("empty batch", (0, 3, 8), (3, 3, 3), {}, ValueError, r"no empty dims, got x shape \(0, 3, 8\)"),
]


@pytest.mark.parametrize("what, x_shape, W_shape, kwargs, exc, message", GEOMETRY_ERRORS,
                         ids=[row[0] for row in GEOMETRY_ERRORS])
def test_bad_geometry_is_refused_by_every_entry_point(what, x_shape, W_shape, kwargs, exc, message):
    with pytest.raises(exc, match=message):
        convcore.make_geometry(x_shape, W_shape, **kwargs)
    if 0 in x_shape:
        return
    x, W = arr(x_shape), arr(W_shape)
    with pytest.raises(exc, match=message):
        convcore.conv_forward(x, W, **kwargs)
    with pytest.raises(exc, match=message):
        convcore.conv_backward(arr(x_shape), x, W, **kwargs)
    with pytest.raises(exc, match=message):
        convcore.Convolution(**kwargs).forward(x, W)


@pytest.mark.parametrize("dtype", [np.int64, np.float16, np.complex128, np.bool_])
@pytest.mark.parametrize("which", ["x", "W", "b"])
def test_unsupported_dtype(which, dtype):
    args = {"x": arr((2, 3, 8)), "W": arr((4, 3, 3)), "b": arr((4,))}
    args[which] = args[which].astype(dtype)
    with pytest.raises(TypeError, match=rf"{which} has dtype {np.dtype(dtype)}; convcore supports float32 and float64"):
        convcore.conv_forward(args["x"], args["W"], args["b"])


@pytest.mark.parametrize("bits", [32, 64])
def test_other_byte_order_is_named(bits):
    other = np.dtype(f"float{bits}").newbyteorder()   # the byte order this host does not use
    with pytest.raises(TypeError, match=rf"x has dtype {re.escape(other.str)} \(float{bits} in the other byte order\); "
                                        rf"convcore supports native-order float32 and float64: "
                                        rf"convert with x.astype\(np.float{bits}\)"):
        convcore.conv_forward(np.ones((2, 3, 8), other), np.ones((4, 3, 3), other))


@pytest.mark.parametrize("x_dtype, W_dtype, b_dtype, message", [
    (np.float32, np.float64, None, r"x and W must share a dtype, got x float32 and W float64"),
    (np.float64, np.float32, None, r"x and W must share a dtype, got x float64 and W float32"),
    (np.float32, np.float32, np.float64, r"b must have x's dtype float32, got float64"),
])
def test_mixed_dtypes_in_forward(x_dtype, W_dtype, b_dtype, message):
    b = arr((4,), b_dtype) if b_dtype else None
    with pytest.raises(TypeError, match=message):
        convcore.conv_forward(arr((2, 3, 8), x_dtype), arr((4, 3, 3), W_dtype), b)


def test_gy_of_another_dtype():
    x, W = arr((2, 3, 8), np.float32), arr((4, 3, 3), np.float32)
    with pytest.raises(TypeError, match=r"gy must have x's dtype float32, got float64"):
        convcore.conv_backward(arr((2, 4, 6)), x, W)


def test_gy_of_the_wrong_shape():
    x, W = arr((2, 3, 8)), arr((4, 3, 3))
    with pytest.raises(ValueError, match=r"gy must have the output's shape \(2, 4, 6\) .* got \(2, 4, 7\)"):
        convcore.conv_backward(arr((2, 4, 7)), x, W)
    op = convcore.Convolution()
    op.forward(x, W)
    with pytest.raises(ValueError, match=r"gy must have the output's shape \(2, 4, 6\) .* got \(2, 6, 4\)"):
        op.backward(arr((2, 6, 4)))


def test_b_of_the_wrong_shape():
    with pytest.raises(ValueError, match=re.escape("b must have shape (c_out,) = (4,), got (3,)")):
        convcore.conv_forward(arr((2, 3, 8)), arr((4, 3, 3)), arr((3,)))
    with pytest.raises(ValueError, match=re.escape("b must have shape (c_out,) = (4,), got (4, 1)")):
        convcore.conv_forward(arr((2, 3, 8)), arr((4, 3, 3)), arr((4, 1)))


@pytest.mark.parametrize("entry", ["function", "layer"])
def test_unknown_algorithm(entry):
    message = r"algorithm must be one of \('auto', 'fft', 'direct', 'winograd'\), got 'im2col'"
    with pytest.raises(ValueError, match=message):
        if entry == "function":
            convcore.conv_forward(arr((2, 3, 8)), arr((4, 3, 3)), algorithm="im2col")
        else:
            convcore.Convolution(algorithm="im2col")


@pytest.mark.parametrize("need, unknown", [(("x", "gw"), "'gw'"), ("dx", "'dx'"), (("W", "b", "bias"), "'bias'")])
def test_unknown_gradient_in_need(need, unknown):
    x, W = arr((2, 3, 8)), arr((4, 3, 3))
    with pytest.raises(ValueError, match=rf"need must name gradients among \('x', 'W', 'b'\), got unknown \[{unknown}\]"):
        convcore.conv_backward(arr((2, 4, 6)), x, W, need=need)


@pytest.mark.parametrize("need", [None, 1, 2.5])
def test_need_that_is_not_names(need):
    x, W = arr((2, 3, 8)), arr((4, 3, 3))
    with pytest.raises(TypeError, match=rf"need must name gradients among \('x', 'W', 'b'\) "
                                        rf"\(a name or a sequence of names\), got {re.escape(repr(need))}"):
        convcore.conv_backward(arr((2, 4, 6)), x, W, need=need)


def test_memory_budget_takes_numpy_ints_and_refuses_others():
    op = convcore.Convolution(memory_budget=np.int64(2**20))
    assert op.memory_budget == 2**20 and type(op.memory_budget) is int
    op.forward(arr((2, 3, 8)), arr((4, 3, 3)))
    assert op.budget_used == 2**20
    for bad in (1.5e6, True, 0, -5, "1000"):
        with pytest.raises(ValueError, match=r"memory_budget must be a positive int \(bytes\) or None"):
            convcore.Convolution(memory_budget=bad)


@pytest.mark.parametrize("algorithm", ["auto", "fft", "direct"])
def test_an_output_larger_than_memory_is_refused_at_once(algorithm):
    """3^26 outputs (padding 1 around a 26-D layer of size 1): MemoryError naming the output, in well
    under a second (the FFT engine listed its chunks of rows first: a hang that ate memory)."""
    import time

    x = np.ones((1, 1) + (1,) * 26, np.float32)
    start = time.perf_counter()
    with pytest.raises(MemoryError, match=r"the output \(1, 1, 3, 3, .*\) needs [\d.e+]+ GiB, more than this "
                                          r"device's [\d.e+]+ GiB of memory"):
        convcore.conv_forward(x, x, padding=1, algorithm=algorithm)
    assert time.perf_counter() - start < 5


def test_non_array_inputs_are_named():
    with pytest.raises(TypeError, match=r"x must be a numpy or cupy ndarray, got list"):
        convcore.conv_forward([[[1.0, 2.0, 3.0]]], arr((1, 1, 2)))
    with pytest.raises(TypeError, match=r"gy must be a numpy or cupy ndarray, got float"):
        convcore.conv_backward(1.0, arr((1, 1, 3)), arr((1, 1, 2)))


def test_layer_backward_needs_forward_or_both_arrays():
    op = convcore.Convolution()
    with pytest.raises(ValueError, match=r"backward without x and W needs a forward call first"):
        op.backward(arr((2, 4, 6)))
    with pytest.raises(ValueError, match=r"backward needs both x and W, or neither"):
        op.backward(arr((2, 4, 6)), x=arr((2, 3, 8)))


@pytest.mark.gpu
@pytest.mark.parametrize("on_gpu", ["x", "W", "b", "gy"])
def test_mixing_numpy_and_cupy_names_the_arrays(gpu_backend, on_gpu):
    args = {"x": arr((2, 3, 8)), "W": arr((4, 3, 3)), "b": arr((4,)), "gy": arr((2, 4, 6))}
    args[on_gpu] = gpu_backend.asarray(args[on_gpu])
    with pytest.raises(TypeError, match=rf"inputs mix NumPy and CuPy arrays \(.*{on_gpu}=cupy"):
        if on_gpu == "gy":
            convcore.conv_backward(args["gy"], args["x"], args["W"])
        else:
            convcore.conv_forward(args["x"], args["W"], args["b"])
