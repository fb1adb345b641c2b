// The page: what is missing (no WebGL 2 or WebRTC: a clear page), the landing form,
// and the room — joined through RoomConnection, drawn by RoomScene, with raise hand,
// drag to move (when the role allows), follow-me, summon, voice and Enter VR.
// `window.deeproom` exposes the page's state to the tests and the benchmark.

import { RoomConnection, identity } from './room.js';
import { RoomScene, fromThreePos } from './scene.js';
import { BrowserVoice, parseSignal } from './voice.js';
import { decodeBatch, decodeContent, encodePose, seqNewer } from './wire.js';
import { DELTA_TYPES, FRAME_TYPES, LiveTable, RunState, decodeFrame, isRunEvent } from './live.js';
import { frozenOf } from './paint.js';
import { RenderQuality, SCALES, qualityFromParam, qualityLabel } from './quality.js';
import { XRInput } from './xrinput.js';
import * as THREE from 'three';

const EDIT_ROLES = new Set(['host', 'presenter', 'member']);
const LEADS = new Set(['host', 'presenter']);
const ID_RE = /^[A-Za-z0-9_.:-]{1,64}$/;
const XR_FEATURES = ['local-floor', 'bounded-floor']; // optional: the session starts without them too

export function missingFeatures() {
  const missing = [];
  let gl = null;
  try { gl = document.createElement('canvas').getContext('webgl2'); } catch (_e) { gl = null; }
  if (!gl) missing.push('WebGL 2 (to draw the room in 3D)');
  if (typeof RTCPeerConnection !== 'function') missing.push('WebRTC (to talk with the others)');
  if (typeof WebSocket !== 'function') missing.push('WebSocket (to reach the relay)');
  return missing;
}

function $(sel) { return document.querySelector(sel); }
function setText(el, text) { if (el.textContent !== text) el.textContent = text; } // no relayout when unchanged

function showMissing(missing) {
  document.body.innerHTML = '';
  const box = document.createElement('div');
  box.id = 'missing';
  box.className = 'card';
  const h = document.createElement('h1');
  h.textContent = 'This browser cannot open a DeepRoom room';
  const p = document.createElement('p');
  p.textContent = 'It lacks:';
  const ul = document.createElement('ul');
  for (const m of missing) { const li = document.createElement('li'); li.textContent = m; ul.appendChild(li); }
  const tip = document.createElement('p');
  tip.textContent = 'Use a current Chrome, Edge, Firefox or Safari with hardware acceleration on, or the DeepRoom app (pip install deeproom).';
  box.append(h, p, ul, tip);
  document.body.appendChild(box);
  window.deeproom = { missing };
}

/** deeproom://HOST:PORT/ROOM?invite=T (or an http link) → the page's own /r/ROOM?invite=T */
export function pageLink(link) {
  const m = /^(?:deeproom|https?):\/\/[^/]+\/(?:r\/)?([A-Za-z0-9_.:-]{1,64})(\?.*)?$/.exec(String(link).trim());
  if (!m) return null;
  return `/r/${m[1]}${m[2] || ''}`;
}

function showLanding() {
  $('#landing').hidden = false;
  $('#landing form').addEventListener('submit', (e) => {
    e.preventDefault();
    const v = $('#landing input[name=room]').value.trim();
    const target = ID_RE.test(v) ? `/r/${v}` : pageLink(v);
    if (target) window.location.href = target;
    else $('#landing .error').textContent = 'A room name is 1–64 letters, digits, _ . : -; or paste a deeproom:// invite link.';
  });
}

function randomColour() {
  const a = new Uint8Array(3); crypto.getRandomValues(a);
  return `#${Array.from(a, (x) => (64 + (x % 160)).toString(16).padStart(2, '0')).join('')}`;
}

class Page {
  constructor(roomId, params) {
    this.roomId = roomId;
    this.params = params;
    const relay = window.location.origin;
    const wanted = params.get('id');
    const who = identity(relay, roomId, wanted && ID_RE.test(wanted) ? wanted : null);
    let name = params.get('name') || localStorage.getItem('deeproom:name') || `Guest ${who.pid.slice(-4)}`;
    name = name.replace(/[\u0000-\u001f\u007f]/g, ' ').trim().slice(0, 64) || 'Guest';
    this.invited = params.has('invite');
    this.conn = new RoomConnection({
      url: relay, room: roomId, name, pid: who.pid, key: who.key,
      colour: localStorage.getItem('deeproom:colour') || randomColour(),
      invite: params.get('invite'), password: params.get('password'),
      askRole: params.get('edit') === '1' ? null : undefined, // viewer unless invited or edit=1
    });
    this.scene = new RoomScene($('#stage'));
    this.drawn = new Map(); // panel id → key of what is drawn
    this.dirty = true;
    this.peopleDirty = true;
    this.pendingMoves = []; // [panel id, x] placed since the last frame: stamped when it is drawn
    this.drag = null;
    this.voice = null;
    this.keys = new Set();
    this.continuous = params.get('continuous') === '1'; // draw every frame (the benchmark's fps)
    this.redraw = true;
    this.drawReasons = { continuous: 0, content: 0, room: 0, poses: 0, input: 0, follow: 0 };
    this.stats = { joinedAt: null, started: performance.now(), allDrawnAt: null, fpsFrames: 0 };
    this.moveSeen = new Map(); // panel id → epoch ms when its drawn transform last changed
    this.docLog = []; // [panel id, x, epoch ms] per transform change applied to the document
    this.moveLog = []; // [panel id, x, epoch ms] per drawn change (the benchmark matches its moves)
    this.renderMs = []; // main-thread ms of each render call (the benchmark's diagnostics)
    this.runs = new Map(); // run name → RunState (live training, from "stream" events)
    this.liveLog = []; // [panel id, step, arrived epoch ms, drawn epoch ms]: a run's delta on the pixels
    this.pendingLive = []; // [panel id, step, arrived epoch ms] painted but not yet drawn
    this.streamsDropped = 0; // stream events from someone who does not speak for the run
    const q = qualityFromParam(params.get('quality'));
    this.qualityError = q.error;
    this.quality = new RenderQuality(q.mode); // the render scale, from what drawn frames cost
    this.drawStart = null; // performance.now() when the last drawn frame began (its cost ends at the next frame)
    this.burnPerMegapixel = 0; // test hook: main-thread ms burnt per frame per million drawn pixels
  }

  start() {
    const c = this.conn;
    c.addEventListener('status', (e) => this.onStatus(e.detail));
    c.addEventListener('final', (e) => this.banner(`Cannot join: ${e.detail.message}`, true));
    c.addEventListener('refused', (e) => this.toast(e.detail && e.detail.message ? e.detail.message : 'refused'));
    c.addEventListener('poses', () => { this.dirtyAvatars = true; });
    c.addEventListener('event', (e) => this.onEvent(e.detail));
    c.doc.on('update', () => { this.dirty = true; });
    // The people list and voice follow participants and settings only: rebuilding that DOM on
    // every panel move cost a style, layout and paint of the overlay per move.
    c.doc.getMap('participants').observeDeep(() => { this.peopleDirty = true; });
    c.doc.getMap('settings').observeDeep(() => { this.peopleDirty = true; });
    c.doc.getMap('panels').observeDeep((events) => { // when moves arrive (before any frame draws them)
      const at = performance.timeOrigin + performance.now();
      for (const ev of events) {
        if (ev.path.length !== 1 || !ev.keysChanged || !ev.keysChanged.has('transform')) continue;
        const t = ev.target.get('transform');
        if (t && Array.isArray(t.position)) this.docLog.push([ev.path[0], t.position[0], at]);
      }
      if (this.docLog.length > 2000) this.docLog.splice(0, 1000);
    });
    c.start();
    this.bindInput();
    this.bindButtons();
    this.xrInput = new XRInput(this.scene, { // controllers in an immersive session (lasers, trigger)
      canEdit: () => this.canEdit(),
      click: (hit, local) => this.click(hit, local),
      move: (id) => this.sendMove(id).then(() => { this.dirty = true; }),
    });
    // In XR, three.js drives this from XRSession.requestAnimationFrame and passes the XRFrame.
    this.scene.renderer.setAnimationLoop((time, xrFrame) => { if (xrFrame) this.xrFrames = (this.xrFrames || 0) + 1; this.frame(); });
    setInterval(() => this.sendPose(), 33);
  }

  role() { return this.conn.role; }

  canEdit() {
    const role = this.role();
    if (!EDIT_ROLES.has(role)) return false;
    if (role === 'member' && !this.invited && this.params.get('edit') !== '1') return false; // viewer by default
    const locked = this.conn.doc.getMap('settings').get('layout_locked');
    return !locked || LEADS.has(role);
  }

  onStatus(s) {
    if (s.connected) {
      if (!this.stats.joinedAt) this.stats.joinedAt = performance.now();
      this.banner(null);
      $('#role').textContent = `${this.role()}${this.role() === 'member' && !this.canEdit() ? ' (view only)' : ''}`;
      this.dirty = true;
      this.peopleDirty = true;
      if (this.params.get('voice') === '1' && !this.voice) this.startVoice();
    } else if (!this.conn.final) {
      this.banner(`Connection to the relay lost (${s.reason || 'gone'}); reconnecting…`, false);
    }
  }

  banner(text, final) {
    const b = $('#banner');
    b.hidden = !text;
    b.textContent = text || '';
    b.className = final ? 'final' : '';
  }

  toast(text) {
    const t = $('#toast');
    t.textContent = String(text).slice(0, 300);
    t.hidden = false;
    clearTimeout(this.toastTimer);
    this.toastTimer = setTimeout(() => { t.hidden = true; }, 5000);
  }

  onEvent(ev) {
    if (!ev || typeof ev !== 'object') return;
    if (ev.kind === 'stream' && isRunEvent(ev.payload)) { this.onStream(String(ev.sender), ev.payload); return; }
    if (ev.kind === 'summon') {
      const p = ev.payload || {};
      const pos = p.position;
      if (Array.isArray(pos) && pos.length === 3 && pos.every((v) => typeof v === 'number' && Number.isFinite(v) && Math.abs(v) < 1000)) {
        this.scene.teleport(pos, typeof p.yaw === 'number' && Number.isFinite(p.yaw) ? p.yaw : undefined);
        this.toast(`${this.nameOf(ev.sender)} summoned you`);
      }
    }
  }

  // --- training runs, live (scenes/live_runs.py) -------------------------------------------

  /** Panels whose source names `run`: [id, Y.Map] pairs. */
  panelsOf(run) {
    const out = [];
    for (const [id, p] of this.conn.doc.getMap('panels')) {
      const src = p && p.get && p.get('content') && p.get('content').source;
      if (src && src.run === run) out.push([id, p]);
    }
    return out;
  }

  /** Who may send a run's stream events: the owner and engine its panels' sources name. */
  speakersFor(run) {
    const out = new Set();
    for (const [, p] of this.panelsOf(run)) {
      const src = p.get('content').source;
      for (const x of [src.owner, src.engine, p.get('owner')]) if (typeof x === 'string') out.add(x);
    }
    return out;
  }

  run(name) {
    let st = this.runs.get(name);
    if (!st) { st = new RunState(name); this.runs.set(name, st); }
    return st;
  }

  onStream(sender, ev) {
    const name = ev.run.slice(0, 64);
    if (!this.speakersFor(name).has(sender)) { this.streamsDropped += 1; return; } // only the run speaks for its panels
    const st = this.run(name);
    const version = st.version;
    st.take(ev, sender);
    const arrived = performance.timeOrigin + performance.now();
    if (DELTA_TYPES.has(ev.type)) {
      for (const [id] of this.panelsOf(name)) {
        const view = this.scene.panels.get(id);
        if (!view || !view.table || !view.table.apply(ev)) continue;
        this.scene.repaint(view, 'metrics', view.table.meta, view.table.arrays);
        if (ev.type === 'metrics') this.pendingLive.push([id, view.table.lastStep, arrived]);
        this.redraw = true;
      }
    }
    if (FRAME_TYPES.has(ev.type)) {
      let frame;
      try { frame = decodeFrame(ev); } catch (e) { console.warn(`run ${name}: ${e.message}`); return; }
      const what = ev.type === 'filter_embedding' ? ['filter_embedding'] : ['latent_cloud', undefined, null];
      for (const [id, p] of this.panelsOf(name)) {
        const view = this.scene.panels.get(id);
        if (view && view.cloud && what.includes(p.get('content').source.what) && view.cloud.moveTo(frame)) {
          view.framesApplied += 1; // across the run's new blobs, which rebuild the cloud
          this.redraw = true;
        }
      }
    }
    if (st.version !== version) this.syncRuns();
  }

  /** Badges on every run's panels, frozen layers on its graph; status and frozen from the sources. */
  syncRuns() {
    for (const [id, p] of this.conn.doc.getMap('panels')) {
      const src = p && p.get && p.get('content') && p.get('content').source;
      const view = this.scene.panels.get(id);
      if (!view) continue;
      if (!src || typeof src.run !== 'string') { if (view.setBadge('')) this.redraw = true; continue; }
      const st = this.run(src.run.slice(0, 64));
      if (src.kind === 'live_training' && 'frozen' in src && st.steeredBy === null) st.frozen = src.frozen;
      if (src.kind === 'live_training' && typeof src.status === 'string' && !st.status) st.status = src.status.slice(0, 20);
      if (view.setBadge(st.badge((pid) => this.nameOf(pid)))) this.redraw = true;
      if (view.graph && view.graph.markFrozen(frozenOf(st.frozen)[0])) this.redraw = true;
    }
  }

  /** A painted kind's blob was drawn: a run's metrics panel becomes a live table, with the deltas
   * that came since replayed onto it. */
  contentDrawn(view, kind, source) {
    view.table = null;
    if (kind !== 'metrics' || !view.decoded || typeof source.run !== 'string') return;
    view.table = new LiveTable(view.decoded.meta, view.decoded.arrays);
    let changed = false;
    for (const ev of this.run(source.run.slice(0, 64)).deltas) changed = view.table.apply(ev) || changed;
    if (changed) this.scene.repaint(view, 'metrics', view.table.meta, view.table.arrays);
  }

  nameOf(pid) {
    const p = this.conn.doc.getMap('participants').get(pid);
    return (p && p.get && p.get('name')) || pid;
  }

  // --- the room → the scene ---------------------------------------------------------------

  syncPanels() {
    const panels = this.conn.doc.getMap('panels');
    for (const [id, p] of panels) {
      if (!p || typeof p.get !== 'function') continue;
      const view = this.scene.panel(id);
      const kind = String(p.get('kind') || '');
      view.kind = kind;
      const size = Array.isArray(p.get('size')) && p.get('size').length === 2 ? p.get('size').map(Number) : [1, 0.75];
      const content = p.get('content') || {};
      const refs = Array.isArray(content.refs) ? content.refs : [];
      const source = content.source && typeof content.source === 'object' ? content.source : {};
      const transform = p.get('transform');
      const tkey = JSON.stringify(transform);
      if (view.tkey !== tkey) {
        view.tkey = tkey;
        const pos = transform && Array.isArray(transform.position) ? transform.position : null;
        this.pendingMoves.push([id, pos ? pos[0] : null]);
      }
      if (!this.held(id)) view.place(transform);
      const title = String(p.get('title') || id);
      const key = JSON.stringify([kind, size, refs[0] || null, source.text ?? null]);
      if (view.key !== key) {
        // A new blob for a panel already drawn as the same kind and size (a live run publishes one
        // every few seconds) keeps the old face until the new one is fetched: no flicker to "waiting".
        const shape = JSON.stringify([kind, size]);
        const keepFace = view.status === 'drawn' && view.shape === shape;
        view.key = key;
        view.shape = shape;
        view.size = size;
        view.setTitle(title);
        if (refs.length) {
          if (!keepFace) this.scene.drawContent(view, kind, size, null, null);
          this.conn.blob(refs[0]).then(
            (bytes) => {
              if (view.key !== key) return;
              this.scene.drawContent(view, kind, size, bytes, null);
              this.contentDrawn(view, kind, source);
              this.syncRuns();
              this.redraw = true;
            },
            (err) => { if (view.key === key) { this.scene.drawError(view, size, `content could not be fetched: ${err.message}`); this.redraw = true; } },
          );
        } else {
          this.scene.drawContent(view, kind, size, null, source.text);
        }
      } else if (view.titleText !== title) {
        view.setTitle(title);
      }
      view.titleText = title;
    }
    for (const id of [...this.scene.panels.keys()]) if (!panels.has(id)) this.scene.removePanel(id);
    const wanted = new Set();
    for (const [, p] of panels) {
      const refs = p && p.get && p.get('content') && p.get('content').refs;
      if (Array.isArray(refs) && refs.length) wanted.add(refs[0]);
    }
    this.conn.keepBlobs(wanted);
    if (this.peopleDirty) { this.peopleDirty = false; this.syncPeople(); }
    this.syncRuns();
  }

  syncPeople() {
    const parts = this.conn.doc.getMap('participants');
    const me = parts.get(this.conn.pid);
    const raised = !!(me && me.get('hand_raised'));
    setText($('#hand'), raised ? 'Lower hand' : 'Raise hand');
    $('#hand').classList.toggle('on', raised);
    if (this.conn.joined) this.conn.role = me && me.get('role') ? me.get('role') : this.conn.role;
    const lines = [];
    for (const [pid, p] of parts) {
      if (!p || typeof p.get !== 'function') continue;
      lines.push(`${p.get('name') || pid} · ${p.get('role') || ''}${p.get('hand_raised') ? ' ✋' : ''}${pid === this.conn.pid ? ' (you)' : ''}`);
    }
    const list = $('#people');
    if (list.dataset.shown !== JSON.stringify(lines)) {
      list.dataset.shown = JSON.stringify(lines);
      list.replaceChildren(...lines.map((t) => { const li = document.createElement('li'); li.textContent = t; return li; }));
    }
    const settings = this.conn.doc.getMap('settings');
    setText($('#roomname'), String(settings.get('name') || this.roomId));
    if (this.voice) { this.voice.setPeers([...parts.keys()]); this.voice.follow(); }
  }

  syncAvatars() {
    const parts = this.conn.doc.getMap('participants');
    for (const [pid, { pose }] of this.conn.poses) {
      const p = parts.get(pid);
      this.scene.updateAvatar(pid, pose, {
        name: p && p.get ? p.get('name') : pid, colour: p && p.get ? p.get('colour') : '#888888',
        handRaised: !!(p && p.get && p.get('hand_raised')),
      });
    }
    for (const pid of [...this.scene.avatars.keys()]) if (!this.conn.poses.has(pid)) this.scene.removeAvatar(pid);
  }

  followPresenter() {
    const s = this.conn.doc.getMap('settings');
    if (s.get('follow') !== 'presenter') { this.following = null; return false; }
    const who = s.get('presenter');
    if (!who || who === this.conn.pid) { this.following = null; return false; }
    const p = this.conn.poses.get(who);
    this.following = who;
    if (p) this.scene.follow(p.pose.head);
    return !!p;
  }

  frame() {
    const why = this.drawReasons;
    let draw = false;
    const t0 = this.measureFrame();
    if (this.continuous || this.scene.renderer.xr.isPresenting) { draw = true; why.continuous += 1; }
    if (this.scene.renderer.xr.isPresenting) this.xrInput.update(t0);
    if (this.redraw) { this.redraw = false; draw = true; why.content += 1; }
    if (this.dirty) { this.dirty = false; this.syncPanels(); draw = true; why.room += 1; }
    if (this.dirtyAvatars) { this.dirtyAvatars = false; this.syncAvatars(); draw = true; why.poses += 1; }
    if (this.keys.size || this.drag || this.look) { this.walk(); draw = true; why.input += 1; }
    if (this.followPresenter()) { draw = true; why.follow += 1; }
    const now = performance.now();
    for (const v of this.scene.panels.values()) {
      if (v.cloud && v.cloud.atlas && v.cloud.updateThumbnails(this.scene.viewerIn(v), now)) { draw = true; why.content += 1; }
    }
    if (!draw) return; // nothing changed: no frame (a still room costs no CPU)
    this.drawStart = t0;
    const r0 = performance.now();
    this.scene.render();
    if (this.burnPerMegapixel > 0) this.burn();
    const at = performance.timeOrigin + performance.now(); // epoch ms: comparable with the sender's clock
    this.renderMs.push(at - performance.timeOrigin - r0);
    if (this.renderMs.length > 2000) this.renderMs.splice(0, 1000);
    for (const [id, x] of this.pendingMoves.splice(0)) { // a move counts once the frame that draws it was issued
      this.moveSeen.set(id, at);
      if (x !== null) { this.moveLog.push([id, x, at]); if (this.moveLog.length > 2000) this.moveLog.splice(0, 1000); }
    }
    if (this.pendingLive.length) {
      for (const [id, step, arrived] of this.pendingLive.splice(0)) this.liveLog.push([id, step, arrived, at]);
      if (this.liveLog.length > 2000) this.liveLog.splice(0, 1000);
    }
    if (!this.stats.allDrawnAt && this.conn.joined) {
      const views = [...this.scene.panels.values()];
      if (views.length && views.every((v) => v.status !== 'waiting')) this.stats.allDrawnAt = performance.now();
    }
  }

  /** A drawn frame's cost: from its start to the next animation frame, i.e. its own work plus
   * whatever held the main thread after it (with software compositing, reading the drawing
   * buffer back and compositing it: most of a frame here, invisible to timing `render`). */
  measureFrame() {
    const now = performance.now();
    const start = this.drawStart;
    this.drawStart = null;
    if (start !== null && !document.hidden && !this.scene.renderer.xr.isPresenting // XR sizes its own buffers
        && this.quality.record(now - start, now)) this.applyQuality();
    return now;
  }

  applyQuality() {
    this.scene.setRenderScale(this.quality.scale);
    this.redraw = true;
    const b = $('#quality');
    if (b) {
      setText(b, qualityLabel(this.quality));
      b.title = this.quality.mode === 'auto'
        ? 'Resolution adapts to how fast this machine draws; click to always draw at full resolution'
        : 'Always full resolution; click to let it adapt to how fast this machine draws';
    }
  }

  setQualityMode(mode) {
    this.quality.setMode(mode);
    this.applyQuality();
  }

  /** Test hook: an honest slow rasterizer, main-thread time in proportion to the pixels drawn. */
  burn() {
    const c = this.scene.renderer.domElement;
    const until = performance.now() + this.burnPerMegapixel * (c.width * c.height) / 1e6;
    let x = 0;
    while (performance.now() < until) x += Math.sqrt(x + 1);
    this.burnt = x;
  }

  walk() {
    if (!this.keys.size || this.following) return;
    const step = 0.05, r = this.scene.rig;
    const fwd = new THREE.Vector3(0, 0, -1).applyQuaternion(r.quaternion), right = new THREE.Vector3(1, 0, 0).applyQuaternion(r.quaternion);
    if (this.keys.has('w')) r.position.addScaledVector(fwd, step);
    if (this.keys.has('s')) r.position.addScaledVector(fwd, -step);
    if (this.keys.has('d')) r.position.addScaledVector(right, step);
    if (this.keys.has('a')) r.position.addScaledVector(right, -step);
  }

  sendPose() {
    if (!this.conn.joined) return;
    const head = this.scene.headPose();
    let pointer = this.pointerRay || null;
    if (this.scene.renderer.xr.isPresenting) { // in a headset the room sees the controller's ray
      const p = this.xrInput.pointer();
      pointer = p ? [...fromThreePos(p.origin), ...fromThreePos(p.direction)] : null;
    }
    this.conn.sendPose(head, pointer, false);
  }

  /** A panel this participant is dragging (mouse or controller): the document's echo does not move it back. */
  held(id) {
    return (this.drag && this.drag.id === id) || (this.xrInput && this.xrInput.drag && this.xrInput.drag.id === id);
  }

  // --- input ---------------------------------------------------------------------------------

  ndc(e) {
    const r = this.scene.renderer.domElement.getBoundingClientRect();
    return new THREE.Vector2(((e.clientX - r.left) / r.width) * 2 - 1, -((e.clientY - r.top) / r.height) * 2 + 1);
  }

  bindInput() {
    const el = this.scene.renderer.domElement;
    el.addEventListener('pointerdown', (e) => {
      const hit = this.scene.pick(this.ndc(e));
      this.press = { x: e.clientX, y: e.clientY, hit, ndc: this.ndc(e) };
      if (hit && this.canEdit()) {
        const view = this.scene.panels.get(hit.id);
        const normal = new THREE.Vector3();
        this.scene.camera.getWorldDirection(normal);
        this.drag = { id: hit.id, plane: new THREE.Plane().setFromNormalAndCoplanarPoint(normal, hit.point),
          offset: view.group.position.clone().sub(hit.point), lastSent: 0 };
        el.setPointerCapture(e.pointerId);
      } else if (hit) {
        this.look = { x: e.clientX, y: e.clientY, yaw: this.scene.yaw, pitch: this.scene.pitch };
      } else {
        this.look = { x: e.clientX, y: e.clientY, yaw: this.scene.yaw, pitch: this.scene.pitch };
      }
    });
    el.addEventListener('pointermove', (e) => {
      const ray = new THREE.Raycaster();
      ray.setFromCamera(this.ndc(e), this.scene.camera);
      this.pointerRay = [...fromThreePos(ray.ray.origin), ...fromThreePos(ray.ray.direction)];
      const moved = this.press && Math.hypot(e.clientX - this.press.x, e.clientY - this.press.y) > 4;
      if (this.press && moved) this.press.moved = true;
      if (this.drag) {
        if (!this.press || !this.press.moved) return; // a click, not yet a drag
        const p = new THREE.Vector3();
        if (!ray.ray.intersectPlane(this.drag.plane, p)) return;
        const view = this.scene.panels.get(this.drag.id);
        if (!view) return;
        view.group.position.copy(p.add(this.drag.offset));
        const now = performance.now();
        if (now - this.drag.lastSent > 100) { this.drag.lastSent = now; this.sendMove(this.drag.id); }
      } else if (this.look) {
        this.scene.look(this.look.yaw + (e.clientX - this.look.x) * 0.2, this.look.pitch - (e.clientY - this.look.y) * 0.2);
      }
    });
    const up = () => {
      const press = this.press;
      this.press = null;
      if (this.drag) {
        const id = this.drag.id;
        this.drag = null;
        if (press && press.moved) this.sendMove(id).then(() => { this.dirty = true; });
      }
      this.look = null;
      if (press && !press.moved && press.hit) {
        const view = this.scene.panels.get(press.hit.id);
        this.click(press.hit, view ? this.scene.facePoint(view, press.ndc) : null); // on the face plane, as the app's click(u, v)
      }
    };
    el.addEventListener('pointerup', up);
    el.addEventListener('pointercancel', up);
    window.addEventListener('keydown', (e) => {
      if (e.target.closest && e.target.closest('input')) return;
      const k = e.key.toLowerCase();
      if (k === 't') { if (this.voice) this.voice.pressToTalk(true); return; } // hold T to talk (push-to-talk rooms)
      this.keys.add(k);
    });
    window.addEventListener('keyup', (e) => {
      const k = e.key.toLowerCase();
      if (k === 't' && this.voice) this.voice.pressToTalk(false);
      this.keys.delete(k);
    });
  }

  /** A click on a panel (no drag): a graph expands or collapses the group there; a viewer is
   * told why panels do not move for them. */
  click(hit, local) {
    const view = this.scene.panels.get(hit.id);
    if (view && view.graph) {
      const done = local && view.graph.click(local.x, local.y);
      if (done) { this.redraw = true; view.collapsed = new Set(view.graph.collapsed); return; }
    }
    if (!this.canEdit()) this.toast('You are viewing this room: ask the host to let you move panels.');
  }

  sendMove(id) {
    const view = this.scene.panels.get(id);
    const p = this.conn.doc.getMap('panels').get(id);
    if (!view || !p) return Promise.resolve(null);
    const old = p.get('transform') || {};
    const transform = { position: fromThreePos(view.group.position).map((v) => Math.round(v * 1000) / 1000) };
    if (Array.isArray(old.rotation)) transform.rotation = old.rotation;
    if (Array.isArray(old.scale)) transform.scale = old.scale;
    return this.conn.op({ op: 'move_panel', panel_id: id, transform });
  }

  bindButtons() {
    // The render scale: shown in the top bar, a click switches between adapting and full.
    const qb = document.createElement('button');
    qb.id = 'quality';
    $('#voicestate').before(qb);
    qb.addEventListener('click', () => this.setQualityMode(this.quality.mode === 'auto' ? 'full' : 'auto'));
    this.applyQuality();
    if (this.qualityError) this.toast(this.qualityError);
    $('#hand').addEventListener('click', () => {
      const me = this.conn.doc.getMap('participants').get(this.conn.pid);
      const raised = !!(me && me.get('hand_raised'));
      this.conn.op({ op: 'raise_hand', participant_id: this.conn.pid, raised: !raised });
    });
    $('#voice').addEventListener('click', () => {
      if (this.voice) { this.voice.setMuted(!this.voice.muted); $('#voice').textContent = this.voice.muted ? 'Unmute' : 'Mute'; }
      else this.startVoice();
    });
    if (navigator.xr && navigator.xr.isSessionSupported) {
      navigator.xr.isSessionSupported('immersive-vr').then((ok) => {
        this.xrSupported = !!ok;
        if (!ok) return;
        const b = $('#vr');
        b.hidden = false;
        b.addEventListener('click', () => this.enterVR());
      }).catch(() => { this.xrSupported = false; });
    }
  }

  /** Start an immersive session; three.js's WebXRManager then drives the frame loop (every
   * frame drawn, both eyes) until the session ends. */
  async enterVR() {
    const xr = this.scene.renderer.xr;
    if (xr.isPresenting) { const s = xr.getSession(); if (s) await s.end(); return; }
    try {
      const session = await navigator.xr.requestSession('immersive-vr', { optionalFeatures: XR_FEATURES });
      xr.setReferenceSpaceType(session.enabledFeatures && !session.enabledFeatures.includes('local-floor') ? 'local' : 'local-floor');
      await xr.setSession(session);
      $('#vr').textContent = 'Exit VR';
      this.xrSessions = (this.xrSessions || 0) + 1;
      session.addEventListener('end', () => { $('#vr').textContent = 'Enter VR'; this.redraw = true; });
    } catch (err) { this.toast(`Cannot enter VR: ${err.message}`); }
  }

  async startVoice() {
    const parts = () => this.conn.doc.getMap('participants');
    this.voice = new BrowserVoice(this.conn, {
      onState: (s) => { $('#voicestate').textContent = s; },
      room: {
        roleOf: (pid) => { const p = parts().get(pid); return p && p.get ? p.get('role') : null; },
        voice: () => String(this.conn.doc.getMap('settings').get('voice') || 'auto'),
        ids: () => [...parts().keys()],
        muted: (pid) => { const p = parts().get(pid); return !!(p && p.get && p.get('muted')); },
        mutedAll: () => !!this.conn.doc.getMap('settings').get('muted_all'),
      },
    });
    try {
      await this.voice.start();
      $('#voice').textContent = 'Mute';
      this.voice.setPeers([...this.conn.doc.getMap('participants').keys()]);
    } catch (e) {
      this.toast(`Voice could not start: ${e.message}`);
      this.voice = null;
    }
  }

  /** What the tests and the benchmark read. */
  state() {
    const panels = {};
    for (const [id, v] of this.scene.panels) {
      panels[id] = { kind: v.kind, status: v.status, placeholders: v.placeholders, message: v.message, position: fromThreePos(v.group.position),
        movedAt: this.moveSeen.get(id) || null, rect: this.scene.screenRect(v), badge: v.badgeText || null,
        graph: v.graph ? v.graph.summary() : null, cloud: v.cloud ? { ...v.cloud.summary(), framesApplied: v.framesApplied } : null,
        live: v.table ? { step: v.table.lastStep, rows: v.table.arrays.step ? v.table.arrays.step.data.length : 0, status: v.table.meta.status ?? null } : null };
    }
    return {
      joined: this.conn.joined, role: this.role(), canEdit: this.canEdit(), participant_id: this.conn.pid,
      panels, avatars: [...this.scene.avatars.keys()], frames: this.scene.frames,
      timeOrigin: performance.timeOrigin, joinedAt: this.stats.joinedAt, allDrawnAt: this.stats.allDrawnAt, banner: $('#banner').hidden ? null : $('#banner').textContent,
      toast: $('#toast').hidden ? null : $('#toast').textContent, following: this.following || null,
      drawReasons: { ...this.drawReasons }, streamsDropped: this.streamsDropped,
      xr: { button: !$('#vr').hidden, presenting: this.scene.renderer.xr.isPresenting, sessions: this.xrSessions || 0,
        frames: this.xrFrames || 0, supported: this.xrSupported ?? null, input: this.xrInput ? this.xrInput.summary() : null }, softwareGL: this.scene.software,
      quality: { ...this.quality.summary(), pixelRatio: this.scene.renderer.getPixelRatio(),
        canvas: [this.scene.renderer.domElement.width, this.scene.renderer.domElement.height], label: $('#quality') ? $('#quality').textContent : null },
      camera: this.scene.headPose(), batchesRead: this.conn.batchesRead,
      voice: this.voice ? { source: this.voice.source, links: [...this.voice.links].map(([pid, e]) => [pid, e.pc.connectionState]),
        sending: !!this.voice.sending, pushToTalk: !!this.voice.pushToTalk,
        sfu: this.voice.sfu ? { url: this.voice.sfuAccess.url, feeds: [...this.voice.sfu.subs.values()].map((e) => e.display) } : null } : null,
    };
  }
}

// The pure parts, for the tests that check them against the Python implementation.
const wire = {
  decodeContent: (b64) => {
    const { meta, arrays } = decodeContent(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)));
    const out = {};
    for (const [k, a] of Object.entries(arrays)) out[k] = { dtype: a.dtype, shape: a.shape, data: Array.from(a.data) };
    return { meta, arrays: out };
  },
  decodeBatch: (b64) => decodeBatch(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))),
  encodePose: (pose, sentAt) => btoa(String.fromCharCode(...encodePose(pose, sentAt))),
  seqNewer, parseSignal, pageLink, RenderQuality, SCALES,
};

function boot() {
  window.deeproomWire = wire;
  const missing = missingFeatures();
  if (missing.length) { showMissing(missing); return; }
  const m = /^\/r\/([A-Za-z0-9_.:-]{1,64})\/?$/.exec(window.location.pathname);
  if (!m) { showLanding(); window.deeproom = { landing: true }; return; }
  $('#room').hidden = false;
  const page = new Page(m[1], new URLSearchParams(window.location.search));
  window.deeproom = {
    page, state: () => page.state(), THREE,
    peak: (pid) => (page.voice ? page.voice.peak(pid) : null),
    level: (pid) => (page.voice ? page.voice.level(pid) : 0),
    op: (op) => page.conn.op(op),
    moves: () => page.moveLog.splice(0),
    live: () => page.liveLog.splice(0),
    renderMs: () => page.renderMs.splice(0),
    /** Panel-local point (x, y) of panel id → where it is on the screen (CSS px): for clicks in tests. */
    screenPoint: (id, x, y) => page.scene.screenPoint(id, x, y),
    face: (id, dist) => { const ok = page.scene.facePanel(id, dist); page.redraw = true; return ok; },
    applied: () => page.docLog.splice(0),
    continuous: (on) => { page.continuous = !!on; page.redraw = true; },
    /** The render scale: mode 'auto' | 'full'; burn(ms per million pixels) slows frames (tests). */
    quality: {
      setMode: (mode) => page.setQualityMode(mode),
      burn: (msPerMegapixel) => { page.burnPerMegapixel = Math.max(0, Number(msPerMegapixel) || 0); page.redraw = true; },
      pin: (scale) => { page.quality.pin(scale === null ? null : Number(scale)); page.applyQuality(); },
    },
    watchOnsets: (pid, threshold) => (page.voice ? page.voice.watchOnsets(pid, threshold) : false),
    onsets: (pid) => (page.voice ? page.voice.onsets(pid) : []),
  };
  page.start();
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', boot);
else boot();
