// The room page's connectivity test (docs/CALL_PAGE.md): a WebRTC connection to the server's
// aiortc peer (rooms/probe.py) through the same ICE servers as the call, pings on an unordered,
// unretransmitted data channel that the server echoes, so the loss seen is the network's own.
// The offer is sent once, with its candidates (no trickle): one POST does the negotiation.

const PING_MS = 100;
const GATHER_CAP_MS = 3000; // send what was gathered by then; a slow TURN server must not stall
const ANSWER_CAP_MS = 15000; // the server gathers too, at most ~5 s per unanswering ICE server
const CONNECT_CAP_MS = 10000;
const TAIL_MS = 1000; // a ping not echoed this long after the last one was sent is lost

const STUTTER = "Your connection should work, but the call may stutter at times.";
const ADVICE = {
  unreachable: "We could not reach Parley to run the test. Check your internet connection and try again.",
  // Chromium offers a page its network addresses only once it may use the camera or microphone
  // (before, only the default route's, and a computer with no network has none).
  noAddress:
    "Your browser offered no network address to connect from. Browsers offer them once the page may " +
    "use your camera or microphone: turn them on above, then test again. If it still fails, check " +
    "that this computer is connected to a network.",
  blocked:
    "We could not connect to the call server: a firewall, VPN or company network may be blocking calls. " +
    "Try turning off the VPN or switching to another network, such as a phone hotspot.",
  good: "Your connection looks good for a video call.",
  warning: `${STUTTER} Closing other apps that use the network or moving nearer the Wi-Fi router helps.`,
  lossy:
    "Too much of what you send gets lost, so video would freeze and sound would break up. " +
    "Move closer to your Wi-Fi router, pause downloads or other calls, or try another network.",
  slow: "Your connection is very slow to respond, so you would talk over each other. Try another network.",
  relay: "Your network needs a relay server; calls will work but may have a little more delay.",
};

// onProgress({phase: "gathering" | "connecting" | "measuring", fraction}) with fraction 0–1
// of the measurement. Resolves to {verdict, rttMs, loss, candidateType, advice, connected};
// rttMs is null when no ping came back, loss a fraction 0–1.
export async function runProbe({ url, csrfToken, iceServers, seconds = 5, onProgress = () => {} }) {
  const pc = new RTCPeerConnection({ iceServers });
  try {
    const channel = pc.createDataChannel("probe", { ordered: false, maxRetransmits: 0 });
    onProgress({ phase: "gathering", fraction: 0 });
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc, GATHER_CAP_MS);
    // Nothing to send from: no server, relay or network setting can help, and the call in this
    // state could not connect either, so say what would.
    if (!/^a=candidate:/m.test(pc.localDescription.sdp)) return unconnected(ADVICE.noAddress);
    onProgress({ phase: "connecting", fraction: 0 });
    const response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken },
      body: JSON.stringify({ type: pc.localDescription.type, sdp: pc.localDescription.sdp }),
      signal: AbortSignal.timeout(ANSWER_CAP_MS),
    }).catch(() => null);
    // A proxy's HTML error page counts as not reaching us; our own errors are JSON {"error"}.
    const body = await response?.json().catch(() => null);
    if (!body) return unconnected(ADVICE.unreachable);
    if (!response.ok) return unconnected(body.error || ADVICE.unreachable);
    const open = opened(pc, channel, CONNECT_CAP_MS); // listening before the answer can open it
    await pc.setRemoteDescription({ type: "answer", sdp: body.sdp });
    if (!(await open)) return unconnected(ADVICE.blocked);
    const { sent, rtts } = await measure(channel, seconds, onProgress);
    const candidateType = await selectedCandidateType(pc);
    const rttMs = rtts.length ? Math.round(median(rtts)) : null;
    const loss = Math.round((1 - rtts.length / sent) * 1000) / 1000;
    const verdict = verdictOf(rttMs, loss);
    const advice = adviceOf(verdict, loss, candidateType);
    return { verdict, rttMs, loss, candidateType, advice, connected: true };
  } finally {
    pc.close();
  }
}

// The thresholds of a call people can hold: under 150 ms round trip nobody notices the delay;
// from 400 ms they talk over each other. Audio hides ~2 % loss; from 10 % it breaks up.
export function verdictOf(rttMs, loss) {
  if (rttMs === null || rttMs >= 400 || loss >= 0.1) return "bad";
  if (rttMs < 150 && loss < 0.02) return "good";
  return "warning";
}

function adviceOf(verdict, loss, candidateType) {
  if (verdict === "bad") return loss >= 0.1 ? ADVICE.lossy : ADVICE.slow;
  if (candidateType === "relay") return verdict === "good" ? ADVICE.relay : `${STUTTER} ${ADVICE.relay}`;
  return ADVICE[verdict];
}

function unconnected(advice) {
  return { verdict: "bad", rttMs: null, loss: null, candidateType: null, advice, connected: false };
}

// Resolves when gathering completes, or after `ms` with the candidates found by then.
function gathered(pc, ms) {
  return new Promise((resolve) => {
    setTimeout(resolve, ms);
    const check = () => pc.iceGatheringState === "complete" && resolve();
    pc.addEventListener("icegatheringstatechange", check);
    check();
  });
}

// true when the channel opens within `ms`; false on timeout or a failed connection.
function opened(pc, channel, ms) {
  return new Promise((resolve) => {
    setTimeout(() => resolve(false), ms);
    channel.addEventListener("open", () => resolve(true));
    pc.addEventListener("connectionstatechange", () => pc.connectionState === "failed" && resolve(false));
  });
}

// Pings every PING_MS for `seconds`; one not sent because the channel closed counts as lost.
function measure(channel, seconds, onProgress) {
  const count = Math.max(1, Math.round((seconds * 1000) / PING_MS));
  const sentAt = new Map(); // seq → performance.now() at sending; deleted when echoed
  const rtts = [];
  let sent = 0;
  channel.onmessage = (event) => {
    const { seq } = JSON.parse(event.data); // the server echoes exactly what was sent
    if (!sentAt.has(seq)) return; // a duplicate
    rtts.push(performance.now() - sentAt.get(seq));
    sentAt.delete(seq);
  };
  return new Promise((resolve) => {
    const timer = setInterval(() => {
      const t = performance.now();
      sentAt.set(sent, t);
      if (channel.readyState === "open") channel.send(JSON.stringify({ seq: sent, t }));
      sent += 1;
      onProgress({ phase: "measuring", fraction: sent / count });
      if (sent < count) return;
      clearInterval(timer);
      setTimeout(() => {
        channel.onmessage = null;
        resolve({ sent, rtts });
      }, TAIL_MS);
    }, PING_MS);
  });
}

async function selectedCandidateType(pc) {
  const stats = await pc.getStats();
  let pair = null;
  stats.forEach((report) => {
    // Chrome and Safari name the pair on the transport; Firefox marks it `selected`.
    if (report.type === "transport" && report.selectedCandidatePairId) {
      pair = stats.get(report.selectedCandidatePairId);
    } else if (!pair && report.type === "candidate-pair" && report.selected) {
      pair = report;
    }
  });
  return (pair && stats.get(pair.localCandidateId)?.candidateType) || null;
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}
