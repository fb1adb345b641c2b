// Voice in the browser: a WebRTC mesh that speaks the signalling of net/voice
// (docs/protocol.md §11 "signal"): of two participants the smaller id offers, the
// other says "hello"; every offer carries a link number and a newer link replaces
// an older one; candidates travel inside the SDP (we wait for ICE gathering to end).
// What arrives plays through WebAudio, with an analyser per speaker (the tests read
// its peak frequency). Without a microphone the page sends silence, so peers do not
// take the link for a dead one.

import { SfuVoice } from './janus.js';

const KINDS = new Set(['offer', 'answer', 'hello', 'bye', 'sfu', 'ask']);
const LEADS = new Set(['host', 'presenter']);
const MESH_LIMIT = 6;
const MAX_SDP = 64 * 1024;
const CONNECT_TIMEOUT_MS = 8000;

/** A signal payload checked as net/voice/signalling.py checks it, or null. */
export function parseSignal(p) {
  if (!p || typeof p !== 'object' || !KINDS.has(p.voice)) return null;
  if (!Number.isSafeInteger(p.link) || p.link < 0) return null;
  if (p.voice === 'offer' || p.voice === 'answer') {
    if (typeof p.sdp !== 'string' || !p.sdp.startsWith('v=0') || p.sdp.length > MAX_SDP) return null;
  } else if (p.sdp !== undefined) return null;
  if (p.voice === 'sfu' && p.sfu !== undefined && p.sfu !== null && !parseSfuAccess(p.sfu)) return null;
  return p;
}

/** SFU access {url, room, pin} checked as net/voice/signalling.py checks it, or null. */
export function parseSfuAccess(a) {
  if (!a || typeof a !== 'object') return null;
  const { url, room, pin } = a;
  if (typeof url !== 'string' || !/^https?:\/\//.test(url) || url.length > 512) return null;
  if (!Number.isSafeInteger(room) || room <= 0) return null;
  if (typeof pin !== 'string' || pin.length > 128) return null;
  return { url, room, pin };
}

/** "off", "mesh" or "sfu" for the room as it is (net/voice/room.py wanted_mode). */
export function wantedMode(voice, participants) {
  if (voice === 'off' || voice === 'mesh' || voice === 'sfu') return voice;
  return participants > MESH_LIMIT ? 'sfu' : 'mesh';
}

function waitGathered(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === 'complete') { pc.removeEventListener('icegatheringstatechange', done); resolve(); } };
    pc.addEventListener('icegatheringstatechange', done);
    setTimeout(resolve, 3000); // send what we have
  });
}

export class BrowserVoice {
  constructor(conn, { onState, room } = {}) {
    this.conn = conn;
    this.room = room || { roleOf: () => null, voice: () => 'auto', ids: () => [], muted: () => false, mutedAll: () => false };
    this.sfu = null; // SfuVoice while the room's voice goes through the SFU
    this.sfuAccess = null;
    this.lastAsk = 0;
    this.me = conn.pid;
    this.links = new Map(); // pid → {pc, link, made, connected}
    this.speakers = new Map(); // pid → {analyser, source, audio}
    this.peers = new Set();
    this.linkNo = Date.now() * 1000;
    this.asked = new Map();
    this.onState = onState || (() => {});
    this.ctx = null;
    this.local = null;
    this.muted = false;
    this.sfuAnnounced = null;
    this.closed = false;
    this._onEvent = (e) => {
      const ev = e.detail;
      if (ev && ev.kind === 'signal' && typeof ev.sender === 'string') this._signal(ev.sender, ev.payload);
    };
  }

  async start() {
    this.ctx = new AudioContext();
    if (this.ctx.state === 'suspended') { try { await this.ctx.resume(); } catch (_e) { /* resumed on the next click */ } }
    let stream = null, source = 'microphone';
    if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia) {
      try { stream = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true, noiseSuppression: true } }); } catch (_e) { stream = null; }
    }
    if (!stream) { // listen-only: send silence
      const dest = this.ctx.createMediaStreamDestination();
      const gain = this.ctx.createGain(); gain.gain.value = 0;
      const osc = this.ctx.createOscillator(); osc.connect(gain).connect(dest); osc.start();
      stream = dest.stream; source = 'silence (no microphone)';
    }
    this.local = stream;
    this.source = source;
    this.conn.addEventListener('event', this._onEvent);
    this.timer = setInterval(() => this._watch(), 500);
    this.onState(`voice on (${source})`);
  }

  close() {
    this.closed = true;
    clearInterval(this.timer);
    this.conn.removeEventListener('event', this._onEvent);
    for (const pid of [...this.links.keys()]) this._drop(pid, true);
    if (this.sfu) this.sfu.close();
    if (this.local) for (const t of this.local.getTracks()) t.stop();
    if (this.ctx) this.ctx.close();
  }

  setMuted(m) { this.muted = m; this._applyMic(); }

  /** Push-to-talk (members in an SFU room, as the app does): talk while pressed. */
  pressToTalk(on) { this.talkPressed = !!on; this._applyMic(); }

  /** The microphone sends when the user has not muted it, the host has not, and (push-to-talk) talk is held. */
  _applyMic() {
    if (!this.local) return;
    const me = this.me, lead = LEADS.has(this.room.roleOf(me));
    const forced = this.room.muted(me) || (this.room.mutedAll() && !lead);
    this.pushToTalk = wantedMode(this.room.voice(), this.room.ids().length) === 'sfu' && !lead;
    const on = !this.muted && !forced && (!this.pushToTalk || !!this.talkPressed);
    for (const t of this.local.getAudioTracks()) t.enabled = on;
    this.sending = on;
  }

  /** Who else is in the room (call on every room change). */
  setPeers(ids) {
    if (this.closed || !this.local) return;
    const now = new Set(ids.filter((p) => p !== this.me));
    for (const pid of this.peers) if (!now.has(pid)) { this._drop(pid, false); this._unplug(pid); }
    const came = [...now].filter((p) => !this.peers.has(p)).sort();
    this.peers = now;
    if (this.sfu || wantedMode(this.room.voice(), now.size + 1) === 'off') return;
    for (const pid of came) this._greet(pid);
  }

  /** Follow the room's voice mode: off, mesh, or the SFU (asking its coordinator for access). */
  async follow() {
    if (this.closed || !this.local) return;
    const ids = this.room.ids();
    const mode = wantedMode(this.room.voice(), ids.length);
    this._applyMic();
    if (mode === 'off') {
      for (const pid of [...this.links.keys()]) this._drop(pid, false);
      await this.useSfu(null);
      return;
    }
    if (mode === 'mesh' && this.sfu) { await this.useSfu(null); return; }
    if (mode === 'sfu' && !this.sfu && performance.now() - this.lastAsk > 2000) {
      const hosts = ids.filter((p) => this.room.roleOf(p) === 'host').sort();
      if (hosts.length && hosts[0] !== this.me) { this.lastAsk = performance.now(); this._send(hosts[0], { voice: 'ask', link: 0 }); }
    }
  }

  async useSfu(access) {
    if (JSON.stringify(access) === JSON.stringify(this.sfuAccess) && (access === null) === (this.sfu === null)) return;
    const old = this.sfu;
    this.sfuAccess = access;
    if (!access) {
      this.sfu = null;
      if (old) { old.close(); this.onState('voice on direct links'); }
      for (const pid of [...this.peers].sort()) this._greet(pid);
      return;
    }
    const sfu = new SfuVoice(access, this.me, this.local, {
      plug: (pid, stream) => this._plug(pid, stream), unplug: (pid) => this._unplug(pid), onState: this.onState,
    });
    try {
      await sfu.start();
    } catch (e) {
      sfu.close();
      this.sfuAccess = null;
      this.onState(`could not reach the SFU: ${e.message}`);
      return;
    }
    this.sfu = sfu;
    if (old) old.close();
    for (const pid of [...this.links.keys()]) this._drop(pid, false); // make before break
  }

  _greet(pid) {
    if (this.me < pid) this._offer(pid);
    else { this.asked.set(pid, performance.now()); this._send(pid, { voice: 'hello', link: 0 }); }
  }

  _send(to, payload) { return this.conn.event('signal', payload, to); }

  _newLink(pid, link) {
    this._drop(pid, false);
    const pc = new RTCPeerConnection({ iceServers: [] });
    const entry = { pc, link, made: performance.now(), connected: false };
    this.links.set(pid, entry);
    for (const t of this.local.getAudioTracks()) pc.addTrack(t, this.local);
    pc.ontrack = (e) => this._plug(pid, e.streams[0] || new MediaStream([e.track]));
    pc.onconnectionstatechange = () => { entry.connected = pc.connectionState === 'connected'; };
    return entry;
  }

  async _offer(pid) {
    const entry = this._newLink(pid, ++this.linkNo);
    const { pc } = entry;
    await pc.setLocalDescription(await pc.createOffer());
    await waitGathered(pc);
    if (this.links.get(pid) !== entry) return;
    await this._send(pid, { voice: 'offer', link: entry.link, sdp: pc.localDescription.sdp });
  }

  async _answer(pid, msg) {
    const old = this.links.get(pid);
    if (old && old.link >= msg.link) return; // an old or repeated offer
    this.peers.add(pid);
    const entry = this._newLink(pid, msg.link);
    const { pc } = entry;
    await pc.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
    await pc.setLocalDescription(await pc.createAnswer());
    await waitGathered(pc);
    if (this.links.get(pid) !== entry) return;
    await this._send(pid, { voice: 'answer', link: msg.link, sdp: pc.localDescription.sdp });
  }

  async _signal(sender, payload) {
    if (this.closed || !this.local) return;
    const msg = parseSignal(payload);
    if (!msg) return; // others may signal too; bad ones are ignored
    try {
      if (this.sfu && (msg.voice === 'offer' || msg.voice === 'hello')) return; // no direct links in SFU mode
    if (msg.voice === 'offer') await this._answer(sender, msg);
      else if (msg.voice === 'answer') {
        const e = this.links.get(sender);
        if (e && e.link === msg.link && e.pc.signalingState === 'have-local-offer') await e.pc.setRemoteDescription({ type: 'answer', sdp: msg.sdp });
      } else if (msg.voice === 'hello') {
        if (this.me < sender) { this.peers.add(sender); await this._offer(sender); }
      } else if (msg.voice === 'bye') {
        const e = this.links.get(sender);
        if (e && (e.link <= msg.link || msg.link === 0)) this._drop(sender, false);
      } else if (msg.voice === 'sfu') {
        // only a host or presenter hands out SFU access, and only to the SFU the relay announced
        if (!LEADS.has(this.room.roleOf(sender))) return;
        const access = msg.sfu ? parseSfuAccess(msg.sfu) : null;
        const trim = (u) => String(u || '').replace(/\/+$/, '');
        if (access && trim(access.url) !== trim(this.conn.sfuUrl)) {
          this.onState('ignored SFU access to a server this relay did not announce');
          return;
        }
        await this.useSfu(access);
      }
    } catch (e) {
      this.onState(`voice: ${e.message}`);
    }
  }

  _drop(pid, sayBye) {
    const e = this.links.get(pid);
    if (!e) return;
    this.links.delete(pid);
    if (sayBye) this._send(pid, { voice: 'bye', link: e.link });
    try { e.pc.close(); } catch (_e) { /* already closed */ }
  }

  _plug(pid, stream) {
    this._unplug(pid);
    // Chrome plays remote WebRTC audio into WebAudio only while an element holds the stream.
    const audio = new Audio(); audio.muted = true; audio.srcObject = stream; audio.play().catch(() => {});
    const source = this.ctx.createMediaStreamSource(stream);
    const analyser = this.ctx.createAnalyser();
    analyser.fftSize = 8192;
    source.connect(analyser);
    analyser.connect(this.ctx.destination);
    this.speakers.set(pid, { analyser, source, audio, since: performance.now() });
  }

  _unplug(pid) {
    const s = this.speakers.get(pid);
    if (!s) return;
    try { s.source.disconnect(); s.analyser.disconnect(); } catch (_e) { /* gone */ }
    s.audio.srcObject = null;
    this.speakers.delete(pid);
  }

  /** The loudest frequency (Hz) and its level (dB) heard from a participant now. */
  peak(pid) {
    const s = this.speakers.get(pid);
    if (!s) return null;
    const bins = new Float32Array(s.analyser.frequencyBinCount);
    s.analyser.getFloatFrequencyData(bins);
    let best = 1;
    for (let i = 2; i < bins.length; i++) if (bins[i] > bins[best]) best = i;
    return { hz: (best * this.ctx.sampleRate) / s.analyser.fftSize, db: bins[best] };
  }

  /** RMS level (0..1) of what a participant sends now (time domain). */
  level(pid) {
    const s = this.speakers.get(pid);
    if (!s) return 0;
    const t = new Float32Array(s.analyser.fftSize);
    s.analyser.getFloatTimeDomainData(t);
    let acc = 0;
    for (const x of t.subarray(t.length - 480)) acc += x * x; // the last 10 ms
    return Math.sqrt(acc / 480);
  }

  /** Note (epoch ms) each time a participant's audio turns loud after 100 ms of quiet. */
  watchOnsets(pid, threshold = 0.05) {
    this.onsetLog = this.onsetLog || new Map();
    if (this.onsetLog.has(pid)) return true;
    const log = [];
    this.onsetLog.set(pid, log);
    let quietSince = performance.now();
    const s0 = setInterval(() => {
      if (this.closed) { clearInterval(s0); return; }
      const s = this.speakers.get(pid);
      if (!s) return;
      const t = new Float32Array(s.analyser.fftSize); // oldest first: the newest 5 ms are at the end
      s.analyser.getFloatTimeDomainData(t);
      let loud = 0;
      for (let i = t.length - 256; i < t.length; i++) loud = Math.max(loud, Math.abs(t[i]));
      const now = performance.now();
      if (loud > threshold) {
        if (quietSince !== null && now - quietSince >= 100) log.push(performance.timeOrigin + now);
        quietSince = null;
      } else if (quietSince === null) quietSince = now;
    }, 4);
    return true;
  }

  onsets(pid) { return this.onsetLog && this.onsetLog.has(pid) ? this.onsetLog.get(pid).splice(0) : []; }

  _watch() {
    this.follow();
    if (this.sfu) return;
    const now = performance.now();
    for (const pid of [...this.peers].sort()) {
      const e = this.links.get(pid);
      if (e) {
        const st = e.pc.connectionState;
        if (st === 'connected' || (st !== 'failed' && st !== 'closed' && now - e.made < CONNECT_TIMEOUT_MS)) continue;
      } else if (now - (this.asked.get(pid) || 0) < CONNECT_TIMEOUT_MS) continue;
      if (this.me < pid) this._offer(pid);
      else { this._drop(pid, false); this.asked.set(pid, now); this._send(pid, { voice: 'hello', link: 0 }); }
    }
  }
}
