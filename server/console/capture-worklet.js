// AudioWorklet: microphone samples (the context's rate, usually 48 kHz) -> 16 kHz mono PCM16,
// posted to the page in 100 ms frames (1600 samples, 3200 bytes) as transferable ArrayBuffers.
//
// Resampling averages the input samples that fall into each output sample's interval (a box
// low-pass filter plus decimation): exact for 48 kHz -> 16 kHz (3:1), close for 44.1 kHz.

const OUT_RATE = 16000;
const FRAME_SAMPLES = OUT_RATE / 10;

class Pcm16Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / OUT_RATE; // input samples per output sample
    this.sum = 0;
    this.count = 0;
    this.progress = 0;
    this.frame = new Int16Array(FRAME_SAMPLES);
    this.filled = 0;
    this.running = true;
    this.port.onmessage = (event) => {
      if (event.data === "stop") this.running = false;
    };
  }

  emit(value) {
    const clamped = Math.max(-1, Math.min(1, value));
    this.frame[this.filled++] = clamped < 0 ? clamped * 0x8000 : clamped * 0x7fff;
    if (this.filled === FRAME_SAMPLES) {
      const buffer = this.frame.buffer;
      this.port.postMessage(buffer, [buffer]);
      this.frame = new Int16Array(FRAME_SAMPLES);
      this.filled = 0;
    }
  }

  process(inputs) {
    const input = inputs[0];
    if (input && input.length > 0) {
      const channels = input.length;
      const length = input[0].length;
      for (let i = 0; i < length; i++) {
        let sample = 0;
        for (let c = 0; c < channels; c++) sample += input[c][i];
        this.sum += sample / channels;
        this.count += 1;
        this.progress += 1;
        if (this.progress >= this.step) {
          this.emit(this.sum / this.count);
          this.progress -= this.step;
          this.sum = 0;
          this.count = 0;
        }
      }
    }
    return this.running;
  }
}

registerProcessor("pcm16-capture", Pcm16Capture);
