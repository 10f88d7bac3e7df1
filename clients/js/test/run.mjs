// Runs the tests with node's test runner, one file at a time (they spawn servers), adding
// --experimental-websocket on Node 20, which has no global WebSocket without it.
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const files = readdirSync(here).filter((f) => f.endsWith(".test.mjs")).sort().map((f) => join(here, f));
if (files.length === 0) {
  console.error("clients/js: no test files found");
  process.exit(1);
}
const flags = typeof WebSocket === "function" ? [] : ["--experimental-websocket"];
const r = spawnSync(process.execPath, [...flags, "--test", "--test-concurrency=1", ...files], {
  stdio: "inherit",
});
process.exit(r.status ?? 1);
