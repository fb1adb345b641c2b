// The page's voice through the SFU: Janus's VideoRoom (audio only) over its plain HTTP
// API, as net/voice/sfu.py does it. One handle publishes our voice (we offer, Janus
// answers); one subscriber handle per other publisher (Janus offers, we answer); the
// display name of each publisher is its participant id. Requests are sent as
// text/plain (no CORS preflight); events come by long-polling the session.

function tx() { return Math.random().toString(36).slice(2, 12); }

function waitGathered(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === 'complete') { pc.removeEventListener('icegatheringstatechange', done); resolve(); } };
    pc.addEventListener('icegatheringstatechange', done);
    setTimeout(resolve, 3000);
  });
}

class JanusSession {
  constructor(url) { this.url = url.replace(/\/+$/, ''); this.id = null; this.waiting = new Map(); this.handlers = new Map(); this.closed = false; }

  async post(path, msg) {
    const body = JSON.stringify({ transaction: tx(), ...msg });
    const base = this.id === null ? this.url : `${this.url}/${this.id}`;
    const r = await fetch(base + path, { method: 'POST', body, headers: { 'Content-Type': 'text/plain' } });
    const reply = await r.json();
    if (!reply || typeof reply !== 'object') throw new Error('Janus sent something that is not an object');
    return reply;
  }

  async open() {
    const reply = await this.post('', { janus: 'create' });
    if (reply.janus !== 'success') throw new Error(`Janus would not create a session: ${JSON.stringify(reply.error || reply)}`);
    this.id = reply.data.id;
    this.poll();
    this.keepalive = setInterval(() => { this.post('', { janus: 'keepalive' }).catch(() => {}); }, 10000);
  }

  async poll() {
    while (!this.closed) {
      let events;
      try {
        const r = await fetch(`${this.url}/${this.id}?maxev=10&rid=${Date.now()}`);
        events = await r.json();
      } catch (_e) { if (!this.closed) this.lost = true; return; }
      for (const ev of Array.isArray(events) ? events : [events]) {
        if (!ev || typeof ev !== 'object') continue;
        const w = ev.transaction && this.waiting.get(ev.transaction);
        if (ev.janus === 'event' && w) { this.waiting.delete(ev.transaction); w(ev); continue; }
        const h = this.handlers.get(ev.sender);
        if (h) h(ev);
      }
    }
  }

  async attach() {
    const reply = await this.post('', { janus: 'attach', plugin: 'janus.plugin.videoroom' });
    if (reply.janus !== 'success') throw new Error('Janus would not attach the VideoRoom');
    return reply.data.id;
  }

  /** An asynchronous plugin request: resolves with its event ({data, jsep}). */
  async message(handle, body, jsep) {
    const id = tx();
    const got = new Promise((resolve, reject) => {
      this.waiting.set(id, resolve);
      setTimeout(() => { if (this.waiting.delete(id)) reject(new Error(`Janus did not answer '${body.request}'`)); }, 10000);
    });
    const msg = { janus: 'message', body, transaction: id };
    if (jsep) msg.jsep = jsep;
    const base = `${this.url}/${this.id}/${handle}`;
    const r = await fetch(base, { method: 'POST', body: JSON.stringify(msg), headers: { 'Content-Type': 'text/plain' } });
    const reply = await r.json();
    let ev = reply;
    if (reply.janus === 'error') { this.waiting.delete(id); throw new Error(`Janus refused '${body.request}': ${JSON.stringify(reply.error)}`); }
    if (reply.janus !== 'event') ev = await got; else this.waiting.delete(id);
    const data = (ev.plugindata && ev.plugindata.data) || {};
    if (data.error_code || (data.videoroom === 'event' && data.error)) throw new Error(`VideoRoom refused '${body.request}': ${data.error} (${data.error_code})`);
    return { data, jsep: ev.jsep || null };
  }

  close() {
    this.closed = true;
    clearInterval(this.keepalive);
    if (this.id !== null) this.post('', { janus: 'destroy' }).catch(() => {});
  }
}

/** Our voice in a Janus VideoRoom: publish `stream`, hear every other publisher through `plug`. */
export class SfuVoice {
  constructor(access, pid, stream, { plug, unplug, onState }) {
    this.access = access; this.pid = pid; this.stream = stream;
    this.plug = plug; this.unplug = unplug; this.onState = onState || (() => {});
    this.subs = new Map(); // feed → {pc, display, handle}
    this.pub = null;
    this.closed = false;
  }

  async start() {
    const { url, room, pin } = this.access;
    const s = new JanusSession(url);
    this.session = s;
    await s.open();
    const handle = await s.attach();
    s.handlers.set(handle, (ev) => this.onPublisherEvent(ev));
    const { data } = await s.message(handle, { request: 'join', ptype: 'publisher', room, pin, display: this.pid });
    if (data.videoroom !== 'joined') throw new Error(`could not join SFU room ${room}`);
    this.feed = data.id;
    const pc = new RTCPeerConnection({ iceServers: [] });
    for (const t of this.stream.getAudioTracks()) pc.addTransceiver(t, { direction: 'sendonly', streams: [this.stream] });
    await pc.setLocalDescription(await pc.createOffer());
    await waitGathered(pc);
    const answer = await s.message(handle, { request: 'configure', audio: true, video: false }, { type: 'offer', sdp: pc.localDescription.sdp });
    if (!answer.jsep) throw new Error('the SFU did not answer our offer');
    await pc.setRemoteDescription(answer.jsep);
    this.pub = pc;
    for (const p of data.publishers || []) this.subscribe(p.id, String(p.display ?? p.id));
    this.onState('voice through the SFU');
  }

  onPublisherEvent(ev) {
    const data = (ev.plugindata && ev.plugindata.data) || {};
    for (const p of data.publishers || []) this.subscribe(p.id, String(p.display ?? p.id));
    const gone = data.unpublished ?? data.leaving;
    if (Number.isSafeInteger(gone)) this.unsubscribe(gone);
  }

  async subscribe(feed, display) {
    if (this.closed || feed === this.feed || this.subs.has(feed) || display === this.pid) return;
    const entry = { pc: null, display };
    this.subs.set(feed, entry);
    const { room, pin } = this.access;
    for (let attempt = 0; attempt < 20 && !this.closed; attempt++) {
      try {
        const handle = await this.session.attach();
        const offer = await this.session.message(handle, { request: 'join', ptype: 'subscriber', room, pin, streams: [{ feed }] });
        if (!offer.jsep) throw new Error(`the SFU offered nothing for feed ${feed}`);
        const pc = new RTCPeerConnection({ iceServers: [] });
        entry.pc = pc;
        pc.ontrack = (e) => this.plug(display, e.streams[0] || new MediaStream([e.track]));
        await pc.setRemoteDescription(offer.jsep);
        await pc.setLocalDescription(await pc.createAnswer());
        await waitGathered(pc);
        await this.session.message(handle, { request: 'start' }, { type: 'answer', sdp: pc.localDescription.sdp });
        return;
      } catch (e) {
        if (!String(e.message).includes('428') || attempt === 19) { this.subs.delete(feed); this.onState(`SFU: ${e.message}`); return; }
        await new Promise((r) => setTimeout(r, 250)); // "no such feed" until the publisher is up
      }
    }
  }

  unsubscribe(feed) {
    const e = this.subs.get(feed);
    if (!e) return;
    this.subs.delete(feed);
    if (e.pc) e.pc.close();
    this.unplug(e.display);
  }

  close() {
    this.closed = true;
    for (const feed of [...this.subs.keys()]) this.unsubscribe(feed);
    if (this.pub) this.pub.close();
    if (this.session) this.session.close();
  }
}
