// Training runs in the room, live — the browser's counterpart of scenes/live_runs.py.
// A `watch()` run sends "stream" events (docs/training.md): `metrics` rows every ~0.25 s,
// `layer_stats`, `status`, `steered`, `error`, and `embedding` / `latent_frame` /
// `filter_embedding` frames that move its cloud. Its full blobs come only every few seconds;
// between them the page appends the deltas to the last blob of the run's metrics panel
// (LiveTable) and repaints it, and swaps a frame's positions into the cloud, growing its
// trail (the last five frames). Only the run itself speaks for its panels: an event from
// anyone but the owner or engine that the run's panels name is dropped. Pure: no three.js.

import { WireError } from './wire.js';
import { frozenOf } from './paint.js';

export const RUN_TYPES = new Set(['metrics', 'layer_stats', 'status', 'steered', 'error', 'embedding',
  'filter_embedding', 'checkpoint_diff', 'latent_frame', 'labelled', 'label_accuracy']);
export const DELTA_TYPES = new Set(['metrics', 'layer_stats', 'status', 'steered']);
export const FRAME_TYPES = new Set(['embedding', 'latent_frame', 'filter_embedding']);
const MAX_ROWS = 20000, MAX_FILTERS = 4096, MAX_POINTS = 200000;
export const TRAIL_FRAMES = 5;
const KEPT_DELTAS = 400; // per run, replayed onto the next blob of its metrics panel

export function isRunEvent(p) {
  return !!p && typeof p === 'object' && typeof p.run === 'string' && RUN_TYPES.has(p.type) && !('channel' in p);
}

const finite = (v) => (typeof v === 'number' && (Number.isFinite(v) || Number.isNaN(v)) ? v : null);

/** A run's metrics blob ({meta, arrays: {name: {dtype, shape, data}}}) that deltas are appended to. */
export class LiveTable {
  constructor(meta, arrays) {
    this.meta = { ...meta };
    this.arrays = {};
    for (const [k, a] of Object.entries(arrays)) this.arrays[k] = { dtype: a.dtype, shape: a.shape, data: a.data };
    const steps = this.arrays.step ? this.arrays.step.data : null;
    this.lastStep = -Infinity;
    if (steps) for (const s of steps) if (Number.isFinite(s) && s > this.lastStep) this.lastStep = s;
  }

  get series() { return (Array.isArray(this.meta.series) ? this.meta.series : []).map(String).filter((n) => this.arrays[n]); }

  _set(name, data) { this.arrays[name] = { dtype: 'float32', shape: [data.length], data }; }

  _column(name, n) {
    const col = this.arrays[name];
    if (!col || col.data.length !== n || !(col.data instanceof Float32Array)) {
      const fresh = new Float32Array(n).fill(NaN);
      if (col) { const k = Math.min(col.data.length, n); for (let i = 0; i < k; i++) fresh[n - k + i] = col.data[col.data.length - k + i]; }
      this._set(name, fresh);
    }
    const series = Array.isArray(this.meta.series) ? [...this.meta.series] : [];
    if (!series.includes(name)) { series.push(name); this.meta.series = series; }
    return this.arrays[name].data;
  }

  /** Append rows ({step, name: value}) newer than the last step; a row for the last step fills it in. */
  addRows(rows) {
    const steps = this.arrays.step ? Float32Array.from(this.arrays.step.data) : new Float32Array(0);
    const nOld = steps.length;
    const newSteps = [], newVals = [];
    let taken = 0;
    for (const row of rows.slice(-2000)) {
      if (!row || typeof row !== 'object' || Array.isArray(row)) continue;
      const step = finite(row.step);
      if (step === null || Number.isNaN(step)) continue;
      const values = {};
      for (const [k, v] of Object.entries(row)) { const f = finite(v); if (k !== 'step' && f !== null) values[k.slice(0, 80)] = f; }
      const last = newSteps.length ? newSteps[newSteps.length - 1] : nOld ? steps[nOld - 1] : -Infinity;
      if (step === last) {
        if (newVals.length) Object.assign(newVals[newVals.length - 1], values);
        else for (const [k, v] of Object.entries(values)) this._column(k, nOld)[nOld - 1] = v;
      } else if (step > last) { newSteps.push(step); newVals.push(values); } else continue;
      taken += 1;
    }
    if (newSteps.length) {
      const names = new Set([...this.series, ...newVals.flatMap((d) => Object.keys(d))]);
      names.delete('step');
      for (const k of names) {
        const col = this._column(k, nOld), out = new Float32Array(nOld + newSteps.length);
        out.set(col); newVals.forEach((d, i) => { out[nOld + i] = k in d ? d[k] : NaN; });
        this._set(k, out);
      }
      const st = new Float32Array(nOld + newSteps.length);
      st.set(steps); st.set(newSteps, nOld);
      this._set('step', st);
      if (st.length > MAX_ROWS) for (const k of ['step', ...this.series]) this._set(k, this.arrays[k].data.slice(-MAX_ROWS));
      this.lastStep = newSteps[newSteps.length - 1];
    }
    return taken;
  }

  /** Per-filter activation/gradient magnitudes ({layer: {act: [...], grad: [...]}}). */
  addLayerStats(layers) {
    if (!layers || typeof layers !== 'object' || Array.isArray(layers)) return 0;
    let taken = 0;
    for (const [name, entry] of Object.entries(layers).slice(0, 200)) {
      if (!entry || typeof entry !== 'object') continue;
      for (const [key, prefix] of [['act', 'filter_act:'], ['grad', 'filter_grad:']]) {
        const v = entry[key];
        if (Array.isArray(v) && v.length > 0 && v.length <= MAX_FILTERS && v.every((x) => finite(x) !== null)) {
          this._set(prefix + name.slice(0, 80), Float32Array.from(v)); taken += 1;
        }
      }
    }
    return taken;
  }

  /** One stream event of the table's run; true when what the panel draws changed. */
  apply(ev) {
    if (ev.type === 'metrics' && Array.isArray(ev.rows)) return this.addRows(ev.rows) > 0;
    if (ev.type === 'layer_stats') return this.addLayerStats(ev.layers) > 0;
    let changed = false;
    if ((ev.type === 'status' && typeof ev.state === 'string') || (ev.type === 'steered' && typeof ev.state === 'string')) {
      const st = ev.state.slice(0, 20);
      if (this.meta.status !== st) { this.meta.status = st; changed = true; }
    }
    if (ev.type === 'steered' && ev.frozen && typeof ev.frozen === 'object') { this.meta.frozen = ev.frozen; changed = true; }
    return changed;
  }
}

function b64(s) {
  if (typeof s !== 'string' || s.length > 4 * MAX_POINTS * 6) throw new WireError('a cloud frame field is not base64 of a sane size');
  let bin;
  try { bin = atob(s); } catch (_e) { throw new WireError('a cloud frame field is not base64'); }
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function half(h) {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
  if (e === 0) return s * 2 ** -14 * (f / 1024);
  if (e === 31) return 0; // NaN and infinities become 0, as the app's nan_to_num
  return s * 2 ** (e - 15) * (1 + f / 1024);
}

/** Positions Float32Array [n*dims] and predictions Int16Array [n] (or null) of a cloud frame event. */
export function decodeFrame(ev) {
  const { n, dims } = ev;
  if (!Number.isInteger(n) || !Number.isInteger(dims) || n <= 0 || n > MAX_POINTS || (dims !== 2 && dims !== 3)) {
    throw new WireError(`a cloud frame needs 0 < n <= ${MAX_POINTS} and dims 2 or 3; got n=${String(n).slice(0, 12)}, dims=${String(dims).slice(0, 12)}`);
  }
  const raw = b64(ev.positions);
  if (raw.length !== n * dims * 2) throw new WireError(`a cloud frame of ${n}x${dims} needs ${n * dims * 2} bytes of positions; got ${raw.length}`);
  const v = new DataView(raw.buffer), pos = new Float32Array(n * dims);
  for (let i = 0; i < n * dims; i++) pos[i] = half(v.getUint16(2 * i, true));
  let preds = null;
  if (typeof ev.predictions === 'string') {
    const p = b64(ev.predictions);
    if (p.length === n * 2) { const pv = new DataView(p.buffer); preds = new Int16Array(n); for (let i = 0; i < n; i++) preds[i] = pv.getInt16(2 * i, true); }
  }
  return { positions: pos, n, dims, predictions: preds };
}

/** "freeze conv1", "set_lr 0.01": a steered event in a few words. */
export function steerText(ev) {
  const cmd = String(ev.cmd ?? '?').slice(0, 24);
  for (const key of ['layer', 'lr', 'name', 'state']) {
    const v = ev[key];
    if (typeof v === 'string' || (typeof v === 'number' && Number.isFinite(v))) {
      return key !== 'state' || !['pause', 'resume', 'stop'].includes(cmd) ? `${cmd} ${String(v).slice(0, 24)}` : cmd;
    }
  }
  return cmd;
}

/** What the page knows of one run: status, frozen layers, who steered last, kept deltas. */
export class RunState {
  constructor(name) {
    this.name = name;
    this.status = '';
    this.frozen = { layers: [], filters: {} };
    this.steeredBy = null;
    this.steered = '';
    this.error = '';
    this.step = null;
    this.deltas = []; // metrics/layer_stats/status/steered events, replayed onto a newer blob
    this.version = 0;
  }

  /** Take one event of this run (already checked for its sender). */
  take(ev, sender) {
    if (ev.type === 'status' && typeof ev.state === 'string' && this.status !== ev.state.slice(0, 20)) {
      this.status = ev.state.slice(0, 20); this.version += 1;
    } else if (ev.type === 'steered') {
      this.steeredBy = typeof ev.by === 'string' ? ev.by : sender;
      this.steered = steerText(ev);
      this.error = '';
      if (ev.frozen && typeof ev.frozen === 'object') {
        // the event says what is frozen now, not what changed: the tag names what did
        const marks = (f) => new Set([...frozenOf(f)[0], ...Object.entries(frozenOf(f)[1]).flatMap(([k, v]) => v.map((i) => `${k}[${i}]`))]);
        const before = marks(this.frozen), after = marks(ev.frozen);
        const changed = [...new Set([...before, ...after])].filter((m) => before.has(m) !== after.has(m)).sort();
        if (changed.length && !('layer' in ev)) this.steered = `${this.steered} ${changed.join(', ').slice(0, 40)}`;
        this.frozen = ev.frozen;
      }
      if (typeof ev.state === 'string') this.status = ev.state.slice(0, 20);
      this.version += 1;
    } else if (ev.type === 'error') {
      this.error = String(ev.message ?? 'error').slice(0, 300); this.version += 1;
    } else if (ev.type === 'metrics' && Array.isArray(ev.rows) && ev.rows.length) {
      const last = ev.rows[ev.rows.length - 1];
      if (last && typeof last.step === 'number') this.step = last.step;
    }
    if (DELTA_TYPES.has(ev.type)) {
      this.deltas.push(ev);
      if (this.deltas.length > KEPT_DELTAS) this.deltas.splice(0, this.deltas.length - KEPT_DELTAS);
    }
  }

  /** The tag above each of the run's panels: "running · Ann: freeze conv1". */
  badge(nameOf) {
    const parts = this.status ? [this.status] : [];
    if (this.steeredBy !== null) parts.push(`${nameOf(this.steeredBy)}: ${this.steered}`);
    return parts.join(' · ').slice(0, 60);
  }
}
