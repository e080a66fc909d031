// The frame layout of `nodehost serve` (docs/serve.md) and the RuntimeData wire format
// (docs/wire-format.md): name_len | name | zero padding to 8 | 256-byte header | payload.
export const HEADER_SIZE = 256;
const MAGIC = [0x4e, 0x48, 0x52, 0x44]; // "NHRD"
const KIND = { audio: 1, video: 2, text: 3, tensor: 4, eos: 15 };
const KIND_NAME = { 1: "audio", 2: "video", 3: "text", 4: "tensor", 15: "eos" };
const SAMPLE_FORMAT = { 1: "f32", 2: "s16" };

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

export function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

function prefixSize(nameLength) {
  return Math.ceil((1 + nameLength) / 8) * 8;
}

// One binary frame of mono or interleaved float32 audio for the session input `name`.
export function audioFrame(name, samples, sampleRate, channels, seq) {
  const nameBytes = encoder.encode(name);
  const offset = prefixSize(nameBytes.length);
  const buffer = new ArrayBuffer(offset + HEADER_SIZE + samples.byteLength);
  const bytes = new Uint8Array(buffer);
  bytes[0] = nameBytes.length;
  bytes.set(nameBytes, 1);
  const header = new DataView(buffer, offset, HEADER_SIZE);
  MAGIC.forEach((b, i) => header.setUint8(i, b));
  header.setUint16(4, 1, true);                       // version
  header.setUint16(6, HEADER_SIZE, true);             // header_size
  header.setUint8(8, KIND.audio);
  header.setBigUint64(16, BigInt(samples.byteLength), true);                 // payload_size
  header.setBigUint64(24, BigInt(Math.round(performance.now() * 1e6)), true); // timestamp_ns
  header.setBigUint64(32, BigInt(seq), true);
  header.setUint32(104, sampleRate, true);
  header.setUint16(108, channels, true);
  header.setUint8(110, 1);                            // f32
  header.setBigUint64(112, BigInt(samples.length / channels), true);         // frames
  const headerBytes = new Uint8Array(buffer, offset, HEADER_SIZE);
  header.setUint32(252, crc32(headerBytes.subarray(0, 252)), true);
  new Float32Array(buffer, offset + HEADER_SIZE).set(samples);
  return buffer;
}

// Parse a binary frame from the server: {name, dataType, ...} with `samples` (Float32Array,
// interleaved) for audio and `text` for text. Throws on anything that does not verify.
export function parseFrame(buffer) {
  const bytes = new Uint8Array(buffer);
  const nameLength = bytes[0];
  const offset = prefixSize(nameLength);
  if (!nameLength || bytes.length < offset + HEADER_SIZE) throw new Error("frame too short");
  const name = decoder.decode(bytes.subarray(1, 1 + nameLength));
  const headerBytes = bytes.subarray(offset, offset + HEADER_SIZE);
  const header = new DataView(buffer, offset, HEADER_SIZE);
  if (!MAGIC.every((b, i) => headerBytes[i] === b)) throw new Error("bad magic");
  if (crc32(headerBytes.subarray(0, 252)) !== header.getUint32(252, true)) {
    throw new Error("header CRC mismatch");
  }
  const dataType = KIND_NAME[header.getUint8(8)] || "unknown";
  const payloadSize = Number(header.getBigUint64(16, true));
  const payloadOffset = offset + HEADER_SIZE;
  if (payloadOffset + payloadSize !== bytes.length) throw new Error("payload size mismatch");
  const frame = { name, dataType, payloadSize };
  if (dataType === "audio") {
    frame.sampleRate = header.getUint32(104, true);
    frame.channels = header.getUint16(108, true);
    frame.sampleFormat = SAMPLE_FORMAT[header.getUint8(110)];
    frame.frames = Number(header.getBigUint64(112, true));
    if (frame.sampleFormat === "f32") {
      frame.samples = new Float32Array(buffer, payloadOffset, payloadSize / 4);
    } else {
      const pcm = new Int16Array(buffer, payloadOffset, payloadSize / 2);
      frame.samples = Float32Array.from(pcm, (v) => v / 32768);
    }
  } else if (dataType === "text") {
    frame.text = decoder.decode(bytes.subarray(payloadOffset));
  }
  return frame;
}
