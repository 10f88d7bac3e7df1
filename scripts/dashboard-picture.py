#!/usr/bin/env python3
"""Draws docs/dashboard.png: the sidecar panels of the chart's Grafana dashboard
(charts/taskstream/files/dashboards/taskstream.json), plotted from a short real run.

    redis-server ─┐                     ┌─ readers (taskstream.v1, resume with last_id)
    publisher ────┴─> taskstream-sidecar ┼─ slow readers (never read: closed as SlowClient)
    app (http) <──── proxy ─────────────┘    refused handshakes, proxied GETs
    /metrics scraped every second ──> the dashboard's PromQL, computed here ──> matplotlib

No Grafana can be installed from the package registries this project uses, so the picture is a
plot of the same series (same titles, same PromQL computed over the scrapes: rate() over 10 s,
histogram_quantile over 10 s of buckets). Redis is killed for 10 s mid-run, so the broker,
history and reset panels show an outage and its recovery. The operator panels need a cluster
and are not drawn.

Usage (from the repository root, after `cargo build -p taskstream-sidecar`), in a throwaway venv:

    python3 -m venv .venv-picture && .venv-picture/bin/pip install matplotlib websockets ./clients/python
    .venv-picture/bin/python scripts/dashboard-picture.py --out docs/dashboard.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import websockets
from taskstream import AsyncPublisher

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class App(BaseHTTPRequestHandler):
    """The app behind the sidecar: 200 after 2-30 ms, 404 on /missing, 500 on /broken."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        time.sleep(random.uniform(0.002, 0.03))
        status = {"/missing": 404, "/broken": 500}.get(self.path, 200)
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def parse(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            pass
    return out


async def reader(url: str, group: str, stop: asyncio.Event, resume_every: float) -> None:
    """A browser: reads, and every so often drops the connection and resumes from its last id."""
    last_id = None
    while not stop.is_set():
        query = f"groups={group}" + (f"&last_id={group}:{last_id}" if last_id else "")
        try:
            async with websockets.connect(f"{url}?{query}", subprotocols=["taskstream.v1"]) as ws:
                deadline = time.monotonic() + random.uniform(0.5, 1.5) * resume_every
                while time.monotonic() < deadline and not stop.is_set():
                    try:
                        frame = json.loads(await asyncio.wait_for(ws.recv(), 0.5))
                    except asyncio.TimeoutError:
                        continue
                    if frame.get("type") == "event":
                        last_id = frame["id"]
                    elif frame.get("type") == "reset":
                        last_id = None
        except (OSError, websockets.WebSocketException):
            await asyncio.sleep(0.5)


async def slow_reader(host: str, port: int, group: str, stop: asyncio.Event) -> None:
    """A client that never reads: its socket fills, then the sidecar's queue, then 1013."""
    while not stop.is_set():
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_connect(sock, (host, port))
            await loop.sock_sendall(
                sock,
                (
                    f"GET /ws/tasks/?groups={group} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                ).encode(),
            )
            # Wait until the sidecar gives up on it (it closes the socket), without reading.
            while not stop.is_set():
                await asyncio.sleep(1)
                try:
                    sock.send(b"")
                    if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                        break
                except BlockingIOError:
                    continue
                except OSError:
                    break
        except OSError:
            pass
        finally:
            sock.close()
        await asyncio.sleep(random.uniform(2, 6))


async def publisher(redis_url: str, stop: asyncio.Event) -> None:
    pub = AsyncPublisher.from_url(redis_url, history_size=1000, history_ttl=600)
    n = 0
    while not stop.is_set():
        n += 1
        try:
            for g in range(8):
                await pub.publish(f"job-{g}", {"task": f"t{g}", "progress": n % 100})
            await pub.publish("bulk", {"blob": "x" * 4000, "n": n})
            if n % 150 == 0:
                await pub.publish("job-0", {"blob": "y" * 20000})  # over --max-event-bytes
        except Exception:  # noqa: BLE001 (Redis down: keep trying, as an app would)
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.02)


async def http_load(base: str, stop: asyncio.Event) -> None:
    paths = ["/"] * 17 + ["/missing", "/missing", "/broken"]
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        path = random.choice(paths)

        def get() -> None:
            try:
                urllib.request.urlopen(base + path, timeout=5).read()
            except Exception:  # noqa: BLE001 (4xx/5xx raise: counted by the sidecar all the same)
                pass

        await loop.run_in_executor(None, get)
        await asyncio.sleep(0.05)


async def refused(url: str, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            async with websockets.connect(url):  # no groups: 400
                pass
        except Exception:  # noqa: BLE001
            pass
        await asyncio.sleep(random.uniform(0.5, 3))


async def run(args: argparse.Namespace) -> list[tuple[float, dict[str, float]]]:
    rport, aport, pport, mport = (free_port() for _ in range(4))
    redis_cmd = ["redis-server", "--port", str(rport), "--save", "", "--appendonly", "no"]
    redis = subprocess.Popen(redis_cmd, stdout=subprocess.DEVNULL)
    app = ThreadingHTTPServer(("127.0.0.1", aport), App)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    sidecar = subprocess.Popen(
        [
            args.sidecar,
            "--auth", "none",
            "--redis-url", f"redis://127.0.0.1:{rport}",
            "--upstream", f"http://127.0.0.1:{aport}",
            "--listen", f"127.0.0.1:{pport}",
            "--admin-listen", f"127.0.0.1:{mport}",
            "--history-size", "1000",
            "--max-event-bytes", "16384",
            "--send-queue", "32",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    scrapes = []
    stop = asyncio.Event()
    try:
        time.sleep(1.5)
        url = f"ws://127.0.0.1:{pport}/ws/tasks/"
        tasks = [asyncio.create_task(publisher(f"redis://127.0.0.1:{rport}", stop))]
        start = time.monotonic()
        # Readers arrive over the first 20 s.
        async def arrive() -> None:
            for i in range(args.readers):
                tasks.append(asyncio.create_task(reader(url, f"job-{i % 8}", stop, 15)))
                if i % 4 == 0:
                    tasks.append(asyncio.create_task(reader(url, "bulk", stop, 30)))
                await asyncio.sleep(20 / args.readers)

        tasks.append(asyncio.create_task(arrive()))
        for _ in range(3):
            tasks.append(asyncio.create_task(slow_reader("127.0.0.1", pport, "bulk", stop)))
        tasks.append(asyncio.create_task(http_load(f"http://127.0.0.1:{pport}", stop)))
        tasks.append(asyncio.create_task(refused(url, stop)))
        killed = False
        while (now := time.monotonic() - start) < args.seconds:
            if not killed and now > args.seconds * 0.5:
                redis.kill()  # the outage: 10 s without Redis
                redis.wait()
                killed = True
                down_until = now + 10
            if killed and redis.poll() is not None and now > down_until:
                redis = subprocess.Popen(redis_cmd, stdout=subprocess.DEVNULL)
            with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=2) as r:
                scrapes.append((now, parse(r.read().decode())))
            await asyncio.sleep(1)
        stop.set()
        await asyncio.wait(tasks, timeout=5)
    finally:
        sidecar.terminate()
        redis.terminate()
        app.shutdown()
    return scrapes


WINDOW = 10  # seconds: rate() and histogram_quantile() over this many scrapes


def series(scrapes, key):
    return [s.get(key, 0.0) for _, s in scrapes]


def rate(scrapes, key):
    v = series(scrapes, key)
    return [max(0.0, v[i] - v[max(0, i - WINDOW)]) / max(1, min(i, WINDOW)) for i in range(len(v))]


def increase(scrapes, key):
    v = series(scrapes, key)
    return [max(0.0, v[i] - v[max(0, i - WINDOW)]) for i in range(len(v))]


def keys(scrapes, prefix):
    return sorted({k for _, s in scrapes for k in s if k.startswith(prefix)})


def quantile(scrapes, name, q):
    buckets = keys(scrapes, f"{name}_bucket{{")
    les = sorted(((float(k.split('le="')[1].split('"')[0]), k) for k in buckets))
    out = []
    for i in range(len(scrapes)):
        j = max(0, i - WINDOW)
        counts = [(le, scrapes[i][1].get(k, 0) - scrapes[j][1].get(k, 0)) for le, k in les]
        total = counts[-1][1] if counts else 0
        if total <= 0:
            out.append(float("nan"))
            continue
        rank, prev_le, prev_c = q * total, 0.0, 0.0
        for le, c in counts:
            if c >= rank:
                out.append(le if le == float("inf") else prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-9))
                break
            prev_le, prev_c = le, c
    return out


def label(key):
    return key.split('="')[1].split('"')[0] if '="' in key else key


def draw(scrapes, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s for s, _ in scrapes]
    plt.rcParams.update({
        "figure.facecolor": "#111217", "axes.facecolor": "#181b1f", "axes.edgecolor": "#2c3235",
        "axes.labelcolor": "#ccccdc", "text.color": "#ccccdc", "xtick.color": "#8e8e9e",
        "ytick.color": "#8e8e9e", "grid.color": "#2c3235", "font.size": 7, "legend.fontsize": 6,
        "legend.frameon": False,
    })
    panels = [
        ("Connections", [("connected", series(scrapes, "taskstream_connections"))]),
        ("Deliveries /s", [("delivered", rate(scrapes, "taskstream_events_delivered_total")),
                           ("received", rate(scrapes, "taskstream_events_received_total"))]),
        ("Delivery latency (s)", [("p50", quantile(scrapes, "taskstream_delivery_seconds", 0.5)),
                                  ("p99", quantile(scrapes, "taskstream_delivery_seconds", 0.99))]),
        ("Events dropped /s", [(label(k), rate(scrapes, k)) for k in keys(scrapes, "taskstream_events_dropped_total{")]),
        ("Connections closed /s", [(label(k), rate(scrapes, k)) for k in keys(scrapes, "taskstream_connections_closed_total{")]),
        ("Broker up / Redis reconnects", [("broker up", series(scrapes, "taskstream_broker_up")),
                                          ("reconnects (10 s)", increase(scrapes, "taskstream_redis_reconnects_total"))]),
        ("History recovered events /s", [("recovered", rate(scrapes, "taskstream_history_recovered_events_total"))]),
        ("History resets /s", [(label(k), rate(scrapes, k)) for k in keys(scrapes, "taskstream_history_resets_total{")]),
        ("History read latency (s)", [("p50", quantile(scrapes, "taskstream_history_read_seconds", 0.5)),
                                      ("p99", quantile(scrapes, "taskstream_history_read_seconds", 0.99))]),
        ("Proxied requests /s", [(label(k), rate(scrapes, k)) for k in keys(scrapes, "taskstream_proxied_requests_total{")]),
        ("Proxy latency (s)", [("p50", quantile(scrapes, "taskstream_proxy_response_seconds", 0.5)),
                               ("p99", quantile(scrapes, "taskstream_proxy_response_seconds", 0.99))]),
        ("Handshakes refused /s", [(label(k), rate(scrapes, k)) for k in keys(scrapes, "taskstream_connections_rejected_total{")]),
    ]
    fig, axes = plt.subplots(4, 3, figsize=(10.5, 8.4), dpi=80)
    fig.suptitle("TaskStream dashboard: sidecar panels, from a real 2-minute run (Redis killed for 10 s at half-time)",
                 fontsize=9, x=0.01, ha="left")
    palette = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9"]
    for ax, (title, lines) in zip(axes.flat, panels):
        ax.set_title(title, loc="left", fontsize=8)
        ax.grid(True, linewidth=0.5)
        for (name, ys), color in zip(lines, palette):
            ax.plot(t, ys, linewidth=1, label=name, color=color)
        if lines:
            ax.legend(loc="upper left", ncol=3)
        ax.set_xlabel("seconds", fontsize=6)
    fig.tight_layout()
    fig.savefig(out, dpi=80)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sidecar", default=str(ROOT / "target" / "debug" / "taskstream-sidecar"))
    p.add_argument("--out", default=str(ROOT / "docs" / "dashboard.png"))
    p.add_argument("--seconds", type=float, default=120)
    p.add_argument("--readers", type=int, default=48)
    args = p.parse_args()
    scrapes = asyncio.run(run(args))
    draw(scrapes, Path(args.out))
    print(f"{args.out}: {len(scrapes)} scrapes, {Path(args.out).stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
