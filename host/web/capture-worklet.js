// Runs on the audio thread: cuts the microphone into chunks of `chunkFrames` mono samples
// (channel 0) and posts each to the page, which frames and sends it.
class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.chunkFrames = options.processorOptions.chunkFrames;
    this.buffer = new Float32Array(this.chunkFrames);
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) {
      let at = 0;
      while (at < channel.length) {
        const take = Math.min(channel.length - at, this.chunkFrames - this.filled);
        this.buffer.set(channel.subarray(at, at + take), this.filled);
        this.filled += take;
        at += take;
        if (this.filled === this.chunkFrames) {
          this.port.postMessage(this.buffer, [this.buffer.buffer]);
          this.buffer = new Float32Array(this.chunkFrames);
          this.filled = 0;
        }
      }
    }
    return true;
  }
}

registerProcessor("nodehost-capture", CaptureProcessor);
