"""A model's computational graph for the graph panel: nodes, edges, groups, layout.

From ONNX (node names carry the exporter's module scopes, shapes from `onnx`'s shape
inference) and from torch (torch.fx symbolic tracing, falling back to torch.export
for code fx cannot trace; both record the module stack of every node). Weights and
constants are folded into the node that reads them (its `params`), so the graph
shows operations only. Groups are the module hierarchy; a group holding a single
member is folded into its parent so the scenes can collapse and expand meaningful
blocks. A graph whose nodes carry no scopes (an ONNX file with bare node names) is
grouped by structure instead: single-entry single-exit regions between cut points of
the topological order, and consecutive repeats of the same op sequence (`find_blocks`). `layered_layout` gives every node a rank (longest path from an input) and
an order within its rank (barycentre sweeps), in time linear in the edges per sweep.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from deeproom.models.errors import AnalysisError


@dataclass
class GraphNode:
    """One operation."""

    id: int
    name: str
    op: str
    group: int | None = None
    shape: list[int] | None = None
    params: int = 0
    rank: int = 0
    order: int = 0
    path: tuple[str, ...] = ()
    """Module scope path, outermost first (used to build groups)."""

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "op": self.op, "group": self.group, "shape": self.shape,
                "params": self.params, "rank": self.rank, "order": self.order}


@dataclass
class GraphGroup:
    """A module in the hierarchy; `parent` is another group's id or None."""

    id: int
    name: str
    parent: int | None
    ops: int = 0
    """Operations inside the group at any depth (filled by `_finish`)."""


@dataclass
class ModelGraph:
    """Nodes, edges (src id, dst id) and groups, ready for a `model_graph` blob."""

    nodes: list[GraphNode]
    edges: list[tuple[int, int]]
    groups: list[GraphGroup] = field(default_factory=list)
    title: str = "model"
    source: str = "onnx"
    seconds: float = 0.0

    def by_name(self, name: str) -> GraphNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def skip_edges(self) -> list[tuple[int, int]]:
        """Edges that jump over at least one rank: skip connections and branch merges."""
        rank = {n.id: n.rank for n in self.nodes}
        return [(a, b) for a, b in self.edges if rank[b] - rank[a] > 1]

    def to_meta(self) -> dict[str, Any]:
        return {
            "kind": "model_graph",
            "title": self.title,
            "source": self.source,
            "nodes": [n.to_json() for n in self.nodes],
            "edges": [[a, b] for a, b in self.edges],
            "groups": [{"id": g.id, "name": g.name, "parent": g.parent, "ops": g.ops} for g in self.groups],
            "skips": [[a, b] for a, b in self.skip_edges()],
        }


# --- layout -------------------------------------------------------------------------------


def layered_layout(n: int, edges: Sequence[tuple[int, int]], sweeps: int = 4) -> tuple[list[int], list[int]]:
    """(rank, order) per node: rank = longest path from a source; order from barycentre sweeps."""
    succ: list[list[int]] = [[] for _ in range(n)]
    pred: list[list[int]] = [[] for _ in range(n)]
    indeg = [0] * n
    for a, b in edges:
        succ[a].append(b)
        pred[b].append(a)
        indeg[b] += 1
    rank = [0] * n
    queue = [i for i in range(n) if indeg[i] == 0]
    topo: list[int] = []
    head = 0
    while head < len(queue):
        u = queue[head]
        head += 1
        topo.append(u)
        for v in succ[u]:
            if rank[u] + 1 > rank[v]:
                rank[v] = rank[u] + 1
            indeg[v] -= 1
            if indeg[v] == 0:
                queue.append(v)
    if len(topo) < n:  # a cycle (should not happen in a DAG): place the rest after
        seen = set(topo)
        top = max(rank, default=0)
        for i in range(n):
            if i not in seen:
                top += 1
                rank[i] = top
                topo.append(i)
    layers: dict[int, list[int]] = {}
    for u in topo:
        layers.setdefault(rank[u], []).append(u)
    pos = [0.0] * n
    for members in layers.values():
        for i, u in enumerate(members):
            pos[u] = float(i)
    ranks_sorted = sorted(layers)
    for s in range(sweeps):
        down = s % 2 == 0
        seq = ranks_sorted if down else list(reversed(ranks_sorted))
        for r in seq:
            members = layers[r]
            if len(members) < 2:
                continue
            keyed = []
            for u in members:
                nb = pred[u] if down else succ[u]
                keyed.append((sum(pos[v] for v in nb) / len(nb) if nb else pos[u], pos[u], u))
            keyed.sort()
            layers[r] = [u for _, _, u in keyed]
            for i, u in enumerate(layers[r]):
                pos[u] = float(i)
    order = [int(p) for p in pos]
    return rank, order


def _build_groups(nodes: list[GraphNode]) -> list[GraphGroup]:
    """Groups from the nodes' scope paths; single-member groups fold into their parent."""
    members: dict[tuple[str, ...], int] = {}
    children: dict[tuple[str, ...], set[tuple[str, ...]]] = {}
    for nd in nodes:
        p = nd.path
        members[p] = members.get(p, 0) + 1
        for k in range(1, len(p) + 1):
            children.setdefault(p[: k - 1], set()).add(p[:k]) if k > 1 else children.setdefault((), set()).add(p[:1])
            children.setdefault(p[:k], set())
    alive = {p for p in children if p}

    def size(p: tuple[str, ...]) -> int:
        return members.get(p, 0) + len([c for c in children.get(p, ()) if c in alive])

    # fold from the deepest up: a group with one member merges into its parent
    for p in sorted(alive, key=len, reverse=True):
        if size(p) <= 1:
            alive.discard(p)
            # its members (and surviving children) now belong to the parent
            parent = p[:-1]
            members[parent] = members.get(parent, 0) + members.get(p, 0)
            for c in children.get(p, ()):
                children.setdefault(parent, set()).add(c)

    def effective(p: tuple[str, ...]) -> tuple[str, ...]:
        while p and p not in alive:
            p = p[:-1]
        return p

    first: dict[tuple[str, ...], int] = {}  # groups in the order the graph reaches them (layer2 before layer10)
    for i, nd in enumerate(nodes):
        for k in range(1, len(nd.path) + 1):
            first.setdefault(nd.path[:k], i)
    ids: dict[tuple[str, ...], int] = {}
    groups: list[GraphGroup] = []
    for p in sorted(alive, key=lambda q: (len(q), first.get(q, 0), q)):
        parent = effective(p[:-1])
        gid = len(groups)
        ids[p] = gid
        groups.append(GraphGroup(gid, p[-1], ids.get(parent) if parent else None))
    for nd in nodes:
        e = effective(nd.path)
        nd.group = ids.get(e) if e else None
    return groups


def _finish(nodes: list[GraphNode], edges: list[tuple[int, int]], title: str, source: str, t0: float) -> ModelGraph:
    edges = sorted(set(edges))
    rank, order = layered_layout(len(nodes), edges)
    for nd in nodes:
        nd.rank, nd.order = rank[nd.id], order[nd.id]
    groups = _build_groups(nodes) if any(nd.path for nd in nodes) else find_blocks(nodes, edges)
    _count_ops(nodes, groups)
    return ModelGraph(nodes, edges, groups, title, source, time.perf_counter() - t0)


def _count_ops(nodes: list[GraphNode], groups: list[GraphGroup]) -> None:
    parent = [g.parent for g in groups]
    counts = [0] * len(groups)
    for nd in nodes:
        gid = nd.group
        hops = 0
        while gid is not None and hops <= len(groups):
            counts[gid] += 1
            gid = parent[gid]
            hops += 1
    for g, c in zip(groups, counts, strict=True):
        g.ops = c


BLOCK_MIN_OPS = 3
"""Structural blocks (graphs without scopes) hold at least this many operations."""
MAX_PERIOD = 24
"""Longest repeating unit looked for, in regions (graphs without scopes)."""


def find_blocks(nodes: list[GraphNode], edges: Sequence[tuple[int, int]]) -> list[GraphGroup]:
    """Groups for a graph whose nodes carry no module scopes, from its structure alone.

    A node is a cut point when no edge jumps over it in the topological order (rank,
    order); the nodes after one cut point up to the next form a single-entry
    single-exit region. Consecutive runs of regions with the same op sequence become a
    `blockK` group of `blockK.J` units (ResNet's bottlenecks, a transformer's layers);
    a region of at least BLOCK_MIN_OPS operations outside any run becomes `regionK`
    (a dense block, whose concatenations leave no cut point inside it).
    Sets every node's `group`; returns the groups (parents before children).
    """
    import numpy as np

    n = len(nodes)
    if n < 2 * BLOCK_MIN_OPS:
        return []
    order = sorted(range(n), key=lambda i: (nodes[i].rank, nodes[i].order, i))
    t = np.empty(n, np.int64)
    t[np.asarray(order)] = np.arange(n)
    diff = np.zeros(n + 1, np.int64)
    if len(edges):
        e = np.asarray(edges, np.int64).reshape(-1, 2)
        a, b = t[e[:, 0]], t[e[:, 1]]
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        jump = hi - lo > 1
        np.add.at(diff, lo[jump] + 1, 1)
        np.add.at(diff, hi[jump], -1)
    cover = np.cumsum(diff)[:n]
    cuts = np.flatnonzero(cover == 0)
    # regions: (previous cut, this cut], as lists of node ids in topological order
    regions: list[list[int]] = []
    start = 0
    for c in cuts.tolist():
        regions.append([order[k] for k in range(start, c + 1)])
        start = c + 1
    if start < n:
        regions.append([order[k] for k in range(start, n)])
    sig = [tuple(nodes[i].op for i in r) for r in regions]
    m = len(regions)
    # tandem[q][k + 1]: how many positions up to k start a unit of q regions (at least two
    # operations) repeated at once; a candidate unit holding such a repeat is not a unit
    tandem: dict[int, np.ndarray] = {}
    for q in range(1, MAX_PERIOD // 2 + 1):
        hits = np.zeros(m + 1, np.int64)
        for k in range(m - 2 * q + 1):
            if sig[k : k + q] == sig[k + q : k + 2 * q] and sum(len(x) for x in sig[k : k + q]) >= 2:
                hits[k + 1] = 1
        tandem[q] = np.cumsum(hits)

    def holds_repeat(i: int, p: int) -> bool:
        return any(tandem[q][i + p - 2 * q + 1] - tandem[q][i] > 0 for q in range(1, p // 2 + 1))

    groups: list[GraphGroup] = []
    blocks = singles = 0
    i = 0
    while i < m:
        period, reps = 0, 0
        for p in range(1, min(MAX_PERIOD, (m - i) // 2) + 1):  # the shortest repeating unit wins
            unit = sig[i : i + p]
            if sum(len(x) for x in unit) < 2 or holds_repeat(i, p):
                continue  # too small, or itself holds a run of a shorter unit (found where that run starts)
            reps = 1
            while i + (reps + 1) * p <= m and sig[i + reps * p : i + (reps + 1) * p] == unit:
                reps += 1
            if reps >= 2:
                period = p
                break
        if period:
            blocks += 1
            run = len(groups)
            groups.append(GraphGroup(run, f"block{blocks}", None))
            for j in range(reps):
                unit_id = len(groups)
                groups.append(GraphGroup(unit_id, f"block{blocks}.{j}", run))
                for r in regions[i + j * period : i + (j + 1) * period]:
                    for nid in r:
                        nodes[nid].group = unit_id
            i += reps * period
            continue
        if len(regions[i]) >= BLOCK_MIN_OPS:
            singles += 1
            gid = len(groups)
            groups.append(GraphGroup(gid, f"region{singles}", None))
            for nid in regions[i]:
                nodes[nid].group = gid
        i += 1
    return groups


# --- ONNX ---------------------------------------------------------------------------------


def _onnx_scope(name: str) -> tuple[str, ...]:
    """Qualified module paths from an exporter scope: /blocks/blocks.0/attn/X → blocks, blocks.0, blocks.0.attn."""
    parts = [p for p in name.split("/") if p][:-1]
    out: list[str] = []
    for p in parts:
        if out and not p.startswith(out[-1] + "."):
            last = out[-1].rsplit(".", 1)[-1]
            head = p.split(".", 1)[0]
            # a Sequential's child is scoped "mlp.0" under "blocks.0.mlp": join without repeating "mlp"
            p = out[-1] + p[len(head):] if head == last and "." in p else out[-1] + "." + p
        out.append(p)
    return tuple(out)


def extract_onnx_graph(proto: Any, title: str = "model", *, infer_shapes: bool = True) -> ModelGraph:
    """The graph of an ONNX model; Constant nodes and initializers are folded into readers."""
    import onnx

    t0 = time.perf_counter()
    g = proto.graph
    shapes: dict[str, list[int]] = {}
    if infer_shapes:
        try:
            inferred = onnx.shape_inference.infer_shapes(proto)
            vis: Iterable[Any] = [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]
        except Exception:  # shape inference is best effort: a graph without shapes is still a graph
            vis = [*g.value_info, *g.output, *g.input]
        for vi in vis:
            tt = vi.type.tensor_type
            if tt.HasField("shape"):
                shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
    inits = {t.name: int(_numel(t.dims)) for t in g.initializer}
    const_size: dict[str, int] = {}
    nodes: list[GraphNode] = []
    producer: dict[str, int] = {}
    for vi in g.input:
        if vi.name in inits:
            continue
        nd = GraphNode(len(nodes), vi.name, "Input", shape=shapes.get(vi.name))
        nodes.append(nd)
        producer[vi.name] = nd.id
    pending_edges: list[tuple[str, int]] = []
    for i, n in enumerate(g.node):
        if n.op_type == "Constant" and len(n.output) == 1:
            size = 0
            for a in n.attribute:
                if a.name == "value":
                    size = int(_numel(a.t.dims))
            const_size[n.output[0]] = size
            continue
        real_inputs = [x for x in n.input if x]
        if real_inputs and all(x in inits or x in const_size for x in real_inputs):
            # computed from weights alone (e.g. an Identity sharing a weight): fold it too
            size = sum(inits.get(x, 0) + const_size.get(x, 0) for x in real_inputs)
            for o in n.output:
                const_size[o] = size
            continue
        name = n.name or f"{n.op_type}_{i}"
        params = sum(inits.get(x, 0) + const_size.get(x, 0) for x in n.input if x)
        nd = GraphNode(len(nodes), name, n.op_type, shape=shapes.get(n.output[0]) if n.output else None,
                       params=params, path=_onnx_scope(name))
        nodes.append(nd)
        reads = list(n.input)
        if n.op_type == "If":  # the branches read tensors of this graph: those are edges too
            reads += _subgraph_reads(n)
        for x in reads:
            if x and x not in inits and x not in const_size:
                pending_edges.append((x, nd.id))
        for o in n.output:
            if o:
                producer[o] = nd.id
    edges = [(producer[x], dst) for x, dst in pending_edges if x in producer]
    return _finish(nodes, edges, title, "onnx", t0)


def _subgraph_reads(node: Any) -> list[str]:
    out: list[str] = []
    for a in node.attribute:
        if a.type != 5:  # GRAPH
            continue
        made = {o for m in a.g.node for o in m.output} | {t.name for t in a.g.initializer}
        for m in a.g.node:
            out += [x for x in m.input if x and x not in made]
            if m.op_type == "If":
                out += [x for x in _subgraph_reads(m) if x not in made]
        out += [o.name for o in a.g.output if o.name not in made]
    return list(dict.fromkeys(out))


def _numel(dims: Iterable[int]) -> int:
    out = 1
    for d in dims:
        out *= int(d)
    return out


# --- torch --------------------------------------------------------------------------------


def _fx_target_name(node: Any) -> str:
    t = node.target
    if isinstance(t, str):
        return t
    return getattr(t, "__name__", str(t))


def _graph_from_fx(gm: Any, root: nn.Module, title: str, source: str, t0: float,
                   folded_names: set[str] | None = None, folded_sizes: dict[str, int] | None = None) -> ModelGraph:
    nodes: list[GraphNode] = []
    ids: dict[Any, int] = {}
    folded: dict[Any, int] = {}
    edges: list[tuple[int, int]] = []
    folded_names = folded_names or set()
    folded_sizes = folded_sizes or {}
    for n in gm.graph.nodes:
        if n.op == "output":
            continue
        if n.op == "get_attr":
            try:
                attr = _get_attr(gm, n.target)
                folded[n] = int(attr.numel()) if isinstance(attr, torch.Tensor) else 0
            except AttributeError:
                folded[n] = 0
            continue
        if n.op == "placeholder" and n.name in folded_names:
            folded[n] = folded_sizes.get(n.name, 0)
            continue
        stack = n.meta.get("nn_module_stack") or {}
        path = tuple(v[0] if isinstance(v, tuple) else str(v) for v in stack.values())
        path = tuple(p for p in path if p)
        if n.op == "call_module":
            mod = gm.get_submodule(n.target)
            op = type(mod).__name__
            params = sum(p.numel() for p in mod.parameters())
            name = str(n.target)
            if path and path[-1] == name:
                path = path[:-1]
        elif n.op == "placeholder":
            op, params, name = "Input", 0, n.name
        else:
            op, params, name = _fx_target_name(n), 0, n.name
            if "." in op:
                op = op.split(".")[-2] if op.split(".")[-1] in ("default", "Tensor", "Scalar", "int") else op.split(".")[-1]
        val = n.meta.get("val")
        tm = n.meta.get("tensor_meta")
        shape: list[int] | None = None
        if isinstance(val, torch.Tensor):
            shape = [int(d) if isinstance(d, int) or hasattr(d, "__int__") else -1 for d in val.shape]
        elif tm is not None and hasattr(tm, "shape"):
            shape = [int(d) for d in tm.shape]
        nd = GraphNode(len(nodes), name, op, shape=shape, params=params, path=path)
        for a in n.all_input_nodes:
            if a in folded:
                nd.params += folded[a]
            elif a in ids:
                edges.append((ids[a], nd.id))
        ids[n] = nd.id
        nodes.append(nd)
    return _finish(nodes, edges, title, source, t0)


def _get_attr(gm: Any, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def extract_torch_graph(module: nn.Module, example: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
                        title: str | None = None, *, method: str = "auto") -> ModelGraph:
    """The graph of a torch module via torch.fx (shapes from one run on `example`), or
    torch.export when fx cannot trace it (needs `example`)."""
    import torch.fx as fx

    t0 = time.perf_counter()
    title = title or type(module).__name__
    args = example if isinstance(example, tuple) else ((example,) if example is not None else ())
    err: Exception | None = None
    if method in ("auto", "fx"):
        try:
            gm = fx.symbolic_trace(module)
            if args:
                from torch.fx.passes.shape_prop import ShapeProp

                with torch.no_grad():
                    ShapeProp(gm).propagate(*args)
            return _graph_from_fx(gm, module, title, "torch.fx", t0)
        except Exception as exc:
            err = exc
            if method == "fx":
                raise AnalysisError(f"torch.fx cannot trace {title}: {type(exc).__name__}: {exc}") from None
    if not args:
        raise AnalysisError(
            f"torch.fx cannot trace {title} ({type(err).__name__}: {err}); torch.export needs an example input"
        )
    try:
        ep = torch.export.export(module, args)
    except Exception as exc:
        raise AnalysisError(f"neither torch.fx nor torch.export can trace {title}: {type(exc).__name__}: {exc}") from None
    return graph_from_exported(ep, title, t0)


def graph_from_exported(ep: Any, title: str = "model", t0: float | None = None) -> ModelGraph:
    """The graph of a torch.export program (parameters and buffers folded into their readers)."""
    t0 = time.perf_counter() if t0 is None else t0
    sig = ep.graph_signature
    folded_names: set[str] = set()
    sizes: dict[str, int] = {}
    state = ep.state_dict
    consts = getattr(ep, "constants", {}) or {}
    for spec in sig.input_specs:
        if spec.kind.name != "USER_INPUT":
            folded_names.add(spec.arg.name)
            t = state.get(spec.target) if spec.target is not None else None
            if t is None and spec.target is not None:
                t = consts.get(spec.target)
            sizes[spec.arg.name] = int(t.numel()) if isinstance(t, torch.Tensor) else 0
    return _graph_from_fx(ep.graph_module, ep.graph_module, title, "torch.export", t0, folded_names, sizes)


def extract_graph(loaded: Any, *, method: str = "auto") -> ModelGraph:
    """The graph of a `LoadedModel`, by the way it was loaded."""
    if loaded.onnx_proto is not None:
        return extract_onnx_graph(loaded.onnx_proto, loaded.name)
    ep = loaded.extra.get("exported_program")
    if ep is not None:
        return graph_from_exported(ep, loaded.name)
    example = loaded.example_input() if loaded.input_shape is not None else None
    if isinstance(loaded.module, torch.jit.ScriptModule):
        return _graph_from_torchscript(loaded.module, loaded.name)
    return extract_torch_graph(loaded.module, example, loaded.name, method=method)


def _graph_from_torchscript(sm: Any, title: str) -> ModelGraph:
    """TorchScript: one node per submodule call, in definition order (inlined graphs hide skips)."""
    t0 = time.perf_counter()
    nodes: list[GraphNode] = []
    edges: list[tuple[int, int]] = []
    prev: int | None = None
    for name, m in sm.named_modules():
        if not name or any(True for _ in m.children()):
            continue
        nd = GraphNode(len(nodes), name, getattr(m, "original_name", type(m).__name__),
                       params=sum(p.numel() for p in m.parameters(recurse=False)), path=tuple(name.split(".")[:-1]))
        nodes.append(nd)
        if prev is not None:
            edges.append((prev, nd.id))
        prev = nd.id
    g = _finish(nodes, edges, title, "torchscript", t0)
    return g


def graph_blob(graph: ModelGraph) -> bytes:
    """A `model_graph` content blob (JSON meta, no arrays)."""
    from deeproom.content import encode_content

    return encode_content(graph.to_meta(), {})
