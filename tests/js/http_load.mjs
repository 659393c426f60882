// Concurrent read load through a JSON-RPC endpoint with ethers v6 JsonRpcProvider.
//
//   node http_load.mjs URL DURATION_MS [--concurrency 8] [--batch 1] [--chain-id 31337]
//                      [--timeout-ms 10000]
//
// Workers loop over getBlockNumber, getBalance, getBlock("latest") and call (eth_call) until
// DURATION_MS has passed, then the last stdout line is a JSON summary:
//   {"ok":N,"failed":N,"byOp":{...},"errors":[{op,code,message,rpcCode?,count}],"durationMs":N}
// Every failed call counts; nothing is retried. Exit code 0 when the run completed (the caller
// judges `failed`), 2 on usage errors.
import { makeProvider, describeError, withTimeout, DEV_ADDRESS, OTHER_ADDRESS } from "./lib.mjs";

const args = parseArgsOrExit();
const provider = makeProvider(args.url, {
  chainId: args.chainId,
  batch: args.batch,
  timeoutMs: args.timeoutMs,
});

const ops = {
  getBlockNumber: () => provider.getBlockNumber(),
  getBalance: () => provider.getBalance(DEV_ADDRESS),
  getBlock: async () => {
    const b = await provider.getBlock("latest");
    if (!b || !b.hash) throw Object.assign(new Error("getBlock(latest) returned no block"), { code: "BAD_DATA" });
    return b;
  },
  call: () => provider.call({ to: OTHER_ADDRESS, data: "0x" }),
};
const names = Object.keys(ops);

const summary = { ok: 0, failed: 0, byOp: {}, errors: [], durationMs: 0, url: args.url };
for (const n of names) summary.byOp[n] = { ok: 0, failed: 0 };
const errorIndex = new Map();
const MAX_DISTINCT_ERRORS = 50;

function recordError(op, e) {
  const d = describeError(e);
  const key = `${op}|${d.code}|${d.rpcCode ?? ""}|${d.message}`;
  const existing = errorIndex.get(key);
  if (existing) {
    existing.count++;
  } else if (errorIndex.size < MAX_DISTINCT_ERRORS) {
    const entry = { op, ...d, count: 1, atMs: Date.now() - start };
    errorIndex.set(key, entry);
    summary.errors.push(entry);
    console.error(`http_load: ${op} failed: ${JSON.stringify(d)}`);
  }
}

const start = Date.now();
const end = start + Number(args.durationMs);
const hardTimeout = Number(args.timeoutMs) + 5000;

async function worker(w) {
  let i = w;
  while (Date.now() < end) {
    const op = names[i++ % names.length];
    try {
      await withTimeout(ops[op](), hardTimeout, op);
      summary.ok++;
      summary.byOp[op].ok++;
    } catch (e) {
      summary.failed++;
      summary.byOp[op].failed++;
      recordError(op, e);
    }
  }
}

await Promise.all(Array.from({ length: Number(args.concurrency) }, (_, w) => worker(w)));
summary.durationMs = Date.now() - start;
provider.destroy();
console.log(JSON.stringify(summary));
process.exit(0);

function parseArgsOrExit() {
  const argv = process.argv.slice(2);
  const out = { concurrency: "8", batch: "1", chainId: "31337", timeoutMs: "10000" };
  const pos = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a.startsWith("--")) {
      const key = a.slice(2).replace(/-([a-z])/g, (_, c) => c.toUpperCase());
      if (!(key in out) || i + 1 >= argv.length) {
        console.error(`usage: node http_load.mjs URL DURATION_MS [--concurrency N] [--batch N] [--chain-id ID] [--timeout-ms MS] (bad flag ${a})`);
        process.exit(2);
      }
      out[key] = argv[++i];
    } else {
      pos.push(a);
    }
  }
  if (pos.length !== 2 || !(Number(pos[1]) > 0)) {
    console.error("usage: node http_load.mjs URL DURATION_MS [--concurrency N] [--batch N] [--chain-id ID] [--timeout-ms MS]");
    process.exit(2);
  }
  out.url = pos[0];
  out.durationMs = pos[1];
  return out;
}
