// Shared helpers for the ethers v6 client drivers used by ethgate's end-to-end tests.
// Only ever pointed at loopback URLs by the tests.
import { FetchRequest, JsonRpcProvider, Network } from "ethers";

// anvil's first default dev account ("test test ... junk" mnemonic), funded on every devnet node.
export const DEV_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
export const DEV_ADDRESS = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";
export const OTHER_ADDRESS = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";

/** Parses `--name value` flags after the positional arguments. */
export function parseArgs(argv, positional, defaults) {
  const out = { ...defaults };
  const pos = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a.startsWith("--")) {
      const key = a.slice(2).replace(/-([a-z])/g, (_, c) => c.toUpperCase());
      if (!(key in defaults)) usage(`unknown flag ${a}`);
      if (i + 1 >= argv.length) usage(`flag ${a} needs a value`);
      out[key] = argv[++i];
    } else {
      pos.push(a);
    }
  }
  if (pos.length !== positional.length) usage(`expected ${positional.join(" ")}`);
  positional.forEach((name, i) => (out[name] = pos[i]));
  return out;
}

function usage(msg) {
  console.error(`usage error: ${msg}`);
  process.exit(2);
}

/**
 * A JsonRpcProvider that reports errors instead of hiding them:
 *  - staticNetwork: no eth_chainId before every call, and no endless "failed to detect network"
 *    retry loop at start-up when the endpoint is down;
 *  - batchMaxCount 1 by default (one request per HTTP call; pass batch > 1 to test batches);
 *  - cacheTimeout -1: every call really goes over the wire;
 *  - a bounded per-request timeout (ethers' default is 5 minutes).
 */
export function makeProvider(url, { chainId = 31337, batch = 1, timeoutMs = 10000, pollingMs = 200 } = {}) {
  const req = new FetchRequest(url);
  req.timeout = Number(timeoutMs);
  const network = Network.from(BigInt(chainId));
  const provider = new JsonRpcProvider(req, network, {
    staticNetwork: network,
    batchMaxCount: Number(batch),
    cacheTimeout: -1,
    pollingInterval: Number(pollingMs),
  });
  return provider;
}

/** A compact, JSON-friendly description of an ethers error. */
export function describeError(e) {
  const d = { code: e?.code ?? "ERROR", message: e?.shortMessage ?? String(e?.message ?? e) };
  const rpc = e?.error ?? e?.info?.error;
  if (rpc && typeof rpc === "object" && "code" in rpc) {
    d.rpcCode = rpc.code;
    d.rpcMessage = rpc.message;
  }
  return d;
}

/** Races a promise against a deadline. */
export function withTimeout(p, ms, what) {
  let t;
  const timer = new Promise((_, reject) => {
    t = setTimeout(() => reject(Object.assign(new Error(`${what}: timed out after ${ms} ms`), { code: "TIMEOUT" })), ms);
  });
  return Promise.race([p, timer]).finally(() => clearTimeout(t));
}
