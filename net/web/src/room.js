// The page's room connection: docs/protocol.md, implemented for the browser.
// Socket.IO over websocket only; join with a generated id and key (kept in
// localStorage per relay and room); the room is a Y.Doc the page never writes —
// it changes only through `op` messages and applies only the relay's updates.
// Poses are decoded, deduplicated by seq and confirmed with `pa`. When the relay
// goes away, socket.io-client reconnects with backoff; each new connection joins
// again with the document's state vector and resends unacknowledged ops.

import { io } from 'socket.io-client';
import * as Y from 'yjs';
import { decodeBatch, encodeCompactPose, encodePose, readStateVector, seqNewer, toU8 } from './wire.js';
import { sha256hex } from './sha256.js';

const CHUNK = 256 * 1024;
const STALE_POSE_S = 2.0;
const MAX_BLOB = 256 * 2 ** 20; // a browser tab's memory is not a relay's

function randomTag(bytes) {
  const a = new Uint8Array(bytes);
  crypto.getRandomValues(a);
  return Array.from(a, (x) => x.toString(16).padStart(2, '0')).join('');
}

/** The id and key this browser uses in a room (made once, kept in localStorage). */
export function identity(relay, room, wantedId) {
  const slot = `deeproom:${relay}:${room}:${wantedId || ''}`;
  try {
    const kept = JSON.parse(localStorage.getItem(slot) || 'null');
    if (kept && typeof kept.pid === 'string' && typeof kept.key === 'string') return kept;
  } catch (_e) { /* a broken entry is replaced */ }
  const made = { pid: wantedId || `web-${randomTag(4)}`, key: randomTag(24) };
  try { localStorage.setItem(slot, JSON.stringify(made)); } catch (_e) { /* private mode: this visit only */ }
  return made;
}

export class RoomConnection extends EventTarget {
  constructor({ url, room, name, pid, key, colour, invite, password, askRole }) {
    super();
    this.url = url; this.room = room; this.name = name; this.pid = pid; this.key = key;
    this.colour = colour; this.invite = invite || null; this.password = password || null;
    // without an invite, ask the relay for 'viewer' (a join's role can only lower, never raise)
    this.askRole = askRole === undefined ? (this.invite ? null : 'viewer') : askRole;
    this.doc = new Y.Doc();
    this.role = null;
    this.sfuUrl = null;
    this.joined = false;
    this.final = null; // a refusal that ends retrying
    this.tickHz = 30;
    this.compactPose = false; // the relay takes compact poses (its join ack says so)
    this.batchesRead = 0;
    this.lastPa = 0;
    this.seq = 0;
    this.lastSeq = new Map();
    this.poses = new Map(); // pid → {pose, at}
    this.pending = new Map(); // op id → op, in send order
    this.counter = 0;
    this.runTag = randomTag(4);
    this.blobs = new Map(); // sha → Promise<Uint8Array>
    this.socket = null;
  }

  start() {
    this.socket = io(this.url, {
      transports: ['websocket'], reconnectionDelay: 200, reconnectionDelayMax: 5000, randomizationFactor: 0.5,
    });
    const s = this.socket;
    s.on('connect', () => this._join());
    s.on('disconnect', (reason) => {
      this.joined = false;
      this.batchesRead = 0; this.lastPa = 0;
      this._emit('status', { connected: false, reason });
    });
    s.on('connect_error', (err) => this._emit('status', { connected: false, reason: err.message }));
    s.on('update', (u) => this._apply(u));
    s.on('poses', (b) => this._onPoses(b));
    s.on('event', (e) => this._emit('event', e));
    s.on('error', (e) => this._emit('refused', e));
    s.on('kicked', (e) => { this.final = (e && e.message) || 'removed by the host'; s.disconnect(); this._emit('final', { message: this.final }); });
  }

  close() { if (this.socket) this.socket.disconnect(); }

  _emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }

  _apply(update) {
    try { Y.applyUpdate(this.doc, toU8(update), 'relay'); } catch (e) { this._emit('refused', { type: 'ProtocolError', message: `bad update from the relay: ${e.message}` }); }
  }

  async _join() {
    const msg = { room: this.room, name: this.name, participant_id: this.pid, key: this.key, colour: this.colour };
    if (this.invite) msg.invite = this.invite;
    if (this.password) msg.password = this.password;
    if (this.askRole) msg.role = this.askRole;
    const first = this.doc.store.clients.size === 0;
    if (!first) msg.sv = Y.encodeStateVector(this.doc);
    const ack = await this._ack('join', msg, 15000);
    if (!ack || !ack.ok) {
      const err = (ack && ack.error) || { type: 'NetError', message: 'no answer to join' };
      if (err.type === 'JoinRefused') { this.final = err.message; this.socket.disconnect(); this._emit('final', err); }
      else this._emit('refused', err);
      return;
    }
    if (!first) this._checkLost(ack.sv);
    this._apply(ack.update);
    this.role = ack.role;
    // the relay's SFU (if it has one): the only SFU the page's voice will talk to
    this.sfuUrl = typeof ack.sfu === 'string' && /^https?:\/\//.test(ack.sfu) && ack.sfu.length <= 2048 ? ack.sfu : null;
    this.tickHz = ack.tick_hz || 30;
    this.compactPose = ack.compact_pose === true;
    this.joined = true;
    for (const ev of ack.streams || []) this._emit('event', ev);
    this._emit('status', { connected: true, role: this.role });
    for (const [id, op] of [...this.pending]) this._sendOp(id, op); // resend, same ids, in order
  }

  _checkLost(relaySv) {
    try {
      const mine = Y.decodeStateVector(Y.encodeStateVector(this.doc)), theirs = readStateVector(relaySv);
      for (const [client, clock] of mine) {
        if (clock > (theirs.get(client) || 0)) { this._emit('refused', { type: 'NetError', message: 'the relay lost changes you had seen (restored from a backup)' }); return; }
      }
    } catch (_e) { /* the relay's sv is checked only to warn */ }
  }

  _ack(event, data, timeout = 10000) {
    return new Promise((resolve) => {
      if (!this.socket || !this.socket.connected) { resolve({ ok: false, error: { type: 'NetError', message: 'not connected to the relay' } }); return; }
      this.socket.timeout(timeout).emit(event, data, (err, ack) => resolve(err ? { ok: false, error: { type: 'NetError', message: `no answer from the relay (${event})` } } : ack));
    });
  }

  /** Send an operation; resolves with the ack ({ok, ...} or {ok:false, error}). */
  op(op) {
    const id = `${this.pid}:${this.runTag}:${++this.counter}`;
    this.pending.set(id, op);
    return this._sendOp(id, op);
  }

  async _sendOp(id, op) {
    if (!this.joined) return { ok: false, error: { type: 'NetError', message: 'not in the room yet; it will be sent on reconnect' } };
    const ack = await this._ack('op', { id, op });
    if (ack && ack.error && ack.error.type === 'NetError') return ack; // kept for the resend
    this.pending.delete(id);
    if (ack && ack.ok && ack.update) this._apply(ack.update);
    if (ack && ack.ok && ack.duplicate) this.sync();
    if (ack && !ack.ok) this._emit('refused', ack.error);
    return ack;
  }

  async sync() {
    const ack = await this._ack('sync', { sv: Y.encodeStateVector(this.doc) });
    if (ack && ack.ok) this._apply(ack.update);
  }

  event(kind, payload, to) {
    const msg = { kind, payload };
    if (to) msg.to = to;
    return this._ack('event', msg);
  }

  sendPose(head, pointer, speaking) {
    if (!this.joined) return;
    this.seq = (this.seq + 1) >>> 0;
    const pose = encodePose({ seq: this.seq, head, pointer, speaking });
    const engine = this.socket.io.engine;
    if (this.compactPose && engine) {
      // one binary Engine.IO message, no Socket.IO packet (docs/protocol.md §8): the socket.io-client
      // engine sends an ArrayBuffer/Uint8Array given to write() as one binary websocket frame
      engine.write(encodeCompactPose(pose, this.batchesRead));
    } else {
      this.socket.emit('pose', pose, this.batchesRead); // a relay without compact poses
    }
    this.lastPa = this.batchesRead;
  }

  _onPoses(bytes) {
    this.batchesRead += 1;
    const now = performance.now();
    if (this.batchesRead - this.lastPa >= 3 && this.joined) { this.socket.emit('pa', this.batchesRead); this.lastPa = this.batchesRead; }
    let batch;
    try { batch = decodeBatch(bytes); } catch (e) { this._emit('refused', { type: 'ProtocolError', message: `bad pose batch: ${e.message}` }); return; }
    const fresh = [];
    for (const [pid, pose] of batch.poses) {
      if (pid === this.pid) continue;
      if (!seqNewer(pose.seq, this.lastSeq.get(pid))) continue;
      this.lastSeq.set(pid, pose.seq);
      this.poses.set(pid, { pose, at: now });
      fresh.push(pid);
    }
    for (const [pid, p] of this.poses) if (now - p.at > STALE_POSE_S * 1000) { this.poses.delete(pid); this.lastSeq.delete(pid); }
    if (fresh.length) this._emit('poses', { fresh, serverTime: batch.serverTime });
  }

  /** A blob's bytes, fetched in chunks and checked against its sha256 (cached by sha). */
  blob(sha) {
    if (!/^[0-9a-f]{64}$/.test(sha)) return Promise.reject(new Error(`not a blob id: ${String(sha).slice(0, 80)}`));
    let p = this.blobs.get(sha);
    if (!p) {
      p = this._fetchBlob(sha);
      this.blobs.set(sha, p);
      p.catch(() => this.blobs.delete(sha));
    }
    return p;
  }

  /** Forget cached blobs no panel refers to any more (a training run publishes new ones often). */
  keepBlobs(shas) {
    for (const sha of [...this.blobs.keys()]) if (!shas.has(sha)) this.blobs.delete(sha);
  }

  async _fetchBlob(sha) {
    const parts = [];
    let offset = 0, size = null;
    while (size === null || offset < size) {
      const ack = await this._ack('blob_get', { sha, offset, length: CHUNK }, 30000);
      if (!ack || !ack.ok) throw new Error((ack && ack.error && ack.error.message) || 'blob fetch failed');
      const data = toU8(ack.data);
      size = ack.size;
      if (typeof size !== 'number' || size < 0) throw new Error('blob size out of range');
      if (size > MAX_BLOB) throw new Error(`blob of ${Math.round(size / 2 ** 20)} MiB is more than the page shows (${MAX_BLOB / 2 ** 20} MiB)`);
      if (!data.length && offset < size) throw new Error('blob ended early');
      parts.push(data);
      offset += data.length;
    }
    const out = new Uint8Array(offset);
    let o = 0;
    for (const p of parts) { out.set(p, o); o += p.length; }
    const got = await sha256hex(out);
    if (got !== sha) throw new Error(`blob ${sha.slice(0, 12)}… does not match its sha256`);
    return out;
  }
}
