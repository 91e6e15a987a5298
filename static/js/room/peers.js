// One RTCPeerConnection per other participant (a mesh: at most four people), negotiated with
// the perfect-negotiation pattern: either side may make an offer at any time, and when two
// offers cross, the polite side (the higher participant id, as in rooms/tools/participant.py)
// gives way. The impolite side makes the first offer; the polite side attaches its camera and
// microphone to the transceivers that offer creates, so a call has one audio and one video
// line per direction, whoever joined first.

const STATS_EVERY_MS = 1000;
// No media packet for this long from a peer that was sending: the path is down, whatever ICE
// says yet (browsers take 5–7 s to call a silent connection "disconnected").
const STALLED_AFTER_MS = 1500;
// While a link is not reported up, its packets are looked for this often, not once a second:
// the server meters the link from the report, so a late one is call time left unbilled.
const PROBE_EVERY_MS = 200;
// How long after connecting before video quality is adapted to the network.
const SETTLE_MS = 10000;
const REPORT_STATS_EVERY_MS = 10000;
const RESTART_AFTER_DISCONNECTED_MS = 2000;
const RESTART_MIN_GAP_MS = 1500;
// Past this without media, even through the relay, the peer is called unreachable.
const UNREACHABLE_AFTER_MS = 20000;
// A weak network limits video to this and keeps audio whole.
const WEAK_VIDEO = { maxBitrate: 200_000, scaleResolutionDownBy: 2, maxFramerate: 15 };
const FULL_VIDEO = { maxBitrate: 1_500_000, scaleResolutionDownBy: 1, maxFramerate: 30 };
// The first picture. Chromium's bandwidth estimate starts near 300 kbit/s, too little for the
// camera's 720p: the encoder drops a 720p sender's first frames and steps down, so the first
// frame that goes out is 320x180 anyway, some 150 ms later (bench/join.py: the first remote
// frame 150 ms sooner when video starts small). Video starts at about this width and goes to
// full resolution once the estimate allows it, or once the call has settled (SETTLE_MS), when
// the weak-network rule takes over.
const START_VIDEO_WIDTH = 320;
const FULL_VIDEO_FROM_KBPS = 700;

function fingerprint(sdp) {
  return /^a=fingerprint:(.+)$/m.exec(sdp)?.[1]?.trim() || "";
}

export class PeerLink {
  /**
   * @param {object} options
   * @param {number} options.myId
   * @param {{id: number, name: string, role: string}} options.peer
   * @param {RTCIceServer[]} options.iceServers
   * @param {import("./signaling.js").Signaling} options.signaling
   * @param {MediaStream|null} options.stream   what this page sends (null: receive only)
   * @param {boolean} options.reportsMedia      the pair is expert–client: metering reads it
   * @param {(link: PeerLink) => void} options.onChange   status, quality or media changed
   */
  constructor({ myId, peer, iceServers, signaling, stream, reportsMedia, onChange }) {
    this.peer = peer;
    this.signaling = signaling;
    this.stream = stream;
    this.reportsMedia = reportsMedia;
    this.onChange = onChange;
    this.polite = myId > peer.id;
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.answerPending = false;
    this.tracksAttached = false;
    this.status = "connecting";
    this.quality = null;
    this.candidateType = "";
    this.remoteStream = new MediaStream();
    this.lastPacketAt = 0; // epoch ms of the last media packet from the peer
    this.lostSince = null;
    this.lastRestart = 0;
    this.restarts = 0;
    this.weak = false;
    this.goodSamples = 0;
    this.previous = null; // the last stats sample, for rates
    this.lastStatsReport = 0;
    this.mediaReported = null; // "connected" | "disconnected": what the server was last told
    this.closed = false;
    this.stalled = false;
    this.startingSmall = false; // video is still at its start resolution

    this.pc = new RTCPeerConnection({ iceServers, bundlePolicy: "max-bundle" });
    this.pc.onnegotiationneeded = () => this.negotiate();
    this.pc.onicecandidate = ({ candidate }) =>
      this.signal({ candidate: candidate ? candidate.toJSON() : null });
    this.pc.ontrack = ({ track }) => {
      this.remoteStream.addTrack(track);
      // Media has arrived: look now rather than at the next sample.
      track.onunmute = () => this.sample();
      this.onChange(this);
    };
    this.pc.onconnectionstatechange = () => this.connectionChanged();
    if (!this.polite) this.attachTracks();
    this.statsTimer = setInterval(() => this.sample(), STATS_EVERY_MS);
  }

  signal(data) {
    this.signaling.send({ type: "signal", to: this.peer.id, data });
  }

  /** Send what we have on one transceiver per kind; receive on it either way. */
  attachTracks() {
    this.tracksAttached = true;
    for (const kind of ["audio", "video"]) {
      const track = this.stream?.getTracks().find((t) => t.kind === kind) || null;
      const transceiver = this.pc
        .getTransceivers()
        .find((t) => t.receiver.track.kind === kind && !t.sender.track && !t.stopped);
      const startScale = kind === "video" && track ? this.startScale(track) : 1;
      if (transceiver) {
        // Created by the peer's offer: reuse it, so each kind has one line.
        if (track) {
          transceiver.sender.replaceTrack(track);
          transceiver.direction = "sendrecv";
          if (startScale > 1) this.startSmall(transceiver.sender, startScale);
        }
      } else if (track) {
        const sendEncodings = startScale > 1 ? [{ scaleResolutionDownBy: startScale }] : undefined;
        this.pc.addTransceiver(track, { direction: "sendrecv", streams: [this.stream], sendEncodings });
        this.startingSmall = startScale > 1;
      } else {
        this.pc.addTransceiver(kind, { direction: "recvonly" });
      }
    }
    this.prioritizeAudio();
  }

  /** How much to scale the camera down at the start (1: it is small enough already). */
  startScale(track) {
    const width = track.getSettings?.().width || 0;
    return Math.max(1, width / START_VIDEO_WIDTH);
  }

  /** On a transceiver the peer's offer created (it has its encoding by now). */
  async startSmall(sender, scale) {
    const parameters = sender.getParameters();
    if (!parameters.encodings?.length) return;
    parameters.encodings[0].scaleResolutionDownBy = scale;
    try {
      await sender.setParameters(parameters);
      this.startingSmall = true;
    } catch (error) {
      console.warn("parley: could not start video small", error);
    }
  }

  async negotiate() {
    try {
      this.makingOffer = true;
      await this.pc.setLocalDescription();
      this.signal({ description: this.pc.localDescription.toJSON() });
    } catch (error) {
      console.warn("parley: offer failed", error);
    } finally {
      this.makingOffer = false;
    }
  }

  /**
   * Whether a description comes from another RTCPeerConnection than the one we talk to: the
   * peer reloaded or took over from another tab, so its old connection (and DTLS session)
   * is gone, and an ICE restart cannot bring it back; the page builds a new link instead.
   * Every connection has its own certificate, so the fingerprint tells.
   */
  isFromNewConnection(data) {
    const current = this.pc.remoteDescription?.sdp;
    if (!data.description?.sdp || !current) return false;
    return fingerprint(data.description.sdp) !== fingerprint(current);
  }

  /** A `signal` from this peer: an offer, an answer or an ICE candidate. */
  async receive(data) {
    try {
      if (data.description) {
        const description = data.description;
        const readyForOffer =
          !this.makingOffer && (this.pc.signalingState === "stable" || this.answerPending);
        const collision = description.type === "offer" && !readyForOffer;
        this.ignoreOffer = !this.polite && collision;
        if (this.ignoreOffer) return;
        this.answerPending = description.type === "answer";
        await this.pc.setRemoteDescription(description); // rolls back our offer if colliding
        this.answerPending = false;
        if (description.type === "offer") {
          if (!this.tracksAttached) this.attachTracks();
          await this.pc.setLocalDescription();
          this.signal({ description: this.pc.localDescription.toJSON() });
        }
      } else if ("candidate" in data) {
        try {
          await this.pc.addIceCandidate(data.candidate || undefined);
        } catch (error) {
          if (!this.ignoreOffer) throw error;
        }
      }
    } catch (error) {
      // A stale answer after a rollback, a candidate of an abandoned generation: the next
      // restart brings both sides back in step.
      console.warn("parley: signal from", this.peer.id, "not applied", error);
    }
  }

  connectionChanged() {
    const state = this.pc.connectionState;
    if (state === "connected") {
      this.mediaUpdate();
    } else if (state === "disconnected" || state === "failed") {
      this.mediaUpdate();
      if (state === "failed") this.restart();
      else setTimeout(() => this.pc.connectionState === "disconnected" && this.restart(),
        RESTART_AFTER_DISCONNECTED_MS);
    }
  }

  /** Connected means ICE says so and media is arriving (when the peer sends any). */
  mediaUpdate() {
    const state = this.pc.connectionState;
    // Up means media arrives, not only that ICE found a path: a black screen is not a call.
    if (state === "connected" && this.lastPacketAt > 0 && !this.stalled) {
      this.connectedAt ??= Date.now();
      this.lostSince = null;
      this.restarts = 0;
      this.setStatus("connected");
      this.reportMedia("connected");
    } else if (state === "connected" && this.connectedAt == null && !this.lastPacketAt) {
      // ICE is up and the first packets are on their way: the call starting, not an outage
      // (the stats poll calls this again when they arrive). Nothing to report: media was never
      // up. If none ever come, the link turns unreachable as an outage would.
      this.lostSince ??= Date.now();
      this.setStatus(this.unreachable() ? "unreachable" : "connecting");
      this.probeSoon();
    } else if (state === "connected" || state === "disconnected" || state === "failed") {
      this.lostSince ??= Date.now();
      this.reportMedia("disconnected");
      this.setStatus(this.unreachable() ? "unreachable" : "reconnecting");
      if (state === "connected") this.probeSoon();
    }
    // "new" and "connecting" are the first setup; "closed" is reported by close().
  }

  unreachable() {
    return this.lostSince !== null && Date.now() - this.lostSince > UNREACHABLE_AFTER_MS;
  }

  /**
   * Restart ICE: new candidates, possibly a new path (a relay). An offer that went out on a
   * socket that died never gets its answer, so a pending one is rolled back first.
   */
  async restart({ force = false } = {}) {
    if (this.closed || Date.now() - this.lastRestart < RESTART_MIN_GAP_MS) return;
    // Never negotiated yet: there is nothing to restart, the first offer is on its way.
    if (!this.pc.currentRemoteDescription) return;
    if (!force && this.pc.connectionState === "connected" && !this.stalled) return;
    this.lastRestart = Date.now();
    this.restarts += 1;
    try {
      if (this.pc.signalingState === "have-local-offer") {
        await this.pc.setLocalDescription({ type: "rollback" });
      }
      this.pc.restartIce();
      if (this.pc.signalingState === "stable" && !this.makingOffer) await this.negotiate();
    } catch (error) {
      console.warn("parley: ICE restart failed", error);
    }
  }

  /**
   * The peer came back (`force`: it may be a new page, whose connection only a restart offer
   * reaches), or we did. An offer made while one of us was away went into a dead socket and
   * will never be answered: roll it back, so the next negotiation can happen; then restart
   * ICE if asked to or if media is not flowing.
   */
  async resync({ force = false } = {}) {
    this.lastRestart = 0;
    if (this.pc.signalingState === "have-local-offer") {
      try {
        await this.pc.setLocalDescription({ type: "rollback" });
      } catch (error) {
        console.warn("parley: rollback failed", error);
      }
    }
    if (force || this.pc.connectionState !== "connected" || this.stalled) await this.restart({ force });
  }

  setStatus(status) {
    if (status === this.status) return;
    this.status = status;
    this.onChange(this);
  }

  /** Tell the server (metering) that the media link with this peer went up or down. */
  reportMedia(state) {
    if (!this.reportsMedia || state === this.mediaReported) return;
    const message = { type: "media_state", peer: this.peer.id, state };
    if (state === "connected") {
      message.candidate_type = this.candidateType || undefined;
      // When it came up, in the server's clock: the report may go again later (a socket
      // that died, a server that could not take it) and must still start the link now.
      message.since = this.signaling.serverNow().toISOString();
    } else if (this.lastPacketAt) {
      // When media last arrived, in the server's clock: this report may sit in a dead
      // socket's buffer for a while, and the outage began before it was written.
      message.since = new Date(this.lastPacketAt + this.signaling.clockOffsetMs).toISOString();
    }
    this.mediaReported = state;
    // Kept until the server confirms it: a report written into a socket that turns out dead
    // goes again on the next one, or the link it ends would be billed through the outage.
    this.signaling.deliver(message);
  }

  /** When an inbound stream's last packet arrived, from its stats. */
  packetSeen(stat) {
    if (!stat.lastPacketReceivedTimestamp) return;
    // Epoch ms in current browsers; older ones count from the page's time origin.
    const at = stat.lastPacketReceivedTimestamp;
    this.lastPacketAt = Math.max(this.lastPacketAt, at < 1e12 ? performance.timeOrigin + at : at);
  }

  /** Media is not reported up while ICE is: look for its packets before the next sample. */
  probeSoon() {
    if (this.probeTimer || this.closed) return;
    this.probeTimer = setTimeout(async () => {
      this.probeTimer = null;
      if (this.closed || this.status === "connected") return;
      let report;
      try {
        report = await this.pc.getStats();
      } catch {
        return;
      }
      report.forEach((stat) => stat.type === "inbound-rtp" && this.packetSeen(stat));
      // As the sample would find it: packets arriving again end a stall.
      if (this.stalled && Date.now() - this.lastPacketAt <= STALLED_AFTER_MS) this.stalled = false;
      this.mediaUpdate();
    }, PROBE_EVERY_MS);
  }

  async sample() {
    if (this.closed) return;
    let report;
    try {
      report = await this.pc.getStats();
    } catch {
      return;
    }
    const now = Date.now();
    let rtt = null;
    let availableOut = null;
    let bytesIn = 0;
    let bytesOut = 0;
    let received = 0;
    let lost = 0;
    let remoteLoss = 0;
    let framesDecoded = 0;
    const byId = new Map();
    report.forEach((stat) => byId.set(stat.id, stat));
    for (const stat of byId.values()) {
      if (stat.type === "candidate-pair" && stat.nominated && stat.state === "succeeded") {
        rtt = stat.currentRoundTripTime ?? rtt;
        availableOut = stat.availableOutgoingBitrate ?? availableOut;
        const local = byId.get(stat.localCandidateId);
        if (local?.candidateType) this.candidateType = local.candidateType;
      } else if (stat.type === "inbound-rtp") {
        bytesIn += stat.bytesReceived || 0;
        received += stat.packetsReceived || 0;
        lost += Math.max(0, stat.packetsLost || 0);
        if (stat.kind === "video") framesDecoded += stat.framesDecoded || 0;
        this.packetSeen(stat);
      } else if (stat.type === "outbound-rtp") {
        bytesOut += stat.bytesSent || 0;
      } else if (stat.type === "remote-inbound-rtp") {
        remoteLoss = Math.max(remoteLoss, stat.fractionLost || 0);
        rtt ??= stat.roundTripTime ?? null;
      }
    }
    if (this.lastPacketAt > 0 && this.status !== "connected" && !this.stalled) this.mediaUpdate();
    const sample = { at: now, bytesIn, bytesOut, received, lost, framesDecoded };
    const before = this.previous;
    this.previous = sample;
    if (!before) return;
    const stalled = received > 0 && this.lastPacketAt > 0 && Date.now() - this.lastPacketAt > STALLED_AFTER_MS;
    if (stalled !== Boolean(this.stalled)) {
      this.stalled = stalled;
      this.mediaUpdate();
      if (stalled) setTimeout(() => this.stalled && this.restart(), RESTART_AFTER_DISCONNECTED_MS);
    }
    const seconds = (now - before.at) / 1000;
    const deltaReceived = received - before.received;
    const deltaLost = lost - before.lost;
    const loss = Math.max(
      remoteLoss,
      deltaReceived + deltaLost > 0 ? deltaLost / (deltaReceived + deltaLost) : 0,
    );
    this.metrics = {
      rttMs: rtt === null ? null : Math.round(rtt * 1000),
      loss,
      inKbps: Math.max(0, ((bytesIn - before.bytesIn) * 8) / 1000 / seconds),
      outKbps: Math.max(0, ((bytesOut - before.bytesOut) * 8) / 1000 / seconds),
      availableOutKbps: availableOut === null ? null : availableOut / 1000,
    };
    this.setQuality();
    this.adaptVideo();
    this.reportStats(now);
  }

  setQuality() {
    if (this.pc.connectionState !== "connected") return;
    const { rttMs, loss } = this.metrics;
    const rttValue = rttMs ?? 0;
    const quality =
      rttValue < 250 && loss < 0.02 ? "good" : rttValue < 500 && loss < 0.08 ? "fair" : "poor";
    if (quality !== this.quality) {
      this.quality = quality;
      this.onChange(this);
    }
  }

  /** On a weak network video gives way (bitrate, resolution, frame rate); audio never does. */
  async adaptVideo() {
    const { availableOutKbps } = this.metrics;
    const weakNow = this.quality === "poor" || (availableOutKbps !== null && availableOutKbps < 250);
    const settled = Date.now() - (this.connectedAt || Date.now()) >= SETTLE_MS;
    if (this.startingSmall && this.pc.connectionState === "connected") {
      // Full resolution as soon as the estimate carries it; after the settling time, what the
      // network carries then.
      if ((availableOutKbps ?? 0) >= FULL_VIDEO_FROM_KBPS || settled) {
        this.startingSmall = false;
        await this.limitVideo(settled && weakNow);
      }
      return;
    }
    // Bandwidth estimation starts low and ramps up over the first seconds of every call: only
    // a sustained shortage (three samples in a row, once the call has settled) is a weak
    // network. Changing the encoder on a guess would cost a keyframe for nothing.
    if (!settled) return;
    this.weakSamples = weakNow ? (this.weakSamples || 0) + 1 : 0;
    this.goodSamples = weakNow ? 0 : this.goodSamples + 1;
    if (this.weakSamples >= 3 && !this.weak) await this.limitVideo(true);
    else if (this.weak && this.goodSamples >= 10) await this.limitVideo(false);
  }

  async limitVideo(weak) {
    this.weak = weak;
    for (const sender of this.pc.getSenders()) {
      if (sender.track?.kind !== "video") continue;
      const parameters = sender.getParameters();
      if (!parameters.encodings?.length) continue;
      Object.assign(parameters.encodings[0], weak ? WEAK_VIDEO : FULL_VIDEO);
      try {
        await sender.setParameters(parameters);
      } catch (error) {
        console.warn("parley: could not change video limits", error);
      }
    }
    this.onChange(this);
  }

  async prioritizeAudio() {
    for (const sender of this.pc.getSenders()) {
      if (sender.track?.kind !== "audio") continue;
      const parameters = sender.getParameters();
      if (!parameters.encodings?.length) continue; // before negotiation; set again after
      parameters.encodings[0].priority = "high";
      parameters.encodings[0].networkPriority = "high";
      try {
        await sender.setParameters(parameters);
      } catch {
        // Not every browser takes priorities; audio still goes first in congestion control.
      }
    }
  }

  reportStats(now) {
    if (now - this.lastStatsReport < REPORT_STATS_EVERY_MS || this.pc.connectionState !== "connected") return;
    this.lastStatsReport = now;
    const { rttMs, loss, inKbps, outKbps } = this.metrics;
    const bound = (value, max) => Math.min(max, Math.max(0, value || 0));
    this.signaling.send({
      type: "stats",
      peer: this.peer.id,
      rtt_ms: bound(rttMs, 60000),
      packet_loss: bound(loss, 1),
      bitrate_in_kbps: bound(inKbps, 100000),
      bitrate_out_kbps: bound(outKbps, 100000),
      candidate_type: this.candidateType || undefined,
    });
  }

  /** Video frames decoded from this peer so far (0 when none arrived). */
  async framesDecoded() {
    let frames = 0;
    (await this.pc.getStats()).forEach((stat) => {
      if (stat.type === "inbound-rtp" && stat.kind === "video") frames += stat.framesDecoded || 0;
    });
    return frames;
  }

  /** Swap the outgoing track of one kind (device switch) on this connection. */
  async replaceTrack(kind, track) {
    const transceiver = this.pc.getTransceivers().find((t) => t.receiver.track.kind === kind);
    if (transceiver?.sender) await transceiver.sender.replaceTrack(track);
  }

  /** `report`: tell the server the media ended (not when the peer has left the room). */
  close({ report = true } = {}) {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.statsTimer);
    clearTimeout(this.probeTimer);
    if (report) this.reportMedia("disconnected");
    this.pc.close();
  }
}
