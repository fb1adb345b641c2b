// The room drawn with three.js: panels (2D kinds painted on a canvas texture, the
// graph and the cloud in 3D), avatars with name tags, hands raised and lasers.
// Room coordinates are the app's (Ursina: x right, y up, z forward, left-handed);
// three.js is right-handed with -z forward, so z is mirrored at this one boundary
// (positions (x, y, -z), quaternions (w, -x, -y, z)).

import * as THREE from 'three';
import { decodeContent } from './wire.js';
import { LABEL_PALETTE, PAINTERS, UNLABELLED, VIRIDIS, paintMessage, paintNote } from './paint.js';

const PIXELS_PER_METRE = 420, MAX_TEXTURE_SIDE = 720;

export function toThreePos(p) { return new THREE.Vector3(p[0], p[1], -p[2]); }
export function toThreeQuat(q) { return new THREE.Quaternion(-q[1], -q[2], q[3], q[0]).normalize(); } // q = [w, x, y, z]
export function fromThreePos(v) { return [v.x, v.y, -v.z]; }
export function fromThreeQuat(q) { return [q.w, -q.x, -q.y, q.z]; }

function textureSize([w, h]) {
  const pw = w * PIXELS_PER_METRE, ph = h * PIXELS_PER_METRE;
  const s = Math.min(1, MAX_TEXTURE_SIDE / Math.max(pw, ph, 1));
  return [Math.max(Math.floor(pw * s), 32), Math.max(Math.floor(ph * s), 32)];
}

function finiteList(v, n, fallback) {
  return Array.isArray(v) && v.length === n && v.every((x) => typeof x === 'number' && Number.isFinite(x)) ? v : fallback;
}

function textSprite(text, colour = '#ffffff', height = 0.12) {
  const c = document.createElement('canvas');
  const g = c.getContext('2d');
  g.font = '48px "Liberation Sans", Arial, sans-serif';
  const w = Math.ceil(g.measureText(text).width) + 24;
  c.width = w; c.height = 64;
  g.font = '48px "Liberation Sans", Arial, sans-serif';
  g.fillStyle = 'rgba(10,12,20,0.75)'; g.fillRect(0, 0, w, 64);
  g.fillStyle = colour; g.textBaseline = 'middle'; g.fillText(text, 12, 34);
  const tex = new THREE.CanvasTexture(c);
  tex.colorSpace = THREE.SRGBColorSpace;
  const sprite = new THREE.Sprite(new THREE.SpriteMaterial({ map: tex, depthTest: false }));
  sprite.scale.set((height * w) / 64, height, 1);
  sprite.renderOrder = 10;
  return sprite;
}

function disposeTree(obj) {
  obj.traverse((o) => {
    if (o.geometry) o.geometry.dispose();
    const mats = Array.isArray(o.material) ? o.material : o.material ? [o.material] : [];
    for (const m of mats) { if (m.map) m.map.dispose(); m.dispose(); }
  });
}

/** One panel: a frame group placed by its transform, a face drawn from its content. */
class PanelView {
  constructor(id) {
    this.id = id;
    this.group = new THREE.Group();
    this.group.userData.panelId = id;
    this.face = null;
    this.title = null;
    this.key = '';
    this.status = 'waiting';
    this.message = '';
    this.size = [1, 0.75];
  }

  place(transform) {
    const t = transform && typeof transform === 'object' ? transform : {};
    this.group.position.copy(toThreePos(finiteList(t.position, 3, [0, 1.5, 2])));
    this.group.quaternion.copy(toThreeQuat(finiteList(t.rotation, 4, [1, 0, 0, 0])));
    const s = finiteList(t.scale, 3, [1, 1, 1]);
    this.group.scale.set(s[0], s[1], s[2]);
  }

  setFace(obj, status, message = '') {
    if (this.face) { this.group.remove(this.face); disposeTree(this.face); }
    this.face = obj;
    this.face.traverse((o) => { o.userData.panelId = this.id; });
    this.group.add(obj);
    this.status = status;
    this.message = message;
  }

  setTitle(text) {
    if (this.title) { this.group.remove(this.title); disposeTree(this.title); }
    this.title = textSprite(String(text).slice(0, 120), '#e6eaf2', 0.07);
    this.title.position.set(0, this.size[1] / 2 + 0.06, 0);
    this.group.add(this.title);
  }
}

function quad(canvas, [w, h]) {
  const tex = new THREE.CanvasTexture(canvas);
  tex.colorSpace = THREE.SRGBColorSpace;
  tex.anisotropy = 4;
  const mesh = new THREE.Mesh(new THREE.PlaneGeometry(w, h), new THREE.MeshBasicMaterial({ map: tex, side: THREE.DoubleSide }));
  return mesh;
}

function backdrop([w, h]) {
  return new THREE.Mesh(new THREE.PlaneGeometry(w, h),
    new THREE.MeshBasicMaterial({ color: 0x181c28, side: THREE.DoubleSide, transparent: true, opacity: 0.85 }));
}

function opColour(op) {
  let h = 0;
  for (const ch of String(op)) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  return new THREE.Color().setHSL((h % 360) / 360, 0.55, 0.55);
}

/** A model graph in 3D: one box per layer (one instanced mesh), edges as one line set. */
function graphFace(meta, size) {
  const nodes = meta.nodes.filter((n) => n && typeof n === 'object').slice(0, 5000);
  const [w, h] = size;
  const group = new THREE.Group();
  group.add(backdrop(size));
  const byId = new Map();
  const rankOf = nodes.map((n, i) => (Number.isFinite(n.rank) ? n.rank : i));
  const ranks = [...new Set(rankOf)].sort((a, b) => a - b);
  const col = new Map(ranks.map((r, i) => [r, i]));
  const stack = new Map();
  const cells = nodes.map((n, i) => {
    const c = col.get(rankOf[i]);
    const k = stack.get(c) || 0;
    stack.set(c, k + 1);
    return [c, k];
  });
  const maxStack = Math.max(1, ...stack.values());
  const cw = (w * 0.9) / Math.max(ranks.length, 1), ch = (h * 0.8) / maxStack;
  const box = Math.min(cw * 0.7, ch * 0.7, 0.12);
  const mesh = new THREE.InstancedMesh(new THREE.BoxGeometry(box, box, box), new THREE.MeshLambertMaterial(), Math.max(nodes.length, 1));
  const m = new THREE.Matrix4();
  nodes.forEach((n, i) => {
    const [c, k] = cells[i];
    const count = stack.get(c);
    const x = -w * 0.45 + cw * (c + 0.5), y = ch * ((count - 1) / 2 - k) - h * 0.05;
    m.makeTranslation(x, y, box / 2 + 0.01);
    mesh.setMatrixAt(i, m);
    mesh.setColorAt(i, opColour(n.op));
    byId.set(String(n.id ?? i), [x, y]);
  });
  mesh.count = nodes.length;
  group.add(mesh);
  if (nodes.length <= 48) { // labels are a draw each: only for graphs small enough to read
    const textH = Math.min(box * 0.55, 0.05);
    nodes.forEach((n, i) => {
      const [x, y] = byId.get(String(n.id ?? i));
      const name = String(n.name ?? n.id ?? i).split('.').pop().slice(0, 24);
      const label = textSprite(name, '#e6eaf2', textH);
      label.position.set(x, y - box * 0.5 - textH * 0.8 * (1 + (cells[i][0] % 2)), box + 0.02);
      group.add(label);
    });
  }
  const pts = [];
  for (const e of Array.isArray(meta.edges) ? meta.edges.slice(0, 20000) : []) {
    if (!Array.isArray(e) || e.length !== 2) continue;
    const a = byId.get(String(e[0])), b = byId.get(String(e[1]));
    if (a && b) pts.push(a[0], a[1], 0.02, b[0], b[1], 0.02);
  }
  if (pts.length) {
    const g = new THREE.BufferGeometry();
    g.setAttribute('position', new THREE.Float32BufferAttribute(pts, 3));
    group.add(new THREE.LineSegments(g, new THREE.LineBasicMaterial({ color: 0x8c94a6 })));
  }
  return group;
}

/** A latent cloud in 3D: one Points object, coloured by label (grey unlabelled). */
function cloudFace(meta, arrays, size) {
  const pos = arrays.positions;
  if (!pos || pos.shape.length !== 2 || (pos.shape[1] !== 2 && pos.shape[1] !== 3)) {
    throw new Error(`a latent_cloud blob needs positions [N, 2] or [N, 3]; got ${pos ? `[${pos.shape}]` : 'none'}`);
  }
  const [n, d] = pos.shape;
  const labels = arrays.labels ? arrays.labels.data : null;
  if (labels && labels.length !== n) throw new Error(`labels has ${labels.length} entries for ${n} points`);
  const lo = [Infinity, Infinity, Infinity], hi = [-Infinity, -Infinity, -Infinity];
  for (let i = 0; i < n; i++) for (let k = 0; k < d; k++) {
    const x = pos.data[i * d + k];
    if (Number.isFinite(x)) { lo[k] = Math.min(lo[k], x); hi[k] = Math.max(hi[k], x); }
  }
  const side = Math.min(size[0], size[1]) * 0.9;
  const xyz = new Float32Array(n * 3), rgb = new Float32Array(n * 3), tmp = new THREE.Color();
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < 3; k++) {
      const x = k < d ? pos.data[i * d + k] : 0;
      const span = hi[k] > lo[k] ? hi[k] - lo[k] : 1;
      const u = k < d && Number.isFinite(x) ? (x - lo[k]) / span - 0.5 : 0;
      xyz[i * 3 + k] = k === 2 ? (u + 0.5) * side * 0.3 + 0.02 : u * side; // shallow: the cloud stays over its panel
    }
    const lab = labels ? labels[i] : -1;
    const c = lab < 0 ? UNLABELLED : LABEL_PALETTE[((lab % 10) + 10) % 10];
    tmp.setRGB(c[0] / 255, c[1] / 255, c[2] / 255, THREE.SRGBColorSpace); // palette colours are sRGB; three works linear
    rgb[i * 3] = tmp.r; rgb[i * 3 + 1] = tmp.g; rgb[i * 3 + 2] = tmp.b;
  }
  const g = new THREE.BufferGeometry();
  g.setAttribute('position', new THREE.BufferAttribute(xyz, 3));
  g.setAttribute('color', new THREE.BufferAttribute(rgb, 3));
  const group = new THREE.Group();
  group.add(backdrop(size));
  const pts = new THREE.Points(g, new THREE.PointsMaterial({ size: Math.max(0.015, side / 30), vertexColors: true }));
  group.add(pts);
  return group;
}

/** True when WebGL runs on the CPU (SwiftShader, llvmpipe): drawing is then costly. */
function softwareGL() {
  try {
    const gl = document.createElement('canvas').getContext('webgl2');
    const ext = gl && gl.getExtension('WEBGL_debug_renderer_info');
    const name = ext ? String(gl.getParameter(ext.UNMASKED_RENDERER_WEBGL)) : '';
    if (gl) { const lose = gl.getExtension('WEBGL_lose_context'); if (lose) lose.loseContext(); }
    return /swiftshader|llvmpipe|softpipe|software/i.test(name);
  } catch (_e) { return false; }
}

export class RoomScene {
  constructor(container) {
    this.software = softwareGL();
    // Multisampling in a software rasterizer costs more than the rest of the frame together.
    this.renderer = new THREE.WebGLRenderer({ antialias: !this.software });
    this.renderer.setPixelRatio(Math.min(window.devicePixelRatio || 1, 2));
    this.renderer.setSize(container.clientWidth, container.clientHeight);
    this.renderer.xr.enabled = true;
    container.appendChild(this.renderer.domElement);
    this.scene = new THREE.Scene();
    this.scene.background = new THREE.Color(0x0d1018);
    this.camera = new THREE.PerspectiveCamera(70, container.clientWidth / container.clientHeight, 0.05, 200);
    this.rig = new THREE.Group(); // moved by follow, summon and the keys; the camera sits in it
    this.rig.position.set(0, 0, 0);
    this.camera.position.set(0, 1.6, 0);
    this.rig.add(this.camera);
    this.scene.add(this.rig);
    this.yaw = 0; this.pitch = 0;
    this.scene.add(new THREE.HemisphereLight(0xffffff, 0x334455, 1.2));
    const floor = new THREE.GridHelper(40, 40, 0x2a3040, 0x1c2130);
    this.scene.add(floor);
    this.panels = new Map();
    this.avatars = new Map();
    this.frames = 0;
    window.addEventListener('resize', () => {
      this.camera.aspect = container.clientWidth / container.clientHeight;
      this.camera.updateProjectionMatrix();
      this.renderer.setSize(container.clientWidth, container.clientHeight);
      this.render();
    });
  }

  look(yawDeg, pitchDeg) {
    this.yaw = yawDeg; this.pitch = Math.max(-85, Math.min(85, pitchDeg));
    this.rig.rotation.set(0, THREE.MathUtils.degToRad(-this.yaw), 0);
    this.camera.rotation.set(THREE.MathUtils.degToRad(-this.pitch), 0, 0);
  }

  /** Move the viewer to a room position (metres, room coordinates), facing yaw degrees. */
  teleport(position, yawDeg) {
    const p = toThreePos(position);
    this.rig.position.set(p.x, Math.max(0, p.y - 1.6), p.z);
    if (typeof yawDeg === 'number' && Number.isFinite(yawDeg)) this.look(yawDeg, 0);
  }

  /** Put the camera where a head is (follow-me): position and orientation, room coordinates. */
  follow(head) {
    const p = toThreePos(head.slice(0, 3));
    this.rig.position.set(p.x, p.y - 1.6, p.z);
    this.rig.quaternion.copy(toThreeQuat(head.slice(3, 7)));
    this.camera.rotation.set(0, 0, 0);
  }

  /** Head pose [x,y,z,qw,qx,qy,qz] in room coordinates. */
  headPose() {
    const p = new THREE.Vector3(), q = new THREE.Quaternion();
    this.camera.getWorldPosition(p); this.camera.getWorldQuaternion(q);
    return [...fromThreePos(p), ...fromThreeQuat(q)];
  }

  panel(id) {
    let v = this.panels.get(id);
    if (!v) { v = new PanelView(id); this.panels.set(id, v); this.scene.add(v.group); }
    return v;
  }

  removePanel(id) {
    const v = this.panels.get(id);
    if (v) { this.scene.remove(v.group); disposeTree(v.group); this.panels.delete(id); }
  }

  /** Draw a panel's face from its kind and content blob (bytes) or note text; errors become a card. */
  drawContent(view, kind, size, blob, sourceText) {
    const [W, H] = textureSize(size);
    try {
      if (!blob) {
        if (kind === 'note') { view.setFace(quad(paintNote(sourceText ?? '(empty note)', W, H), size), 'drawn'); return; }
        view.setFace(quad(paintMessage('…', 'waiting for content…', W, H, false), size), 'waiting');
        return;
      }
      let decoded;
      try { decoded = decodeContent(blob); } catch (e) { throw new Error(`content blob is corrupt: ${e.message}`); }
      const { meta, arrays } = decoded;
      if (meta.kind !== undefined && meta.kind !== kind) throw new Error(`blob holds '${meta.kind}' content but the panel shows '${kind}'`);
      if (kind === 'model_graph') {
        if (!Array.isArray(meta.nodes)) throw new Error('a model_graph blob needs meta.nodes (a list)');
        view.setFace(graphFace(meta, size), 'drawn');
      } else if (kind === 'latent_cloud') {
        view.setFace(cloudFace(meta, arrays, size), 'drawn');
      } else {
        const painter = PAINTERS[kind];
        if (!painter) throw new Error(`no view for panel kind '${kind}'`);
        view.setFace(quad(painter(meta, arrays, W, H), size), 'drawn');
      }
    } catch (e) {
      const msg = String(e && e.message ? e.message : e).slice(0, 400);
      view.setFace(quad(paintMessage('Cannot show this panel', msg, W, H, true), size), 'error', msg);
    }
  }

  /** An error card on a panel (its content could not be fetched). */
  drawError(view, size, message) {
    const [W, H] = textureSize(size);
    const msg = String(message).slice(0, 400);
    view.setFace(quad(paintMessage('Cannot show this panel', msg, W, H, true), size), 'error', msg);
  }

  avatar(pid) {
    let a = this.avatars.get(pid);
    if (!a) {
      const group = new THREE.Group();
      const head = new THREE.Mesh(new THREE.SphereGeometry(0.14, 20, 14), new THREE.MeshLambertMaterial({ color: 0x888888 }));
      const visor = new THREE.Mesh(new THREE.BoxGeometry(0.18, 0.06, 0.04), new THREE.MeshBasicMaterial({ color: 0x111111 }));
      visor.position.set(0, 0.02, -0.13);
      head.add(visor);
      group.add(head);
      const laserGeo = new THREE.BufferGeometry();
      laserGeo.setAttribute('position', new THREE.Float32BufferAttribute([0, 0, 0, 0, 0, -1], 3));
      const laser = new THREE.Line(laserGeo, new THREE.LineBasicMaterial({ color: 0xff3355 }));
      laser.visible = false;
      this.scene.add(group); this.scene.add(laser);
      a = { group, head, laser, tag: null, tagText: '', hand: null, seen: 0 };
      this.avatars.set(pid, a);
    }
    return a;
  }

  updateAvatar(pid, pose, info) {
    const a = this.avatar(pid);
    a.group.position.copy(toThreePos(pose.head));
    a.head.quaternion.copy(toThreeQuat(pose.head.slice(3, 7)));
    a.head.material.color.set(info.colour || '#888888');
    const text = `${info.name || pid}${info.handRaised ? '  ✋' : ''}${pose.speaking ? '  🔊' : ''}`;
    if (text !== a.tagText) {
      if (a.tag) { a.group.remove(a.tag); disposeTree(a.tag); }
      a.tag = textSprite(text, info.handRaised ? '#ffe066' : '#ffffff', 0.09);
      a.tag.position.set(0, 0.28, 0);
      a.group.add(a.tag);
      a.tagText = text;
    }
    if (pose.pointer) {
      const o = toThreePos(pose.pointer.slice(0, 3)), d = toThreePos(pose.pointer.slice(3, 6)).normalize();
      const arr = a.laser.geometry.attributes.position.array;
      arr[0] = o.x; arr[1] = o.y; arr[2] = o.z;
      arr[3] = o.x + d.x * 6; arr[4] = o.y + d.y * 6; arr[5] = o.z + d.z * 6;
      a.laser.geometry.attributes.position.needsUpdate = true;
      a.laser.geometry.computeBoundingSphere();
      a.laser.visible = true;
    } else {
      a.laser.visible = false;
    }
    a.seen = performance.now();
  }

  removeAvatar(pid) {
    const a = this.avatars.get(pid);
    if (a) { this.scene.remove(a.group); this.scene.remove(a.laser); disposeTree(a.group); disposeTree(a.laser); this.avatars.delete(pid); }
  }

  /** The panel under a screen point (NDC), and the hit point. */
  pick(ndc) {
    const ray = new THREE.Raycaster();
    ray.setFromCamera(ndc, this.camera);
    const hits = ray.intersectObjects([...this.panels.values()].map((v) => v.group), true);
    for (const h of hits) if (h.object.userData.panelId) return { id: h.object.userData.panelId, point: h.point };
    return null;
  }

  /** Where a panel's face is on the screen: [left, top, right, bottom] in CSS pixels. */
  screenRect(view) {
    if (!view.face) return null;
    const box = new THREE.Box3().setFromObject(view.face);
    const el = this.renderer.domElement, w = el.clientWidth, h = el.clientHeight;
    let l = Infinity, t = Infinity, r = -Infinity, b = -Infinity;
    for (let i = 0; i < 8; i++) {
      const v = new THREE.Vector3(i & 1 ? box.max.x : box.min.x, i & 2 ? box.max.y : box.min.y, i & 4 ? box.max.z : box.min.z).project(this.camera);
      const x = (v.x + 1) / 2 * w, y = (1 - v.y) / 2 * h;
      l = Math.min(l, x); r = Math.max(r, x); t = Math.min(t, y); b = Math.max(b, y);
    }
    return [l, t, r, b];
  }

  render() {
    this.renderer.render(this.scene, this.camera);
    this.frames += 1;
  }
}

export { VIRIDIS };
