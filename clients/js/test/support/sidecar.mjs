// The real taskstream-sidecar binary (built with cargo from this repository), spawned on free
// ports and killed after the test; restartable on the same ports.
import { spawn, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";

import { REPO, WAIT, eventually, freePort } from "./redis.mjs";

let built;
export function sidecarBinary() {
  if (process.env.TASKSTREAM_SIDECAR_BIN) return process.env.TASKSTREAM_SIDECAR_BIN;
  if (!built) {
    const r = spawnSync("cargo", ["build", "-q", "-p", "taskstream-sidecar", "--bin", "taskstream-sidecar"], { cwd: REPO, stdio: "inherit", timeout: 900_000 });
    if (r.status !== 0) throw new Error("cargo build -p taskstream-sidecar failed");
    built = `${process.env.CARGO_TARGET_DIR || `${REPO}/target`}/debug/taskstream-sidecar`;
    if (!existsSync(built)) throw new Error(`no sidecar binary at ${built}`);
  }
  return built;
}

export class Sidecar {
  static async start(args) {
    const s = new Sidecar();
    s.args = args;
    s.public = await freePort();
    s.admin = await freePort();
    await s.spawn();
    return s;
  }
  async spawn() {
    this.proc = spawn(sidecarBinary(), ["--listen", `127.0.0.1:${this.public}`, "--admin-listen", `127.0.0.1:${this.admin}`, ...this.args], {
      stdio: ["ignore", "ignore", "inherit"],
      env: { ...process.env, RUST_LOG: "error" },
    });
    const exited = new Promise((resolve) => this.proc.once("exit", (code, signal) => resolve({ code, signal })));
    this.exited = exited;
    await eventually("sidecar /readyz", async () => {
      try {
        return (await fetch(`http://127.0.0.1:${this.admin}/readyz`)).status === 200;
      } catch {
        return false;
      }
    });
  }
  wsUrl(query = "") {
    return `ws://127.0.0.1:${this.public}/ws/tasks/${query ? `?${query}` : ""}`;
  }
  /** SIGTERM (clients get 1001), wait for the exit, run `whileDown`, and start again on the
   *  same ports. */
  async restart(whileDown = async () => {}) {
    this.proc.kill("SIGTERM");
    const { code } = await Promise.race([this.exited, new Promise((_, rej) => setTimeout(() => rej(new Error("sidecar did not exit")), WAIT))]);
    if (code !== 0) throw new Error(`sidecar exited with ${code}`);
    await whileDown();
    await this.spawn();
  }
  stop() {
    this.proc.kill("SIGKILL");
  }
}
