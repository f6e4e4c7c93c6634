"""Check a graph's structure before the runtime plans it.

The partitioner and the value table assume what ONNX requires of a graph: every value is
written once (by one node, or as a graph input or initializer), every value a node reads
is written somewhere, the nodes form no cycle, and every graph output is written. A file
that breaks one of these gets a ModelFileError naming the node and the value, instead of
a KeyError deep inside the planning or a run that reads a value nobody wrote.
"""

from __future__ import annotations

from collections import deque

import onnx

from sparsify.errors import ModelFileError


def _label(node: onnx.NodeProto, index: int) -> str:
    name = node.name or (node.output[0] if node.output and node.output[0] else f"#{index}")
    return f"{node.op_type} node {name!r}"


def _duplicates(names: list[str]) -> list[str]:
    seen: set[str] = set()
    return sorted({n for n in names if n in seen or seen.add(n)})


def check_graph(model: onnx.ModelProto, where: str) -> None:
    """Raise ModelFileError naming the node and value unless ``model.graph`` is a well-formed
    dataflow graph (single writer per value, no dangling reads or outputs, no cycle)."""
    g = model.graph
    inputs = [vi.name for vi in g.input]
    inits = [i.name for i in g.initializer]
    for what, names in (("graph input", inputs), ("initializer", inits), ("graph output", [o.name for o in g.output])):
        if "" in names:
            raise ModelFileError(f"{where}: a {what} has an empty name")
        dup = _duplicates(names)
        if dup:
            raise ModelFileError(f"{where}: {what} names {dup[:5]} appear more than once")
    provided = set(inputs) | set(inits)
    writer: dict[str, int] = {}
    for i, node in enumerate(g.node):
        for v in node.output:
            if not v:
                continue
            if v in provided:
                kind = "a graph input" if v in inputs else "an initializer"
                raise ModelFileError(f"{where}: {_label(node, i)} writes {v!r}, which is already {kind}")
            if v in writer:
                raise ModelFileError(f"{where}: value {v!r} is written twice, by "
                                     f"{_label(g.node[writer[v]], writer[v])} and {_label(node, i)}")
            writer[v] = i
    users: list[list[int]] = [[] for _ in g.node]
    waiting = [0] * len(g.node)
    for i, node in enumerate(g.node):
        deps = set()
        for v in node.input:
            if not v or v in provided:
                continue
            if v not in writer:
                raise ModelFileError(f"{where}: {_label(node, i)} reads {v!r}, which no node, graph input or "
                                     "initializer provides")
            deps.add(writer[v])
        waiting[i] = len(deps)
        for d in deps:
            users[d].append(i)
    for o in g.output:
        if o.name not in writer and o.name not in provided:
            raise ModelFileError(f"{where}: graph output {o.name!r} is written by no node, graph input or initializer")
    ready = deque(i for i, w in enumerate(waiting) if w == 0)
    done = 0
    while ready:
        i = ready.popleft()
        done += 1
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                ready.append(u)
    if done != len(g.node):
        stuck = [_label(n, i) for i, n in enumerate(g.node) if waiting[i] > 0]
        raise ModelFileError(f"{where}: the graph has a cycle: {', '.join(stuck[:5])}"
                             f"{' and others' if len(stuck) > 5 else ''} wait on each other's outputs")
