// AudioWorklet for the microphone: mixes the input to mono, converts it to 16-bit PCM at the
// context's own rate (the server resamples, with a better filter than we could afford here)
// and posts about 100 ms at a time to the page, which sends it as a live audio frame.

class PcmCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    // ~100 ms per message: small enough for low latency, big enough to keep frames cheap.
    this.frame = new Int16Array(Math.round(sampleRate / 10));
    this.filled = 0;
    this.port.onmessage = (e) => {
      if (e.data === "flush") this.flush();
    };
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true;
    const n = channels[0].length;
    for (let i = 0; i < n; i++) {
      let sum = 0;
      for (let c = 0; c < channels.length; c++) sum += channels[c][i];
      const v = Math.max(-1, Math.min(1, sum / channels.length));
      this.frame[this.filled++] = v < 0 ? v * 0x8000 : v * 0x7fff;
      if (this.filled === this.frame.length) this.flush();
    }
    return true;
  }

  flush() {
    if (this.filled === 0) return;
    const out = this.frame.slice(0, this.filled);
    this.filled = 0;
    this.port.postMessage(out.buffer, [out.buffer]);
  }
}

registerProcessor("pcm-capture", PcmCapture);
