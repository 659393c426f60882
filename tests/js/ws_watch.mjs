// A long-lived ethers v6 WebSocketProvider client for ethgate's WebSocket end-to-end test.
//
//   node ws_watch.mjs WS_URL [--chain-id 31337] [--max-ms 60000] [--every-ms 400]
//
// Over ONE WebSocket (ethers v6 never reconnects a WebSocketProvider by itself) it:
//   1. deploys a tiny event-emitting contract from hand-written bytecode (below);
//   2. subscribes with provider.on("block") and provider.on({address, topics: [TOPIC]}) (that is
//      eth_subscribe newHeads and eth_subscribe logs);
//   3. every --every-ms (a bit less than the block time) sends one contract call (signed
//      locally with anvil's funded dev key, explicit nonce/gas/fees, sent with
//      eth_sendRawTransaction over the same socket; the call data, hence the event's data, is
//      the nonce), so every block carries an event, also blocks the client only learns about
//      later (a failover's gap fill); a call whose event has not arrived within a few blocks
//      (e.g. it reached a node that was then killed) is sent again, same raw bytes;
//   4. records everything it sees: ethers' block numbers and logs, and a tap on the raw socket
//      of every eth_subscription notification (header hashes, log removals, subscription ids);
//   5. stops when a line "stop" arrives on stdin (or stdin closes, or --max-ms passes) and
//      prints the summary.
//
// stdout is NDJSON:
//   {"event":"ready","contract":..,"topic":..,"deployBlock":n}
//   {"event":"block","n":n,"logs":k}                 one per ethers "block" event
//   {"event":"summary", ...}                          last line (see `summary` below)
// Exit code 0 when a summary was printed (the caller judges it), 1 on set-up failure (a
// summary with "fatal" is still printed), 2 on usage errors. Only ever pointed at loopback.
import { createInterface } from "node:readline";
import { Network, Transaction, Wallet, WebSocketProvider, getCreateAddress, id, toBeHex, zeroPadValue } from "ethers";
import { parseArgs, describeError, withTimeout, DEV_KEY, DEV_ADDRESS } from "./lib.mjs";

const args = parseArgs(process.argv.slice(2), ["url"], { chainId: "31337", maxMs: "60000", everyMs: "400" });

// ------------------------------------------------------------------------------------------
// The contract. Runtime code: emit LOG1(TOPIC) with the calldata as the log's data, then stop.
//
//   36          CALLDATASIZE            size
//   60 00       PUSH1 0                 calldata offset
//   60 00       PUSH1 0                 memory offset
//   37          CALLDATACOPY            mem[0..size] = calldata
//   7f <32 B>   PUSH32 TOPIC            topic0
//   36          CALLDATASIZE            size
//   60 00       PUSH1 0                 memory offset
//   a1          LOG1                    log1(mem[0..size], topic0)
//   00          STOP
//                                       = 44 bytes (0x2c)
// Init code: copy the runtime (which follows the 11-byte init code) to memory and return it.
//
//   60 2c       PUSH1 0x2c              runtime size
//   80          DUP1                    size (for RETURN)
//   60 0b       PUSH1 0x0b              code offset of the runtime
//   60 00       PUSH1 0                 memory offset
//   39          CODECOPY                mem[0..0x2c] = code[0x0b..0x37]
//   60 00       PUSH1 0                 memory offset
//   f3          RETURN                  return mem[0..0x2c] as the contract's code
// ------------------------------------------------------------------------------------------
const TOPIC = id("EthgateTick(uint256)");
const RUNTIME = "0x3660006000377f" + TOPIC.slice(2) + "366000a100";
const INIT = "0x602c80600b6000396000f3";
const BYTECODE = INIT + RUNTIME.slice(2);
if ((RUNTIME.length - 2) / 2 !== 0x2c || (INIT.length - 2) / 2 !== 0x0b) {
  throw new Error("bytecode lengths do not match the offsets written in the init code");
}

const CALL_GAS = 60000n;
const MAX_FEE = 20_000_000_000n; // 20 gwei: far above the devnet's base fee
const TIP = 1_000_000_000n;
const RESEND_AFTER_BLOCKS = 3;
// Calls whose event has not arrived yet; bounds what a lost call (nonce gap) holds up.
const MAX_IN_FLIGHT = 10;

const summary = {
  event: "summary",
  contract: null,
  topic: TOPIC,
  deployBlock: null,
  // ethers level
  blocks: [], // every "block" event, in order
  // every log delivered to the filter listener: {n, blockHash, tx, index, data} (ethers hands
  // "removed": true logs to its orphan events instead; the raw tap below records them)
  logs: [],
  // raw socket level
  heads: [], // every newHeads notification: {n, hash, parent}
  rawLogs: [], // every logs notification: {n, blockHash, tx, index, removed}
  subscriptionIds: { newHeads: [], logs: [], other: [] },
  wsOpens: 0,
  wsClosed: null, // {code, reason, atMs} if the socket closed before the stop
  errors: [], // error events of the socket or the provider
  // transactions
  sent: [], // {nonce, hash, atBlock}: every call signed
  sends: [], // {nonce, rebroadcast, atBlock, atMs, ms}: every eth_sendRawTransaction
  rebroadcasts: 0,
  sendErrors: [],
  stoppedBy: null,
  fatal: null,
  durationMs: 0,
};
const started = Date.now();
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");

const network = Network.from(BigInt(args.chainId));
const provider = new WebSocketProvider(args.url, network, { staticNetwork: network });
const wallet = new Wallet(DEV_KEY);
const ws = provider.websocket;
let stopping = false;

ws.addEventListener("open", () => summary.wsOpens++);
ws.addEventListener("close", (ev) => {
  if (!stopping) summary.wsClosed = { code: ev.code, reason: String(ev.reason ?? ""), atMs: Date.now() - started };
});
ws.addEventListener("error", (ev) => {
  summary.errors.push({ code: "WS_ERROR", message: String(ev?.message ?? ev?.error ?? "websocket error") });
});
provider.on("error", (e) => summary.errors.push(describeError(e)));

// Raw tap: sees every frame ethers sees (ethers' own handler is `onmessage`).
let subscribeAnswers = 0;
ws.addEventListener("message", (ev) => {
  let m;
  try {
    m = JSON.parse(typeof ev.data === "string" ? ev.data : ev.data.toString());
  } catch {
    summary.errors.push({ code: "BAD_FRAME", message: String(ev.data).slice(0, 200) });
    return;
  }
  if (m && m.method === "eth_subscription") {
    const sid = m.params?.subscription;
    const r = m.params?.result;
    let kind = "other";
    if (r && typeof r === "object" && "parentHash" in r) {
      kind = "newHeads";
      summary.heads.push({ n: Number(r.number), hash: r.hash, parent: r.parentHash });
    } else if (r && typeof r === "object" && "logIndex" in r) {
      kind = "logs";
      summary.rawLogs.push({
        n: Number(r.blockNumber),
        blockHash: r.blockHash,
        tx: r.transactionHash,
        index: Number(r.logIndex),
        removed: r.removed === true,
      });
    }
    if (!summary.subscriptionIds[kind].includes(sid)) summary.subscriptionIds[kind].push(sid);
  } else if (m && "id" in m && typeof m.result === "string" && /^0x[0-9a-f]{32}$/i.test(m.result)) {
    // Only eth_subscribe answers look like this (ethgate's ids are 0x + 32 hex digits; tx
    // hashes have 64, quantities are shorter).
    subscribeAnswers++;
  }
});

const rpc = (method, params) => withTimeout(provider.send(method, params), 10000, method);

async function waitFor(what, ms, check) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function signed(nonce, to, data, gasLimit) {
  return wallet.signTransaction({
    type: 2,
    chainId: BigInt(args.chainId),
    nonce,
    to,
    data,
    value: 0n,
    gasLimit,
    maxFeePerGas: MAX_FEE,
    maxPriorityFeePerGas: TIP,
  });
}

// --- the transaction pump: one call per tick -----------------------------------------------
// A call's event carries its nonce as data, so the subscription itself tells which calls are
// mined; no read (which a lagging node within max_lag_blocks may answer) is needed.
let nextNonce = 0;
let latestBlock = 0;
const inFlight = new Map(); // nonce -> {raw, hash, sentAt}
let pumping = null;
let pumpAgain = false;
let pumpTimer = null;

async function send(raw, nonce, rebroadcast) {
  const t0 = Date.now();
  const record = { nonce, rebroadcast, atBlock: latestBlock, atMs: t0 - started, ms: null };
  summary.sends.push(record);
  try {
    await rpc("eth_sendRawTransaction", [raw]);
    record.ms = Date.now() - t0;
  } catch (e) {
    record.ms = Date.now() - t0;
    // A resend of a tx a node already has, or a write that hit a dying node: recorded; a
    // call that never made it is sent again after RESEND_AFTER_BLOCKS.
    summary.sendErrors.push({ nonce, rebroadcast, atBlock: latestBlock, ...describeError(e) });
  }
}

async function pumpOnce() {
  for (const [nonce, t] of inFlight) {
    if (latestBlock - t.sentAt >= RESEND_AFTER_BLOCKS) {
      t.sentAt = latestBlock;
      summary.rebroadcasts++;
      await send(t.raw, nonce, true);
    }
  }
  if (!stopping && inFlight.size < MAX_IN_FLIGHT) {
    const nonce = nextNonce++;
    const raw = await signed(nonce, summary.contract, zeroPadValue(toBeHex(nonce), 32), CALL_GAS);
    const hash = Transaction.from(raw).hash;
    inFlight.set(nonce, { raw, hash, sentAt: latestBlock });
    summary.sent.push({ nonce, hash, atBlock: latestBlock });
    await send(raw, nonce, false);
  }
}

function pump() {
  if (stopping) return;
  if (pumping) {
    pumpAgain = true;
    return;
  }
  pumping = (async () => {
    do {
      pumpAgain = false;
      try {
        await pumpOnce();
      } catch (e) {
        summary.sendErrors.push({ atBlock: latestBlock, ...describeError(e) });
      }
    } while (pumpAgain && !stopping);
    pumping = null;
  })();
}

// --- stop handling -------------------------------------------------------------------------
let finish;
const finished = new Promise((r) => (finish = r));
createInterface({ input: process.stdin })
  .on("line", (l) => l.trim() === "stop" && finish("stdin"))
  .on("close", () => finish("stdin closed"));
const maxTimer = setTimeout(() => finish("max-ms"), Number(args.maxMs));

// --- set up --------------------------------------------------------------------------------
try {
  await withTimeout(new Promise((r) => (ws.readyState === 1 ? r() : ws.addEventListener("open", r))), 10000, "open");
  // Deploy.
  const nonce = Number(await rpc("eth_getTransactionCount", [DEV_ADDRESS, "pending"]));
  const deploy = await signed(nonce, null, BYTECODE, 200000n);
  const deployHash = Transaction.from(deploy).hash;
  await rpc("eth_sendRawTransaction", [deploy]);
  const receipt = await waitFor("deploy receipt", 20000, () => rpc("eth_getTransactionReceipt", [deployHash]));
  if (receipt.status !== "0x1") throw new Error(`deploy failed: ${JSON.stringify(receipt)}`);
  summary.contract = getCreateAddress({ from: DEV_ADDRESS, nonce });
  summary.deployBlock = Number(receipt.blockNumber);
  const code = await rpc("eth_getCode", [summary.contract, "latest"]);
  if (code.toLowerCase() !== RUNTIME.toLowerCase()) throw new Error(`deployed code ${code} is not the runtime`);
  nextNonce = nonce + 1;

  // Subscribe.
  await provider.on("block", (n) => {
    summary.blocks.push(n);
    latestBlock = Math.max(latestBlock, n);
    out({ event: "block", n, logs: summary.logs.length });
  });
  await provider.on({ address: summary.contract, topics: [TOPIC] }, (log) => {
    inFlight.delete(Number(log.data));
    summary.logs.push({
      n: log.blockNumber,
      blockHash: log.blockHash,
      tx: log.transactionHash,
      index: log.index,
      data: log.data,
      removed: log.removed === true,
    });
    // Announced as it arrives, so the test can wait for a log instead of sleeping.
    out({ event: "log", tx: log.transactionHash, blockHash: log.blockHash, removed: log.removed === true });
  });
  // Both eth_subscribe calls answered: no call is sent before the logs subscription exists.
  await waitFor("both eth_subscribe answers", 10000, () => subscribeAnswers >= 2);
  out({ event: "ready", contract: summary.contract, topic: TOPIC, deployBlock: summary.deployBlock });
  pumpTimer = setInterval(pump, Number(args.everyMs));
} catch (e) {
  summary.fatal = describeError(e);
  finish("fatal");
}

summary.stoppedBy = await finished;
stopping = true;
clearInterval(pumpTimer);
clearTimeout(maxTimer);
if (pumping) await Promise.race([pumping, new Promise((r) => setTimeout(r, 3000))]);
summary.durationMs = Date.now() - started;
out(summary);
try {
  await provider.destroy();
} catch {
  // already closed
}
process.exit(summary.fatal ? 1 : 0);
