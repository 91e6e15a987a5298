// Camera and microphone: asking for them, choosing them, and hearing that the microphone works.

// Speech needs these on: without echo cancellation a speaker's own voice comes back to them.
const AUDIO = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
const VIDEO = { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } };

/** Why getUserMedia failed, in words a person can act on. */
export function deviceProblem(error) {
  switch (error?.name) {
    case "NotAllowedError":
    case "SecurityError":
      return { denied: true, text: "Permission was refused." };
    case "NotFoundError":
    case "OverconstrainedError":
      return { denied: false, text: "No camera or microphone was found on this device." };
    case "NotReadableError":
    case "AbortError":
      return {
        denied: false,
        text: "The camera or microphone is in use by another app; close it and try again.",
      };
    default:
      return { denied: false, text: `The browser could not start them (${error?.name || error}).` };
  }
}

export class Devices {
  constructor() {
    this.stream = null;
    this.meterTimer = null;
    this.audioContext = null;
  }

  /** Ask for `kinds` ("audio", "video"); resolves to the stream, or throws the browser's error. */
  async open({ audio = true, video = true, audioId = "", videoId = "" } = {}) {
    const constraints = {
      audio: audio ? { ...AUDIO, ...(audioId ? { deviceId: { exact: audioId } } : {}) } : false,
      video: video ? { ...VIDEO, ...(videoId ? { deviceId: { exact: videoId } } : {}) } : false,
    };
    const stream = await navigator.mediaDevices.getUserMedia(constraints);
    this.close();
    this.stream = stream;
    return stream;
  }

  /** A new track of one kind from a chosen device, replacing the current one in the stream. */
  async switchTo(kind, deviceId) {
    const constraints =
      kind === "audio"
        ? { audio: { ...AUDIO, deviceId: { exact: deviceId } } }
        : { video: { ...VIDEO, deviceId: { exact: deviceId } } };
    const fresh = (await navigator.mediaDevices.getUserMedia(constraints)).getTracks()[0];
    const old = this.track(kind);
    if (old) {
      fresh.enabled = old.enabled;
      this.stream.removeTrack(old);
      old.stop();
    }
    this.stream ??= new MediaStream();
    this.stream.addTrack(fresh);
    return fresh;
  }

  track(kind) {
    return this.stream?.getTracks().find((track) => track.kind === kind) || null;
  }

  /** Fill a <select> with the devices of one kind, selecting the one in use. */
  async fillPicker(select, kind) {
    const devices = (await navigator.mediaDevices.enumerateDevices()).filter(
      (device) => device.kind === `${kind}input`,
    );
    const current = this.track(kind)?.getSettings().deviceId;
    select.replaceChildren(
      ...devices.map((device, index) => {
        const option = new Option(device.label || `${kind === "audio" ? "Microphone" : "Camera"} ${index + 1}`, device.deviceId);
        option.selected = device.deviceId === current;
        return option;
      }),
    );
    select.disabled = devices.length < 2;
  }

  /** Drive a <meter> from the microphone's loudness (RMS, 0–1), ten times a second. */
  meter(element) {
    this.stopMeter();
    const track = this.track("audio");
    if (!track) return;
    this.audioContext = new AudioContext();
    const source = this.audioContext.createMediaStreamSource(new MediaStream([track]));
    const analyser = this.audioContext.createAnalyser();
    analyser.fftSize = 512;
    source.connect(analyser);
    const samples = new Float32Array(analyser.fftSize);
    this.meterTimer = setInterval(() => {
      analyser.getFloatTimeDomainData(samples);
      const rms = Math.sqrt(samples.reduce((sum, x) => sum + x * x, 0) / samples.length);
      element.value = Math.min(1, rms * 4); // speech sits around 0.05–0.2 RMS
    }, 100);
  }

  stopMeter() {
    clearInterval(this.meterTimer);
    this.meterTimer = null;
    this.audioContext?.close();
    this.audioContext = null;
  }

  close() {
    this.stopMeter();
    this.stream?.getTracks().forEach((track) => track.stop());
    this.stream = null;
  }
}
