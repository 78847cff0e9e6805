// An MQTT.js client the integration tests drive: MQTT 5 (or 3.1.1) over TCP or WebSocket, with
// clean start, session expiry, a will (with delay) and user properties. It prints one JSON line
// per event on stdout so a test can follow it: connect, puback, message, end.
//
//   node client.mjs --url ws://127.0.0.1:PORT/mqtt --client-id dev1 --protocol 5 \
//     --no-clean --session-expiry 300 --will-topic t/status --will-payload offline \
//     --publish sensors/a/b/telemetry --count 10 --subscribe 'test/#' --expect 3 --end abrupt
//
// --end: clean (DISCONNECT; no will), abrupt (drop the socket; the broker publishes the will),
// hold (stay connected until stdin closes, then end cleanly).
import { parseArgs } from "node:util";
import mqtt from "mqtt";

const { values: a } = parseArgs({
  options: {
    url: { type: "string" },
    "client-id": { type: "string", default: "" },
    protocol: { type: "string", default: "5" },
    "no-clean": { type: "boolean", default: false },
    "session-expiry": { type: "string", default: "0" },
    username: { type: "string" },
    password: { type: "string" },
    "will-topic": { type: "string" },
    "will-payload": { type: "string", default: "" },
    "will-delay": { type: "string", default: "0" },
    "will-retain": { type: "boolean", default: false },
    publish: { type: "string" },
    count: { type: "string", default: "1" },
    qos: { type: "string", default: "1" },
    payload: { type: "string" },
    retain: { type: "boolean", default: false },
    subscribe: { type: "string" },
    expect: { type: "string", default: "0" },
    end: { type: "string", default: "clean" },
    timeout: { type: "string", default: "30" },
  },
});

const emit = (event) => console.log(JSON.stringify(event));
const v5 = a.protocol === "5";
const options = {
  clientId: a["client-id"],
  protocolVersion: v5 ? 5 : 4,
  clean: !a["no-clean"],
  reconnectPeriod: 0,
  connectTimeout: 10_000,
  username: a.username,
  password: a.password,
};
if (v5) options.properties = { sessionExpiryInterval: Number(a["session-expiry"]) };
if (a["will-topic"]) {
  options.will = {
    topic: a["will-topic"],
    payload: Buffer.from(a["will-payload"]),
    qos: 1,
    retain: a["will-retain"],
  };
  if (v5) options.will.properties = { willDelayInterval: Number(a["will-delay"]) };
}

const fail = (why) => {
  emit({ event: "error", message: String(why) });
  process.exit(1);
};
setTimeout(() => fail(`timed out after ${a.timeout} s`), Number(a.timeout) * 1000).unref();

const client = mqtt.connect(a.url, options);
// Once every expectation is met the verdict is in: an error while saying goodbye (the broker
// closing the socket on our DISCONNECT before a last PUBACK went out) does not change it.
client.on("error", (error) => (ended ? emit({ event: "late-error", message: String(error) }) : fail(error)));
client.on("message", (topic, payload, packet) => {
  emit({ event: "message", topic, payload: payload.toString(), retain: packet.retain, qos: packet.qos });
  received += 1;
  maybeEnd();
});

let received = 0;
let published = 0;
let ended = false;
const expected = Number(a.expect);
const toPublish = a.publish ? Number(a.count) : 0;

function maybeEnd() {
  if (ended || received < expected || published < toPublish) return;
  ended = true;
  if (a.end === "abrupt") {
    emit({ event: "end", how: "abrupt" });
    client.stream.destroy();
    process.exit(0);
  } else if (a.end === "hold") {
    emit({ event: "holding" });
    process.stdin.resume();
    process.stdin.on("end", () => client.end(false, {}, () => process.exit(0)));
  } else {
    // On the next turn, so the PUBACK for a message just handled goes out before DISCONNECT.
    setImmediate(() =>
      client.end(false, {}, () => {
        emit({ event: "end", how: "clean" });
        process.exit(0);
      }),
    );
  }
}

client.once("connect", async (connack) => {
  emit({ event: "connect", sessionPresent: connack.sessionPresent, reasonCode: connack.reasonCode ?? 0, properties: connack.properties ?? {} });
  try {
    if (a.subscribe) {
      const granted = await client.subscribeAsync(a.subscribe, { qos: 1 });
      emit({ event: "suback", granted: granted.map((g) => g.qos) });
    }
    for (let i = 0; i < toPublish; i++) {
      const payload = a.payload ?? JSON.stringify({ seq: i, client: a["client-id"] });
      const opts = { qos: Number(a.qos), retain: a.retain };
      if (v5) opts.properties = { userProperties: { seq: String(i), source: "mqtt.js" } };
      const packet = await client.publishAsync(a.publish, payload, opts);
      emit({ event: "puback", seq: i, reasonCode: packet?.reasonCode ?? 0 });
      published += 1;
    }
  } catch (error) {
    fail(error);
  }
  maybeEnd();
});
