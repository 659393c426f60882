// An ethers v6 WebSocketProvider client for ethgate's chaos soak (tests/soak.rs).
//
//   node soak_client.mjs WS_URL --filters JSON [--chain-id 31337] [--max-ms 3600000]
//
// JSON is a list of {"name": .., "filter": {address?, topics?}}. Over ONE WebSocket (ethers v6
// never reconnects a WebSocketProvider by itself) it subscribes with provider.on("block") (that
// is eth_subscribe newHeads) and provider.on(filter) for each filter, one after the other, so
// each eth_subscribe answer can be tied to its filter. It then streams, as NDJSON on stdout,
// every eth_subscription notification seen on the raw socket, in socket order, with the time
// it arrived (ms since the epoch):
//   {"event":"ready","subs":{"newHeads":ID,NAME:ID,..}}
//   {"event":"h","n":..,"hash":..,"parent":..,"t":..}                  a newHeads notification
//   {"event":"l","sub":NAME,"n":..,"hash":BLOCK,"tx":..,"i":..,"removed":..,"t":..}
//   {"event":"x","sub":ID,"t":..}                     a notification for an id it never asked for
//   {"event":"closed","code":..,"reason":..,"t":..}   the socket closed before the stop
//   {"event":"error", ..}                              a socket/provider error
//   {"event":"summary","blocks":[..],"listener":{NAME:[{n,hash,tx,i}]},"wsOpens":..,"fatal":..}
// The summary holds what ethers itself handed to the application ("block" events and each
// filter listener's logs), so the test can check ethers saw what the socket carried.
// Stops on a line "stop" on stdin (or stdin closing, or --max-ms). Only ever pointed at loopback.
import { createInterface } from "node:readline";
import { Network, WebSocketProvider } from "ethers";
import { parseArgs, describeError, withTimeout } from "./lib.mjs";

const args = parseArgs(process.argv.slice(2), ["url"], { chainId: "31337", maxMs: "3600000", filters: "[]" });
const filters = JSON.parse(args.filters);

const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const summary = { event: "summary", blocks: [], listener: {}, wsOpens: 0, fatal: null };

const network = Network.from(BigInt(args.chainId));
const provider = new WebSocketProvider(args.url, network, { staticNetwork: network });
const ws = provider.websocket;
let stopping = false;

// Outgoing eth_subscribe requests by JSON-RPC id, and their answers in arrival order.
const subscribeRequests = new Map();
const answered = [];
const names = new Map(); // subscription id -> "newHeads" or filter name
let expecting = null; // name of the subscription being made (they are made one at a time)
const origSend = ws.send.bind(ws);
ws.send = (data) => {
  try {
    for (const r of [].concat(JSON.parse(String(data)))) {
      if (r && r.method === "eth_subscribe") subscribeRequests.set(r.id, r.params);
    }
  } catch {
    // not JSON: ethers never sends that; pass it on untouched anyway
  }
  return origSend(data);
};

ws.addEventListener("open", () => summary.wsOpens++);
ws.addEventListener("close", (ev) => {
  if (!stopping) out({ event: "closed", code: ev.code, reason: String(ev.reason ?? ""), t: Date.now() });
});
ws.addEventListener("error", (ev) => out({ event: "error", code: "WS_ERROR", message: String(ev?.message ?? "websocket error") }));
provider.on("error", (e) => out({ event: "error", ...describeError(e) }));

ws.addEventListener("message", (ev) => {
  const t = Date.now();
  let m;
  try {
    m = JSON.parse(typeof ev.data === "string" ? ev.data : ev.data.toString());
  } catch {
    out({ event: "error", code: "BAD_FRAME", message: String(ev.data).slice(0, 200) });
    return;
  }
  if (m && m.method === "eth_subscription") {
    const sid = m.params?.subscription;
    const r = m.params?.result;
    const name = names.get(sid);
    if (name === "newHeads" && r && typeof r === "object") {
      out({ event: "h", n: Number(r.number), hash: r.hash, parent: r.parentHash, t });
    } else if (name !== undefined && r && typeof r === "object") {
      out({ event: "l", sub: name, n: Number(r.blockNumber), hash: r.blockHash, tx: r.transactionHash, i: Number(r.logIndex), removed: r.removed === true, t });
    } else {
      out({ event: "x", sub: sid, t });
    }
  } else if (m && subscribeRequests.has(m.id)) {
    // Named here, not after the answer is awaited: a notification may follow at once.
    if (m.result) names.set(m.result, expecting);
    answered.push({ params: subscribeRequests.get(m.id), sid: m.result ?? null, error: m.error ?? null });
    subscribeRequests.delete(m.id);
  }
});

async function waitFor(what, ms, check) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// Subscribes with `subscribe` and ties the next eth_subscribe answer to `name`.
async function subscribeAs(name, subscribe) {
  const before = answered.length;
  expecting = name;
  await subscribe();
  const a = await waitFor(`eth_subscribe answer for ${name}`, 20000, () => answered[before]);
  if (!a.sid) throw new Error(`eth_subscribe for ${name} refused: ${JSON.stringify(a.error)}`);
  return a.sid;
}

let finish;
const finished = new Promise((r) => (finish = r));
createInterface({ input: process.stdin })
  .on("line", (l) => l.trim() === "stop" && finish("stdin"))
  .on("close", () => finish("stdin closed"));
const maxTimer = setTimeout(() => finish("max-ms"), Number(args.maxMs));

try {
  await withTimeout(new Promise((r) => (ws.readyState === 1 ? r() : ws.addEventListener("open", r))), 10000, "open");
  const subs = {};
  subs.newHeads = await subscribeAs("newHeads", () => provider.on("block", (n) => summary.blocks.push(n)));
  for (const { name, filter } of filters) {
    summary.listener[name] = [];
    subs[name] = await subscribeAs(name, () =>
      provider.on(filter, (log) => {
        summary.listener[name].push({ n: log.blockNumber, hash: log.blockHash, tx: log.transactionHash, i: log.index });
      }),
    );
  }
  out({ event: "ready", subs });
} catch (e) {
  summary.fatal = describeError(e);
  finish("fatal");
}

summary.stoppedBy = await finished;
stopping = true;
clearTimeout(maxTimer);
// A large summary to a pipe is written asynchronously: exit only once it is flushed.
await new Promise((resolve) => process.stdout.write(JSON.stringify(summary) + "\n", resolve));
try {
  await provider.destroy();
} catch {
  // already closed
}
process.exit(summary.fatal ? 1 : 0);
