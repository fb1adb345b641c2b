// Where a model graph's boxes go on its panel — the browser's port of scenes/graph_layout.py,
// so a graph reads the same in the app and in the page: collapsed groups (small graphs open
// fully, larger ones level by level within a budget of boxes), ranks by longest path, stacked
// branches, rows that wrap as a snake with the largest text that fits, and a plate behind each
// expanded group per row (a click on its name strip collapses it). Pure: no three.js here.

export const SMALL_GRAPH = 60;
export const VISIBLE_BUDGET = 40;
export const MAX_LABELS = 48;
export const MAX_TEXT = 0.16;
export const CHAR_WIDTH = 0.56;
const PAD_X = 0.45, PAD_Y = 0.3, GAP_X = 0.9, GAP_Y = 0.4, ROW_GAP = 0.35, PLATE_MARGIN = 0.1;
export const PLATE_HEADER = 0.35;
export const LAYER_TEXT = 0.75;
const MAX_PLATES = 64;
const MAX_NODES = 20000;

function int(v, fallback = 0) {
  const x = typeof v === 'number' ? v : typeof v === 'string' && v.trim() !== '' ? Number(v) : NaN;
  return Number.isFinite(x) ? Math.trunc(x) : fallback;
}

function ancestors(parent, gid) {
  const chain = [], seen = new Set();
  while (gid !== null && gid !== undefined && parent.has(gid) && !seen.has(gid)) {
    chain.push(gid); seen.add(gid); gid = parent.get(gid);
  }
  return chain; // innermost first
}

/** A model_graph meta read once: nodes, edges as indices, the group tree. */
export class GraphIndex {
  constructor(meta) {
    const raw = (Array.isArray(meta.nodes) ? meta.nodes : []).filter((n) => n && typeof n === 'object').slice(0, MAX_NODES);
    this.ids = raw.map((n, i) => String(n.id ?? i));
    this.names = raw.map((n, i) => String(n.name ?? this.ids[i]));
    this.ops = raw.map((n) => String(n.op ?? ''));
    this.params = raw.map((n) => Math.max(0, int(n.params)));
    this.rank = raw.map((n, i) => int(n.rank, i));
    this.order = raw.map((n) => int(n.order));
    this.parent = new Map();
    this.groupName = new Map();
    for (const g of Array.isArray(meta.groups) ? meta.groups.slice(0, MAX_NODES) : []) {
      if (!g || typeof g !== 'object' || g.id === undefined || g.id === null) continue;
      const gid = String(g.id);
      this.parent.set(gid, g.parent === undefined || g.parent === null || g.parent === '' ? null : String(g.parent));
      this.groupName.set(gid, String(g.name ?? gid));
    }
    this.nodeGroup = raw.map((n) => (n.group === undefined || n.group === null || n.group === '' || !this.parent.has(String(n.group)) ? null : String(n.group)));
    this.chain = new Map([...this.parent.keys()].map((g) => [g, ancestors(this.parent, g)]));
    this.depth = new Map([...this.chain].map(([g, c]) => [g, c.length - 1]));
    this.children = new Map();
    for (const [gid, p] of this.parent) {
      const key = p !== null && this.parent.has(p) ? p : null;
      if (!this.children.has(key)) this.children.set(key, []);
      this.children.get(key).push(gid);
    }
    this.direct = new Map();
    this.opsIn = new Map([...this.parent.keys()].map((g) => [g, 0]));
    for (const ng of this.nodeGroup) {
      if (ng === null) continue;
      this.direct.set(ng, (this.direct.get(ng) || 0) + 1);
      for (const a of this.chain.get(ng)) this.opsIn.set(a, this.opsIn.get(a) + 1);
    }
    const pos = new Map(this.ids.map((id, i) => [id, i]));
    this.edges = [];
    for (const e of Array.isArray(meta.edges) ? meta.edges.slice(0, 4 * MAX_NODES) : []) {
      if (!Array.isArray(e) || e.length !== 2) continue;
      const a = pos.get(String(e[0])), b = pos.get(String(e[1]));
      if (a !== undefined && b !== undefined && a !== b) this.edges.push([a, b]);
    }
  }

  get length() { return this.ids.length; }

  /** "features.denseblock1" → "denseblock1" under "features"; "layer1.0" stays whole. */
  shortGroup(gid) {
    const name = this.groupName.get(gid) ?? gid;
    const p = this.parent.get(gid);
    if (p !== null && p !== undefined) {
      const pn = this.groupName.get(p) || '';
      if (pn && name.startsWith(`${pn}.`)) {
        const rest = name.slice(pn.length + 1);
        if (/^\d+$/.test(rest) && name.includes('.')) { const parts = name.split('.'); return `${parts[parts.length - 2]}.${rest}`; }
        return rest;
      }
    }
    if (name.includes('.') && !/^\d+$/.test(name.split('.').pop())) return name.split('.').pop();
    return name;
  }
}

/** A layer's name as its box says it: the innermost module ("/features/conv0/Conv" → "conv0"). */
export function shortLayer(name, op) {
  let parts = name.replace(/\//g, ' ').split(/\s+/).filter(Boolean);
  if (parts.length >= 2 && parts[parts.length - 1].split('_')[0] === op) parts = parts.slice(0, -1);
  let last = parts.length ? parts[parts.length - 1] : name;
  const dotted = last.split('.');
  if (dotted.length > 1) last = /^\d+$/.test(dotted[dotted.length - 1]) ? dotted.slice(-2).join('.') : dotted[dotted.length - 1];
  return last;
}

/** The groups a graph opens with collapsed (as the app: none up to SMALL_GRAPH layers). */
export function defaultCollapsed(ix, budget = VISIBLE_BUDGET) {
  if (ix.length <= SMALL_GRAPH || !ix.parent.size) return new Set();
  const collapsed = new Set(ix.parent.keys());
  let visible = ix.nodeGroup.filter((g) => g === null).length + (ix.children.get(null) || []).length;
  let level = [...(ix.children.get(null) || [])];
  while (level.length) {
    let cost = 0;
    for (const g of level) cost += (ix.direct.get(g) || 0) + (ix.children.get(g) || []).length - 1;
    if (visible + cost > budget) break;
    visible += cost;
    for (const g of level) collapsed.delete(g);
    level = level.flatMap((g) => ix.children.get(g) || []);
  }
  return collapsed;
}

function units(ix, collapsed) {
  const outer = new Map([[null, null]]);
  for (const [g0, chain] of ix.chain) {
    let o = null;
    for (let k = chain.length - 1; k >= 0; k--) if (collapsed.has(chain[k])) { o = chain[k]; break; }
    outer.set(g0, o);
  }
  const keys = [], slot = new Map(), unit = new Int32Array(ix.length);
  ix.nodeGroup.forEach((ng, i) => {
    const o = outer.get(ng) ?? null;
    const k = o === null ? `n:${ix.ids[i]}` : `g:${o}`;
    let u = slot.get(k);
    if (u === undefined) { u = keys.length; slot.set(k, u); keys.push(k); }
    unit[i] = u;
  });
  return [keys, unit];
}

function wrap(widths, limit) {
  const rows = [];
  let start = 0, acc = 0;
  widths.forEach((w, c) => {
    if (c > start && acc + w > limit) { rows.push([start, c]); start = c; acc = 0; }
    acc += w;
  });
  rows.push([start, widths.length]);
  return rows;
}

const sum = (a, lo = 0, hi = a.length) => { let s = 0; for (let i = lo; i < hi; i++) s += a[i]; return s; };
const max = (a, lo = 0, hi = a.length) => { let s = -Infinity; for (let i = lo; i < hi; i++) s = Math.max(s, a[i]); return s; };

function fit(colW, colH, width, height, rowGap, frame) {
  let lo = 1e-5, hi = MAX_TEXT;
  let best = [lo, wrap(colW, width / lo)];
  const totalW = sum(colW);
  for (let k = 0; k < 40; k++) {
    const s = Math.sqrt(lo * hi);
    const spans = wrap(colW, width / s);
    const th = spans.reduce((t, [a, b]) => t + max(colH, a, b), 0) + rowGap * (spans.length - 1) + frame;
    if (th * s <= height && (spans.length > 1 || totalW * s <= width)) { lo = s; best = [s, spans]; } else hi = s;
    if (hi / lo < 1.01) break;
  }
  return best;
}

/**
 * Boxes for a graph with `collapsed` groups drawn as one box each, on a panel face of `size`
 * metres: {nodes, positions [[x, y]], half [[hx, hy]], edges [[i, j]], labelled, textHeight,
 * textScale, plates, rows}. Nodes: {key, name, op, params, rank, group, members, collapsed, label}.
 */
export function layoutGraph(ix, collapsed, size) {
  const [keys, unit] = units(ix, collapsed);
  const n = keys.length;
  if (!n) return { nodes: [], positions: [], half: [], edges: [], labelled: [], textHeight: 0, textScale: [], plates: [], rows: 1 };
  const first = new Array(n).fill(Infinity), orderSum = new Array(n).fill(0), members = new Array(n).fill(0);
  for (let i = 0; i < ix.length; i++) {
    const u = unit[i];
    first[u] = Math.min(first[u], ix.rank[i]); orderSum[u] += ix.order[i]; members[u] += 1;
  }
  const meanOrder = orderSum.map((s, u) => s / Math.max(members[u], 1));
  const seq = [...Array(n).keys()].sort((a, b) => first[a] - first[b] || meanOrder[a] - meanOrder[b] || a - b);
  const at = new Array(n);
  seq.forEach((u, k) => { at[u] = k; });
  const ue = new Map();
  for (const [a, b] of ix.edges) { const ua = unit[a], ub = unit[b]; if (ua !== ub) ue.set(`${ua},${ub}`, [ua, ub]); }
  const unitEdges = [...ue.values()];
  const forward = unitEdges.filter(([a, b]) => at[a] < at[b]).sort((p, q) => at[p[0]] - at[q[0]]);
  const rank = new Array(n).fill(0);
  for (const [a, b] of forward) if (rank[a] + 1 > rank[b]) rank[b] = rank[a] + 1;
  const nRanks = Math.max(...rank) + 1;
  const slotOrder = [...Array(n).keys()].sort((a, b) => rank[a] - rank[b] || meanOrder[a] - meanOrder[b] || a - b);
  const order = new Array(n), perRank = new Array(nRanks).fill(0);
  for (const u of slotOrder) { order[u] = perRank[rank[u]]; perRank[rank[u]] += 1; }
  const firstNode = new Array(n).fill(-1), unitParams = new Array(n).fill(0);
  for (let i = 0; i < ix.length; i++) { if (firstNode[unit[i]] < 0) firstNode[unit[i]] = i; unitParams[unit[i]] += ix.params[i]; }
  const raw = keys.map((k, u) => {
    const colon = k.indexOf(':'), kind = k.slice(0, colon), ident = k.slice(colon + 1);
    if (kind === 'g') {
      const ops = ix.opsIn.get(ident) ?? members[u];
      return { key: k, name: ix.groupName.get(ident) ?? ident, op: 'group', params: unitParams[u], rank: rank[u], order: order[u],
        group: ident, members: ops, collapsed: true, label: `${ix.shortGroup(ident)}\n${ops} ops` };
    }
    const i = firstNode[u];
    return { key: k, name: ix.names[i], op: ix.ops[i], params: ix.params[i], rank: rank[u], order: order[u],
      group: ix.nodeGroup[i], members: 1, collapsed: false, label: shortLayer(ix.names[i], ix.ops[i]) };
  });
  const nodes = slotOrder.map((u) => raw[u]); // rank by rank, top to bottom within a rank
  const newOf = new Array(n);
  slotOrder.forEach((u, k) => { newOf[u] = k; });
  const edgeSet = new Map();
  for (const [a, b] of unitEdges) edgeSet.set(`${newOf[a]},${newOf[b]}`, [newOf[a], newOf[b]]);
  const edges = [...edgeSet.values()].sort((p, q) => p[0] - q[0] || p[1] - q[1]);
  const groupsFirst = [], rest = [];
  nodes.forEach((nd, i) => (nd.collapsed ? groupsFirst : rest).push(i));
  const labelled = (n <= MAX_LABELS ? [...groupsFirst, ...rest] : groupsFirst.slice(0, MAX_LABELS)).sort((a, b) => a - b);
  const bw = new Array(n).fill(1), bh = new Array(n).fill(1), scale = new Array(n).fill(1);
  if (groupsFirst.length) nodes.forEach((nd, i) => { if (!nd.collapsed) scale[i] = LAYER_TEXT; });
  for (const i of labelled) {
    const lines = nodes[i].label.split('\n');
    bw[i] = (Math.max(...lines.map((l) => l.length)) * CHAR_WIDTH + 2 * PAD_X) * scale[i];
    bh[i] = (lines.length + 2 * PAD_Y) * scale[i];
  }
  const colW = new Array(nRanks).fill(0), colH = new Array(nRanks).fill(0);
  nodes.forEach((nd, i) => { colW[nd.rank] = Math.max(colW[nd.rank], bw[i]); colH[nd.rank] += bh[i] + GAP_Y; });
  for (let r = 0; r < nRanks; r++) colW[r] += GAP_X;
  const [width, height] = size;
  let levels = 0;
  for (const nd of nodes) {
    const chain = nd.group !== null ? ix.chain.get(nd.group) || [] : [];
    levels = Math.max(levels, chain.length - (nd.collapsed ? 1 : 0));
  }
  const rowGap = ROW_GAP + levels * (PLATE_HEADER + 2 * PLATE_MARGIN);
  const topStrip = levels * (PLATE_HEADER + PLATE_MARGIN), bottomStrip = levels * PLATE_MARGIN;
  const [s, spans] = fit(colW, colH, width, height, rowGap, topStrip + bottomStrip);
  const rowH = spans.map(([a, b]) => max(colH, a, b));
  const totalH = (sum(rowH) + rowGap * (spans.length - 1) + topStrip + bottomStrip) * s;
  const rowOf = new Array(nRanks).fill(0), colX = new Array(nRanks).fill(0);
  spans.forEach(([a, b], r) => {
    const rowW = sum(colW, a, b);
    let acc = 0;
    for (let c = a; c < b; c++) {
      rowOf[c] = r;
      const x = (acc + colW[c] / 2 - rowW / 2) * s;
      acc += colW[c];
      colX[c] = r % 2 === 0 ? x : -x; // a snake: odd rows run right to left
    }
  });
  const centreY = [];
  let y = totalH / 2 - topStrip * s;
  for (const h of rowH) { centreY.push(y - (h * s) / 2); y -= (h + rowGap) * s; }
  const filled = new Array(nRanks).fill(0);
  const positions = [], half = [];
  nodes.forEach((nd, i) => {
    const r = nd.rank;
    const top = centreY[rowOf[r]] + ((colH[r] - GAP_Y) * s) / 2;
    positions.push([colX[r], top - (filled[r] + bh[i] / 2) * s]);
    filled[r] += bh[i] + GAP_Y;
    half.push([(bw[i] * s) / 2, (bh[i] * s) / 2]);
  });
  const plates = platesOf(ix, nodes, positions, half, nodes.map((nd) => rowOf[nd.rank]), s);
  return { nodes, positions, half, edges, labelled, textHeight: s, textScale: scale, plates, rows: spans.length };
}

function platesOf(ix, nodes, pos, half, row, s) {
  const boxes = new Map();
  nodes.forEach((nd, i) => {
    let chain = nd.group !== null ? ix.chain.get(nd.group) || [] : [];
    if (nd.collapsed) chain = chain.slice(1);
    for (const g of chain) {
      const k = `${g}\u0000${row[i]}`;
      if (!boxes.has(k)) boxes.set(k, { g, r: row[i], idx: [] });
      boxes.get(k).idx.push(i);
    }
  });
  const ext = new Map();
  const margin = PLATE_MARGIN * s;
  const inner = [...boxes.values()].sort((a, b) => (ix.depth.get(b.g) || 0) - (ix.depth.get(a.g) || 0));
  for (const { g, r, idx } of inner) {
    let e = [Infinity, Infinity, -Infinity, -Infinity];
    for (const i of idx) {
      e = [Math.min(e[0], pos[i][0] - half[i][0]), Math.min(e[1], pos[i][1] - half[i][1]),
        Math.max(e[2], pos[i][0] + half[i][0]), Math.max(e[3], pos[i][1] + half[i][1])];
    }
    for (const c of ix.children.get(g) || []) {
      const ce = ext.get(`${c}\u0000${r}`);
      if (ce) e = [Math.min(e[0], ce.e[0]), Math.min(e[1], ce.e[1]), Math.max(e[2], ce.e[2]), Math.max(e[3], ce.e[3])];
    }
    ext.set(`${g}\u0000${r}`, { g, r, e: [e[0] - margin, e[1] - margin, e[2] + margin, e[3] + margin + PLATE_HEADER * s] });
  }
  return [...ext.values()]
    .sort((a, b) => (ix.depth.get(a.g) || 0) - (ix.depth.get(b.g) || 0) || a.r - b.r)
    .slice(0, MAX_PLATES)
    .map(({ g, e }) => ({ group: g, name: ix.groupName.get(g) ?? g, depth: ix.depth.get(g) || 0,
      lo: [e[0], e[1]], hi: [e[2], e[3]], label: ix.shortGroup(g) }));
}

/** What a click at panel-face point (u, v) does: {expand: gid} on a collapsed group's box,
 * {collapse: gid} on an expanded group's plate, {layer: name} on a layer; null elsewhere. */
export function clickAt(layout, u, v) {
  for (let i = 0; i < layout.nodes.length; i++) {
    const [x, y] = layout.positions[i], [hx, hy] = layout.half[i];
    if (Math.abs(u - x) <= hx && Math.abs(v - y) <= hy) {
      const nd = layout.nodes[i];
      return nd.collapsed ? { expand: nd.group } : { layer: nd.name };
    }
  }
  let best = null;
  for (const p of layout.plates) {
    if (p.lo[0] <= u && u <= p.hi[0] && p.lo[1] <= v && v <= p.hi[1] && (!best || p.depth > best.depth)) best = p;
  }
  return best ? { collapse: best.group } : null;
}

const OP_COLOURS = [
  ['conv', [90, 141, 238]], ['linear', [235, 150, 70]], ['gemm', [235, 150, 70]], ['matmul', [235, 150, 70]],
  ['norm', [90, 200, 130]], ['relu', [150, 156, 170]], ['gelu', [150, 156, 170]], ['pool', [170, 120, 230]],
  ['add', [240, 210, 80]], ['cat', [240, 210, 80]], ['attention', [230, 100, 150]], ['group', [60, 190, 200]],
  ['input', [230, 230, 230]], ['output', [230, 230, 230]],
];

/** The app's colour of an op's box (scenes/views.op_colour); collapsed groups are teal. */
export function opColour(op) {
  const o = String(op).toLowerCase();
  for (const [key, c] of OP_COLOURS) if (o.includes(key)) return c;
  return [130, 140, 160];
}

/** The app's plate shade for an expanded group at `depth`. */
export function plateShade(depth) {
  const d = Math.min(depth, 5);
  return [44 + 14 * d, 52 + 14 * d, 70 + 16 * d];
}
