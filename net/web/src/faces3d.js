// The two 3D panel faces, drawn as the app draws them (scenes/views.py): the model graph
// (GraphView: one instanced box per layer or collapsed group, the plates of expanded groups,
// edges as one line set with skip connections in yellow, labels painted on one overlay;
// clicks expand and collapse groups) and the latent cloud (CloudView: every point in one
// draw, trails of the last frames as one line set, image thumbnails for the points near
// the viewer as one mesh over one atlas, refreshed at most four times a second).
// Panel-local three.js coordinates: the face is z = 0 and the room side is +z.

import * as THREE from 'three';
import { GraphIndex, PLATE_HEADER, clickAt, defaultCollapsed, layoutGraph, opColour, plateShade } from './graph.js';
import { FROZEN_COLOUR, LABEL_PALETTE, UNLABELLED, VIRIDIS } from './paint.js';
import { TRAIL_FRAMES } from './live.js';

const SKIP_COLOUR = [250, 200, 90], EDGE_COLOUR = [150, 160, 185];

function srgb(c, out = new THREE.Color()) { return out.setRGB(c[0] / 255, c[1] / 255, c[2] / 255, THREE.SRGBColorSpace); }

export function backdrop([w, h]) {
  return new THREE.Mesh(new THREE.PlaneGeometry(w, h),
    new THREE.MeshBasicMaterial({ color: 0x181c28, side: THREE.DoubleSide, transparent: true, opacity: 0.85 }));
}

export function disposeTree(obj) {
  obj.traverse((o) => {
    if (o.geometry) o.geometry.dispose();
    const mats = Array.isArray(o.material) ? o.material : o.material ? [o.material] : [];
    for (const m of mats) { if (m.map) m.map.dispose(); m.dispose(); }
  });
}

// --- model graph -----------------------------------------------------------------------

export class GraphFace {
  constructor(meta, size, collapsed = null) {
    this.index = new GraphIndex(meta);
    this.size = size;
    this.collapsed = collapsed ? new Set([...collapsed].filter((g) => this.index.parent.has(g))) : defaultCollapsed(this.index);
    this.frozen = new Set();
    this.group = new THREE.Group();
    this.group.add(backdrop(size));
    this.body = null;
    this.build();
  }

  /** The area the graph is laid out in (inside the panel's margins), as the app's. */
  get face() { return [this.size[0] * 0.96, this.size[1] * 0.92]; }

  build() {
    if (this.body) { this.group.remove(this.body); disposeTree(this.body); }
    const body = new THREE.Group();
    const lay = this.layout = layoutGraph(this.index, this.collapsed, this.face);
    const n = lay.nodes.length;
    let maxParams = 1;
    for (const nd of lay.nodes) maxParams = Math.max(maxParams, nd.params);
    const logMax = Math.max(Math.log10(maxParams), 1);
    this.depth = lay.nodes.map((nd, i) => (0.15 + 0.35 * (Math.log10(Math.max(nd.params, 1)) / logMax)) * Math.min(lay.half[i][0], lay.half[i][1]));
    const total = n + lay.plates.length;
    const boxes = new THREE.InstancedMesh(new THREE.BoxGeometry(1, 1, 1), new THREE.MeshLambertMaterial(), Math.max(total, 1));
    const m = new THREE.Matrix4(), q = new THREE.Quaternion(), tmp = new THREE.Color();
    let front = 0.01;
    lay.nodes.forEach((nd, i) => {
      const [x, y] = lay.positions[i], [hx, hy] = lay.half[i], hz = this.depth[i];
      m.compose(new THREE.Vector3(x, y, hz + 0.006), q, new THREE.Vector3(2 * hx, 2 * hy, 2 * hz));
      boxes.setMatrixAt(i, m);
      const frozen = !nd.collapsed && [...this.frozen].some((f) => nd.name === f || nd.name.startsWith(`${f}.`));
      boxes.setColorAt(i, srgb(frozen ? FROZEN_COLOUR : opColour(nd.op), tmp));
      front = Math.max(front, 2 * hz + 0.006);
    });
    lay.plates.forEach((p, k) => {
      const cx = (p.lo[0] + p.hi[0]) / 2, cy = (p.lo[1] + p.hi[1]) / 2;
      m.compose(new THREE.Vector3(cx, cy, 0.003 + 0.0005 * p.depth), q, new THREE.Vector3(p.hi[0] - p.lo[0], p.hi[1] - p.lo[1], 0.004));
      boxes.setMatrixAt(n + k, m);
      boxes.setColorAt(n + k, srgb(plateShade(p.depth), tmp));
    });
    boxes.count = total;
    body.add(boxes);
    if (lay.edges.length) {
      const pts = new Float32Array(lay.edges.length * 6), cols = new Float32Array(lay.edges.length * 6);
      lay.edges.forEach(([a, b], k) => {
        const skip = lay.nodes[b].rank - lay.nodes[a].rank > 1; // skip connections stand out
        pts.set([lay.positions[a][0], lay.positions[a][1], 0.0085, lay.positions[b][0], lay.positions[b][1], 0.0085], k * 6);
        srgb(skip ? SKIP_COLOUR : EDGE_COLOUR, tmp);
        cols.set([tmp.r, tmp.g, tmp.b, tmp.r, tmp.g, tmp.b], k * 6);
      });
      const g = new THREE.BufferGeometry();
      g.setAttribute('position', new THREE.BufferAttribute(pts, 3));
      g.setAttribute('color', new THREE.BufferAttribute(cols, 3));
      body.add(new THREE.LineSegments(g, new THREE.LineBasicMaterial({ vertexColors: true })));
    }
    body.add(this.labels(front + 0.002));
    this.group.add(body);
    this.body = body;
  }

  /** Every label and plate name painted on one transparent overlay in front of the boxes. */
  labels(z) {
    const [w, h] = this.size, lay = this.layout;
    const ppm = Math.min(1400 / w, 1400 / h, 1200);
    const c = document.createElement('canvas');
    c.width = Math.max(8, Math.round(w * ppm)); c.height = Math.max(8, Math.round(h * ppm));
    const g = c.getContext('2d');
    const px = (x, y) => [(x + w / 2) * ppm, (h / 2 - y) * ppm];
    g.textAlign = 'center'; g.textBaseline = 'middle';
    for (const i of lay.labelled) {
      const nd = lay.nodes[i], col = opColour(nd.op);
      const light = 0.2126 * col[0] + 0.7152 * col[1] + 0.0722 * col[2] > 140;
      const line = lay.textHeight * lay.textScale[i] * ppm;
      g.font = `${Math.max(6, line * 0.8)}px "Liberation Sans", Arial, sans-serif`;
      g.fillStyle = light ? 'rgb(13,15,23)' : 'rgb(242,245,252)';
      const lines = nd.label.split('\n'), [cx, cy] = px(...lay.positions[i]);
      lines.forEach((t, k) => g.fillText(t, cx, cy + (k - (lines.length - 1) / 2) * line));
    }
    const room = 48 - lay.labelled.length;
    g.textAlign = 'left';
    g.fillStyle = 'rgb(191,204,230)';
    for (const p of lay.plates.slice(0, Math.max(room, 0))) {
      const line = lay.textHeight * PLATE_HEADER * 0.8 * ppm;
      g.font = `${Math.max(6, line * 0.85)}px "Liberation Sans", Arial, sans-serif`;
      const [x, y] = px(p.lo[0] + 0.3 * lay.textHeight, p.hi[1] - (PLATE_HEADER * lay.textHeight) / 2);
      g.fillText(p.label, x, y);
    }
    const tex = new THREE.CanvasTexture(c);
    tex.colorSpace = THREE.SRGBColorSpace;
    const mesh = new THREE.Mesh(new THREE.PlaneGeometry(w, h), new THREE.MeshBasicMaterial({ map: tex, transparent: true, depthWrite: false }));
    mesh.position.z = z;
    return mesh;
  }

  /** A click at panel-local (x, y): expand a collapsed group, collapse an expanded one. */
  click(x, y) {
    const hit = clickAt(this.layout, x, y);
    if (hit && hit.expand !== undefined) { this.collapsed.delete(hit.expand); this.build(); }
    else if (hit && hit.collapse !== undefined) { this.collapsed.add(hit.collapse); this.build(); }
    return hit;
  }

  markFrozen(layers) {
    const next = new Set(layers);
    if (next.size === this.frozen.size && [...next].every((l) => this.frozen.has(l))) return false;
    this.frozen = next;
    this.build();
    return true;
  }

  /** What the tests read: boxes by kind. */
  summary() {
    const lay = this.layout;
    return { boxes: lay.nodes.length, groups: lay.nodes.filter((nd) => nd.collapsed).map((nd) => nd.group),
      plates: lay.plates.map((p) => p.group), collapsed: [...this.collapsed], rows: lay.rows, frozen: [...this.frozen],
      at: Object.fromEntries(lay.nodes.map((nd, i) => [nd.key, lay.positions[i]])),
      plateAt: Object.fromEntries(lay.plates.map((p) => [p.group, [(p.lo[0] + p.hi[0]) / 2, p.hi[1] - (PLATE_HEADER * lay.textHeight) / 2]])) };
  }
}

// --- latent cloud ----------------------------------------------------------------------

const NEAR = 0.9, MAX_THUMBS = 400, REFRESH_MS = 250, MAX_TRAIL_POINTS = 3000;

function labelColour(lab) {
  return lab < 0 ? UNLABELLED : LABEL_PALETTE[((lab % 10) + 10) % 10];
}

/** Thumbnails [T, h, w] or [T, h, w, 3] packed into one atlas canvas (painting.thumbnail_atlas). */
function atlasOf(t) {
  const [T, th, tw] = t.shape, rgb = t.shape.length === 4;
  const ch = rgb ? t.shape[3] : 1;
  if (rgb && ch < 3) throw new Error(`thumbnails must be [T, h, w] or [T, h, w, 3]; got [${t.shape}]`);
  const cols = Math.max(1, Math.min(Math.ceil(Math.sqrt(T)), Math.floor(4096 / Math.max(tw, 1))));
  const rows = Math.ceil(T / cols);
  const c = document.createElement('canvas');
  c.width = cols * tw; c.height = rows * th;
  const g = c.getContext('2d'), img = g.createImageData(c.width, c.height), px = img.data, d = t.data;
  let lo = 0, hi = 255;
  if (t.dtype !== 'uint8') { lo = Infinity; hi = -Infinity; for (const x of d) if (Number.isFinite(x)) { lo = Math.min(lo, x); hi = Math.max(hi, x); } if (!(hi > lo)) { lo = 0; hi = 1; } }
  const to8 = (x) => (t.dtype === 'uint8' ? x : Math.round(Math.min(1, Math.max(0, ((Number.isFinite(x) ? x : lo) - lo) / (hi - lo))) * 255));
  for (let k = 0; k < T; k++) {
    const r0 = Math.floor(k / cols) * th, c0 = (k % cols) * tw;
    for (let y = 0; y < th; y++) for (let x = 0; x < tw; x++) {
      const o = ((r0 + y) * c.width + c0 + x) * 4, s = ((k * th + y) * tw + x) * ch;
      px[o] = to8(d[s]); px[o + 1] = to8(d[rgb ? s + 1 : s]); px[o + 2] = to8(d[rgb ? s + 2 : s]); px[o + 3] = 255;
    }
  }
  g.putImageData(img, 0, 0);
  return { canvas: c, cols, rows };
}

export class CloudFace {
  /** arrays: positions [N, 2|3] (required), labels, predictions, confidence, thumbnails, thumbnail_index, trails. */
  constructor(meta, arrays, size) {
    const pos = arrays.positions;
    if (!pos || pos.shape.length !== 2 || (pos.shape[1] !== 2 && pos.shape[1] !== 3)) {
      throw new Error(`a latent_cloud blob needs positions [N, 2] or [N, 3]; got ${pos ? `[${pos.shape}]` : 'none'}`);
    }
    [this.n, this.dims] = pos.shape;
    const n = this.n;
    this.size = size;
    this.positions = Float32Array.from(pos.data, (x) => (Number.isFinite(x) ? x : 0));
    const ints = (name) => {
      const a = arrays[name];
      if (!a) return null;
      if (a.data.length !== n) throw new Error(`${name} has ${a.data.length} entries for ${n} points`);
      return Int32Array.from(a.data);
    };
    this.labels = ints('labels') || new Int32Array(n).fill(-1);
    this.predictions = ints('predictions') || this.labels;
    this.atlas = null;
    this.thumbIndex = null;
    const thumbs = arrays.thumbnails;
    if (thumbs) {
      if (thumbs.shape.length !== 3 && thumbs.shape.length !== 4) throw new Error(`thumbnails must be [T, h, w] or [T, h, w, 3]; got [${thumbs.shape}]`);
      const ti = arrays.thumbnail_index;
      if (!ti) {
        if (thumbs.shape[0] !== n) throw new Error(`thumbnails must be one per point (N=${n}) without thumbnail_index; got ${thumbs.shape[0]}`);
        this.thumbIndex = Int32Array.from({ length: n }, (_, i) => i);
      } else {
        if (ti.dtype === 'float32' || ti.dtype === 'float16') throw new Error(`thumbnail_index must be integers; got ${ti.dtype}`);
        const idx = Int32Array.from(ti.data);
        if (idx.length !== n || idx.some((v) => v < -1 || v >= thumbs.shape[0])) throw new Error(`thumbnail_index must be ${n} values in [-1, ${thumbs.shape[0]})`);
        this.thumbIndex = idx;
      }
      this.atlas = atlasOf(thumbs);
      this.atlasTex = new THREE.CanvasTexture(this.atlas.canvas);
      this.atlasTex.colorSpace = THREE.SRGBColorSpace;
    }
    const tr = arrays.trails;
    this.trails = tr && tr.shape.length === 3 && tr.shape[1] === n && tr.shape[2] === this.dims && tr.shape[0] > 0
      ? Float32Array.from(tr.data, (x) => (Number.isFinite(x) ? x : 0)) : null; // trails are decoration: a bad one is dropped
    this.trailFrames = this.trails ? tr.shape[0] : 0;
    this.group = new THREE.Group();
    this.group.add(backdrop(size));
    this.body = null;
    this.thumbs = null;
    this.thumbsShown = 0;
    this.lastLod = 0;
    this.lastViewer = null;
    this.frames = 0;
    this.build();
  }

  /** Centre and span of what is drawn (geometry.fit_unit over the positions and, when there are
   * trails, every trail frame, as the app's CloudView), and the per-axis scale. */
  frame() {
    const { n, dims, positions: p } = this;
    const lo = [Infinity, Infinity, Infinity], hi = [-Infinity, -Infinity, -Infinity];
    const grow = (src, count) => {
      for (let i = 0; i < count; i++) for (let k = 0; k < dims; k++) {
        const x = src[i * dims + k];
        if (!Number.isFinite(x)) continue;
        if (x < lo[k]) lo[k] = x; if (x > hi[k]) hi[k] = x;
      }
    };
    grow(p, n);
    if (this.trails && this.trailFrames > 1) {
      const keep = Math.min(n, MAX_TRAIL_POINTS), per = n * dims;
      for (let t = 0; t < this.trailFrames; t++) grow(this.trails.subarray(t * per), keep);
    }
    const centre = [0, 0, 0];
    let span = 0;
    for (let k = 0; k < dims; k++) {
      if (lo[k] > hi[k]) continue;
      centre[k] = (lo[k] + hi[k]) / 2; span = Math.max(span, hi[k] - lo[k]);
    }
    const [w, h] = this.size;
    return { centre, span: span || 1, scale: [w * 0.9, h * 0.9, Math.min(w, h) * 0.9] };
  }

  /** Data coordinates → panel-local three.js coordinates (the cloud floats in front of the face). */
  place(src, count, f, out = new Float32Array(count * 3)) {
    const { dims } = this;
    for (let i = 0; i < count; i++) {
      for (let k = 0; k < 3; k++) {
        const u = k < dims ? (src[i * dims + k] - f.centre[k]) / f.span : 0;
        out[i * 3 + k] = k === 2 ? u * f.scale[2] + f.scale[2] * 0.5 + 0.02 : u * f.scale[k];
      }
    }
    return out;
  }

  colours() {
    const rgb = new Float32Array(this.n * 3), tmp = new THREE.Color();
    for (let i = 0; i < this.n; i++) {
      srgb(labelColour(this.labels[i]), tmp);
      rgb[i * 3] = tmp.r; rgb[i * 3 + 1] = tmp.g; rgb[i * 3 + 2] = tmp.b;
    }
    return rgb;
  }

  build() {
    if (this.body) { this.group.remove(this.body); disposeTree(this.body); }
    this.thumbs = null; this.lastViewer = null;
    const body = new THREE.Group(), f = this.frame();
    this.local = this.place(this.positions, this.n, f);
    const g = new THREE.BufferGeometry();
    g.setAttribute('position', new THREE.BufferAttribute(this.local, 3));
    g.setAttribute('color', new THREE.BufferAttribute(this.colours(), 3));
    const px = this.n < 3000 ? 5 : this.n < 20000 ? 3 : 2; // the app's point sizes, in pixels
    body.add(new THREE.Points(g, new THREE.PointsMaterial({ size: px, sizeAttenuation: false, vertexColors: true })));
    if (this.trails && this.trailFrames > 1) {
      const t = this.trailFrames, keep = Math.min(this.n, MAX_TRAIL_POINTS), per = this.n * this.dims;
      const frames = [];
      for (let k = 0; k < t; k++) frames.push(this.place(this.trails.subarray(k * per, k * per + keep * this.dims), keep, f));
      const pts = new Float32Array((t - 1) * keep * 6), cols = new Float32Array((t - 1) * keep * 6), tmp = new THREE.Color();
      for (let k = 0; k < t - 1; k++) {
        const a = 60 + ((200 - 60) * k) / Math.max(t - 1, 1), b = 60 + ((200 - 60) * (k + 1)) / Math.max(t - 1, 1);
        for (let i = 0; i < keep; i++) {
          const o = (k * keep + i) * 6;
          pts.set(frames[k].subarray(i * 3, i * 3 + 3), o); pts.set(frames[k + 1].subarray(i * 3, i * 3 + 3), o + 3);
          srgb([a, a, a], tmp); cols.set([tmp.r, tmp.g, tmp.b], o);
          srgb([b, b, b], tmp); cols.set([tmp.r, tmp.g, tmp.b], o + 3);
        }
      }
      const lg = new THREE.BufferGeometry();
      lg.setAttribute('position', new THREE.BufferAttribute(pts, 3));
      lg.setAttribute('color', new THREE.BufferAttribute(cols, 3));
      body.add(new THREE.LineSegments(lg, new THREE.LineBasicMaterial({ vertexColors: true, transparent: true, opacity: 0.8 })));
    }
    this.group.add(body);
    this.body = body;
  }

  /** A stream frame (decoded): new positions and predictions, the trail grown by one. False if it does not fit. */
  moveTo(frame) {
    if (frame.n !== this.n || frame.dims !== this.dims) return false; // another layer or probe: the next blob brings it
    const per = this.n * this.dims;
    const old = this.trails && this.trailFrames ? this.trails : this.positions;
    const oldFrames = this.trails && this.trailFrames ? this.trailFrames : 1;
    const keep = Math.min(oldFrames, TRAIL_FRAMES - 1);
    const next = new Float32Array((keep + 1) * per);
    next.set(old.subarray((oldFrames - keep) * per, oldFrames * per));
    next.set(frame.positions, keep * per);
    this.trails = next; this.trailFrames = keep + 1;
    this.positions = Float32Array.from(frame.positions);
    if (frame.predictions) this.predictions = Int32Array.from(frame.predictions);
    this.frames += 1;
    this.build();
    return true;
  }

  /** Level of detail, as the app's: image quads facing the viewer for the nearest points (within
   * 0.9 m, at most 400) that have an image; dots elsewhere. viewer: panel-local position. True if redrawn. */
  updateThumbnails(viewer, now) {
    if (!this.atlas) return false;
    if (now - this.lastLod < REFRESH_MS) return false;
    if (this.lastViewer && this.lastViewer.distanceTo(viewer) < 0.02) return false;
    this.lastLod = now;
    this.lastViewer = viewer.clone();
    const near = [];
    for (let i = 0; i < this.n; i++) {
      if (this.thumbIndex[i] < 0) continue;
      const dx = this.local[i * 3] - viewer.x, dy = this.local[i * 3 + 1] - viewer.y, dz = this.local[i * 3 + 2] - viewer.z;
      const d2 = dx * dx + dy * dy + dz * dz;
      if (d2 < NEAR * NEAR) near.push([d2, i]);
    }
    near.sort((a, b) => a[0] - b[0]);
    const pick = near.slice(0, MAX_THUMBS).map(([, i]) => i);
    if (this.thumbs) { this.body.remove(this.thumbs); this.thumbs.geometry.dispose(); this.thumbs.material.dispose(); this.thumbs = null; }
    this.thumbsShown = pick.length;
    if (!pick.length) return true;
    const mean = new THREE.Vector3();
    for (const i of pick) mean.add(new THREE.Vector3(this.local[i * 3], this.local[i * 3 + 1], this.local[i * 3 + 2]));
    mean.divideScalar(pick.length);
    const fwd = mean.sub(viewer).normalize();
    const right = new THREE.Vector3(0, 1, 0).cross(fwd).normalize(), up = new THREE.Vector3().crossVectors(fwd, right);
    const side = this.n > 5000 ? 0.01 : 0.014;
    right.multiplyScalar(side); up.multiplyScalar(side);
    const m = pick.length, pos = new Float32Array(m * 12), uv = new Float32Array(m * 8), col = new Float32Array(m * 12), idx = [];
    const { cols, rows } = this.atlas, tmp = new THREE.Color();
    pick.forEach((i, k) => {
      const c = new THREE.Vector3(this.local[i * 3], this.local[i * 3 + 1], this.local[i * 3 + 2]).addScaledVector(fwd, -0.002);
      const corners = [[-1, -1], [1, -1], [1, 1], [-1, 1]];
      corners.forEach(([a, b], j) => {
        pos[k * 12 + j * 3] = c.x + a * right.x + b * up.x;
        pos[k * 12 + j * 3 + 1] = c.y + a * right.y + b * up.y;
        pos[k * 12 + j * 3 + 2] = c.z + a * right.z + b * up.z;
      });
      const t = this.thumbIndex[i], r = Math.floor(t / cols), cc = t % cols;
      const u0 = cc / cols, u1 = (cc + 1) / cols, v1 = 1 - r / rows, v0 = 1 - (r + 1) / rows;
      uv.set([u0, v0, u1, v0, u1, v1, u0, v1], k * 8);
      const lc = labelColour(this.labels[i]).map((x) => Math.min(255, x * 0.6 + 102)); // tinted by class
      srgb(lc, tmp);
      for (let j = 0; j < 4; j++) col.set([tmp.r, tmp.g, tmp.b], k * 12 + j * 3);
      idx.push(k * 4, k * 4 + 1, k * 4 + 2, k * 4, k * 4 + 2, k * 4 + 3);
    });
    const g = new THREE.BufferGeometry();
    g.setAttribute('position', new THREE.BufferAttribute(pos, 3));
    g.setAttribute('uv', new THREE.BufferAttribute(uv, 2));
    g.setAttribute('color', new THREE.BufferAttribute(col, 3));
    g.setIndex(idx);
    this.thumbs = new THREE.Mesh(g, new THREE.MeshBasicMaterial({ map: this.atlasTex, vertexColors: true, side: THREE.DoubleSide }));
    this.body.add(this.thumbs);
    return true;
  }

  summary() {
    return { points: this.n, dims: this.dims, trailFrames: this.trailFrames, thumbsShown: this.thumbsShown,
      hasThumbnails: !!this.atlas, frames: this.frames, first: Array.from(this.positions.subarray(0, this.dims)),
      extent: this.extent() };
  }

  /** Panel-local [x0, y0, x1, y1] of the points and trails (thumbnails aside). */
  extent() {
    const box = new THREE.Box3();
    for (const o of this.body ? this.body.children : []) if (o.geometry && o !== this.thumbs) { o.geometry.computeBoundingBox(); box.union(o.geometry.boundingBox); }
    return box.isEmpty() ? null : [box.min.x, box.min.y, box.max.x, box.max.y];
  }
}

export { VIRIDIS };
