// XR controllers in an immersive session: a laser from each, the pointer the room sees, and the
// trigger to act on panels, as the app's XR rig does (scenes/xr): trigger on a panel and release
// without swinging the controller is a click (a graph's group expands or collapses); trigger,
// swing and release moves the panel along the ray, at the distance it was grabbed, for a
// participant who may edit (a viewer is told why not). Everything is read from the controllers
// three.js's WebXRManager keeps (their target-ray spaces), in the rig, so a summon or follow that
// moves the rig moves the hands with the head.
import * as THREE from 'three';

const LASER_M = 4; // a laser that meets nothing ends here
const CLICK_DEG = 2.5; // a press that turned the ray less than this is a click, not a drag
const MOVE_EVERY_MS = 100; // moves sent while dragging (the last one on release)

export class XRInput {
  /** `scene`: the RoomScene; `act`: { canEdit(), click(hit, local), move(id) -> Promise, refused() }. */
  constructor(scene, act) {
    this.scene = scene;
    this.act = act;
    this.hands = [0, 1].map((i) => this.hand(i));
    this.active = null; // the hand whose ray is the room's pointer (the last one to press, else the right)
    this.drag = null;
    this.clicks = 0;
    this.moves = 0;
  }

  hand(i) {
    const xr = this.scene.renderer.xr;
    const ctl = xr.getController(i);
    const geo = new THREE.BufferGeometry().setFromPoints([new THREE.Vector3(0, 0, 0), new THREE.Vector3(0, 0, -1)]);
    const laser = new THREE.Line(geo, new THREE.LineBasicMaterial({ color: 0xff3355 }));
    laser.scale.z = LASER_M;
    laser.visible = false;
    ctl.add(laser);
    this.scene.rig.add(ctl); // in the rig: a summon moves the hands with the head
    const h = { ctl, laser, handedness: null, connected: false, hit: null, press: null };
    ctl.addEventListener('connected', (e) => { h.connected = true; h.handedness = e.data && e.data.handedness; laser.visible = true; });
    ctl.addEventListener('disconnected', () => { h.connected = false; laser.visible = false; if (this.drag && this.drag.hand === h) this.drag = null; });
    ctl.addEventListener('selectstart', () => this.press(h));
    ctl.addEventListener('selectend', () => this.release(h));
    return h;
  }

  /** The hand's ray in world coordinates (three.js frame), or null when it is not tracked. */
  ray(h) {
    if (!h.connected) return null;
    h.ctl.updateMatrixWorld(true);
    const origin = new THREE.Vector3().setFromMatrixPosition(h.ctl.matrixWorld);
    const dir = new THREE.Vector3(0, 0, -1).transformDirection(h.ctl.matrixWorld);
    return new THREE.Ray(origin, dir);
  }

  /** Once per XR frame: lasers end where they meet a panel; a held panel follows its hand. */
  update(now) {
    for (const h of this.hands) {
      const r = this.ray(h);
      if (!r) continue;
      h.hit = this.scene.pickRay(r);
      h.laser.scale.z = h.hit ? Math.max(0.02, h.hit.distance) : LASER_M;
    }
    const d = this.drag;
    if (d) {
      const r = this.ray(d.hand);
      const view = r && this.scene.panels.get(d.id);
      if (view) {
        if (!d.moved && r.direction.angleTo(d.dir0) > THREE.MathUtils.degToRad(CLICK_DEG)) d.moved = true;
        if (d.moved) {
          view.group.position.copy(r.at(d.distance, new THREE.Vector3()).add(d.offset));
          if (now - d.lastSent > MOVE_EVERY_MS) { d.lastSent = now; this.send(d.id); }
        }
      }
    }
  }

  press(h) {
    this.active = h;
    const r = this.ray(h);
    const hit = r && this.scene.pickRay(r);
    if (!hit) return;
    const view = this.scene.panels.get(hit.id);
    if (!view) return;
    h.press = { hit, dir0: r.direction.clone(), ray: r.clone() };
    if (this.act.canEdit()) {
      this.drag = { hand: h, id: hit.id, distance: hit.distance, dir0: r.direction.clone(), moved: false, lastSent: 0,
        offset: view.group.position.clone().sub(hit.point) };
    }
  }

  release(h) {
    const press = h.press;
    h.press = null;
    const d = this.drag && this.drag.hand === h ? this.drag : null;
    if (d) this.drag = null;
    if (d && d.moved) { this.send(d.id); return; }
    if (!press) return;
    const r = this.ray(h);
    const turned = r ? r.direction.angleTo(press.dir0) : 0;
    if (turned > THREE.MathUtils.degToRad(CLICK_DEG)) return; // a viewer's swing: not a click either
    const view = this.scene.panels.get(press.hit.id);
    const local = view ? this.scene.rayFacePoint(view, press.ray) : null;
    this.clicks += 1;
    this.act.click(press.hit, local);
  }

  send(id) {
    this.moves += 1;
    return this.act.move(id);
  }

  /** The room's pointer: the active hand's ray (else the right hand's, else any), or null. */
  pointer() {
    const hands = [this.active, ...this.hands.filter((h) => h.handedness === 'right'), ...this.hands];
    for (const h of hands) {
      const r = h && this.ray(h);
      if (r) return { origin: r.origin, direction: r.direction, hit: h.hit };
    }
    return null;
  }

  summary() {
    const p = this.pointer();
    return { hands: this.hands.filter((h) => h.connected).map((h) => h.handedness), pointing: p && p.hit ? p.hit.id : null,
      dragging: this.drag ? this.drag.id : null, clicks: this.clicks, moves: this.moves };
  }
}
