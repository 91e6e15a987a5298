// The room page (docs/CALL_PAGE.md): lobby and preflight, then the call, then its bill.
// This module owns the page's phase; the socket, the peer connections and the devices live
// in their own modules.

import { Devices, deviceProblem } from "./devices.js";
import { PeerLink } from "./peers.js";
import { runProbe } from "./probe.js";
import { Signaling } from "./signaling.js";
import {
  $,
  banner,
  clock,
  dialogResult,
  money,
  postForm,
  say,
  show,
  tileRemove,
  tileUpdate,
} from "./ui.js";

const config = JSON.parse($("#room-config").textContent);
const root = $("#room");
const devices = new Devices();
const links = new Map(); // peer id → PeerLink
const reconnectingPeers = new Set(); // the server says these dropped and may come back
// client id → seconds with working media while live: all of them (early minutes included, for
// the free minute) and those inside the booked time (priced per minute), for the cost
const connectedSeconds = new Map();
const bookedSeconds = new Map();
let room = { ...config };
let signaling = null;
let mode = null; // what this page sends: "full" | "audio" | "none"
let me = null;
let iceServers = config.iceServers;
let clockTimer = null;
let wasEarly = null; // whether the last clock tick was before the booked start
let stateTimer = null;
// "You blocked Ann.": once this page blocked someone during the call, what it says at the end.
let blockedNotice = null;
// Server clock minus ours, from the page's own timestamp, until the socket measures it better.
const clockSkew = Date.parse(config.serverTime) - Date.now();

// The early minutes are free (docs/ARCHITECTURE.md, Metering): the room may go live in the lobby,
// but the booked time, its clock and its cost start at the booked start and end at the booked end.
const FREE_BEFORE_START = "time before the start is free";

const REFUSALS = {
  login_required: "Your session has expired: log in again and reopen this link.",
  not_paid: "Your booking is not paid yet, so the room cannot admit you.",
  not_participant: "This link is for the expert and the clients booked into this session.",
  room_not_found: "This session does not exist.",
  forbidden_origin: "The call can only be opened from this site.",
  room_full: "Every place in this session is taken.",
  blocked: "You cannot join this session.",
  removed: "You were removed from this session.",
  room_ended: "This session has ended.",
};

function setPhase(phase) {
  root.dataset.phase = phase;
}

function serverNow() {
  return signaling ? signaling.serverNow() : new Date(Date.now() + clockSkew);
}

function signalingCreate() {
  return new Signaling({ path: config.socketPath, onMessage, onState, clockOffsetMs: clockSkew });
}

/** While Join is on offer, keep a socket ready for it (signaling.js, Joining fast): it is in
 * nothing until the click, which then sends one message. */
function standby(on) {
  if (on) {
    signaling ??= signalingCreate();
    signaling.prepare();
  } else if (signaling && !signaling.wanted) {
    signaling.stop();
    signaling = null;
  }
}

// --- lobby ----------------------------------------------------------------------------------

function lobbyUpdate() {
  root.dataset.roomState = room.state;
  const now = serverNow();
  const opensAt = new Date(room.lobbyOpensAt);
  const countdown = $("#countdown");
  if (room.state === "canceled") {
    standby(false);
    say("This session was canceled.");
    show($("#preflight"), false);
    show(countdown, false);
    return stopStatePolling();
  }
  if (room.state === "closed") {
    standby(false);
    return showSummary();
  }
  if (now < opensAt) {
    const startsIn = (new Date(room.startsAt) - now) / 1000;
    say("Too early: the room opens ten minutes before the start.");
    countdown.textContent = `Starts in ${clock(startsIn)}; you can join in ${clock((opensAt - now) / 1000)}.`;
    show(countdown);
    joinButtons(false, "The Join button turns on when the room opens.");
    return;
  }
  if (now < new Date(room.startsAt)) {
    // The room may go live as soon as both are in; the meter waits for the start.
    countdown.textContent = `Starts in ${clock((new Date(room.startsAt) - now) / 1000)} — ${FREE_BEFORE_START}.`;
    show(countdown);
  } else {
    show(countdown, false);
  }
  if (!config.seatPaid) {
    say("The room is open.");
    return joinButtons(false, "Pay for your reservation to join.");
  }
  say(room.state === "live" ? "The session is live: join when you are ready." :
    config.role === "expert" ? "The room is open: your clients can join once you are in." :
      "The room is open: join when you are ready.");
  joinButtons(true, "");
}

function joinButtons(enabled, hint) {
  for (const id of ["#join", "#join-audio-only", "#join-no-devices"]) $(id).disabled = !enabled;
  $("#join-hint").textContent = hint;
  standby(enabled);
}

async function pollState() {
  try {
    const response = await fetch(config.stateUrl, { headers: { Accept: "application/json" } });
    if (response.ok) room = { ...room, ...(await response.json()) };
  } catch {
    // Offline for a moment: the countdown goes on from what we know.
  }
  if (["lobby", "left"].includes(root.dataset.phase)) lobbyUpdate();
}

function stopStatePolling() {
  clearInterval(stateTimer);
  stateTimer = null;
}

// --- preflight ------------------------------------------------------------------------------

async function devicesOn() {
  try {
    const stream = await devices.open({
      audio: true,
      video: true,
      audioId: $("#mic-select").value,
      videoId: $("#camera-select").value,
    });
    mode = "full";
    show($("#devices-denied"), false);
    show($("#devices"));
    $("#preview").srcObject = stream;
    await devices.fillPicker($("#camera-select"), "video");
    await devices.fillPicker($("#mic-select"), "audio");
    devices.meter($("#mic-level"));
    $("#devices-on").textContent = "Camera and microphone are on";
    $("#devices-on").disabled = true;
    return true;
  } catch (error) {
    const problem = deviceProblem(error);
    $("#devices-denied-detail").textContent = problem.text;
    $("#devices-denied").querySelector("strong").textContent = problem.denied
      ? "Your browser blocked the camera or microphone."
      : "The camera and microphone could not start.";
    show($("#devices-denied"));
    show($("#join-audio-only"));
    show($("#join-no-devices"));
    return false;
  }
}

async function probe() {
  const result = $("#probe-result");
  $("#probe-run").disabled = true;
  result.dataset.verdict = "";
  result.textContent = "Testing your connection to Parley (about 5 seconds)…";
  try {
    const outcome = await runProbe({
      url: config.probeUrl,
      csrfToken: config.csrfToken,
      iceServers,
    });
    result.dataset.verdict = outcome.verdict;
    const path = outcome.candidateType === "relay" ? "through a relay" : "direct";
    const facts = !outcome.connected
      ? "No connection."
      : outcome.rttMs === null
        ? `Connected (${path}), but no test message came back.`
        : `Round trip ${outcome.rttMs} ms, ${(outcome.loss * 100).toFixed(1)} % loss, ` +
          `${path} (${outcome.candidateType}).`;
    result.textContent = `${{ good: "Good", warning: "Usable", bad: "Poor" }[outcome.verdict]}. ${facts} ${outcome.advice || ""}`;
  } catch (error) {
    result.dataset.verdict = "bad";
    result.textContent = `The test could not run: ${error.message || error}`;
  } finally {
    $("#probe-run").disabled = false;
  }
}

// --- the call -------------------------------------------------------------------------------

async function join(requested) {
  if (requested === "full" && mode !== "full" && !(await devicesOn())) return;
  if (requested === "audio") {
    try {
      await devices.open({ audio: true, video: false });
    } catch (error) {
      $("#devices-denied-detail").textContent =
        `${deviceProblem(error).text} You can still join without devices.`;
      show($("#devices-denied"));
      show($("#join-no-devices"));
      return;
    }
  }
  if (requested === "none") devices.close();
  mode = requested;
  stopStatePolling();
  devices.stopMeter();
  setPhase("joining");
  say("Joining…");
  // The join goes first; the page's own work below overlaps its round trip.
  signaling ??= signalingCreate();
  signaling.connect();
  show($("#preflight"), false);
  show($("#countdown"), false); // the call's own clock says when the booked time starts
  show($("#call"));
  show($("#after"), false);
  // The status line, the other's video, your picture and the controls in view at once.
  $("#room-status").scrollIntoView({ block: "start" });
  $("#self-view").srcObject = devices.stream;
  show($("#self-view"), mode === "full");
  controlsUpdate();
  await devices.fillPicker($("#camera-switch"), "video");
  await devices.fillPicker($("#mic-switch"), "audio");
}

function onState(state, detail = {}) {
  if (state === "reconnecting") {
    setPhase("reconnecting");
    say("Reconnecting…");
    banner("reconnecting", "Your connection dropped. Reconnecting… the call goes on as soon as it is back.");
  } else if (state === "open") {
    setPhase("call");
    if ($("#banner").dataset.kind === "reconnecting") banner(null);
    callStatus();
  } else if (state === "closed") {
    closedBy(detail);
  }
}

function closedBy({ reason, error }) {
  if (reason === "too_early") {
    // The lobby opened on the clock but the server has not opened the room yet.
    say("The room is opening…");
    setTimeout(() => signaling?.connect(), 3000);
  } else if (reason === "ended" || reason === "room_ended") {
    callOver();
    showSummary();
  } else if (reason === "replaced") {
    replaced();
  } else if (reason === "left") {
    // Our own leave; already handled.
  } else {
    callOver();
    setPhase(reason === "removed" ? "removed" : "refused");
    const text = error?.message || REFUSALS[reason] || "The room closed the connection.";
    say(text);
    banner("info", text);
  }
}

function onMessage(message) {
  switch (message.type) {
    case "welcome":
      return welcome(message);
    case "peer_joined":
      // Joining at the same moment, both may know each other from `welcome` already; the
      // link stays. A new page of a peer we know shows itself by its DTLS fingerprint.
      linkFor(message.peer);
      return callStatus();
    case "peer_left":
      return peerGone(message.peer_id);
    case "peer_reconnecting":
      reconnectingPeers.add(message.peer_id);
      return refresh(message.peer_id);
    case "peer_resumed":
      reconnectingPeers.delete(message.peer_id);
      links.get(message.peer_id)?.resync({ force: true });
      return refresh(message.peer_id);
    case "signal": {
      let link = links.get(message.from) || linkFor({ id: message.from, name: "Participant", role: "client" });
      if (link.isFromNewConnection(message.data)) link = linkFor(link.peer, { fresh: true });
      return link.receive(message.data);
    }
    case "room_state":
      room = {
        ...room,
        state: message.state,
        liveAt: message.live_at,
        startsAt: message.starts_at ?? room.startsAt,
        endsAt: message.ends_at,
      };
      root.dataset.roomState = room.state;
      return callStatus();
    case "warning":
      banner("warning", `${message.minutes_left} minute${message.minutes_left === 1 ? "" : "s"} left in this session.`);
      return setTimeout(() => $("#banner").dataset.kind === "warning" && banner(null), 15000);
    case "ended":
      room = { ...room, state: "closed", closeReason: message.reason };
      callOver();
      return showSummary(message.charge);
    case "replaced":
      return replaced();
    case "removed":
      callOver();
      setPhase("removed");
      say(message.message || `You were removed from this session: ${message.reason}`);
      return;
    case "error":
      if (message.ref === "end") banner("info", message.message);
      else console.warn("parley: the server refused a message", message);
      return;
    default:
      return;
  }
}

function peerGone(peerId) {
  reconnectingPeers.delete(peerId);
  links.get(peerId)?.close({ report: false });
  links.delete(peerId);
  tileRemove(peerId);
  callStatus();
}

function welcome(message) {
  me = message.you;
  iceServers = message.ice_servers;
  room = {
    ...room,
    state: message.room.state,
    liveAt: message.room.live_at,
    startsAt: message.room.starts_at,
    endsAt: message.room.ends_at,
  };
  root.dataset.roomState = room.state;
  const present = new Set(message.peers.map((peer) => peer.id));
  // Anyone who left while our socket was away is gone for good.
  for (const [id, link] of links) {
    if (!present.has(id)) {
      link.close();
      links.delete(id);
      tileRemove(id);
    }
  }
  reconnectingPeers.clear();
  for (const peer of message.peers) {
    if (peer.status === "reconnecting") reconnectingPeers.add(peer.id);
    const link = linkFor(peer);
    if (message.resumed) link.resync();
  }
  clockTimer ??= setInterval(tick, 1000);
  callStatus();
}

function linkFor(peer, { fresh = false } = {}) {
  let link = links.get(peer.id);
  if (link && fresh) {
    // A new join of someone we knew: their old connection is gone with their old page.
    link.close();
    link = null;
  }
  if (!link) {
    link = new PeerLink({
      myId: me.id,
      peer,
      iceServers,
      signaling,
      stream: mode === "none" ? null : devices.stream,
      reportsMedia: peer.role === "expert" || me.role === "expert",
      onChange: (changed) => refresh(changed.peer.id),
    });
    links.set(peer.id, link);
  } else if (peer.name !== "Participant") {
    link.peer = { ...link.peer, ...peer };
  }
  refresh(peer.id);
  return link;
}

function refresh(peerId) {
  const link = links.get(peerId);
  if (link?.status === "connected" && root.dataset.phase === "reconnecting") signaling?.hurry();
  if (link) tileUpdate(link, reconnectingPeers.has(peerId));
  callStatus();
}

function callStatus() {
  if (!["call", "joining"].includes(root.dataset.phase)) return;
  const expertIn = [...links.values()].some((link) => link.peer.role === "expert");
  if (config.role === "client" && !expertIn) say("Waiting for the expert to join.");
  else if (config.role === "expert" && !links.size) say("Waiting for your client to join.");
  else if (room.state === "live" && serverNow() < new Date(room.startsAt)) {
    say(`Live, ahead of the start: ${FREE_BEFORE_START}.`);
  } else if (room.state === "live") say("Live.");
  else say("Connecting…");
}

function tick() {
  const now = serverNow();
  const start = new Date(room.startsAt);
  const end = new Date(room.endsAt);
  const early = now < start;
  // Before the start: how long until the booked time begins (the room may already be live).
  show($("#before-start"), early);
  if (early) $("#starts-in").textContent = clock((start - now) / 1000);
  if (early !== wasEarly) {
    // The status says "ahead of the start" until the start, then "Live.".
    wasEarly = early;
    callStatus();
  }
  // The booked time runs from the start (or from when the call went live, if later) to the
  // booked end: never more than the booked length remains.
  const meteredFrom = room.liveAt ? Math.max(start, new Date(room.liveAt)) : null;
  $("#elapsed").textContent =
    meteredFrom === null || now < meteredFrom ? "not started" : clock((now - meteredFrom) / 1000);
  $("#remaining").textContent = clock((end - Math.max(now, start)) / 1000);
  // Every live second counts toward the free minute; only those inside the booked time are priced.
  const inBookedTime = !early && now < end;
  for (const link of links.values()) {
    if (!room.liveAt || now >= end) break;
    if (link.status !== "connected") continue;
    const client = config.role === "expert" ? link.peer.id : link.peer.role === "expert" ? me.id : null;
    if (client === null) continue;
    connectedSeconds.set(client, (connectedSeconds.get(client) || 0) + 1);
    if (inBookedTime) bookedSeconds.set(client, (bookedSeconds.get(client) || 0) + 1);
  }
  const cost = $("#running-cost");
  if (cost) {
    // docs/RULES.md, What is billed: nothing under a minute connected in all (early minutes
    // included), else every started minute of the booked time, capped.
    let total = 0;
    for (const [client, seconds] of connectedSeconds) {
      const booked = bookedSeconds.get(client) || 0;
      if (seconds >= 60) total += Math.min(room.capMinor, room.priceMinor * Math.ceil(booked / 60));
    }
    cost.textContent = `about ${money(total, room.currency)}`;
  }
}

function controlsUpdate() {
  const audio = devices.track("audio");
  const video = devices.track("video");
  $("#mute").disabled = !audio;
  $("#camera-toggle").disabled = !video;
  $("#mute").setAttribute("aria-pressed", String(audio ? !audio.enabled : false));
  $("#mute").textContent = audio && !audio.enabled ? "Unmute" : "Mute";
  $("#camera-toggle").setAttribute("aria-pressed", String(video ? !video.enabled : false));
  $("#camera-toggle").textContent = video && !video.enabled ? "Start camera" : "Stop camera";
}

async function switchDevice(kind, deviceId) {
  try {
    const track = await devices.switchTo(kind, deviceId);
    for (const link of links.values()) await link.replaceTrack(kind, track);
    $("#self-view").srcObject = devices.stream;
  } catch (error) {
    banner("info", `Could not switch: ${deviceProblem(error).text}`);
  }
}

function callOver() {
  clearInterval(clockTimer);
  clockTimer = null;
  for (const link of links.values()) link.close();
  links.clear();
  signaling?.stop();
  devices.close();
  // A Report or Block dialog left open has nothing to act on any more.
  for (const dialog of document.querySelectorAll("#call dialog[open]")) dialog.close("cancel");
}

function replaced() {
  callOver();
  signaling = null;
  setPhase("replaced");
  say("You joined from another tab.");
  const again = document.createElement("button");
  again.type = "button";
  again.className = "link-button";
  again.textContent = "Use this tab instead";
  again.addEventListener("click", () => location.reload());
  banner("replaced", ["You joined from another tab, so this one has left the call. ", again]);
}

async function showSummary(charge) {
  setPhase("ended");
  root.dataset.roomState = "closed";
  say(blockedNotice || "This session has ended.");
  banner(null);
  show($("#preflight"), false);
  show($("#countdown"), false);
  show($("#call"), false);
  const after = $("#after");
  try {
    const response = await fetch(config.summaryUrl);
    if (!response.ok) throw new Error(response.statusText);
    after.innerHTML = await response.text();
  } catch {
    // The bill is in the database either way; say what the socket told us meanwhile.
    if (charge) {
      after.textContent = `The session has ended. Charged: ${money(charge.amount_minor, charge.currency)}. Reload for the details.`;
    }
  }
  show(after);
}

function leave() {
  signaling?.leave();
  callOver();
  signaling = null;
  setPhase("left");
  say("You left the call. You can rejoin while the session runs.");
  banner(null);
  show($("#call"), false);
  show($("#preflight"));
  mode = null;
  $("#devices-on").disabled = false;
  $("#devices-on").textContent = "Turn on camera and microphone";
}

// --- report and block, during the call (moderation/views.py answers the fetch in JSON) ------

const reportDialog = $("#report-dialog");
const blockDialog = $("#block-dialog");

function reportOpen() {
  const form = $("#report-call-form");
  form.reset();
  for (const field of form.querySelectorAll("select, textarea")) field.disabled = false;
  show($("#report-send"));
  $("#report-send").disabled = false;
  $("#report-cancel").textContent = "Cancel";
  dialogResult($("#report-result"), null, "");
  reportDialog.showModal();
}

async function reportSend(event) {
  event.preventDefault();
  const form = event.target;
  const send = $("#report-send");
  send.disabled = true;
  dialogResult($("#report-result"), null, "Sending…");
  try {
    const answer = await postForm(form, config.csrfToken);
    dialogResult($("#report-result"), "sent", answer.message);
    for (const field of form.querySelectorAll("select, textarea")) field.disabled = true;
    show(send, false);
    $("#report-cancel").textContent = "Close";
    $("#report-cancel").focus();
  } catch (error) {
    dialogResult($("#report-result"), "error", error.message);
    send.disabled = false;
  }
}

function blockOpen() {
  $("#block-call-form").reset();
  $("#block-confirm").disabled = false;
  dialogResult($("#block-result"), null, "");
  blockDialog.showModal();
}

async function blockSend(event) {
  event.preventDefault();
  const confirm = $("#block-confirm");
  confirm.disabled = true;
  dialogResult($("#block-result"), null, "Blocking…");
  try {
    const answer = await postForm(event.target, config.csrfToken);
    blockDialog.close("blocked");
    blockDone(answer);
  } catch (error) {
    dialogResult($("#block-result"), "error", error.message);
    confirm.disabled = false;
  }
}

/** The server has blocked, and is ending the call for the pair; this page follows at once
 * (whether or not its socket told it first) and says who was blocked. */
function blockDone({ message, outcome, blocked }) {
  blockedNotice = message;
  if (outcome === "ended") {
    // A private session: closed for both; the other side sees only that it ended.
    room = { ...room, state: "closed" };
    if (root.dataset.phase === "ended") return say(message);
    callOver();
    return showSummary();
  }
  if (outcome === "removed") {
    // A client left a group session by blocking its expert; the others go on.
    callOver();
    setPhase("removed");
    show($("#call"), false);
    return say(message);
  }
  if (outcome === "peer_removed") {
    // The expert blocked one client of a group session; the call goes on with the others.
    peerGone(blocked.id);
    $(`#block-call-user option[value="${blocked.id}"]`)?.remove();
    return banner("info", `${message} They have left the call.`);
  }
  banner("info", message);
}

// --- wiring ---------------------------------------------------------------------------------

$("#devices-on").addEventListener("click", devicesOn);
$("#devices-retry").addEventListener("click", devicesOn);
$("#camera-select").addEventListener("change", devicesOn);
$("#mic-select").addEventListener("change", devicesOn);
$("#probe-run").addEventListener("click", probe);
$("#join").addEventListener("click", () => join("full"));
$("#join-audio-only").addEventListener("click", () => join("audio"));
$("#join-no-devices").addEventListener("click", () => join("none"));
$("#mute").addEventListener("click", () => {
  const track = devices.track("audio");
  if (track) track.enabled = !track.enabled;
  controlsUpdate();
});
$("#camera-toggle").addEventListener("click", () => {
  const track = devices.track("video");
  if (track) track.enabled = !track.enabled;
  controlsUpdate();
});
$("#camera-switch").addEventListener("change", (event) => switchDevice("video", event.target.value));
$("#mic-switch").addEventListener("change", (event) => switchDevice("audio", event.target.value));
$("#leave").addEventListener("click", leave);
const endDialog = $("#end-dialog");
$("#end-for-all")?.addEventListener("click", () => endDialog.showModal());
endDialog?.addEventListener("close", () => {
  if (endDialog.returnValue === "end") signaling?.send({ type: "end" });
});
$("#report-open")?.addEventListener("click", reportOpen);
$("#report-cancel")?.addEventListener("click", () => reportDialog.close("cancel"));
$("#report-call-form")?.addEventListener("submit", reportSend);
$("#block-open")?.addEventListener("click", blockOpen);
$("#block-cancel")?.addEventListener("click", () => blockDialog.close("cancel"));
$("#block-call-form")?.addEventListener("submit", blockSend);
// No `leave` on pagehide: a reload or a dropped tab comes back as a resume within the grace.

window.parley = {
  links,
  /** Video frames decoded from each peer, by peer id (docs/CALL_PAGE.md). */
  async framesDecoded() {
    const result = {};
    for (const [id, link] of links) result[id] = await link.framesDecoded();
    return result;
  },
};

if (room.state === "closed") {
  setPhase("ended");
} else {
  lobbyUpdate();
  if (!["closed", "canceled"].includes(room.state)) {
    // Before the socket, the clock and an occasional look at the server keep the lobby true.
    setInterval(() => ["lobby", "left"].includes(root.dataset.phase) && lobbyUpdate(), 1000);
    stateTimer = setInterval(pollState, 30000);
  }
}
