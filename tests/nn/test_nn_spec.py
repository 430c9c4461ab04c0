"""Spec validation: shapes inferred without arrays, and impossible networks rejected with the layer
index, type and shapes in the message."""
import numpy as np
import pytest
import torch

from convcore import nn

DIGITS = [
    {"type": "conv", "out_channels": 8, "kernel_size": 3, "padding": "same"},
    {"type": "relu"},
    {"type": "maxpool", "kernel_size": 2},
    {"type": "conv", "out_channels": 16, "kernel_size": [3, 2], "stride": 2, "dilation": [1, 2]},
    {"type": "flatten"},
    {"type": "dense", "out_features": 10},
]


def test_shapes_match_torch_modules():
    shapes = nn.validate_spec(DIGITS, (1, 13, 12), n_classes=10)
    t = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding="same"), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                            torch.nn.Conv2d(8, 16, (3, 2), stride=2, dilation=(1, 2)), torch.nn.Flatten())
    expected = []
    x = torch.zeros(1, 1, 13, 12)
    for m in t:
        x = m(x)
        expected.append(tuple(x.shape[1:]))
    assert shapes == expected + [(10,)]


def test_4d_spec_validates():
    spec = [{"type": "conv", "out_channels": 4, "kernel_size": 3, "padding": 1}, {"type": "batchnorm"},
            {"type": "relu"}, {"type": "avgpool", "kernel_size": 2}, {"type": "global_avgpool"},
            {"type": "dense", "out_features": 3}]
    assert nn.validate_spec(spec, (1, 8, 8, 8, 8), 3)[3] == (4, 4, 4, 4, 4)


@pytest.mark.parametrize("spec, input_shape, n_classes, pattern", [
    ([{"type": "convolution"}], (1, 8, 8), None, r"layer 0: unknown layer type 'convolution'; known types"),
    ([{"kind": "conv"}], (1, 8, 8), None, r"layer 0: unknown layer type None"),
    (["relu"], (1, 8, 8), None, r"layer 0: a layer spec must be an object"),
    ([], (1, 8, 8), None, r"model must be a non-empty list"),
    ([{"type": "relu"}, {"type": "conv", "out_channels": -4, "kernel_size": 3}], (1, 8, 8), None,
     r"layer 1 \(conv\): out_channels must be an int >= 1, got -4"),
    ([{"type": "conv", "out_channels": 4, "kernel_size": 0}], (1, 8, 8), None,
     r"layer 0 \(conv\): kernel_size must be an int >= 1, got 0"),
    ([{"type": "conv", "out_channels": 4, "kernel_size": 3, "stride": 1, "bogus": 1}], (1, 8, 8), None,
     r"layer 0 \(conv\): unknown option\(s\) \['bogus'\]; accepted: \['out_channels'"),
    ([{"type": "conv", "out_channels": 4, "kernel_size": 9}], (1, 8, 8), None,
     r"layer 0 \(conv\) cannot take input shape \(1, 8, 8\): kernel larger than the padded input"),
    ([{"type": "maxpool", "kernel_size": 2}, {"type": "maxpool", "kernel_size": 2},
      {"type": "maxpool", "kernel_size": 2}, {"type": "maxpool", "kernel_size": 2}], (1, 8, 8), None,
     r"layer 3 \(maxpool\) cannot take input shape \(1, 1, 1\): maxpool kernel_size \(2, 2\) is larger"),
    ([{"type": "conv", "out_channels": 4, "kernel_size": [3, 3, 3]}], (1, 8, 8), None,
     r"layer 0 \(conv\) cannot take input shape \(1, 8, 8\): kernel_size needs one value per spatial dim \(2\)"),
    ([{"type": "conv", "out_channels": 4, "kernel_size": 3, "groups": 2}], (3, 8, 8), None,
     r"layer 0 \(conv\) cannot take input shape \(3, 8, 8\): groups=2 must divide"),
    ([{"type": "dense", "out_features": 10}], (1, 8, 8), None,
     r"layer 0 \(dense\) cannot take input shape \(1, 8, 8\): dense needs a flat input"),
    ([{"type": "flatten"}, {"type": "dense", "out_features": 5}], (1, 8, 8), 10,
     r"layer 1 \(dense\) outputs shape \(5,\) but the dataset has 10 classes"),
    ([{"type": "dropout", "rate": 1.0}], (4,), None, r"layer 0 \(dropout\): rate must be in \[0.0, 1.0\)"),
    ([{"type": "relu"}], (1, 0, 8), None, r"input_shape must be a non-empty list of positive ints"),
    ([{"type": "flatten"}, {"type": "dense"}], (1, 8, 8), None,   # was Python's "__init__() missing 1 ..."
     r"layer 1 \(dense\): missing required option\(s\) \['out_features'\]"),
    ([{"type": "upsample", "scale": 10**30}], (2, 6, 6), None,   # forward raised OverflowError
     r"layer 0 \(upsample\) cannot take input shape \(2, 6, 6\): upsample scale 10{30} turns the input "
     r"\(2, 6, 6\) into \(2, 60{30}, 60{30}\): each size must be at most 2\*\*48"),
    ([{"type": "conv", "out_channels": 2, "kernel_size": 3, "padding": "half"}], (1, 8), None,
     r"layer 0 \(conv\) cannot take input shape \(1, 8\): padding must be .* got 'half'"),
])
def test_impossible_networks_are_named(spec, input_shape, n_classes, pattern):
    with pytest.raises(ValueError, match=pattern):
        nn.validate_spec(spec, input_shape, n_classes)


def test_spec_round_trips_through_model():
    model = nn.Sequential.from_spec(DIGITS, (1, 13, 12), seed=0)
    again = nn.Sequential.from_spec(model.spec(), (1, 13, 12), seed=0)
    assert again.spec() == model.spec()
    for k, v in model.parameters().items():
        np.testing.assert_array_equal(v, again.parameters()[k])


def test_init_scales():
    """He: std sqrt(2 / fan_in); Glorot uniform: bound sqrt(6 / (fan_in + fan_out))."""
    model = nn.Sequential.from_spec([{"type": "conv", "out_channels": 64, "kernel_size": 3},
                                     {"type": "flatten"}, {"type": "dense", "out_features": 200, "init": "glorot"}],
                                    (32, 5, 5), seed=1, dtype="float64")
    W = model.parameters()["0.W"]
    assert W.std() == pytest.approx(np.sqrt(2 / (32 * 9)), rel=0.03)
    D = model.parameters()["2.W"]
    bound = np.sqrt(6 / (576 + 200))
    assert D.max() <= bound and D.max() > 0.99 * bound and D.std() == pytest.approx(bound / np.sqrt(3), rel=0.03)
    assert not model.parameters()["0.b"].any()


def test_footprint_counts_the_arrays_a_built_network_really_has():
    """The spec-only estimate against the parameters and activations of the built network."""
    spec = [{"type": "conv", "out_channels": 6, "kernel_size": 3, "padding": 1, "groups": 2},
            {"type": "batchnorm"}, {"type": "relu"}, {"type": "maxpool", "kernel_size": 2},
            {"type": "conv", "out_channels": 4, "kernel_size": (2, 3, 1), "bias": False},
            {"type": "flatten"}, {"type": "dense", "out_features": 5}]
    shape, batch = (2, 8, 10, 6), 3
    est = nn.footprint(spec, shape, batch, itemsize=8)
    model = nn.Sequential.from_spec(spec, shape, seed=0, dtype=np.float64)
    n_params = sum(p.size for layer in model.layers for p in layer.params.values())
    assert est["parameters"] == 4 * 8 * n_params          # values, grads, two optimizer moments
    a = np.zeros((batch,) + shape)
    sizes = [a.size]
    for layer in model.layers:
        a = layer.forward(a, training=True)
        sizes.append(a.size)
    assert est["activations"] == 2 * 8 * sum(sizes)       # each output and its gradient
    assert est["largest_layer"]["bytes"] == 2 * 8 * max(sizes[1:])
