// One recording from the microphone (and camera, in video mode) with MediaRecorder.
// It stops by itself after a long silence that follows speech, after a long stretch with
// no speech at all, or at the maximum length; stop() ends it when the person presses.

const AUDIO_TYPES = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/mp4", "audio/webm"];
const VIDEO_TYPES = [
  "video/webm;codecs=vp8,opus",
  "video/webm;codecs=vp9,opus",
  "video/mp4",
  "video/webm",
];
const TICK_MS = 100;
// This much sound above the level, in total, counts as someone having spoken.
const SPOKEN_MS = 400;

function pickType(video) {
  if (typeof MediaRecorder.isTypeSupported !== "function") return "";
  return (video ? VIDEO_TYPES : AUDIO_TYPES).find((t) => MediaRecorder.isTypeSupported(t)) || "";
}

export class Recording {
  /** Ask for the microphone (and camera) and start recording. */
  static async start(options) {
    const constraints = {
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      video: options.video ? { facingMode: "user", width: { ideal: 640 }, height: { ideal: 480 } } : false,
    };
    const stream = await navigator.mediaDevices.getUserMedia(constraints);
    try {
      return new Recording(stream, options);
    } catch (error) {
      // Never leave the microphone or camera on when recording could not start.
      for (const track of stream.getTracks()) track.stop();
      throw error;
    }
  }

  constructor(stream, { video, silenceSeconds, quietSeconds, maxSeconds, level, onAutoStop }) {
    this.stream = stream;
    this.video = video;
    this.reason = null;
    this.spokenMs = 0;
    this.chunks = [];
    const type = pickType(video);
    const settings = video
      ? { audioBitsPerSecond: 48000, videoBitsPerSecond: 600000 }
      : { audioBitsPerSecond: 48000 };
    this.recorder = new MediaRecorder(stream, type ? { mimeType: type, ...settings } : settings);
    this.done = new Promise((resolve) => {
      this.recorder.addEventListener("dataavailable", (event) => {
        if (event.data && event.data.size) this.chunks.push(event.data);
      });
      this.recorder.addEventListener("stop", () => {
        this.release();
        const mime = this.recorder.mimeType || type || (video ? "video/webm" : "audio/webm");
        resolve(new Blob(this.chunks, { type: mime }));
      });
    });
    this.recorder.start(1000);
    this.watch({ silenceSeconds, quietSeconds, maxSeconds, level, onAutoStop });
  }

  /** Watch the loudness to stop by itself; nothing here shows a countdown. */
  watch({ silenceSeconds, quietSeconds, maxSeconds, level, onAutoStop }) {
    const Context = window.AudioContext || window.webkitAudioContext;
    this.context = new Context();
    if (this.context.state === "suspended") this.context.resume();
    const source = this.context.createMediaStreamSource(this.stream);
    const analyser = this.context.createAnalyser();
    analyser.fftSize = 2048;
    source.connect(analyser);
    const samples = new Float32Array(analyser.fftSize);
    const started = performance.now();
    let lastSound = started;
    this.timer = setInterval(() => {
      analyser.getFloatTimeDomainData(samples);
      let sum = 0;
      for (const value of samples) sum += value * value;
      const rms = Math.sqrt(sum / samples.length);
      const now = performance.now();
      if (rms > level) {
        this.spokenMs += TICK_MS;
        lastSound = now;
      }
      const elapsed = (now - started) / 1000;
      let reason = null;
      if (elapsed >= maxSeconds) reason = "max";
      else if (this.spoke && (now - lastSound) / 1000 >= silenceSeconds) reason = "silence";
      else if (!this.spoke && elapsed >= quietSeconds) reason = "quiet";
      if (reason) {
        this.stop(reason);
        if (onAutoStop) onAutoStop(reason);
      }
    }, TICK_MS);
  }

  /** Whether anyone has spoken yet. */
  get spoke() {
    return this.spokenMs >= SPOKEN_MS;
  }

  /** Stop recording; `done` then resolves with the recording as a Blob. */
  stop(reason = "pressed") {
    clearInterval(this.timer);
    if (this.recorder.state !== "inactive") {
      this.reason = this.reason || reason;
      this.recorder.stop();
    }
    return this.done;
  }

  /** Turn the microphone and camera off between people. */
  release() {
    clearInterval(this.timer);
    for (const track of this.stream.getTracks()) track.stop();
    if (this.context && this.context.state !== "closed") this.context.close();
  }
}
