// Panel faces painted on a 2D canvas from decoded content blobs — the browser's
// counterpart of scenes/painting.py, with the same colour maps (scenes/colormap.py),
// so a panel reads the same in the app and in the page. Each painter throws a
// PaintError naming what the blob lacks; the caller shows it as an error card.

export class PaintError extends Error {
  constructor(message) { super(message); this.name = 'PaintError'; }
}

const VIRIDIS_ANCHORS = [[68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
  [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37]];
const DIVERGING_ANCHORS = [[33, 102, 172], [103, 169, 207], [209, 229, 240], [247, 247, 247],
  [253, 219, 199], [239, 138, 98], [178, 24, 43]];
export const LABEL_PALETTE = [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
  [140, 86, 75], [227, 119, 194], [188, 189, 34], [23, 190, 207], [250, 250, 250]];
export const UNLABELLED = [120, 120, 120];

const BACKGROUND = '#181c28', FOREGROUND = '#e6eaf2', MUTED = '#8c94a6', GRID = '#343a4c';
const SERIES = ['#5eb0ff', '#ffa040', '#78dc78', '#f05a6e', '#c88cff', '#fadc5a'];

function table(anchors) {
  const out = new Uint8Array(256 * 3);
  const n = anchors.length - 1;
  for (let i = 0; i < 256; i++) {
    const t = (i / 255) * n, k = Math.min(Math.floor(t), n - 1), f = t - k;
    for (let c = 0; c < 3; c++) out[i * 3 + c] = Math.round(anchors[k][c] * (1 - f) + anchors[k + 1][c] * f);
  }
  return out;
}
export const VIRIDIS = table(VIRIDIS_ANCHORS);
export const DIVERGING = table(DIVERGING_ANCHORS);

function range(data) {
  let lo = Infinity, hi = -Infinity;
  for (let i = 0; i < data.length; i++) { const x = data[i]; if (Number.isFinite(x)) { if (x < lo) lo = x; if (x > hi) hi = x; } }
  if (lo === Infinity) return [0, 1];
  return [lo, hi > lo ? hi : lo + 1];
}

function need(arrays, name, kind) {
  if (!arrays[name]) throw new PaintError(`a ${kind} blob needs an array '${name}'; it has ${Object.keys(arrays).join(', ') || 'none'}`);
  return arrays[name];
}

export function canvasFor(width, height) {
  const c = document.createElement('canvas');
  c.width = Math.max(8, Math.round(width));
  c.height = Math.max(8, Math.round(height));
  const g = c.getContext('2d');
  g.fillStyle = BACKGROUND;
  g.fillRect(0, 0, c.width, c.height);
  return [c, g];
}

function fmt(v) {
  if (!Number.isFinite(v)) return 'nan';
  const a = Math.abs(v);
  if (a >= 1000 || (a > 0 && a < 0.01)) return v.toExponential(2);
  return a < 10 ? v.toFixed(3) : v.toFixed(1);
}

function font(g, px) { g.font = `${Math.max(9, Math.round(px))}px "Liberation Sans", Arial, sans-serif`; }

// One image [H, W] (a map to colour, or grey) or [H, W, C>=3] (RGB) → ImageData.
function mapImage(g, arr, rgb, h, w, how) {
  const img = g.createImageData(w, h);
  const px = img.data, data = arr.data;
  const ch = rgb ? arr.shape[arr.shape.length - 1] : 1;
  const start = how.offset || 0, n = h * w;
  const slice = data.subarray(start, start + n * ch);
  const [lo, hi] = how.range || range(slice);
  const span = hi > lo ? hi - lo : 1;
  const lut = how.grey ? null : how.signed ? DIVERGING : VIRIDIS;
  const m = Math.max(Math.abs(lo), Math.abs(hi)) || 1;
  for (let i = 0; i < n; i++) {
    if (rgb) {
      for (let c = 0; c < 3; c++) {
        const x = slice[i * ch + c];
        px[i * 4 + c] = arr.dtype === 'uint8' ? x : Math.round(Math.min(1, Math.max(0, (x - lo) / span)) * 255);
      }
    } else {
      const x = Number.isFinite(slice[i]) ? slice[i] : 0;
      const t = how.signed ? 0.5 + (0.5 * x) / m : (x - lo) / span;
      const k = Math.min(255, Math.max(0, Math.round(t * 255)));
      if (lut) { px[i * 4] = lut[k * 3]; px[i * 4 + 1] = lut[k * 3 + 1]; px[i * 4 + 2] = lut[k * 3 + 2]; }
      else px[i * 4] = px[i * 4 + 1] = px[i * 4 + 2] = k;
    }
    px[i * 4 + 3] = 255;
  }
  return img;
}

function drawImageData(g, img, x, y, w, h) {
  const tmp = document.createElement('canvas');
  tmp.width = img.width; tmp.height = img.height;
  tmp.getContext('2d').putImageData(img, 0, 0);
  g.imageSmoothingEnabled = false;
  const s = Math.min(w / img.width, h / img.height);
  const dw = img.width * s, dh = img.height * s;
  g.drawImage(tmp, x + (w - dw) / 2, y + (h - dh) / 2, dw, dh);
}

// --- kinds -------------------------------------------------------------------------------------

// --- metrics (a run's: curves, per-layer rows, status chip; scenes/painting.paint_metrics) -------

export const LAYER_STAT_PREFIXES = ['act:', 'grad:', 'filter_act:', 'filter_grad:'];
const MAX_LAYER_ROWS = 12;
const FROZEN_TINT = 'rgb(40,78,110)';
export const FROZEN_COLOUR = [150, 225, 255];
const STATUS_COLOURS = { running: [120, 220, 120], paused: [250, 200, 80], stopped: [240, 90, 110], finished: [140, 148, 166], failed: [240, 90, 110] };

/** The layers a run's metrics blob has per-layer statistics for (its rows, at most 12). */
export function runLayers(meta, arrays) {
  const out = [];
  for (const k of [...Object.keys(arrays), ...(Array.isArray(meta.series) ? meta.series.map(String) : [])]) {
    for (const prefix of LAYER_STAT_PREFIXES) {
      if (k.startsWith(prefix)) { const name = k.slice(prefix.length); if (name && !out.includes(name)) out.push(name); }
    }
  }
  return out.slice(0, MAX_LAYER_ROWS);
}

/** A run's `frozen` ({layers, filters}) as [Set of layers, {layer: [filter, ...]}]; malformed = nothing. */
export function frozenOf(frozen) {
  const layers = new Set(), filters = {};
  if (!frozen || typeof frozen !== 'object' || Array.isArray(frozen)) return [layers, filters];
  if (Array.isArray(frozen.layers)) for (const n of frozen.layers) if (typeof n === 'string') layers.add(n);
  if (frozen.filters && typeof frozen.filters === 'object' && !Array.isArray(frozen.filters)) {
    for (const [k, v] of Object.entries(frozen.filters)) if (Array.isArray(v)) filters[k] = v.filter((i) => Number.isInteger(i));
  }
  return [layers, filters];
}

export function isFrozen(layer, frozen) {
  for (const f of frozen) if (layer === f || layer.startsWith(`${f}.`)) return true;
  return false;
}

function rowsLayout(nLayers, height) {
  const n = Math.min(nLayers, MAX_LAYER_ROWS);
  if (!n) return { curvesBottom: height, top: height, rowH: 0, rows: 0 };
  const part = Math.floor(height * 0.45);
  const rowH = Math.min(part / (n + 1), height / 12);
  const top = Math.floor(height - rowH * n - 4);
  return { curvesBottom: Math.floor(top - rowH), top, rowH, rows: n };
}

function paintLayerRows(g, meta, arrays, layers, lay, width) {
  const [frozen, frozenFilters] = frozenOf(meta.frozen);
  const nameW = Math.floor(width * 0.3), half = Math.floor((width - nameW - 20) / 2);
  g.textBaseline = 'top';
  font(g, lay.rowH * 0.5); g.fillStyle = MUTED;
  g.fillText('layer', 10, lay.curvesBottom + 2);
  g.fillText('activation per filter', nameW + 6, lay.curvesBottom + 2);
  g.fillText('gradient per filter', nameW + 12 + half, lay.curvesBottom + 2);
  layers.slice(0, lay.rows).forEach((layer, i) => {
    const y0 = Math.floor(lay.top + i * lay.rowH), y1 = Math.floor(lay.top + (i + 1) * lay.rowH) - 2;
    const some = frozenFilters[layer] || [];
    let label = isFrozen(layer, frozen) ? `${layer} · frozen` : layer;
    if (some.length && label === layer) {
      const a = arrays[`filter_act:${layer}`] || arrays[`filter_grad:${layer}`];
      const total = a && a.data.length ? a.data.length : null, k = new Set(some).size;
      label = total && k >= total ? `${layer} · frozen` : total ? `${layer} · ${k} of ${total} filters frozen` : `${layer} · ${k} filter${k !== 1 ? 's' : ''} frozen`;
    }
    const whole = label.endsWith(' · frozen');
    if (whole) { g.fillStyle = FROZEN_TINT; g.fillRect(2, y0, width - 5, y1 - y0 + 2); }
    let size = Math.max(9, lay.rowH * 0.55);
    font(g, size);
    while (size > 8 && g.measureText(label).width > nameW - 12) { size -= 1; font(g, size); }
    g.fillStyle = whole || some.length ? 'rgb(200,235,255)' : FOREGROUND;
    g.fillText(label.slice(0, 48), 10, y0 + 1);
    ['filter_act:', 'filter_grad:'].forEach((prefix, j) => {
      let values = arrays[prefix + layer] ? arrays[prefix + layer].data : null;
      if (!values) { const mean = arrays[(j ? 'grad:' : 'act:') + layer]; values = mean && mean.data.length ? mean.data.subarray(mean.data.length - 1) : null; }
      if (!values || !values.length) return;
      let hi = 0;
      for (const v of values) if (Number.isFinite(v) && Math.abs(v) > hi) hi = Math.abs(v);
      const x0 = nameW + 6 + j * (half + 6), cw = half / values.length;
      for (let f = 0; f < values.length; f++) {
        const v = Number.isFinite(values[f]) ? Math.abs(values[f]) : 0;
        const k = Math.min(255, Math.max(0, Math.round((hi > 0 ? v / hi : v) * 255))) * 3;
        g.fillStyle = some.includes(f) ? `rgb(${FROZEN_COLOUR})` : `rgb(${VIRIDIS[k]},${VIRIDIS[k + 1]},${VIRIDIS[k + 2]})`;
        g.fillRect(x0 + Math.floor(f * cw), y0, Math.ceil(cw), Math.max(y1 - y0, 1));
      }
    });
  });
}

function paintMetrics(meta, arrays, W, H) {
  const [c, g] = canvasFor(W, H);
  const xname = String(meta.x || 'step');
  const listed = Array.isArray(meta.series) ? meta.series.map(String) : Object.keys(arrays);
  let names = listed.filter((n) => arrays[n] && n !== xname);
  const layers = xname === 'step' ? runLayers(meta, arrays) : [];
  let height = H;
  if (layers.length) {
    const lay = rowsLayout(layers.length, H);
    names = names.filter((n) => !LAYER_STAT_PREFIXES.some((p) => n.startsWith(p)));
    paintLayerRows(g, meta, arrays, layers, lay, W);
    height = lay.curvesBottom; // the curves and their footer fit above the rows
  }
  const acc = names.filter((n) => n.includes('acc')), rest = names.filter((n) => !n.includes('acc') && n !== 'lr' && n !== 'epoch_time');
  const extra = names.filter((n) => n === 'lr' || n === 'epoch_time');
  const fpx = Math.max(10, Math.floor(height / 24));
  font(g, fpx);
  g.textBaseline = 'alphabetic';
  const plots = [rest, acc].filter((p) => p.length);
  if (!plots.length) { g.fillStyle = MUTED; g.fillText('no series yet', 10, 24); return c; }
  const footer = extra.length ? Math.max(14, Math.floor(height / 14)) : 0;
  const ph = (height - footer) / plots.length;
  const xs = arrays[xname] ? arrays[xname].data : null;
  let ci = 0;
  plots.forEach((group, pi) => {
    const box = [W * 0.1, pi * ph + ph / 8, W - 10, pi * ph + ph - ph / 8];
    g.strokeStyle = GRID; g.lineWidth = 1;
    g.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
    for (let k = 1; k < 4; k++) { const yy = box[1] + ((box[3] - box[1]) * k) / 4; g.beginPath(); g.moveTo(box[0], yy); g.lineTo(box[2], yy); g.stroke(); }
    let lo = 0, hi = 1;
    if (group !== acc) {
      lo = Infinity; hi = -Infinity;
      for (const n of group) { const [a, b] = range(arrays[n].data); lo = Math.min(lo, a); hi = Math.max(hi, b); }
    }
    g.fillStyle = MUTED;
    g.fillText(fmt(hi), 4, box[1] + fpx - 2); g.fillText(fmt(lo), 4, box[3]);
    let legendX = box[0] + 6;
    for (const n of group) {
      const s = arrays[n].data, colour = SERIES[ci++ % SERIES.length];
      const x = xs && xs.length >= s.length ? xs : null;
      const [x0, x1r] = x ? range(x.subarray(0, s.length)) : [0, Math.max(1, s.length - 1)];
      const x1 = x1r > x0 ? x1r : x0 + 1;
      g.strokeStyle = colour; g.lineWidth = Math.max(2, H / 160);
      g.beginPath();
      let started = false, last = null;
      for (let i = 0; i < s.length; i++) {
        if (!Number.isFinite(s[i])) continue;
        last = s[i];
        const xv = x ? x[i] : i;
        const px = box[0] + ((xv - x0) / (x1 - x0)) * (box[2] - box[0]);
        const py = box[3] - ((Math.min(hi, Math.max(lo, s[i])) - lo) / (hi - lo || 1)) * (box[3] - box[1]);
        if (started) g.lineTo(px, py); else { g.moveTo(px, py); started = true; }
      }
      g.stroke();
      const label = `${n} ${last === null ? '-' : fmt(last)}`;
      g.fillStyle = colour; g.fillText(label, legendX, box[1] + fpx + 2);
      legendX += g.measureText(label).width + 12;
    }
  });
  if (extra.length) {
    const parts = extra.map((n) => { const v = arrays[n].data; return `${n} ${v.length ? fmt(v[v.length - 1]) : '-'}`; });
    const steps = xs && xs.length ? `${xname} ${Math.round(xs[xs.length - 1])}` : '';
    g.fillStyle = MUTED; g.fillText([steps, ...parts].join('   '), 10, height - 3);
  }
  const status = meta.status;
  if (typeof status === 'string' && status) {
    const chip = ` ${status.slice(0, 16)} `, tw = g.measureText(chip).width;
    g.fillStyle = `rgb(${STATUS_COLOURS[status] || [140, 148, 166]})`;
    g.fillRect(W - tw - 14, 4, tw + 8, fpx + 4);
    g.fillStyle = 'rgb(10,12,18)'; g.textBaseline = 'top'; g.fillText(chip, W - tw - 10, 5);
  }
  return c;
}

/** [C][3] precision, recall, F1 from the blob's arrays (or its meta lists), or null. */
function classScores(meta, arrays, n) {
  const cols = [];
  for (const name of ['precision', 'recall', 'f1']) {
    const a = arrays[name] ? arrays[name].data : Array.isArray(meta[name]) ? meta[name] : null;
    if (!a || a.length !== n) return null;
    cols.push(Array.from(a, (v) => (Number.isFinite(Number(v)) ? Math.min(1, Math.max(0, Number(v))) : 0)));
  }
  return cols;
}

function viridisOf(t) {
  const idx = Math.min(255, Math.max(0, Math.round(t * 255))) * 3;
  return [VIRIDIS[idx], VIRIDIS[idx + 1], VIRIDIS[idx + 2]];
}

function paintConfusion(meta, arrays, W, H) {
  const m = need(arrays, 'matrix', 'confusion_matrix');
  if (m.shape.length !== 2 || m.shape[0] !== m.shape[1]) throw new PaintError(`confusion matrix must be square [C, C]; got [${m.shape}]`);
  const n = m.shape[0];
  const [c, g] = canvasFor(W, H);
  const scores = classScores(meta, arrays, n);
  const left = W * 0.16, top = H * 0.16, right = W * (scores ? 0.68 : 0.98);
  const cw = (right - left) / Math.max(n, 1), chh = (H * 0.98 - top) / Math.max(n, 1);
  let maxv = 0, diag = 0, total = 0;
  for (const x of m.data) { if (x > maxv) maxv = x; total += Number(x); }
  for (let i = 0; i < n; i++) diag += Number(m.data[i * n + i]);
  font(g, Math.min(cw, chh) * 0.36);
  const names = Array.isArray(meta.labels) ? meta.labels : Array.isArray(meta.classes) ? meta.classes : [];
  g.textAlign = 'center'; g.textBaseline = 'middle';
  for (let r = 0; r < n; r++) {
    for (let k = 0; k < n; k++) {
      const v = Number(m.data[r * n + k]);
      const col = viridisOf(maxv > 0 ? v / maxv : 0);
      g.fillStyle = `rgb(${col})`;
      g.fillRect(left + k * cw, top + r * chh, cw - 1, chh - 1);
      if (n <= 30) {
        const lum = 0.3 * col[0] + 0.59 * col[1] + 0.11 * col[2];
        g.fillStyle = lum > 140 ? '#141414' : '#f0f0f0';
        g.fillText(String(Math.round(v)), left + (k + 0.5) * cw, top + (r + 0.5) * chh);
      }
    }
  }
  const lpx = Math.max(8, Math.min(chh, H * 0.06) * 0.6);
  font(g, lpx);
  g.fillStyle = FOREGROUND;
  if (n <= 40) {
    for (let i = 0; i < n; i++) {
      const lab = String(names[i] ?? i).slice(0, 16);
      g.textAlign = 'right'; g.fillText(lab, left - 6, top + (i + 0.5) * chh);
      g.textAlign = 'center'; g.fillText(lab, left + (i + 0.5) * cw, top - lpx * 0.8);
    }
  }
  if (scores) { // per-class precision, recall, F1: three coloured columns right of the matrix
    const x0 = right + W * 0.02, sw = (W * 0.98 - x0) / 3;
    font(g, Math.max(8, Math.min(chh * 0.5, H * 0.05)));
    ['P', 'R', 'F1'].forEach((head, k) => {
      g.fillStyle = FOREGROUND; g.textAlign = 'center';
      g.fillText(head, x0 + (k + 0.5) * sw, top - lpx * 0.8);
      for (let r = 0; r < n; r++) {
        const v = scores[k][r], col = viridisOf(v);
        g.fillStyle = `rgb(${col})`;
        g.fillRect(x0 + k * sw + 1, top + r * chh, sw - 3, chh - 1);
        if (n <= 30) {
          const lum = 0.3 * col[0] + 0.59 * col[1] + 0.11 * col[2];
          g.fillStyle = lum > 140 ? '#141414' : '#f0f0f0';
          g.fillText(v.toFixed(2), x0 + (k + 0.5) * sw, top + (r + 0.5) * chh);
        }
      }
    });
  }
  g.textAlign = 'left'; g.textBaseline = 'top'; g.fillStyle = MUTED; font(g, lpx);
  g.fillText('rows: true · columns: predicted', 4, 2);
  g.fillText(`acc ${(diag / Math.max(total, 1)).toFixed(3)}`, 4, 2 + lpx * 1.3);
  return c;
}

function tiles(arr, W, H, title, how = {}) {
  const [c, g] = canvasFor(W, H);
  const header = title ? Math.max(14, H / 14) : 0;
  if (title) { font(g, header - 4); g.fillStyle = FOREGROUND; g.textBaseline = 'top'; g.fillText(title, 6, 1); }
  const rgb = arr.shape.length === 4;
  const [n, h, w] = arr.shape;
  if (!n) return c;
  const cols = Math.max(1, Math.ceil(Math.sqrt(n * (W / Math.max(H - header, 1)))));
  const rows = Math.max(1, Math.ceil(n / cols));
  const tw = W / cols, th = (H - header) / rows, pad = Math.max(1, Math.min(tw, th) * 0.06);
  const per = h * w * (rgb ? arr.shape[3] : 1);
  for (let i = 0; i < n; i++) {
    const img = mapImage(g, arr, rgb, h, w, { ...how, offset: i * per });
    const r = Math.floor(i / cols), k = i % cols;
    drawImageData(g, img, k * tw + pad, header + r * th + pad, tw - 2 * pad, th - 2 * pad);
  }
  return c;
}

function paintFeatureMaps(meta, arrays, W, H) {
  const m = need(arrays, 'maps', 'feature_maps');
  if (m.shape.length !== 3) throw new PaintError(`feature maps must be [C, H, W]; got [${m.shape}]`);
  return tiles(m, W, H, `${meta.layer || ''}  (${m.shape[0]} maps)`);
}

function paintFilters(meta, arrays, W, H) {
  const f = need(arrays, 'filters', 'filters');
  if (f.shape.length !== 3 && f.shape.length !== 4) throw new PaintError(`filters must be [N, H, W] or [N, H, W, 3]; got [${f.shape}]`);
  const how = {};
  if (f.shape.length === 3 && typeof meta.min === 'number' && typeof meta.max === 'number') {
    const scaled = new Float32Array(f.data.length);
    for (let i = 0; i < scaled.length; i++) scaled[i] = f.data[i] * (meta.max - meta.min) + meta.min;
    return tiles({ ...f, data: scaled }, W, H, `${meta.layer || ''}  (${f.shape[0]} filters)`, { signed: true });
  }
  return tiles(f, W, H, `${meta.layer || ''}  (${f.shape[0]} filters)`, { ...how, signed: f.shape.length === 3 });
}

function paintAttention(meta, arrays, W, H) {
  const a = need(arrays, 'attention', 'attention');
  if (a.shape.length !== 3) throw new PaintError(`attention must be [heads, T, T]; got [${a.shape}]`);
  return tiles(a, W, H, `${meta.layer || ''}  (${a.shape[0]} heads)`);
}

function imageData(g, a) {
  const s = a.shape;
  if (!(s.length === 2 || (s.length === 3 && (s[2] === 3 || s[2] === 4)))) {
    throw new PaintError(`image must be [H, W] or [H, W, 3]; got [${s}]`);
  }
  if (s.length === 2) return mapImage(g, a, false, s[0], s[1], { grey: true, range: a.dtype === 'uint8' ? [0, 255] : undefined });
  return mapImage(g, a, true, s[0], s[1], {});
}

function paintImage(meta, arrays, W, H) {
  const a = need(arrays, 'image', 'image');
  const [c, g] = canvasFor(W, H);
  drawImageData(g, imageData(g, a), 4, 4, W - 8, H - 8);
  return c;
}

function paintGradCam(meta, arrays, W, H) {
  const a = need(arrays, 'image', 'grad_cam'), cam = need(arrays, 'cam', 'grad_cam');
  if (cam.shape.length !== 2) throw new PaintError(`cam must be [H, W]; got [${cam.shape}]`);
  const [c, g] = canvasFor(W, H);
  const header = Math.max(14, H / 12);
  font(g, header - 4); g.fillStyle = FOREGROUND; g.textBaseline = 'top';
  g.fillText(`${meta.method || 'Grad-CAM'} · ${meta.layer || ''} · target ${meta.target ?? ''}`, 6, 1);
  const half = (W - 12) / 2, side = Math.min(half, H - header - 8);
  drawImageData(g, imageData(g, a), 4, header + 4, half, side);
  drawImageData(g, imageData(g, a), 8 + half, header + 4, half, side);
  g.globalAlpha = 0.55;
  drawImageData(g, mapImage(g, cam, false, cam.shape[0], cam.shape[1], { range: [0, 1] }), 8 + half, header + 4, half, side);
  g.globalAlpha = 1;
  return c;
}

export function paintNote(text, W, H) {
  const [c, g] = canvasFor(W, H);
  g.fillStyle = '#28261e'; g.fillRect(0, 0, c.width, c.height);
  const size = Math.max(12, H / 14);
  font(g, size); g.fillStyle = '#faf0c8'; g.textBaseline = 'top';
  let y = 8;
  for (const line of wrap(g, String(text), W - 20)) {
    if (y > H - size) break;
    g.fillText(line, 10, y); y += size * 1.3;
  }
  return c;
}

function wrap(g, text, width) {
  const out = [];
  for (const para of text.split('\n')) {
    let line = '';
    for (const word of para.split(' ')) {
      const next = line ? `${line} ${word}` : word;
      if (g.measureText(next).width > width && line) { out.push(line); line = word; } else line = next;
    }
    out.push(line);
  }
  return out;
}

/** A card in place of content: an error (red) or a waiting notice (grey). */
export function paintMessage(title, message, W, H, error = true) {
  const [c, g] = canvasFor(W, H);
  g.fillStyle = error ? '#5c181e' : '#242836'; g.fillRect(0, 0, c.width, c.height);
  const size = Math.max(12, H / 12);
  font(g, size); g.textBaseline = 'top'; g.fillStyle = error ? '#ffd2d2' : FOREGROUND;
  g.fillText(title, 12, 10);
  font(g, size * 0.7); g.fillStyle = FOREGROUND;
  let y = 14 + size * 1.5;
  for (const line of wrap(g, message, W - 24).slice(0, 8)) { g.fillText(line, 12, y); y += size * 0.9; }
  return c;
}

export const PAINTERS = {
  metrics: paintMetrics,
  confusion_matrix: paintConfusion,
  feature_maps: paintFeatureMaps,
  filters: paintFilters,
  attention: paintAttention,
  image: paintImage,
  grad_cam: paintGradCam,
  note: (meta, arrays, W, H) => paintNote(meta.text ?? '', W, H),
};
