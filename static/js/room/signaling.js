// The room's socket (docs/SIGNALING.md): one per participant, heartbeats with acks, and a
// reconnect with exponential backoff and full jitter that keeps the participant's place (the
// server treats a reconnect within its 20 s grace as a resume, not a new join).
//
// A socket can die without closing: a network that drops packets (or a browser holding them,
// as Chromium's offline mode does) leaves it "open" while nothing gets through. So every
// heartbeat must be acknowledged within ACK_TIMEOUT_MS, or the socket is given up and a new
// one is opened. Frames the dead socket still holds may reach the server later or never; the
// new socket replaces it there, and media reports carry their own time (`since`).
//
// Messages that must arrive (the media reports metering reads) go through `deliver`: they are
// kept until a heartbeat sent after them is acknowledged (the server handles a socket's
// frames in order, so its ack says it has handled them), and sent again on the next socket
// otherwise. A repeated report is harmless: the server ignores a state it already has. One
// the server answers `unavailable` or `server_error` (PostgreSQL restarting) is not taken: the
// outbox goes again OUTBOX_RETRY_MS later on the same socket, and each report carries the time
// of its change (`since`), so it is stored as if it had arrived the first time.
//
// Joining fast: while the person is on the preflight, `prepare` opens a socket with
// `?join=later`. The server authenticates it and keeps it out of the room (no presence, no
// peer sees it) until the click sends `join`, so the click costs one small message instead
// of a handshake and a session lookup. A socket opened after the click (no standby ready, a
// reconnect) is admitted at connect, as before.

const PROTOCOL_VERSION = 1;
const ACK_TIMEOUT_MS = 2500;
const BACKOFF_BASE_MS = 250;
const BACKOFF_CAP_MS = 2000;
const OUTBOX_RETRY_MS = 1000;
// Messages whose refusal by a server in trouble means "send it again".
const DELIVERED = new Set(["media_state"]);

// Close codes that end the conversation for good (the page says why); everything else retries.
const FINAL_CLOSES = {
  1000: "left",
  4000: "ended",
  4001: "replaced",
  4002: "removed",
  4401: "login_required",
  4402: "not_paid",
  4403: "not_participant",
  4404: "room_not_found",
  4406: "forbidden_origin",
  4409: "room_full",
  4410: "room_ended",
  4423: "blocked",
  4424: "removed",
};
const TOO_EARLY = 4425;
// The server's wait for `join` ended (SIGNALING_JOIN_WAIT_SECONDS): the standby is replaced.
const JOIN_TIMEOUT = 4408;
// A standby that failed any other way (the network, signaling briefly down) is tried again
// this much later; the click does not wait for it, it dials at once.
const STANDBY_REDIAL_MS = 10000;
// A standby may have died silently while the person was on the preflight (a laptop's sleep, a
// network change): a `join` it carried that gets neither `welcome` nor a refusal in this long
// is given up for a fresh socket. Generous, because an admission under load takes seconds.
const JOIN_ANSWER_MS = 5000;
// Refusals worth trying again later, not at the backoff: the server allows at most 6 joins
// per participant and room in 10 s (too_many_joins); signaling itself is briefly down
// (unavailable: Redis). The call's media goes on peer to peer meanwhile.
const RETRY_AFTER_MS = { 4429: 10000, 4503: 2000 };
// The page's own pace stays under the server's join limit: at most JOINS_PER_WINDOW
// admissions in JOIN_WINDOW_MS, whatever the network does.
const JOINS_PER_WINDOW = 5;
const JOIN_WINDOW_MS = 10000;

export class Signaling {
  /**
   * @param {object} options
   * @param {string} options.path      the socket's path, /ws/rooms/<id>/
   * @param {(message: object) => void} options.onMessage   every server message but acks
   * @param {(state: string, detail?: object) => void} options.onState
   *   "connecting" | "open" | "reconnecting" | "closed" (detail.reason: a FINAL_CLOSES value
   *   or "too_early", with the server's error message when it sent one). Neither is called
   *   for a standby socket before the click.
   * @param {number} [options.clockOffsetMs]  server clock minus ours, until a heartbeat says
   */
  constructor({ path, onMessage, onState, clockOffsetMs = 0 }) {
    this.url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${path}`;
    this.onMessage = onMessage;
    this.onState = onState;
    this.socket = null;
    // Whether this.socket was opened with ?join=later and has not sent `join` yet.
    this.socketWaits = false;
    // The person clicked Join: the socket is to be in the room (before, only a standby).
    this.wanted = false;
    this.standbyTimer = null;
    // A standby was refused for good (a lapsed login): none again; the click shows why.
    this.standbyRefused = false;
    this.joinTimer = null;
    this.attempt = 0;
    this.stopped = false;
    this.heartbeatTimer = null;
    this.ackTimer = null;
    this.retryTimer = null;
    this.lastError = null;
    // Server clock minus local clock, in ms, from the heartbeat round trips.
    this.clockOffsetMs = clockOffsetMs;
    // When this page was last admitted (welcome), newest last.
    this.joins = [];
    this.notBefore = 0;
    // What `deliver` was given and the server has not confirmed, oldest first: { message,
    // sent } with the sent ones a prefix (sent on the current socket, after its welcome).
    this.outbox = [];
    // How many of the outbox's first entries the heartbeat awaiting its ack confirms.
    this.confirming = 0;
  }

  /** Before the click: a socket that is authenticated and waits, in nothing, for `join`. */
  prepare() {
    if (this.wanted || this.stopped || this.socket || this.standbyTimer || this.standbyRefused) {
      return;
    }
    this.open({ later: true });
  }

  /** Join (and every reconnect): over the standby if there is one, else a socket admitted at
   * connect. */
  connect() {
    this.wanted = true;
    this.stopped = false;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    clearTimeout(this.standbyTimer);
    this.standbyTimer = null;
    this.onState(this.attempt ? "reconnecting" : "connecting");
    const socket = this.socket;
    if (socket && this.socketWaits && socket.readyState <= WebSocket.OPEN) {
      // Still opening: its `open` sends the join.
      if (socket.readyState === WebSocket.OPEN) this.sendJoin();
      return;
    }
    this.open({ later: false });
  }

  open({ later }) {
    const socket = new WebSocket(later ? `${this.url}?join=later` : this.url);
    this.socket = socket;
    this.socketWaits = later;
    this.lastError = null;
    socket.onopen = () => socket === this.socket && this.wanted && this.socketWaits && this.sendJoin();
    socket.onmessage = (event) => socket === this.socket && this.receive(event.data);
    socket.onclose = (event) => socket === this.socket && this.closed(event.code);
  }

  sendJoin() {
    this.socketWaits = false;
    if (!this.send({ type: "join" })) return;
    clearTimeout(this.joinTimer);
    this.joinTimer = setTimeout(() => this.giveUp(), JOIN_ANSWER_MS);
  }

  /** Server time now, as a Date (local clock corrected by the measured offset). */
  serverNow() {
    return new Date(Date.now() + this.clockOffsetMs);
  }

  send(message) {
    if (this.socket?.readyState !== WebSocket.OPEN) return false;
    this.socket.send(JSON.stringify({ v: PROTOCOL_VERSION, ...message }));
    return true;
  }

  /** Send `message` after the welcome, and again on the next socket until a heartbeat ack says
   * the server handled it. */
  deliver(message) {
    this.outbox.push({ message, sent: false });
    this.outboxFlush();
  }

  outboxFlush() {
    if (!this.welcomed()) return;
    for (const entry of this.outbox) {
      if (entry.sent) continue;
      if (!this.send(entry.message)) return;
      entry.sent = true;
    }
  }

  /** Leave on purpose: the server tells the peers at once instead of waiting out the grace. */
  leave() {
    this.send({ type: "leave" });
    this.stop();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.outboxTimer);
    this.stopHeartbeats();
    clearTimeout(this.retryTimer);
    clearTimeout(this.standbyTimer);
    this.standbyTimer = null;
    const socket = this.socket;
    this.socket = null;
    if (socket && socket.readyState <= WebSocket.OPEN) socket.close(1000);
  }

  receive(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return; // the server only sends JSON; anything else is not ours to act on
    }
    // A standby's `ready`, or why it closes: nothing for the page before the click (a refusal
    // that still holds comes again when the click dials).
    if (!this.wanted || message.type === "ready") return;
    if (message.type === "welcome") {
      this.attempt = 0;
      this.joins = [...this.joins, Date.now()].slice(-JOINS_PER_WINDOW);
      this.startHeartbeats(message.heartbeat_seconds);
      this.clockOffsetMs = Date.parse(message.server_time) - Date.now();
      this.onState("open");
      this.outboxFlush();
    } else if (message.type === "heartbeat_ack") {
      const now = Date.now();
      clearTimeout(this.ackTimer);
      this.ackTimer = null;
      this.outbox.splice(0, this.confirming);
      this.confirming = 0;
      if (this.heartbeatSentAt) {
        const midpoint = (this.heartbeatSentAt + now) / 2;
        this.clockOffsetMs = Date.parse(message.server_time) - midpoint;
      }
      return;
    } else if (message.type === "error" && !this.welcomed()) {
      this.lastError = message; // a refusal at connect: its close code follows
    } else if (
      message.type === "error" &&
      DELIVERED.has(message.ref) &&
      (message.code === "unavailable" || message.code === "server_error")
    ) {
      this.outboxRetry();
    }
    this.onMessage(message);
  }

  welcomed() {
    return this.heartbeatTimer !== null;
  }

  /** The server could not take a report (its database is back in a moment): the next ack
   * confirms nothing already sent, and the outbox goes again shortly. The socket's frames are
   * handled in order, so this error comes before the ack of any later heartbeat. */
  outboxRetry() {
    for (const entry of this.outbox) entry.sent = false;
    this.confirming = 0;
    clearTimeout(this.outboxTimer);
    this.outboxTimer = setTimeout(() => this.outboxFlush(), OUTBOX_RETRY_MS);
  }

  startHeartbeats(seconds) {
    this.stopHeartbeats();
    this.heartbeatTimer = setInterval(() => this.heartbeat(), (seconds || 5) * 1000);
  }

  /** This socket is over (or starts over at its welcome): whatever it carried unconfirmed goes
   * again on the next one. */
  stopHeartbeats() {
    for (const entry of this.outbox) entry.sent = false;
    this.confirming = 0;
    clearInterval(this.heartbeatTimer);
    clearTimeout(this.ackTimer);
    clearTimeout(this.joinTimer);
    this.joinTimer = null;
    this.heartbeatTimer = null;
    this.ackTimer = null;
  }

  heartbeat() {
    if (this.ackTimer) return; // the previous one is still within its deadline
    this.heartbeatSentAt = Date.now();
    if (!this.send({ type: "heartbeat" })) return;
    this.confirming = this.outbox.filter((entry) => entry.sent).length;
    this.ackTimer = setTimeout(() => this.giveUp(), ACK_TIMEOUT_MS);
  }

  /** The socket looks open but nothing comes back: drop it and dial again. */
  giveUp() {
    const socket = this.socket;
    this.socket = null;
    this.stopHeartbeats();
    if (socket) {
      socket.onmessage = socket.onclose = null;
      socket.close(4999); // ours: "gave up waiting"; the server may never see it
    }
    this.retry();
  }

  closed(code) {
    this.socket = null;
    this.stopHeartbeats();
    if (this.stopped) return;
    if (!this.wanted) {
      // The standby went: a new one, at once if the server only ended its wait. After a
      // refusal that stands (a lapsed login) none: the click dials and shows it.
      if (code in FINAL_CLOSES) {
        this.standbyRefused = true;
        return;
      }
      const delay = code === JOIN_TIMEOUT ? 0 : STANDBY_REDIAL_MS;
      this.standbyTimer = setTimeout(() => {
        this.standbyTimer = null;
        this.prepare();
      }, delay);
      return;
    }
    if (code === JOIN_TIMEOUT) {
      // The join crossed the end of the server's wait: dial again, admitted at connect.
      this.connect();
      return;
    }
    if (code === TOO_EARLY) {
      this.onState("closed", { reason: "too_early", error: this.lastError });
      return;
    }
    if (code in FINAL_CLOSES) {
      this.stopped = true;
      this.onState("closed", { reason: FINAL_CLOSES[code], error: this.lastError, code });
      return;
    }
    // 1006 (network), 4008 (the server had swept us), a server restart, 4429, 4503…
    this.retry(RETRY_AFTER_MS[code] || 0);
  }

  /** Something says the network is back (media flows again): dial now, not at the backoff. */
  hurry() {
    if (this.stopped || this.socket || !this.retryTimer) return;
    if (Date.now() < this.notBefore) return; // the server asked us to wait, or our join pace
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.connect();
  }

  retry(atLeastMs = 0) {
    if (this.stopped) return;
    this.onState("reconnecting");
    // Full jitter: a room's worth of clients cut off together do not all come back at once.
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** this.attempt);
    this.attempt += 1;
    let floor = atLeastMs ? atLeastMs + Math.random() * BACKOFF_BASE_MS : 0;
    if (this.joins.length >= JOINS_PER_WINDOW) {
      // Admitted often lately (a flapping network): wait until the oldest leaves the window.
      floor = Math.max(floor, this.joins[0] + JOIN_WINDOW_MS - Date.now());
    }
    this.notBefore = Date.now() + floor;
    const delay = Math.max(floor, Math.random() * ceiling);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.connect();
    }, delay);
  }
}
