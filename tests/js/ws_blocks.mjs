// Subscribes to new blocks through a WebSocket JSON-RPC endpoint with ethers v6
// WebSocketProvider (eth_subscribe newHeads) for DURATION_MS, then prints a JSON summary:
//
//   node ws_blocks.mjs WS_URL DURATION_MS [--chain-id 31337]
//
//   {"blocks":N,"first":n,"last":n,"gaps":[[after,next],...],"duplicates":[n,...],
//    "outOfOrder":[[prev,next],...],"errors":[...],"closed":bool}
//
// ethers v6 does not reconnect a WebSocketProvider: a closed socket is reported (closed:
// true, an error entry) and nothing is retried. Exit code 0 when the run completed (the caller
// judges the summary), 2 on usage errors.
import { Network, WebSocketProvider } from "ethers";
import { parseArgs, describeError } from "./lib.mjs";

const args = parseArgs(process.argv.slice(2), ["url", "durationMs"], { chainId: "31337" });
if (!(Number(args.durationMs) > 0)) {
  console.error("usage: node ws_blocks.mjs WS_URL DURATION_MS [--chain-id ID]");
  process.exit(2);
}

const summary = { blocks: 0, first: null, last: null, gaps: [], duplicates: [], outOfOrder: [], errors: [], closed: false };
const seen = new Set();
const network = Network.from(BigInt(args.chainId));
let provider;
try {
  provider = new WebSocketProvider(args.url, network, { staticNetwork: network });
  const ws = provider.websocket;
  ws.addEventListener?.("close", (ev) => {
    summary.closed = true;
    summary.errors.push({ code: "WS_CLOSED", message: `closed: code ${ev.code} ${ev.reason ?? ""}`.trim() });
  });
  ws.addEventListener?.("error", (ev) => {
    summary.errors.push({ code: "WS_ERROR", message: String(ev?.message ?? ev?.error ?? "websocket error") });
  });
  provider.on("error", (e) => summary.errors.push(describeError(e)));
  await provider.on("block", (n) => {
    summary.blocks++;
    if (seen.has(n)) summary.duplicates.push(n);
    seen.add(n);
    if (summary.last !== null) {
      if (n < summary.last) summary.outOfOrder.push([summary.last, n]);
      else if (n > summary.last + 1) summary.gaps.push([summary.last, n]);
    }
    if (summary.first === null) summary.first = n;
    summary.last = Math.max(summary.last ?? n, n);
  });
} catch (e) {
  summary.errors.push(describeError(e));
}

await new Promise((r) => setTimeout(r, Number(args.durationMs)));
try {
  await provider?.destroy();
} catch {
  // already closed
}
console.log(JSON.stringify(summary));
process.exit(0);
