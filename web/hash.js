// Checksums the upload needs, in plain JavaScript (no crypto.subtle: it exists only on
// HTTPS and localhost pages, and it cannot hash a file incrementally).
//
// - MD5 of the whole file: the `file_hash` of upload_request (docs/PROTOCOL.md §3.1),
//   computed block by block so a large file is never held in memory.
// - CRC-32 (IEEE, as zlib) of each chunk: the check of binary chunk frames of kind 0x04 (§5.1b).

// MD5 round constants: floor(abs(sin(i + 1)) * 2^32), written out (RFC 1321).
const K = new Int32Array([
  0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
  0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
  0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
  0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
  0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
  0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
  0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
  0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
]);

/** Incremental MD5: `update()` with any number of byte arrays, then `hex()`. */
export class Md5 {
  constructor() {
    this.state = new Int32Array([0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476]);
    this.block = new Uint8Array(64); // bytes waiting for a full 64-byte block
    this.blockLen = 0;
    this.length = 0; // total bytes hashed, for the final padding
  }

  /** Adds bytes (a Uint8Array). */
  update(bytes) {
    let offset = 0;
    this.length += bytes.length;
    if (this.blockLen > 0) {
      const take = Math.min(64 - this.blockLen, bytes.length);
      this.block.set(bytes.subarray(0, take), this.blockLen);
      this.blockLen += take;
      offset = take;
      if (this.blockLen < 64) return this;
      this.compress(this.block, 0);
      this.blockLen = 0;
    }
    for (; offset + 64 <= bytes.length; offset += 64) this.compress(bytes, offset);
    this.block.set(bytes.subarray(offset), 0);
    this.blockLen = bytes.length - offset;
    return this;
  }

  /** Finishes and returns the digest as 32 lowercase hex digits. */
  hex() {
    const bits = this.length * 8;
    const pad = new Uint8Array(((this.blockLen < 56 ? 56 : 120) - this.blockLen) + 8);
    pad[0] = 0x80;
    const view = new DataView(pad.buffer);
    view.setUint32(pad.length - 8, bits >>> 0, true);
    view.setUint32(pad.length - 4, Math.floor(bits / 0x100000000), true);
    const length = this.length;
    this.update(pad);
    this.length = length;
    let out = "";
    for (const word of this.state) {
      for (let i = 0; i < 4; i++) out += ((word >>> (8 * i)) & 0xff).toString(16).padStart(2, "0");
    }
    return out;
  }

  compress(bytes, at) {
    const word = (j) => bytes[at + j] | (bytes[at + j + 1] << 8) | (bytes[at + j + 2] << 16) | (bytes[at + j + 3] << 24);
    const w0 = word(0);
    const w1 = word(4);
    const w2 = word(8);
    const w3 = word(12);
    const w4 = word(16);
    const w5 = word(20);
    const w6 = word(24);
    const w7 = word(28);
    const w8 = word(32);
    const w9 = word(36);
    const w10 = word(40);
    const w11 = word(44);
    const w12 = word(48);
    const w13 = word(52);
    const w14 = word(56);
    const w15 = word(60);
    const st = this.state;
    let a = st[0], b = st[1], c = st[2], d = st[3];
    a = ff(a, b, c, d, w0, 7, K[0]);
    d = ff(d, a, b, c, w1, 12, K[1]);
    c = ff(c, d, a, b, w2, 17, K[2]);
    b = ff(b, c, d, a, w3, 22, K[3]);
    a = ff(a, b, c, d, w4, 7, K[4]);
    d = ff(d, a, b, c, w5, 12, K[5]);
    c = ff(c, d, a, b, w6, 17, K[6]);
    b = ff(b, c, d, a, w7, 22, K[7]);
    a = ff(a, b, c, d, w8, 7, K[8]);
    d = ff(d, a, b, c, w9, 12, K[9]);
    c = ff(c, d, a, b, w10, 17, K[10]);
    b = ff(b, c, d, a, w11, 22, K[11]);
    a = ff(a, b, c, d, w12, 7, K[12]);
    d = ff(d, a, b, c, w13, 12, K[13]);
    c = ff(c, d, a, b, w14, 17, K[14]);
    b = ff(b, c, d, a, w15, 22, K[15]);
    a = gg(a, b, c, d, w1, 5, K[16]);
    d = gg(d, a, b, c, w6, 9, K[17]);
    c = gg(c, d, a, b, w11, 14, K[18]);
    b = gg(b, c, d, a, w0, 20, K[19]);
    a = gg(a, b, c, d, w5, 5, K[20]);
    d = gg(d, a, b, c, w10, 9, K[21]);
    c = gg(c, d, a, b, w15, 14, K[22]);
    b = gg(b, c, d, a, w4, 20, K[23]);
    a = gg(a, b, c, d, w9, 5, K[24]);
    d = gg(d, a, b, c, w14, 9, K[25]);
    c = gg(c, d, a, b, w3, 14, K[26]);
    b = gg(b, c, d, a, w8, 20, K[27]);
    a = gg(a, b, c, d, w13, 5, K[28]);
    d = gg(d, a, b, c, w2, 9, K[29]);
    c = gg(c, d, a, b, w7, 14, K[30]);
    b = gg(b, c, d, a, w12, 20, K[31]);
    a = hh(a, b, c, d, w5, 4, K[32]);
    d = hh(d, a, b, c, w8, 11, K[33]);
    c = hh(c, d, a, b, w11, 16, K[34]);
    b = hh(b, c, d, a, w14, 23, K[35]);
    a = hh(a, b, c, d, w1, 4, K[36]);
    d = hh(d, a, b, c, w4, 11, K[37]);
    c = hh(c, d, a, b, w7, 16, K[38]);
    b = hh(b, c, d, a, w10, 23, K[39]);
    a = hh(a, b, c, d, w13, 4, K[40]);
    d = hh(d, a, b, c, w0, 11, K[41]);
    c = hh(c, d, a, b, w3, 16, K[42]);
    b = hh(b, c, d, a, w6, 23, K[43]);
    a = hh(a, b, c, d, w9, 4, K[44]);
    d = hh(d, a, b, c, w12, 11, K[45]);
    c = hh(c, d, a, b, w15, 16, K[46]);
    b = hh(b, c, d, a, w2, 23, K[47]);
    a = ii(a, b, c, d, w0, 6, K[48]);
    d = ii(d, a, b, c, w7, 10, K[49]);
    c = ii(c, d, a, b, w14, 15, K[50]);
    b = ii(b, c, d, a, w5, 21, K[51]);
    a = ii(a, b, c, d, w12, 6, K[52]);
    d = ii(d, a, b, c, w3, 10, K[53]);
    c = ii(c, d, a, b, w10, 15, K[54]);
    b = ii(b, c, d, a, w1, 21, K[55]);
    a = ii(a, b, c, d, w8, 6, K[56]);
    d = ii(d, a, b, c, w15, 10, K[57]);
    c = ii(c, d, a, b, w6, 15, K[58]);
    b = ii(b, c, d, a, w13, 21, K[59]);
    a = ii(a, b, c, d, w4, 6, K[60]);
    d = ii(d, a, b, c, w11, 10, K[61]);
    c = ii(c, d, a, b, w2, 15, K[62]);
    b = ii(b, c, d, a, w9, 21, K[63]);
    st[0] += a; st[1] += b; st[2] += c; st[3] += d;
  }
}

// The four MD5 round functions, each followed by add, rotate and add.
function ff(a, b, c, d, x, s, k) { return rot((a + ((b & c) | (~b & d)) + x + k) | 0, s, b); }
function gg(a, b, c, d, x, s, k) { return rot((a + ((b & d) | (c & ~d)) + x + k) | 0, s, b); }
function hh(a, b, c, d, x, s, k) { return rot((a + (b ^ c ^ d) + x + k) | 0, s, b); }
function ii(a, b, c, d, x, s, k) { return rot((a + (c ^ (b | ~d)) + x + k) | 0, s, b); }
function rot(x, s, b) { return (((x << s) | (x >>> (32 - s))) + b) | 0; }

const CRC_TABLE = (() => {
  const table = new Int32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c;
  }
  return table;
})();

/** CRC-32 (IEEE 802.3 / zlib) of a Uint8Array, as an unsigned 32-bit number. */
export function crc32(bytes) {
  let c = -1;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ -1) >>> 0;
}

/** MD5 of a Blob/File read in `blockSize` slices; `onProgress(bytesDone)` after each. */
export async function md5OfBlob(blob, onProgress = () => {}, blockSize = 4 << 20) {
  const md5 = new Md5();
  for (let at = 0; at < blob.size; at += blockSize) {
    const bytes = new Uint8Array(await blob.slice(at, at + blockSize).arrayBuffer());
    md5.update(bytes);
    onProgress(Math.min(blob.size, at + blockSize));
  }
  return md5.hex();
}
