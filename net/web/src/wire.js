// Wire formats of docs/protocol.md, as pure functions: presence poses (§8) and
// content blobs (§10). Everything that comes from the network is checked here
// before anything reads it; a bad blob or batch raises WireError with the reason.

export class WireError extends Error {
  constructor(message) { super(message); this.name = 'WireError'; } // kept through minifying
}

// --- poses (§8) --------------------------------------------------------------------------

const FLAG_SPEAKING = 0x01, FLAG_LEFT = 0x02, FLAG_RIGHT = 0x04, FLAG_POINTER = 0x08;
const MAX_COORD = 10000;

export function poseSize(flags) {
  return 42 + (flags & FLAG_LEFT ? 28 : 0) + (flags & FLAG_RIGHT ? 28 : 0) + (flags & FLAG_POINTER ? 24 : 0);
}

/** One pose as bytes. pose = {seq, head: [x,y,z,qw,qx,qy,qz], speaking?, pointer?: [ox,oy,oz,dx,dy,dz]} */
export function encodePose(pose, sentAt = Date.now() / 1000) {
  let flags = pose.speaking ? FLAG_SPEAKING : 0;
  if (pose.pointer) flags |= FLAG_POINTER;
  const buf = new ArrayBuffer(poseSize(flags));
  const v = new DataView(buf);
  v.setUint8(0, 1);
  v.setUint8(1, flags);
  v.setUint32(2, pose.seq >>> 0, true);
  v.setFloat64(6, sentAt, true);
  let o = 14;
  const put = (vals) => { for (const x of vals) { v.setFloat32(o, clampCoord(x), true); o += 4; } };
  put(pose.head);
  if (pose.pointer) put(pose.pointer);
  return new Uint8Array(buf);
}

/** A compact pose (§8): one binary Engine.IO message — 0xC1, u32 LE batchesRead, the pose bytes. */
export function encodeCompactPose(poseBytes, batchesRead) {
  const out = new Uint8Array(5 + poseBytes.byteLength);
  out[0] = COMPACT_POSE;
  new DataView(out.buffer).setUint32(1, batchesRead >>> 0, true);
  out.set(poseBytes, 5);
  return out;
}

export const COMPACT_POSE = 0xc1;

function clampCoord(x) {
  return Number.isFinite(x) ? Math.max(-MAX_COORD, Math.min(MAX_COORD, x)) : 0;
}

function readPose(v, o) {
  if (o + 42 > v.byteLength) throw new WireError('pose cut short');
  const version = v.getUint8(o);
  if (version !== 1) throw new WireError(`pose version ${version} (expected 1)`);
  const flags = v.getUint8(o + 1);
  if (flags & ~0x0f) throw new WireError(`pose flags ${flags} use unknown bits`);
  const size = poseSize(flags);
  if (o + size > v.byteLength) throw new WireError('pose cut short');
  const seq = v.getUint32(o + 2, true);
  const sentAt = v.getFloat64(o + 6, true);
  let p = o + 14;
  const take = (n) => {
    const out = [];
    for (let i = 0; i < n; i++) {
      const x = v.getFloat32(p, true); p += 4;
      if (!Number.isFinite(x) || Math.abs(x) > MAX_COORD) throw new WireError('pose value not finite or out of range');
      out.push(x);
    }
    return out;
  };
  const pose = { seq, sentAt, speaking: !!(flags & FLAG_SPEAKING), head: take(7), left: null, right: null, pointer: null };
  if (flags & FLAG_LEFT) pose.left = take(7);
  if (flags & FLAG_RIGHT) pose.right = take(7);
  if (flags & FLAG_POINTER) pose.pointer = take(6);
  return [pose, o + size];
}

/** A presence batch → {serverTime, poses: [[participantId, pose], ...]}. */
export function decodeBatch(bytes) {
  const u8 = toU8(bytes);
  const v = new DataView(u8.buffer, u8.byteOffset, u8.byteLength);
  if (u8.byteLength < 11) throw new WireError('pose batch too short');
  if (v.getUint8(0) !== 1) throw new WireError(`pose batch version ${v.getUint8(0)} (expected 1)`);
  const serverTime = v.getFloat64(1, true);
  const count = v.getUint16(9, true);
  const dec = new TextDecoder('utf-8', { fatal: true });
  const poses = [];
  let o = 11;
  for (let i = 0; i < count; i++) {
    if (o >= u8.byteLength) throw new WireError('pose batch cut short');
    const n = v.getUint8(o);
    if (o + 1 + n > u8.byteLength) throw new WireError('pose batch cut short');
    const pid = dec.decode(u8.subarray(o + 1, o + 1 + n));
    const [pose, next] = readPose(v, o + 1 + n);
    poses.push([pid, pose]);
    o = next;
  }
  return { serverTime, poses };
}

/** True if seq is newer than last (u32 counters that wrap). */
export function seqNewer(seq, last) {
  if (last === undefined || last === null) return true;
  const d = (seq - last) >>> 0;
  return d !== 0 && d < 0x80000000;
}

// --- content blobs (§10) ---------------------------------------------------------------

const MAX_HEADER = 8 * 1024 * 1024, MAX_ARRAYS = 64, MAX_DIMS = 6;
const DTYPES = {
  uint8: [1, Uint8Array], int8: [1, Int8Array], int16: [2, Int16Array], int32: [4, Int32Array],
  int64: [8, null], float16: [2, null], float32: [4, Float32Array], bool: [1, Uint8Array],
};

export function toU8(data) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  throw new WireError(`expected bytes, got ${typeof data}`);
}

function halfToFloat(h) {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
  if (e === 0) return s * 2 ** -14 * (f / 1024);
  if (e === 31) return f ? NaN : s * Infinity;
  return s * 2 ** (e - 15) * (1 + f / 1024);
}

/**
 * Decode a DRB1 content blob → {meta, arrays: {name: {dtype, shape, data}}}.
 * `data` is a typed array (Float32Array for float16, Float64Array for int64); every
 * size is checked before anything is read.
 */
export function decodeContent(bytes) {
  const u8 = toU8(bytes);
  if (u8.byteLength < 8 || u8[0] !== 0x44 || u8[1] !== 0x52 || u8[2] !== 0x42 || u8[3] !== 0x31) {
    throw new WireError('not a DeepRoom content blob (bad magic)');
  }
  const v = new DataView(u8.buffer, u8.byteOffset, u8.byteLength);
  const hlen = v.getUint32(4, true);
  if (hlen > MAX_HEADER || 8 + hlen > u8.byteLength) {
    throw new WireError(`content blob header of ${hlen} bytes does not fit a blob of ${u8.byteLength} bytes`);
  }
  let header;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(u8.subarray(8, 8 + hlen)));
  } catch (e) {
    throw new WireError(`content blob header is not JSON: ${e.message}`);
  }
  if (!header || typeof header !== 'object' || Array.isArray(header) || !header.meta || typeof header.meta !== 'object'
      || Array.isArray(header.meta) || !Array.isArray(header.arrays)) {
    throw new WireError("content blob header must hold 'meta' (object) and 'arrays' (list)");
  }
  if (header.arrays.length > MAX_ARRAYS) throw new WireError(`content blob lists more than ${MAX_ARRAYS} arrays`);
  const bodyStart = 8 + hlen, bodyLen = u8.byteLength - bodyStart;
  const arrays = {};
  for (const d of header.arrays) {
    if (!d || typeof d !== 'object') throw new WireError('content blob array entries need name, dtype, shape, offset, nbytes');
    const { name, dtype, shape, offset, nbytes } = d;
    if (typeof name !== 'string' || name.length === 0 || name.length > 128) throw new WireError('content blob array name is not valid');
    if (typeof dtype !== 'string' || !Object.hasOwn(DTYPES, dtype)) throw new WireError(`content blob array ${name}: dtype ${String(dtype).slice(0, 20)} not allowed`);
    if (!Array.isArray(shape) || shape.length > MAX_DIMS || !shape.every((s) => Number.isSafeInteger(s) && s >= 0)) {
      throw new WireError(`content blob array ${name}: bad shape`);
    }
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(nbytes) || nbytes < 0) {
      throw new WireError(`content blob array ${name}: bad offset or size`);
    }
    const [itemsize, Ctor] = DTYPES[dtype];
    const count = shape.reduce((a, b) => a * b, 1);
    if (count * itemsize !== nbytes || offset + nbytes > bodyLen) {
      throw new WireError(`content blob array ${name}: shape [${shape}] does not match its ${nbytes} bytes`);
    }
    const start = u8.byteOffset + bodyStart + offset;
    const copy = u8.buffer.slice(start, start + nbytes); // aligned, and the caller may keep it
    let data;
    if (dtype === 'float16') {
      const h = new Uint16Array(copy);
      data = new Float32Array(count);
      for (let i = 0; i < count; i++) data[i] = halfToFloat(h[i]);
    } else if (dtype === 'int64') {
      const b = new BigInt64Array(copy);
      data = new Float64Array(count);
      for (let i = 0; i < count; i++) data[i] = Number(b[i]);
    } else {
      data = new Ctor(copy);
    }
    arrays[name] = { dtype, shape, data };
  }
  return { meta: header.meta, arrays };
}

/** The (client id → clock) map of a Yjs state vector (varints). */
export function readStateVector(bytes) {
  const u8 = toU8(bytes);
  let o = 0;
  const varint = () => {
    let x = 0, mult = 1;
    for (;;) {
      if (o >= u8.length) throw new WireError('state vector cut short');
      const b = u8[o++];
      x += (b & 0x7f) * mult;
      if (b < 0x80) return x;
      mult *= 128;
    }
  };
  const n = varint(), out = new Map();
  for (let i = 0; i < n; i++) { const c = varint(); out.set(c, varint()); }
  return out;
}
