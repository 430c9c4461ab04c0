"""The wiring of a model spec: a list (each layer feeds the next) or a graph with named nodes.

    [layer, layer, ...]                                  a sequential network
    {"graph": [node, ...], "output": "<name>"}           node = a layer spec plus optional "name",
                                                         "input": "<name>" (default: the previous
                                                         node; the network's input is "x"), or
                                                         "inputs": [...] for add and concat
Nodes may only read "x" or earlier nodes, so the list order is an order to run them in. Every
node must lead to the output (a dead branch would train nothing). Sources are node indices,
-1 for the network input.
"""
from __future__ import annotations

from dataclasses import dataclass

from .layers import Merge

INPUT = "x"
GRAPH_KEYS = ("graph", "output")


@dataclass(frozen=True)
class Topology:
    layers: list           # one built layer per node
    sources: tuple         # per node, the tuple of node indices it reads (-1: the input x)
    names: tuple           # per node, its "name" or None
    output: int            # index of the node whose output is the network's
    graph: bool            # False: the spec was a plain list

    def where(self, i: int) -> str:
        """How messages name node i: 'layer 3 (conv)' or "node 3 'up1' (conv_transpose)"."""
        kind = self.layers[i].type_name
        if not self.graph:
            return f"layer {i} ({kind})"
        return f"node {i} '{self.names[i]}' ({kind})" if self.names[i] else f"node {i} ({kind})"

    def source_name(self, src: int) -> str:
        if src < 0:
            return INPUT
        return self.names[src] or f"node {src}"

    def node_specs(self) -> list:
        """The nodes' JSON specs, wiring included (unnamed nodes reading their predecessor stay implicit)."""
        out = []
        for i, (layer, src) in enumerate(zip(self.layers, self.sources)):
            item = {"name": self.names[i]} if self.names[i] else {}
            item.update(layer.spec())
            if isinstance(layer, Merge):
                item["inputs"] = [self.source_name(s) for s in src]
            elif src[0] != i - 1:
                item["input"] = self.source_name(src[0])
            out.append(item)
        return out

    def spec(self):
        if not self.graph:
            return [layer.spec() for layer in self.layers]
        out = {"graph": self.node_specs()}
        if self.names[self.output]:   # an unnamed output is the last node, the default
            out["output"] = self.names[self.output]
        return out


def chain(layers: list) -> Topology:
    """The topology of a sequential list of layers."""
    n = len(layers)
    return Topology(list(layers), tuple((i - 1,) for i in range(n)), (None,) * n, n - 1, False)


def parse_graph(spec: dict, build_layer) -> Topology:
    """A graph spec -> Topology; ``build_layer(where, item)`` builds one layer from its options."""
    unknown = sorted(set(spec) - set(GRAPH_KEYS))
    if unknown:
        raise ValueError(f"a graph model has keys {list(GRAPH_KEYS)}; unexpected {unknown}")
    nodes = spec.get("graph")
    if not isinstance(nodes, list) or not nodes:
        raise ValueError(f"model.graph must be a non-empty list of nodes, got {nodes!r}")
    layers, sources, names, index = [], [], [], {INPUT: -1}
    for i, item in enumerate(nodes):
        if not isinstance(item, dict):
            raise ValueError(f"node {i}: a node must be an object with a 'type', got {item!r}")
        name = item.get("name")
        label = f"node {i} '{name}'" if name is not None else f"node {i}"
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"{label}: name must be a non-empty string, got {name!r}")
        if name in index:
            raise ValueError(f"{label}: the name {name!r} is " + (
                "the network input" if name == INPUT else "already used by an earlier node"))
        options = {k: v for k, v in item.items() if k not in ("name", "input", "inputs")}
        layer = build_layer(f"{label} ({options.get('type')})", options)
        wanted = _wiring(label, layer, item, i)
        missing = [w for w in wanted or () if not isinstance(w, str) or w not in index]
        if missing:
            raise ValueError(f"{label} ({layer.type_name}): input {missing[0]!r} is not 'x' or an earlier node's "
                             f"name; known: {sorted(index)}")
        layers.append(layer)
        sources.append((i - 1,) if wanted is None else tuple(index[w] for w in wanted))
        names.append(name)
        if name is not None:
            index[name] = i
    output = spec.get("output", names[-1] if names[-1] else None)
    if output is None:
        out_index = len(nodes) - 1
    elif not isinstance(output, str) or output not in index or output == INPUT:
        raise ValueError(f"model.output must name a node; got {output!r}, known: {sorted(set(index) - {INPUT})}")
    else:
        out_index = index[output]
    topo = Topology(layers, tuple(sources), tuple(names), out_index, True)
    _check_all_lead_to_output(topo)
    return topo


def _wiring(label: str, layer, item: dict, i: int):
    """The names a node reads: "inputs" for merges, "input" otherwise; None for the previous node."""
    if isinstance(layer, Merge):
        if "input" in item or not isinstance(item.get("inputs"), list) or len(item["inputs"]) < 2:
            raise ValueError(f"{label} ({layer.type_name}) needs \"inputs\": a list of at least 2 node names, "
                             f"got {item.get('inputs', item.get('input'))!r}")
        return list(item["inputs"])
    if "inputs" in item:
        raise ValueError(f"{label} ({layer.type_name}) reads one input: use \"input\", not \"inputs\"")
    if "input" in item:
        return [item["input"]]
    return [INPUT] if i == 0 else None


def _check_all_lead_to_output(topo: Topology) -> None:
    used = {topo.output}
    for i in range(topo.output, -1, -1):
        if i in used:
            used.update(s for s in topo.sources[i] if s >= 0)
    dead = [i for i in range(len(topo.layers)) if i not in used]
    if dead:
        raise ValueError(f"{topo.where(dead[0])} does not lead to the output "
                         f"'{topo.source_name(topo.output)}': remove it or wire it in")
