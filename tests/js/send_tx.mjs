// Signs a transfer locally with anvil's default funded key and sends it through URL
// (eth_sendRawTransaction), using ethers v6 Wallet + JsonRpcProvider.
//
//   node send_tx.mjs URL [--to ADDR] [--value WEI] [--chain-id 31337] [--wait-ms 0]
//                        [--timeout-ms 10000]
//
// Prints the tx hash as the first stdout line. With --wait-ms N (> 0) it then waits up to N ms
// for the receipt (polling through URL) and prints a JSON line
//   {"hash":..,"blockNumber":..,"blockHash":..,"status":1}
// Exit code 0 on success, 1 on any failure (the error is printed on stderr as JSON), 2 on usage.
import { Wallet } from "ethers";
import { makeProvider, parseArgs, describeError, withTimeout, DEV_KEY, OTHER_ADDRESS } from "./lib.mjs";

const args = parseArgs(process.argv.slice(2), ["url"], {
  to: OTHER_ADDRESS,
  value: "1000000000000000", // 0.001 ether
  chainId: "31337",
  waitMs: "0",
  timeoutMs: "10000",
});

const provider = makeProvider(args.url, { chainId: args.chainId, timeoutMs: args.timeoutMs });
const wallet = new Wallet(DEV_KEY, provider);
let code = 0;
try {
  const tx = await withTimeout(
    wallet.sendTransaction({ to: args.to, value: BigInt(args.value) }),
    Number(args.timeoutMs) * 3,
    "sendTransaction",
  );
  console.log(tx.hash);
  const waitMs = Number(args.waitMs);
  if (waitMs > 0) {
    // tx.wait(confirms, timeout) rejects with code TIMEOUT when the deadline passes.
    const r = await tx.wait(1, waitMs);
    console.log(JSON.stringify({ hash: r.hash, blockNumber: r.blockNumber, blockHash: r.blockHash, status: r.status }));
    if (r.status !== 1) code = 1;
  }
} catch (e) {
  console.error(`send_tx: ${JSON.stringify(describeError(e))}`);
  code = 1;
}
provider.destroy();
process.exit(code);
