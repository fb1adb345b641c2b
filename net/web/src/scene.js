// The room drawn with three.js: panels (2D kinds painted on a canvas texture, the
// graph and the cloud in 3D), avatars with name tags, hands raised and lasers.
// Room coordinates are the app's (Ursina: x right, y up, z forward, left-handed);
// three.js is right-handed with -z forward, so z is mirrored at this one boundary
// (positions (x, y, -z), quaternions (w, -x, -y, z)).

import * as THREE from 'three';
import { decodeContent } from './wire.js';
import { PAINTERS, VIRIDIS, paintMessage, paintNote } from './paint.js';
import { CloudFace, GraphFace, disposeTree } from './faces3d.js';

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

/** One panel: a frame group placed by its transform, a face drawn from its content. */
class PanelView {
  constructor(id) {
    this.id = id;
    this.group = new THREE.Group();
    this.group.userData.panelId = id;
    this.face = null;
    this.title = null;
    this.key = '';
    this.shape = ''; // JSON [kind, size] of the content last asked for
    this.status = 'waiting';
    this.placeholders = 0; // times "waiting for content…" was drawn
    this.framesApplied = 0; // a run's stream frames that moved this panel's cloud
    this.message = '';
    this.size = [1, 0.75];
    this.badge = null;
    this.badgeText = '';
    this.graph = null; // a GraphFace (model_graph), kept while its content is the same
    this.cloud = null; // a CloudFace (latent_cloud)
    this.decoded = null; // {meta, arrays} of a painted kind's blob (a run's metrics panel grows from it)
    this.collapsed = null; // the graph's collapsed groups, kept across a new blob
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

  /** The tag above a run's panel ("running · Ann: freeze conv1"); empty: none. */
  setBadge(text) {
    if (text === this.badgeText) return false;
    this.badgeText = text;
    if (this.badge) { this.group.remove(this.badge); disposeTree(this.badge); this.badge = null; }
    if (!text) return true;
    this.badge = textSprite(text, '#ffdb73', 0.06);
    this.badge.position.set(0, this.size[1] / 2 + 0.135, 0);
    this.group.add(this.badge);
    return true;
  }
}

function quad(canvas, [w, h]) {
  const tex = new THREE.CanvasTexture(canvas);
  tex.colorSpace = THREE.SRGBColorSpace;
  tex.anisotropy = 4;
  const mesh = new THREE.Mesh(new THREE.PlaneGeometry(w, h), new THREE.MeshBasicMaterial({ map: tex, side: THREE.DoubleSide }));
  return mesh;
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
    this.renderScale = 1; // of the device's pixel ratio: lowered by RenderQuality on slow machines
    this.renderer.setPixelRatio(this.pixelRatio());
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
      this.renderer.setPixelRatio(this.pixelRatio()); // the device's ratio changes with the browser's zoom
      this.renderer.setSize(container.clientWidth, container.clientHeight);
      this.render();
    });
  }

  pixelRatio() { return Math.min(window.devicePixelRatio || 1, 2) * this.renderScale; }

  /** Draw at `scale` of the device's pixel ratio (the canvas keeps its CSS size). */
  setRenderScale(scale) {
    this.renderScale = scale;
    if (this.renderer.getPixelRatio() !== this.pixelRatio()) this.renderer.setPixelRatio(this.pixelRatio());
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

  /** Stand `dist` metres in front of a panel, looking at its centre (the app's "face" a panel). */
  facePanel(id, dist) {
    const view = this.panels.get(id);
    if (!view) return false;
    view.group.updateMatrixWorld(true);
    const centre = view.group.getWorldPosition(new THREE.Vector3());
    const n = new THREE.Vector3(0, 0, 1).applyQuaternion(view.group.getWorldQuaternion(new THREE.Quaternion()));
    n.y = 0;
    if (n.lengthSq() < 1e-6) n.set(0, 0, 1);
    n.normalize();
    const spot = centre.clone().addScaledVector(n, dist);
    this.rig.position.set(spot.x, spot.y - 1.6, spot.z);
    this.look(THREE.MathUtils.radToDeg(-Math.atan2(n.x, n.z)), 0);
    return true;
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
        view.graph = null; view.cloud = null; view.decoded = null;
        if (kind === 'note') { view.setFace(quad(paintNote(sourceText ?? '(empty note)', W, H), size), 'drawn'); return; }
        view.setFace(quad(paintMessage('…', 'waiting for content…', W, H, false), size), 'waiting');
        view.placeholders += 1;
        return;
      }
      let decoded;
      try { decoded = decodeContent(blob); } catch (e) { throw new Error(`content blob is corrupt: ${e.message}`); }
      const { meta, arrays } = decoded;
      if (meta.kind !== undefined && meta.kind !== kind) throw new Error(`blob holds '${meta.kind}' content but the panel shows '${kind}'`);
      view.graph = null; view.cloud = null; view.decoded = null;
      if (kind === 'model_graph') {
        if (!Array.isArray(meta.nodes)) throw new Error('a model_graph blob needs meta.nodes (a list)');
        const g = new GraphFace(meta, size, view.collapsed);
        view.setFace(g.group, 'drawn');
        view.graph = g;
      } else if (kind === 'latent_cloud') {
        const c = new CloudFace(meta, arrays, size);
        view.setFace(c.group, 'drawn');
        view.cloud = c;
      } else {
        const painter = PAINTERS[kind];
        if (!painter) throw new Error(`no view for panel kind '${kind}'`);
        view.setFace(quad(painter(meta, arrays, W, H), size), 'drawn');
        view.decoded = { meta, arrays };
      }
    } catch (e) {
      const msg = String(e && e.message ? e.message : e).slice(0, 400);
      view.setFace(quad(paintMessage('Cannot show this panel', msg, W, H, true), size), 'error', msg);
    }
  }

  /** Repaint a painted kind from content that grew (a run's metrics panel between blobs). */
  repaint(view, kind, meta, arrays) {
    const [W, H] = textureSize(view.size);
    try {
      view.setFace(quad(PAINTERS[kind](meta, arrays, W, H), view.size), 'drawn');
    } catch (e) {
      const msg = String(e && e.message ? e.message : e).slice(0, 400);
      view.setFace(quad(paintMessage('Cannot show this panel', msg, W, H, true), view.size), 'error', msg);
    }
  }

  /** Where the camera is in a panel's local frame (the cloud's level of detail). */
  viewerIn(view) {
    const p = new THREE.Vector3();
    this.camera.getWorldPosition(p);
    return view.group.worldToLocal(p);
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
    return this.pickRay(ray.ray);
  }

  /** The first panel a ray (world coordinates) meets: {id, point, distance}, or null. */
  pickRay(ray) {
    const caster = new THREE.Raycaster(ray.origin, ray.direction);
    caster.camera = this.camera; // title sprites need it
    const hits = caster.intersectObjects([...this.panels.values()].map((v) => v.group), true);
    for (const h of hits) {
      if (h.object.isLine || h.object.isPoints) continue; // their pick distance is loose (1 m): faces decide
      let o = h.object;
      while (o && !o.userData.panelId) o = o.parent; // faces rebuilt in place (a graph's groups) add children
      if (o) return { id: o.userData.panelId, point: h.point, distance: h.distance };
    }
    return null;
  }

  /** Where the ray through a screen point (NDC) meets a panel's face plane, panel-local (or null). */
  facePoint(view, ndc) {
    const ray = new THREE.Raycaster();
    ray.setFromCamera(ndc, this.camera);
    return this.rayFacePoint(view, ray.ray);
  }

  /** Where a ray (world coordinates) meets a panel's face plane, panel-local (or null). */
  rayFacePoint(view, ray) {
    view.group.updateMatrixWorld(true);
    const normal = new THREE.Vector3(0, 0, 1).applyQuaternion(view.group.getWorldQuaternion(new THREE.Quaternion()));
    const plane = new THREE.Plane().setFromNormalAndCoplanarPoint(normal, view.group.getWorldPosition(new THREE.Vector3()));
    const p = ray.intersectPlane(plane, new THREE.Vector3());
    return p ? view.group.worldToLocal(p) : null;
  }

  /** Where a panel-local point (x, y, z) is on the screen, in CSS pixels (null: no such panel). */
  screenPoint(id, x, y, z = 0) {
    const view = this.panels.get(id);
    if (!view) return null;
    view.group.updateMatrixWorld(true);
    const v = view.group.localToWorld(new THREE.Vector3(x, y, z)).project(this.camera);
    const el = this.renderer.domElement;
    return [((v.x + 1) / 2) * el.clientWidth, ((1 - v.y) / 2) * el.clientHeight];
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
