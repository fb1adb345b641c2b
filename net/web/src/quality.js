// Adaptive render resolution. Where WebGL and compositing run on the CPU (SwiftShader,
// llvmpipe), a frame's cost grows with its pixels, and a socket message that arrives during
// a frame waits for it: a panel move is drawn late. The page measures what each drawn frame
// cost the main thread and lowers the renderer's pixel ratio in steps while frames are slow,
// then raises it again after a stretch of fast frames. `RenderQuality` is the decision alone
// (costs in, scale out: no DOM, no three.js), so the tests can feed it known costs.

/** The scales tried, largest first. The last is the floor: at 0.7 the panel titles of the
 * default view keep 88% of their separate glyph strokes (0.6: 78%, 0.5: 51%, tested on the
 * screenshot), and a frame has half the pixels. */
export const SCALES = [1, 0.85, 0.7];

export const MODES = ['auto', 'full'];

/** The defaults, in ms and frames. */
export const QUALITY_DEFAULTS = {
  slowMs: 50, // a drawn frame over this is slow: a long task, and a move waits behind it
  raiseMs: 40, // raise only when the next scale's predicted cost is under this (hysteresis)
  dropFrames: 8, // drop when the median of this many frames (since the last change) is slow
  raiseFrames: 30, // raise after at least this many frames at the current scale ...
  raiseAfterMs: 2000, // ... and at least this long
  bounceMs: 10000, // a drop this soon after a raise doubles the wait before the next raise
  maxRaiseAfterMs: 32000,
};

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)] : NaN;
}

function quantile(xs, q) {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor(q * s.length))] : NaN;
}

/**
 * Chooses the render scale from the cost of drawn frames.
 *
 * The cost of a frame is taken to grow with its pixels (scale squared). That predicts too
 * little saving on the way down (a part of a frame does not shrink: the next drop follows a
 * few frames later) and too much cost on the way up, so a raise happens only when even that
 * pessimistic prediction stays under `raiseMs` — with `slowMs` above it, no oscillation.
 */
export class RenderQuality {
  constructor(mode = 'auto', options = {}) {
    if (!MODES.includes(mode)) throw new Error(`quality must be one of ${MODES.join(', ')}, got ${JSON.stringify(mode)}`);
    this.o = { ...QUALITY_DEFAULTS, ...options };
    this.mode = mode;
    this.autoScale = 1; // the scale auto mode chose (kept while the mode is full)
    this.costs = []; // ms of the frames drawn since the last change of scale
    this.changedAt = -Infinity;
    this.raisedAt = -Infinity;
    this.raiseAfterMs = this.o.raiseAfterMs;
    this.changes = []; // [ms (page clock), scale, why]
    this.lastCost = null;
    this.pinned = null; // a scale fixed by a test (the legibility check); null: none
  }

  /** The scale to draw at now. */
  get scale() { return this.pinned ?? (this.mode === 'full' ? 1 : this.autoScale); }

  /** Draw at exactly `scale` whatever frames cost (tests: legibility below the floor too);
   * null: back to the mode. */
  pin(scale) {
    if (scale !== null && !(scale >= 0.25 && scale <= 1)) throw new Error(`a pinned scale must be in [0.25, 1], got ${scale}`);
    this.pinned = scale;
    this.costs = [];
  }

  setMode(mode) {
    if (!MODES.includes(mode)) throw new Error(`quality must be one of ${MODES.join(', ')}, got ${JSON.stringify(mode)}`);
    if (mode === this.mode) return false;
    const before = this.scale;
    this.mode = mode;
    this.costs = []; // frames measured at another scale say nothing about this one
    return this.scale !== before;
  }

  /** One drawn frame cost `ms` of main thread; `now` the page clock. True when the scale changed. */
  record(ms, now) {
    if (!Number.isFinite(ms) || ms < 0 || ms > 2000) return false; // a hidden tab, a debugger: not a frame
    this.lastCost = ms;
    if (this.mode !== 'auto' || this.pinned !== null) return false;
    this.costs.push(ms);
    if (this.costs.length > 120) this.costs.splice(0, this.costs.length - 120);
    const o = this.o, cur = this.autoScale, i = SCALES.indexOf(cur);
    const recent = this.costs.slice(-o.dropFrames);
    if (recent.length >= o.dropFrames && i < SCALES.length - 1) {
      const m = median(recent);
      if (m > o.slowMs) {
        // the largest smaller scale predicted under raiseMs, at least one step, at most the floor
        let j = i + 1;
        while (j < SCALES.length - 1 && m * (SCALES[j] / cur) ** 2 > o.raiseMs) j += 1;
        if (now - this.raisedAt < o.bounceMs) this.raiseAfterMs = Math.min(this.raiseAfterMs * 2, o.maxRaiseAfterMs);
        return this.change(SCALES[j], now, `median ${m.toFixed(1)} ms of ${recent.length} frames`);
      }
    }
    if (i > 0 && this.costs.length >= o.raiseFrames && now - this.changedAt >= this.raiseAfterMs) {
      const p90 = quantile(this.costs.slice(-o.raiseFrames), 0.9);
      const up = SCALES[i - 1];
      if (p90 * (up / cur) ** 2 <= o.raiseMs) {
        this.raisedAt = now;
        return this.change(up, now, `p90 ${p90.toFixed(1)} ms of ${o.raiseFrames} frames`);
      }
    }
    if (now - this.changedAt > 30000) this.raiseAfterMs = o.raiseAfterMs; // stable a while: patient again
    return false;
  }

  change(scale, now, why) {
    this.autoScale = scale;
    this.costs = [];
    this.changedAt = now;
    this.changes.push([Math.round(now), scale, why]);
    if (this.changes.length > 200) this.changes.splice(0, 100);
    return true;
  }

  summary() {
    return { mode: this.mode, pinned: this.pinned, scale: this.scale, autoScale: this.autoScale, lastCostMs: this.lastCost,
      medianCostMs: this.costs.length ? median(this.costs.slice(-this.o.dropFrames)) : null,
      raiseAfterMs: this.raiseAfterMs, changes: this.changes.map((c) => [...c]) };
  }
}

/** `?quality=` → a mode; anything else is refused with what is allowed. */
export function qualityFromParam(value) {
  if (value === null || value === undefined || value === '') return { mode: 'auto', error: null };
  const v = String(value).toLowerCase();
  if (MODES.includes(v)) return { mode: v, error: null };
  return { mode: 'auto', error: `quality must be full or auto, got ${JSON.stringify(String(value).slice(0, 40))}; drawing with auto` };
}

/** What the top bar says: "Res 70% auto". */
export function qualityLabel(q) {
  return `Res ${Math.round(q.scale * 100)}% ${q.pinned !== null ? 'pinned' : q.mode}`;
}
