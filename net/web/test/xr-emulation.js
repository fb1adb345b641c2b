// Test-only: a WebXR device for headless Chromium, which has no XR runtime on Linux.
// IWER (Meta's Immersive Web Emulation Runtime, from npm) installs a full WebXR runtime in
// the page — navigator.xr, XRSession, XRWebGLLayer, a frame loop, an emulated Quest 3 — so
// the page's own "Enter VR" code and three.js's WebXRManager run unchanged against it.
// The tests inject this bundle before the page's scripts (CDP
// Page.addScriptToEvaluateOnNewDocument); it is never served by the relay nor shipped.
import { XRDevice, metaQuest3 } from 'iwer';

const device = new XRDevice(metaQuest3, { stereoEnabled: true }); // both eyes, side by side
// Chromium has its own navigator.xr (with no device behind it on Linux): replace it.
device.installRuntime({ forceInstall: true });
window.__xrEmulation = {
  device,
  requests: [], // every requestSession(mode, init) the page made
};
const request = navigator.xr.requestSession.bind(navigator.xr);
navigator.xr.requestSession = (mode, init) => {
  window.__xrEmulation.requests.push({ mode, init: JSON.parse(JSON.stringify(init || {})) });
  return request(mode, init);
};
