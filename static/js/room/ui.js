// The room page's DOM: one place that knows the ids of docs/CALL_PAGE.md.

export const $ = (selector) => document.querySelector(selector);

const STATUS_TEXT = {
  connecting: "connecting…",
  connected: "",
  reconnecting: "reconnecting…",
  unreachable: "cannot be reached",
};
const QUALITY_TEXT = { good: "good connection", fair: "fair connection", poor: "weak connection" };

export function show(element, visible = true) {
  if (element) element.hidden = !visible;
}

export function say(text) {
  $("#room-status").textContent = text;
}

export function banner(kind, text) {
  const element = $("#banner");
  if (!kind) {
    show(element, false);
    element.dataset.kind = "";
    return;
  }
  element.dataset.kind = kind;
  element.replaceChildren(...(Array.isArray(text) ? text : [text]));
  show(element);
}

/** The tile of one peer: video, name, status and connection quality. */
export function tile(peer) {
  let element = document.querySelector(`.peer[data-peer-id="${peer.id}"]`);
  if (!element) {
    element = document.createElement("figure");
    element.className = "peer";
    element.dataset.peerId = peer.id;
    const video = document.createElement("video");
    video.autoplay = true;
    video.playsInline = true;
    const caption = document.createElement("figcaption");
    const name = document.createElement("span");
    name.className = "peer-name";
    const state = document.createElement("span");
    state.className = "peer-state";
    const quality = document.createElement("span");
    quality.className = "peer-quality";
    const problem = document.createElement("p");
    problem.className = "peer-problem";
    problem.hidden = true;
    caption.append(name, " ", state, " ", quality);
    element.append(video, caption, problem);
    $("#peers").append(element);
  }
  element.querySelector(".peer-name").textContent =
    peer.role === "expert" ? `${peer.name} (expert)` : peer.name;
  show($("#peers-empty"), false);
  return element;
}

export function tileUpdate(link, serverSaysReconnecting) {
  const element = tile(link.peer);
  const status =
    link.status === "unreachable"
      ? "unreachable"
      : serverSaysReconnecting && link.status !== "connecting"
        ? "reconnecting"
        : link.status;
  element.dataset.status = status;
  element.querySelector(".peer-state").textContent = STATUS_TEXT[status] || "";
  const quality = element.querySelector(".peer-quality");
  quality.dataset.quality = link.quality || "";
  quality.textContent = link.quality && status === "connected" ? QUALITY_TEXT[link.quality] : "";
  if (link.weak && status === "connected") quality.textContent += " · video reduced to keep audio clear";
  const problem = element.querySelector(".peer-problem");
  problem.textContent =
    status === "unreachable"
      ? `We cannot reach ${link.peer.name}, not even through our relay server. Their network ` +
        "or a firewall may block calls: ask them to switch networks (a phone hotspot works) " +
        "or turn off a VPN. We keep trying."
      : "";
  show(problem, status === "unreachable");
  const video = element.querySelector("video");
  if (video.srcObject !== link.remoteStream) video.srcObject = link.remoteStream;
  // Tracks arrive after the element got the stream; a paused element would not render them.
  if (video.paused && link.remoteStream.getTracks().length) {
    video.play().catch(() => {}); // plays on the next gesture when autoplay is refused
  }
}

export function tileRemove(peerId) {
  document.querySelector(`.peer[data-peer-id="${peerId}"]`)?.remove();
  show($("#peers-empty"), !document.querySelector(".peer"));
}

export function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const rest = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${rest}` : `${m}:${rest}`;
}

export function money(amountMinor, currency) {
  const format = new Intl.NumberFormat(undefined, { style: "currency", currency });
  const digits = format.resolvedOptions().maximumFractionDigits;
  return format.format(amountMinor / 10 ** digits);
}

/** The line in a dialog that says how its action went: `kind` is "sent", "error" or null. */
export function dialogResult(element, kind, text) {
  element.dataset.result = kind || "";
  element.textContent = text || "";
}

/**
 * POST a form from the page without leaving it, asking for JSON (moderation/views.py answers
 * so). Resolves to the answer; rejects with an Error whose message is for the person.
 */
export async function postForm(form, csrfToken) {
  const body = new FormData(form); // before the caller disables anything: disabled fields are not sent
  let response;
  try {
    response = await fetch(form.action, {
      method: "POST",
      body,
      headers: { Accept: "application/json", "X-CSRFToken": csrfToken },
      credentials: "same-origin",
    });
  } catch {
    throw new Error("Parley could not be reached: check your connection and try again.");
  }
  const isJson = (response.headers.get("Content-Type") || "").includes("application/json");
  const answer = isJson ? await response.json().catch(() => ({})) : {};
  if (response.ok && isJson && !answer.error) return answer;
  if (answer.error) throw new Error(answer.error);
  // A login page after a redirect, or the CSRF refusal: the session or the page is stale.
  throw new Error(
    response.redirected || response.status === 403
      ? "Your login has expired or this page is out of date: reload it and try again."
      : `Parley could not do this just now (${response.status}): try again in a moment.`,
  );
}
