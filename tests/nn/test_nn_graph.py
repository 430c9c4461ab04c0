"""Graph models: wiring, shape checks naming the node and the shapes, gradients summed over branches
(finite differences), and a graph that survives save/load and footprint."""
import io

import numpy as np
import pytest
from test_nn_layers_fd import numeric_grad

from convcore import nn

# x feeds a conv and, through a skip, an add; "a" is read by two nodes (its gradient is a sum).
GRAPH = {"graph": [
    {"name": "a", "type": "conv", "out_channels": 3, "kernel_size": 3, "padding": "same"},
    {"name": "b", "type": "tanh"},
    {"name": "down", "type": "avgpool", "kernel_size": 2, "input": "a"},
    {"name": "up", "type": "conv_transpose", "out_channels": 3, "kernel_size": 2, "stride": 2},
    {"name": "sum", "type": "add", "inputs": ["b", "up", "a"]},
    {"name": "cat", "type": "concat", "inputs": ["sum", "x"]},
    {"name": "gn", "type": "group_norm", "groups": 2},
    {"name": "out", "type": "conv", "out_channels": 2, "kernel_size": 1},
], "output": "out"}


def test_graph_gradients_match_finite_differences():
    rng = np.random.default_rng(0)
    model = nn.build_model(GRAPH, (1, 6, 4), seed=1, dtype="float64")
    for p in model.parameters().values():
        p += 0.1 * rng.standard_normal(p.shape)
    x = rng.standard_normal((2, 1, 6, 4))
    r = rng.standard_normal((2, 2, 6, 4))
    loss = lambda: float((model.forward(x, training=True) * r).sum())  # noqa: E731
    model.forward(x, training=True)
    model.backward(r)
    grads = {k: g.copy() for k, g in model.gradients().items()}
    assert set(grads) == set(model.parameters()) and "3.W" in grads   # node index 3: the transposed conv
    for k, p in model.parameters().items():
        for i, value in numeric_grad(loss, p, rng, samples=8).items():
            assert grads[k].reshape(-1)[i] == pytest.approx(value, rel=1e-5, abs=1e-8), k


def test_shapes_spec_round_trip_save_load_and_footprint():
    shapes = nn.validate_spec(GRAPH, (1, 6, 4))
    assert shapes[3] == (3, 6, 4) and shapes[5] == (4, 6, 4) and shapes[-1] == (2, 6, 4)
    model = nn.build_model(GRAPH, (1, 6, 4), seed=3)
    assert isinstance(model, nn.Graph) and model.spec()["output"] == "out"
    again = nn.build_model(model.spec(), (1, 6, 4), seed=3)
    assert again.spec() == model.spec()
    buf = io.BytesIO()
    nn.io.save(buf, model)
    buf.seek(0)
    loaded = nn.io.load(buf)
    x = np.random.default_rng(0).standard_normal((3, 1, 6, 4)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    est = nn.footprint(GRAPH, (1, 6, 4), batch_size=2, itemsize=4)
    n_params = sum(p.size for p in model.parameters().values())
    assert est["parameters"] == 4 * 4 * n_params
    assert est["activations"] == 2 * 4 * 2 * (24 + sum(int(np.prod(s)) for s in shapes))


def node(**kw):
    return kw


@pytest.mark.parametrize("graph, pattern", [
    ({"graph": [node(name="c", type="conv", out_channels=2, kernel_size=3, padding="same"),
                node(name="p", type="maxpool", kernel_size=2),
                node(name="j", type="concat", inputs=["c", "p"])]},
     r"node 2 'j' \(concat\) cannot take input shapes \[\(2, 8, 8\) from 'c', \(2, 4, 4\) from 'p'\]: "
     r"concat needs the same spatial size"),
    ({"graph": [node(name="c", type="conv", out_channels=2, kernel_size=3),
                node(name="s", type="add", inputs=["c", "x"])]},
     r"node 1 's' \(add\) cannot take input shapes \[\(2, 6, 6\) from 'c', \(1, 8, 8\) from 'x'\]: "
     r"add needs inputs of one shape"),
    ({"graph": [node(type="relu", input="nowhere")]}, r"node 0 \(relu\): input 'nowhere' is not 'x' or an earlier"),
    ({"graph": [node(name="a", type="relu"), node(name="b", type="relu", input="c"), node(name="c", type="relu")]},
     r"node 1 'b' \(relu\): input 'c' is not 'x' or an earlier node's name"),
    ({"graph": [node(type="add", input="x")]}, r"node 0 \(add\) needs \"inputs\": a list of at least 2"),
    ({"graph": [node(type="relu", inputs=["x", "x"])]}, r"node 0 \(relu\) reads one input: use \"input\""),
    ({"graph": [node(name="a", type="relu"), node(name="a", type="tanh")]},
     r"node 1 'a': the name 'a' is already used by an earlier node"),
    ({"graph": [node(name="x", type="relu")]}, r"node 0 'x': the name 'x' is the network input"),
    ({"graph": [node(name="a", type="relu"), node(name="b", type="tanh", input="x")], "output": "b"},
     r"node 0 'a' \(relu\) does not lead to the output 'b'"),
    ({"graph": [node(type="relu")], "output": "y"}, r"model.output must name a node; got 'y'"),
    ({"graph": [node(type="relu")], "outputs": "y"},
     r"a graph model has keys \['graph', 'output'\]; unexpected \['outputs'\]"),
    ({"graph": []}, r"model.graph must be a non-empty list"),
    ({"graph": [node(type="warp")]}, r"node 0: unknown layer type 'warp'"),
    ({"graph": [node(name="u", type="upsample", scale=[2, 2, 2])]},
     r"node 0 'u' \(upsample\) cannot take input shape \(1, 8, 8\): scale needs one value per spatial dim \(2\)"),
])
def test_impossible_graphs_name_the_node_and_shapes(graph, pattern):
    with pytest.raises(ValueError, match=pattern):
        nn.validate_spec(graph, (1, 8, 8))


def test_merge_in_a_list_spec_points_to_the_graph_form():
    with pytest.raises(ValueError, match=r"layer 1 \(add\) joins several inputs: write the model as a graph"):
        nn.validate_spec([{"type": "relu"}, {"type": "add"}], (1, 8, 8))
