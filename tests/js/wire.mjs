// A raw RFC 6455 client over node:net, and a small MessagePack codec, written from
// /work/shared/PROTOCOL.md alone (no project code): every byte the server sends or
// receives is in the test's hands, so that it can send what no WebSocket library would
// (bad UTF-8, oversize frames, a frame of the wrong kind) and read exact close codes.
import { randomBytes } from "node:crypto";
import net from "node:net";

const OP = { cont: 0, text: 1, binary: 2, close: 8, ping: 9, pong: 10 };

const sockets = new Set(); // every socket opened here and not yet closed

/** A socket to 127.0.0.1:`port`, known to destroySockets until it closes. */
function connectTo(port) {
  const socket = net.connect({ host: "127.0.0.1", port });
  sockets.add(socket);
  socket.once("close", () => sockets.delete(socket));
  return socket;
}

/** Destroys every socket still open: a test that failed before it closed its peers
 * would otherwise keep Node alive for as long as a server that outlives the file does. */
export function destroySockets() {
  for (const socket of sockets) socket.destroy();
}

/** One client frame (masked), as bytes. */
export function encodeFrame(opcode, payload, fin = true) {
  const len = payload.length;
  let head;
  if (len < 126) {
    head = Buffer.from([(fin ? 0x80 : 0) | opcode, 0x80 | len]);
  } else if (len < 65536) {
    head = Buffer.alloc(4);
    head[0] = (fin ? 0x80 : 0) | opcode;
    head[1] = 0x80 | 126;
    head.writeUInt16BE(len, 2);
  } else {
    head = Buffer.alloc(10);
    head[0] = (fin ? 0x80 : 0) | opcode;
    head[1] = 0x80 | 127;
    head.writeBigUInt64BE(BigInt(len), 2);
  }
  const mask = randomBytes(4);
  const body = Buffer.alloc(len);
  for (let i = 0; i < len; i++) body[i] = payload[i] ^ mask[i & 3];
  return Buffer.concat([head, mask, body]);
}

/**
 * A WebSocket connection. `next()` gives the next data message as
 * `{kind: "text"|"binary", data}`, or `{close: code, reason}` once the server closed
 * (code 1006 when the TCP connection ended without a close frame).
 */
export class RawSocket {
  constructor(socket, rest, headers) {
    this.socket = socket;
    this.headers = headers;
    this.buf = Buffer.alloc(0);
    this.queue = [];
    this.waiters = [];
    this.fragments = null;
    this.closed = null;
    socket.on("data", (chunk) => this.#feed(chunk));
    socket.on("error", () => {});
    socket.on("close", () => this.#end({ close: 1006, reason: "" }));
    if (rest.length) this.#feed(rest);
  }

  #push(item) {
    const waiter = this.waiters.shift();
    if (waiter) waiter(item);
    else this.queue.push(item);
  }

  #end(item) {
    if (this.closed) return;
    this.closed = item;
    this.#push(item);
    for (const waiter of this.waiters.splice(0)) waiter(item);
  }

  #feed(chunk) {
    this.buf = Buffer.concat([this.buf, chunk]);
    for (;;) {
      if (this.buf.length < 2) return;
      const fin = (this.buf[0] & 0x80) !== 0;
      const opcode = this.buf[0] & 0x0f;
      let len = this.buf[1] & 0x7f;
      let offset = 2;
      if (this.buf[1] & 0x80) throw new Error("the server masked a frame");
      if (len === 126) {
        if (this.buf.length < 4) return;
        len = this.buf.readUInt16BE(2);
        offset = 4;
      } else if (len === 127) {
        if (this.buf.length < 10) return;
        len = Number(this.buf.readBigUInt64BE(2));
        offset = 10;
      }
      if (this.buf.length < offset + len) return;
      const payload = this.buf.subarray(offset, offset + len);
      this.buf = this.buf.subarray(offset + len);
      this.#frame(fin, opcode, Buffer.from(payload));
    }
  }

  #frame(fin, opcode, payload) {
    if (opcode === OP.ping) {
      this.#write(encodeFrame(OP.pong, payload));
    } else if (opcode === OP.pong) {
      // unsolicited or ours: nothing to do
    } else if (opcode === OP.close) {
      const code = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
      const reason = payload.subarray(2).toString("utf8");
      this.#write(encodeFrame(OP.close, payload.subarray(0, 2)));
      this.#end({ close: code, reason });
      this.socket.end();
    } else if (opcode === OP.cont) {
      this.fragments.parts.push(payload);
      if (fin) this.#message(this.fragments.opcode, Buffer.concat(this.fragments.parts));
    } else if (!fin) {
      this.fragments = { opcode, parts: [payload] };
    } else {
      this.#message(opcode, payload);
    }
  }

  #message(opcode, payload) {
    if (opcode === OP.text) this.#push({ kind: "text", data: payload.toString("utf8") });
    else this.#push({ kind: "binary", data: payload });
  }

  #write(bytes) {
    if (!this.socket.destroyed && this.socket.writable) this.socket.write(bytes);
  }

  sendFrame(opcode, payload, fin = true) {
    this.#write(encodeFrame(opcode, Buffer.from(payload), fin));
  }
  sendText(text) {
    this.sendFrame(OP.text, Buffer.from(text, "utf8"));
  }
  sendBinary(bytes) {
    this.sendFrame(OP.binary, bytes);
  }
  sendJSON(obj) {
    this.sendText(JSON.stringify(obj));
  }
  close(code = 1000) {
    const payload = Buffer.alloc(2);
    payload.writeUInt16BE(code);
    this.sendFrame(OP.close, payload);
  }
  destroy() {
    this.socket.destroy();
  }

  /** The next message or close, within `ms`; rejects on timeout. */
  next(ms = 5000) {
    if (this.queue.length) return Promise.resolve(this.queue.shift());
    if (this.closed) return Promise.resolve(this.closed);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(new Error(`nothing from the server within ${ms} ms`));
      }, ms);
      const waiter = (item) => {
        clearTimeout(timer);
        resolve(item);
      };
      this.waiters.push(waiter);
    });
  }

  /** Whether nothing arrives within `ms`. */
  async quiet(ms) {
    try {
      const item = await this.next(ms);
      this.queue.unshift(item);
      return false;
    } catch {
      return true;
    }
  }
}

/**
 * Opens `path` on 127.0.0.1:`port`. Resolves `{status, headers, ws}` on 101, or
 * `{status, headers, body}` when the upgrade is refused.
 */
export function upgrade(port, path, { protocols, headers = {} } = {}) {
  return new Promise((resolve, reject) => {
    const socket = connectTo(port);
    const lines = [
      `GET ${path} HTTP/1.1`,
      `Host: 127.0.0.1:${port}`,
      "Upgrade: websocket",
      "Connection: Upgrade",
      `Sec-WebSocket-Key: ${randomBytes(16).toString("base64")}`,
      "Sec-WebSocket-Version: 13",
    ];
    if (protocols) lines.push(`Sec-WebSocket-Protocol: ${protocols.join(", ")}`);
    for (const [k, v] of Object.entries(headers)) lines.push(`${k}: ${v}`);
    let buf = Buffer.alloc(0);
    let parsed = null;
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no answer to the upgrade of ${path}`));
    }, 10000);
    const onData = (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      if (!parsed) {
        const end = buf.indexOf("\r\n\r\n");
        if (end < 0) return;
        const head = buf.subarray(0, end).toString("latin1").split("\r\n");
        const status = Number(head[0].split(" ")[1]);
        const hdrs = {};
        for (const line of head.slice(1)) {
          const i = line.indexOf(":");
          hdrs[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
        }
        parsed = { status, headers: hdrs };
        buf = buf.subarray(end + 4);
        if (status === 101) {
          clearTimeout(timer);
          socket.off("data", onData);
          resolve({ ...parsed, ws: new RawSocket(socket, buf, hdrs) });
        }
      }
    };
    socket.on("data", onData);
    socket.on("error", (e) => {
      clearTimeout(timer);
      if (!parsed) reject(e);
    });
    socket.on("end", () => {
      if (parsed && parsed.status !== 101) {
        clearTimeout(timer);
        resolve({ ...parsed, body: buf.toString("utf8") });
      }
    });
    socket.write(lines.join("\r\n") + "\r\n\r\n");
  });
}

/** A plain GET: `{status, headers, body}`. */
export function httpGet(port, path, { method = "GET", headers = {} } = {}) {
  return new Promise((resolve, reject) => {
    const socket = connectTo(port);
    const lines = [`${method} ${path} HTTP/1.1`, `Host: 127.0.0.1:${port}`, "Connection: close"];
    for (const [k, v] of Object.entries(headers)) lines.push(`${k}: ${v}`);
    let buf = Buffer.alloc(0);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no answer to GET ${path}`));
    }, 10000);
    socket.on("data", (chunk) => (buf = Buffer.concat([buf, chunk])));
    socket.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    socket.on("close", () => {
      clearTimeout(timer);
      const end = buf.indexOf("\r\n\r\n");
      const head = buf.subarray(0, end).toString("latin1").split("\r\n");
      const headersOut = {};
      for (const line of head.slice(1)) {
        const i = line.indexOf(":");
        headersOut[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
      }
      let body = buf.subarray(end + 4);
      if (/chunked/i.test(headersOut["transfer-encoding"] ?? "")) {
        const parts = [];
        let rest = body;
        for (;;) {
          const nl = rest.indexOf("\r\n");
          const size = parseInt(rest.subarray(0, nl).toString(), 16);
          if (!size) break;
          parts.push(rest.subarray(nl + 2, nl + 2 + size));
          rest = rest.subarray(nl + 4 + size);
        }
        body = Buffer.concat(parts);
      }
      resolve({
        status: Number(head[0].split(" ")[1]),
        headers: headersOut,
        body: body.toString(),
      });
    });
    socket.write(lines.join("\r\n") + "\r\n\r\n");
  });
}

// ---- MessagePack (the subset JSON needs) ----

export function mpEncode(value) {
  const out = [];
  const put = (v) => {
    if (v === null || v === undefined) out.push(Buffer.from([0xc0]));
    else if (v === false) out.push(Buffer.from([0xc2]));
    else if (v === true) out.push(Buffer.from([0xc3]));
    else if (typeof v === "number" && Number.isInteger(v)) {
      if (v >= 0 && v < 128) out.push(Buffer.from([v]));
      else if (v < 0 && v >= -32) out.push(Buffer.from([v & 0xff]));
      else {
        const b = Buffer.alloc(9);
        b[0] = v >= 0 ? 0xcf : 0xd3;
        if (v >= 0) b.writeBigUInt64BE(BigInt(v), 1);
        else b.writeBigInt64BE(BigInt(v), 1);
        out.push(b);
      }
    } else if (typeof v === "number") {
      const b = Buffer.alloc(9);
      b[0] = 0xcb;
      b.writeDoubleBE(v, 1);
      out.push(b);
    } else if (typeof v === "string") {
      const s = Buffer.from(v, "utf8");
      const h = Buffer.alloc(5);
      h[0] = 0xdb;
      h.writeUInt32BE(s.length, 1);
      out.push(h, s);
    } else if (Array.isArray(v)) {
      const h = Buffer.alloc(5);
      h[0] = 0xdd;
      h.writeUInt32BE(v.length, 1);
      out.push(h);
      v.forEach(put);
    } else {
      const keys = Object.keys(v);
      const h = Buffer.alloc(5);
      h[0] = 0xdf;
      h.writeUInt32BE(keys.length, 1);
      out.push(h);
      for (const k of keys) {
        put(k);
        put(v[k]);
      }
    }
  };
  put(value);
  return Buffer.concat(out);
}

export function mpDecode(buf) {
  let i = 0;
  const str = (n) => {
    const s = buf.toString("utf8", i, i + n);
    i += n;
    return s;
  };
  const arr = (n) => Array.from({ length: n }, () => get());
  const map = (n) => {
    const o = {};
    for (let k = 0; k < n; k++) {
      const key = get();
      o[key] = get();
    }
    return o;
  };
  const get = () => {
    const b = buf[i++];
    if (b < 0x80) return b;
    if (b >= 0xe0) return b - 256;
    if ((b & 0xf0) === 0x80) return map(b & 0x0f);
    if ((b & 0xf0) === 0x90) return arr(b & 0x0f);
    if ((b & 0xe0) === 0xa0) return str(b & 0x1f);
    const u = (n) => {
      const v = buf.readUIntBE(i, n);
      i += n;
      return v;
    };
    switch (b) {
      case 0xc0:
        return null;
      case 0xc2:
        return false;
      case 0xc3:
        return true;
      case 0xcc:
        return u(1);
      case 0xcd:
        return u(2);
      case 0xce:
        return u(4);
      case 0xcf: {
        const v = buf.readBigUInt64BE(i);
        i += 8;
        return Number(v);
      }
      case 0xd0:
        return buf.readInt8(i++);
      case 0xd1: {
        const v = buf.readInt16BE(i);
        i += 2;
        return v;
      }
      case 0xd2: {
        const v = buf.readInt32BE(i);
        i += 4;
        return v;
      }
      case 0xd3: {
        const v = buf.readBigInt64BE(i);
        i += 8;
        return Number(v);
      }
      case 0xca: {
        const v = buf.readFloatBE(i);
        i += 4;
        return v;
      }
      case 0xcb: {
        const v = buf.readDoubleBE(i);
        i += 8;
        return v;
      }
      case 0xd9:
        return str(u(1));
      case 0xda:
        return str(u(2));
      case 0xdb:
        return str(u(4));
      case 0xdc:
        return arr(u(2));
      case 0xdd:
        return arr(u(4));
      case 0xde:
        return map(u(2));
      case 0xdf:
        return map(u(4));
      default:
        throw new Error(`msgpack type 0x${b.toString(16)} not expected from the server`);
    }
  };
  const value = get();
  if (i !== buf.length) throw new Error("trailing bytes after a msgpack object");
  return value;
}
