"""Where a model graph's boxes go on its panel: collapsed groups, wrapped rows, label size.

Pure numpy and Python, no Ursina, so tests check it directly. A `GraphIndex` reads a
`model_graph` blob's meta once (nodes, edges, the group tree). `default_collapsed`
picks how deep the graph opens: small graphs fully, larger ones expanded level by
level while the boxes shown stay within a budget (DenseNet-121 opens as its stem,
four dense blocks, three transitions and its head). `layout_graph` turns a collapsed
set into boxes: one per layer or per collapsed group, ranked by longest path,
stacked by branch, and laid out in rows that wrap (a snake: the second row runs
right to left, so the edge between rows is short) with the row count and the text
size chosen so labels are as large as the panel allows. `find` and `expand_to` are
search and jump.

Sizes are in panel metres when a panel size is given; labels are sized in "text
heights" (the line height of one label line), the unit the layout optimises.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

SMALL_GRAPH = 60
"""Graphs with at most this many layers open with every group expanded."""
VISIBLE_BUDGET = 40
"""Larger graphs open expanded level by level while the boxes shown stay within this."""
HUGE_GRAPH = 400
"""Kept for callers of the old rule: above this many layers a graph never opens fully expanded."""
MAX_LABELS = 48
"""At most this many labels are drawn (each is a text draw); collapsed groups come first."""
MAX_TEXT = 0.16
"""Largest label line height (metres on a panel of scale 1): bigger text reads no better."""
CHAR_WIDTH = 0.56
"""Advance of an average character, in text heights (the label font's average)."""

# Box sizes in text heights.
_PAD_X, _PAD_Y = 0.45, 0.3  # text to box edge
_GAP_X, _GAP_Y = 0.9, 0.4  # between columns, between stacked boxes
_ROW_GAP = 0.35  # between rows, plus room for the name strips of the expanded groups there
_PLATE_MARGIN = 0.1
PLATE_HEADER = 0.35
"""Height of the strip along an expanded group's top edge, in text heights (its name, a click target)."""
LAYER_TEXT = 0.75
"""A layer's label beside collapsed groups is this much smaller: the groups are what to read first."""
_BARE = (1.0, 1.0)  # a box without a label


@dataclass(frozen=True, slots=True)
class GraphNode:
    """One box drawn for a model graph: a layer, or a collapsed group of layers."""

    key: str
    """"n:<node id>" for a layer, "g:<group id>" for a collapsed group."""
    name: str
    """The layer's name, or the group's full (qualified) name."""
    op: str
    params: int
    rank: int
    order: int
    group: str | None
    """For a collapsed group: the group id; for a layer: the group it is in."""
    members: int
    """Layers it stands for (1 for a layer)."""
    collapsed: bool
    label: str = ""
    """What its box says: a short name, and for a group a second line with its op count."""


@dataclass(frozen=True, slots=True)
class GroupPlate:
    """The background of an expanded group within one row (a click there collapses it)."""

    group: str
    name: str
    depth: int
    lo: tuple[float, float]
    hi: tuple[float, float]
    label: str = ""
    """Its short name, written in the strip along its top edge."""


@dataclass(frozen=True, slots=True)
class GraphLayout:
    nodes: list[GraphNode]
    positions: np.ndarray
    """[N, 3] box centres; in [-0.5, 0.5]^3 without a panel size, else panel metres (z = 0)."""
    edges: list[tuple[int, int]]
    """Indices into nodes, deduplicated."""
    ranks: int
    half: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))
    """[N, 3] box half extents (x, y; z left 0 for the view to choose)."""
    labelled: list[int] = field(default_factory=list)
    """Indices of the nodes whose label is drawn."""
    text_height: float = 0.0
    """Line height of label text, in the positions' units."""
    rows: int = 1
    plates: list[GroupPlate] = field(default_factory=list)
    text_scale: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    """[N] each label's line height as a share of `text_height`."""


class Match(NamedTuple):
    """A search hit: a layer ("n:<id>") or a group ("g:<id>")."""

    key: str
    name: str
    kind: str


class GraphIndex:
    """A model_graph meta read once: node arrays, edges as indices, the group tree."""

    def __init__(self, meta: Mapping[str, Any]) -> None:
        raw = [n for n in meta.get("nodes") or [] if isinstance(n, Mapping)]
        self.ids = [str(n.get("id", i)) for i, n in enumerate(raw)]
        self.names = [str(n.get("name", self.ids[i])) for i, n in enumerate(raw)]
        self.ops = [str(n.get("op", "")) for n in raw]
        self.params = np.array([_int(n.get("params")) for n in raw], np.int64)
        self.rank = np.array([_int(n.get("rank"), i) for i, n in enumerate(raw)], np.int64)
        self.order = np.array([_int(n.get("order")) for n in raw], np.int64)
        self.parent: dict[str, str | None] = {}
        self.group_name: dict[str, str] = {}
        for g in meta.get("groups") or []:
            if isinstance(g, Mapping) and g.get("id") is not None:
                gid = str(g["id"])
                p = g.get("parent")
                self.parent[gid] = None if p in (None, "") else str(p)
                self.group_name[gid] = str(g.get("name", gid))
        self.node_group: list[str | None] = []
        for n in raw:
            raw_group = n.get("group")
            self.node_group.append(None if raw_group in (None, "") or str(raw_group) not in self.parent
                                   else str(raw_group))
        self.chain: dict[str, list[str]] = {gid: _ancestors(self.parent, gid) for gid in self.parent}
        self.depth = {gid: len(c) - 1 for gid, c in self.chain.items()}
        self.children: dict[str | None, list[str]] = {}
        for gid, p in self.parent.items():
            self.children.setdefault(p if p in self.parent else None, []).append(gid)
        self.direct: dict[str, int] = {}
        self.ops_in: dict[str, int] = {gid: 0 for gid in self.parent}
        for ng in self.node_group:
            if ng is not None:
                self.direct[ng] = self.direct.get(ng, 0) + 1
                for anc in self.chain[ng]:
                    self.ops_in[anc] += 1
        pos = {nid: i for i, nid in enumerate(self.ids)}
        edges: list[tuple[int, int]] = []
        for e in meta.get("edges") or []:
            if isinstance(e, list | tuple) and len(e) == 2:
                src, dst = pos.get(str(e[0])), pos.get(str(e[1]))
                if src is not None and dst is not None and src != dst:
                    edges.append((src, dst))
        self.edges = np.array(edges, np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.ids)

    def short_group(self, gid: str) -> str:
        """A group's name without its parent's prefix ("features.denseblock1" -> "denseblock1"),
        but "layer1.0" stays whole (a bare index says nothing)."""
        name = self.group_name.get(gid, gid)
        p = self.parent.get(gid)
        if p is not None:
            pn = self.group_name.get(p, "")
            if pn and name.startswith(pn + "."):
                rest = name[len(pn) + 1 :]
                return name.rsplit(".", 2)[-2] + "." + rest if rest.isdigit() and "." in name else rest
        if "." in name and not name.rsplit(".", 1)[-1].isdigit():
            return name.rsplit(".", 1)[-1]
        return name


def _int(v: Any, default: int = 0) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def _ancestors(parent: Mapping[str, str | None], gid: str | None) -> list[str]:
    chain: list[str] = []
    seen: set[str] = set()
    while gid is not None and gid in parent and gid not in seen:
        chain.append(gid)
        seen.add(gid)
        gid = parent[gid]
    return chain  # innermost first


def short_layer(name: str, op: str) -> str:
    """A layer's name as its box says it: the innermost module ("/features/conv0/Conv" -> "conv0")."""
    parts = [p for p in name.replace("/", " ").split() if p]
    if len(parts) >= 2 and parts[-1].split("_")[0] == op:
        parts = parts[:-1]
    last = parts[-1] if parts else name
    dotted = last.split(".")
    if len(dotted) > 1:
        last = ".".join(dotted[-2:]) if dotted[-1].isdigit() else dotted[-1]
    return last


def _index(meta: Mapping[str, Any] | GraphIndex) -> GraphIndex:
    return meta if isinstance(meta, GraphIndex) else GraphIndex(meta)


def default_collapsed(meta: Mapping[str, Any] | GraphIndex, budget: int = VISIBLE_BUDGET) -> set[str]:
    """Which groups a graph opens with collapsed: none for a small graph; otherwise every
    group, then whole levels of the tree are expanded, outermost first, while the boxes
    shown stay within `budget`."""
    ix = _index(meta)
    if len(ix) <= SMALL_GRAPH or not ix.parent:
        return set()
    collapsed = set(ix.parent)
    visible = sum(1 for g in ix.node_group if g is None) + len(ix.children.get(None, []))
    level = list(ix.children.get(None, []))
    while level:
        cost = sum(ix.direct.get(g, 0) + len(ix.children.get(g, [])) - 1 for g in level)
        if visible + cost > budget:
            break
        visible += cost
        collapsed -= set(level)
        level = [c for g in level for c in ix.children.get(g, [])]
    return collapsed


def expand_to(meta: Mapping[str, Any] | GraphIndex, collapsed: set[str] | frozenset[str], key: str) -> set[str]:
    """The collapsed set with the groups around `key` ("n:<id>" or "g:<id>") expanded, so it is drawn."""
    ix = _index(meta)
    out = set(collapsed)
    kind, _, ident = key.partition(":")
    if kind == "g" and ident in ix.parent:
        out -= set(ix.chain[ident][1:])
    elif kind == "n" and ident in ix.ids:
        gid = ix.node_group[ix.ids.index(ident)]
        if gid is not None:
            out -= set(ix.chain[gid])
    else:
        raise KeyError(f"no layer or group {key!r} in this graph")
    return out


def find(meta: Mapping[str, Any] | GraphIndex, query: str, limit: int = 20) -> list[Match]:
    """Layers and groups whose name holds `query` (any case), best first: a whole short
    name, then a name starting with it, then any; groups before layers on a tie."""
    ix = _index(meta)
    q = query.strip().lower()
    if not q:
        return []
    hits: list[tuple[int, int, int, Match]] = []
    for gid, name in ix.group_name.items():
        low, short = name.lower(), ix.short_group(gid).lower()
        if q in low:
            score = 0 if short == q or low == q else 1 if short.startswith(q) else 2
            hits.append((score, 0, ix.depth.get(gid, 0), Match("g:" + gid, name, "group")))
    for i, name in enumerate(ix.names):
        low = name.lower()
        if q in low:
            short = short_layer(name, ix.ops[i]).lower()
            score = 0 if short == q or low == q else 1 if short.startswith(q) else 2
            hits.append((score, 1, i, Match("n:" + ix.ids[i], name, "layer")))
    hits.sort(key=lambda h: h[:3])
    return [h[3] for h in hits[:limit]]


def _units(ix: GraphIndex, collapsed: set[str] | frozenset[str]) -> tuple[list[str], np.ndarray]:
    """The box each node is drawn in: its own, or its outermost collapsed group's."""
    outer: dict[str | None, str | None] = {None: None}
    for g0, chain in ix.chain.items():
        outer[g0] = next((g for g in reversed(chain) if g in collapsed), None)
    keys: list[str] = []
    slot: dict[str, int] = {}
    unit = np.empty(len(ix), np.int64)
    for i, ng in enumerate(ix.node_group):
        o = outer.get(ng)
        k = "n:" + ix.ids[i] if o is None else "g:" + o
        u = slot.get(k)
        if u is None:
            u = slot[k] = len(keys)
            keys.append(k)
        unit[i] = u
    return keys, unit


def _wrap(widths: np.ndarray, heights: np.ndarray, limit: float) -> list[tuple[int, int]]:
    """Greedy rows of columns: [start, end) column ranges whose widths sum within `limit`."""
    rows: list[tuple[int, int]] = []
    start, acc = 0, 0.0
    for c, w in enumerate(widths.tolist()):
        if c > start and acc + w > limit:
            rows.append((start, c))
            start, acc = c, 0.0
        acc += w
    rows.append((start, len(widths)))
    return rows


def _fit(col_w: np.ndarray, col_h: np.ndarray, width: float, height: float,
         rows: int | None, row_gap: float, frame: float = 0.0) -> tuple[float, list[tuple[int, int]]]:
    """The largest text height (metres) at which the columns, wrapped into rows, fit the panel."""
    if rows is not None:  # a fixed row count: split columns evenly
        per = max(1, math.ceil(len(col_w) / rows))
        spans = [(s, min(s + per, len(col_w))) for s in range(0, len(col_w), per)]
        tw = max(float(col_w[a:b].sum()) for a, b in spans)
        th = sum(float(col_h[a:b].max()) for a, b in spans) + row_gap * (len(spans) - 1) + frame
        return min(width / tw, height / th, MAX_TEXT), spans
    lo, hi = 1e-5, MAX_TEXT
    best = (lo, _wrap(col_w, col_h, width / lo))
    total_w = float(col_w.sum())
    for _ in range(40):
        s = math.sqrt(lo * hi)
        spans = _wrap(col_w, col_h, width / s)
        th = sum(float(col_h[a:b].max()) for a, b in spans) + row_gap * (len(spans) - 1) + frame
        if th * s <= height and (len(spans) > 1 or total_w * s <= width):
            lo, best = s, (s, spans)
        else:
            hi = s
        if hi / lo < 1.01:
            break
    return best


def layout_graph(meta: Mapping[str, Any] | GraphIndex, collapsed: set[str] | frozenset[str] = frozenset(),
                 size: tuple[float, float] | None = None, rows: int | None = None) -> GraphLayout:
    """Boxes for a graph with `collapsed` groups shown as one box each.

    Without `size` the boxes sit in one row in the unit square (ranks left to right).
    With `size` (panel metres) they are laid out in rows that wrap to fill the panel,
    with the largest text that fits (`text_height`), and expanded groups get plates.
    """
    ix = _index(meta)
    keys, unit = _units(ix, collapsed)
    n = len(keys)
    if n == 0:
        return GraphLayout([], np.zeros((0, 3), np.float32), [], 1)
    # unit ranks: longest path over the unit graph, in order of the members' first rank
    first = np.full(n, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(first, unit, ix.rank)
    order_sum = np.zeros(n, np.float64)
    np.add.at(order_sum, unit, ix.order)
    members = np.bincount(unit, minlength=n)
    mean_order = order_sum / np.maximum(members, 1)
    seq = np.lexsort((mean_order, first))
    at = np.empty(n, np.int64)
    at[seq] = np.arange(n)
    ue = unit[ix.edges] if len(ix.edges) else np.zeros((0, 2), np.int64)
    ue = ue[ue[:, 0] != ue[:, 1]]
    ue = np.unique(ue, axis=0) if len(ue) else ue
    forward = ue[at[ue[:, 0]] < at[ue[:, 1]]] if len(ue) else ue
    rank = np.zeros(n, np.int64)
    if len(forward):
        by_src = forward[np.argsort(at[forward[:, 0]], kind="stable")]
        srcs, dsts = by_src[:, 0].tolist(), by_src[:, 1].tolist()
        rl = rank.tolist()
        for a, b in zip(srcs, dsts, strict=True):  # sources in topological order: one pass
            if rl[a] + 1 > rl[b]:
                rl[b] = rl[a] + 1
        rank = np.array(rl, np.int64)
    n_ranks = int(rank.max()) + 1
    slot_order = np.lexsort((mean_order, rank))
    order = np.empty(n, np.int64)
    per_rank = np.bincount(rank, minlength=n_ranks)
    starts = np.concatenate([[0], np.cumsum(per_rank)[:-1]])
    order[slot_order] = np.arange(n) - starts[rank[slot_order]]

    first_node = np.unique(unit, return_index=True)[1]
    unit_params = np.bincount(unit, weights=ix.params.astype(np.float64), minlength=n)
    nodes: list[GraphNode] = []
    for u, k in enumerate(keys):
        kind, _, ident = k.partition(":")
        if kind == "g":
            ops = ix.ops_in.get(ident, int(members[u]))
            label = f"{ix.short_group(ident)}\n{ops} ops"
            nodes.append(GraphNode(k, ix.group_name.get(ident, ident), "group", int(unit_params[u]), int(rank[u]),
                                   int(order[u]), ident, ops, True, label))
        else:
            i = int(first_node[u])
            nodes.append(GraphNode(k, ix.names[i], ix.ops[i], int(ix.params[i]), int(rank[u]), int(order[u]),
                                   ix.node_group[i], 1, False, short_layer(ix.names[i], ix.ops[i])))
    # the layout's node list runs rank by rank, top to bottom within a rank
    perm = slot_order
    nodes = [nodes[u] for u in perm.tolist()]
    new_of = np.empty(n, np.int64)
    new_of[perm] = np.arange(n)
    edges = sorted({(int(new_of[a]), int(new_of[b])) for a, b in ue.tolist()})
    rank_sorted = rank[perm]

    groups_first = [i for i, nd in enumerate(nodes) if nd.collapsed]
    rest = [i for i, nd in enumerate(nodes) if not nd.collapsed]
    # every box says what it is while there are few; past that only the collapsed groups do
    labelled = groups_first + rest if n <= MAX_LABELS else groups_first[:MAX_LABELS]
    labelled.sort()
    shown = np.zeros(n, bool)
    shown[labelled] = True
    # box sizes in text heights
    bw = np.full(n, _BARE[0])
    bh = np.full(n, _BARE[1])
    scale = np.ones(n, np.float32)
    if groups_first:
        scale[[i for i, nd in enumerate(nodes) if not nd.collapsed]] = LAYER_TEXT
    for i in labelled:
        lines = nodes[i].label.split("\n")
        bw[i] = (max(len(line) for line in lines) * CHAR_WIDTH + 2 * _PAD_X) * scale[i]
        bh[i] = (len(lines) * 1.0 + 2 * _PAD_Y) * scale[i]
    col_w = np.zeros(n_ranks)
    np.maximum.at(col_w, rank_sorted, bw)
    col_w += _GAP_X
    col_h = np.zeros(n_ranks)
    np.add.at(col_h, rank_sorted, bh + _GAP_Y)

    if size is None:
        return _unit_layout(nodes, edges, rank_sorted, n_ranks, bw, bh, col_w, col_h, labelled, scale)
    width, height = float(size[0]), float(size[1])
    # nested expanded groups stack their name strips above a row: leave them room
    levels = max((sum(1 for g in (ix.chain.get(nd.group, []) if nd.group is not None else [])[int(nd.collapsed):])
                  for nd in nodes), default=0)
    row_gap = _ROW_GAP + levels * (PLATE_HEADER + 2 * _PLATE_MARGIN)
    top_strip, bottom_strip = levels * (PLATE_HEADER + _PLATE_MARGIN), levels * _PLATE_MARGIN
    s, spans = _fit(col_w, col_h, width, height, rows, row_gap, top_strip + bottom_strip)
    pos = np.zeros((n, 3), np.float32)
    half = np.zeros((n, 3), np.float32)
    row_of = np.zeros(n_ranks, np.int64)
    row_h = [float(col_h[a:b].max()) for a, b in spans]
    total_h = (sum(row_h) + row_gap * (len(spans) - 1) + top_strip + bottom_strip) * s
    y_top = total_h / 2 - top_strip * s
    col_x = np.zeros(n_ranks)
    for r, (a, b) in enumerate(spans):
        row_of[a:b] = r
        xs = np.cumsum(col_w[a:b]) - col_w[a:b] / 2
        row_w = float(col_w[a:b].sum())
        x = (xs - row_w / 2) * s
        col_x[a:b] = x if r % 2 == 0 else -x  # a snake: odd rows run right to left
    centre_y = np.zeros(len(spans))
    y = y_top
    for r, h in enumerate(row_h):
        centre_y[r] = y - h * s / 2
        y -= (h + row_gap) * s
    # stack each rank's boxes about its row's centre line
    filled = np.zeros(n_ranks)
    for i in range(n):
        r = int(rank_sorted[i])
        top = centre_y[row_of[r]] + (col_h[r] - _GAP_Y) * s / 2
        pos[i, 0] = col_x[r]
        pos[i, 1] = top - (filled[r] + bh[i] / 2) * s
        filled[r] += bh[i] + _GAP_Y
        half[i, 0] = bw[i] * s / 2
        half[i, 1] = bh[i] * s / 2
    plates = _plates(ix, nodes, pos, half, row_of[rank_sorted], s)
    return GraphLayout(nodes, pos, edges, n_ranks, half, labelled, s, len(spans), plates, scale)


def _unit_layout(nodes: list[GraphNode], edges: list[tuple[int, int]], rank: np.ndarray, n_ranks: int,
                 bw: np.ndarray, bh: np.ndarray, col_w: np.ndarray, col_h: np.ndarray,
                 labelled: list[int], scale: np.ndarray) -> GraphLayout:
    """One row in the unit square (ranks left to right), for callers without a panel size."""
    n = len(nodes)
    pos = np.zeros((n, 3), np.float32)
    per = np.bincount(rank, minlength=n_ranks)
    widest = max(int(per.max()), 1)
    for i, nd in enumerate(nodes):
        k = int(per[nd.rank])
        pos[i, 0] = (nd.rank + 0.5) / n_ranks - 0.5
        pos[i, 1] = 0.0 if k == 1 else (0.5 - (nd.order + 0.5) / k) * min(1.0, k / widest * 1.6)
    s = min(1.0 / float(col_w.sum()), 1.0 / float(col_h.max()))
    half = np.stack([bw * s / 2, bh * s / 2, np.zeros(n)], axis=1).astype(np.float32)
    return GraphLayout(nodes, pos, edges, n_ranks, half, labelled, s, 1, [], scale)


MAX_PLATES = 64


def _plates(ix: GraphIndex, nodes: list[GraphNode], pos: np.ndarray, half: np.ndarray, row: np.ndarray,
            s: float) -> list[GroupPlate]:
    """A plate behind each expanded group's boxes, per row (nested groups sit inside their parents)."""
    boxes: dict[tuple[str, int], list[int]] = {}
    for i, nd in enumerate(nodes):
        gid = nd.group
        chain = ix.chain.get(gid, []) if gid is not None else []
        if nd.collapsed:
            chain = chain[1:]  # the box is the collapsed group itself: its parents are the expanded ones
        for g in chain:
            boxes.setdefault((g, int(row[i])), []).append(i)
    # inner plates first: an outer plate frames its boxes and its inner plates (and their
    # name strips), so nested names stack instead of overlapping
    ext: dict[tuple[str, int], list[float]] = {}
    margin = _PLATE_MARGIN * s
    for key in sorted(boxes, key=lambda kv: -ix.depth.get(kv[0], 0)):
        k = np.asarray(boxes[key])
        e = [float((pos[k, 0] - half[k, 0]).min()), float((pos[k, 1] - half[k, 1]).min()),
             float((pos[k, 0] + half[k, 0]).max()), float((pos[k, 1] + half[k, 1]).max())]
        for c in ix.children.get(key[0], []):
            ce = ext.get((c, key[1]))
            if ce is not None:
                e = [min(e[0], ce[0]), min(e[1], ce[1]), max(e[2], ce[2]), max(e[3], ce[3])]
        ext[key] = [e[0] - margin, e[1] - margin, e[2] + margin, e[3] + margin + PLATE_HEADER * s]
    plates: list[GroupPlate] = []
    for g, r in sorted(ext, key=lambda kv: (ix.depth.get(kv[0], 0), kv[1]))[:MAX_PLATES]:
        x0, y0, x1, y1 = ext[(g, r)]
        plates.append(GroupPlate(g, ix.group_name.get(g, g), ix.depth.get(g, 0), (x0, y0), (x1, y1),
                                 ix.short_group(g)))
    return plates


def plate_at(layout: GraphLayout, u: float, v: float) -> GroupPlate | None:
    """The innermost expanded group's plate under (u, v), or None."""
    best: GroupPlate | None = None
    for p in layout.plates:
        if p.lo[0] <= u <= p.hi[0] and p.lo[1] <= v <= p.hi[1] and (best is None or p.depth > best.depth):
            best = p
    return best
