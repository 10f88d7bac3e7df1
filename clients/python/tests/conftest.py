"""Real processes for the tests: a redis-server per test on a free port (killed after), and the
taskstream sidecar binary (built by cargo) for the end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator, Optional, TypeVar

import pytest
import redis

REPO = Path(__file__).resolve().parents[3]
WAIT = 10.0  # every wait in these tests is bounded by this (seconds)
T = TypeVar("T")


# Ports are handed out below the kernel's ephemeral range (32768-60999 by default), so no outgoing
# connection gets one as its local port: a server stopped and started again on the same port (a
# Redis restart while a client retries) cannot find it taken meanwhile, e.g. by a reconnect the
# kernel connected to itself. Distinct within this process, spread by pid.
_PORTS = range(15000, 22768)
_next_port = (os.getpid() * 7919) % len(_PORTS)


def free_port() -> int:
    global _next_port
    for _ in range(len(_PORTS)):
        port = _PORTS[_next_port % len(_PORTS)]
        _next_port += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port in {_PORTS}")


def eventually(what: str, f: Callable[[], Optional[T]]) -> T:
    """Polls `f` every 20 ms until it returns something other than None (for another process's
    state, which offers no event to await); fails after WAIT."""
    deadline = time.monotonic() + WAIT
    while True:
        v = f()
        if v is not None:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT}s waiting for {what}")
        time.sleep(0.02)


class RedisServer:
    """A real redis-server without persistence, on a free loopback port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=1)

        def ping() -> Optional[bool]:
            try:
                return client.ping() or None
            except redis.ConnectionError:
                return None

        eventually(f"redis-server PING on {self.port}", ping)
        client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(WAIT)
            self.proc = None

    def client(self, **kwargs: object) -> "redis.Redis[bytes]":
        return redis.Redis(port=self.port, socket_timeout=WAIT, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()


def sidecar_binary() -> Path:
    """The sidecar binary: `$TASKSTREAM_SIDECAR_BIN`, else `cargo build -p taskstream-sidecar`."""
    env = os.environ.get("TASKSTREAM_SIDECAR_BIN")
    if env:
        return Path(env)
    subprocess.run(
        ["cargo", "build", "-q", "-p", "taskstream-sidecar", "--bin", "taskstream-sidecar"],
        cwd=REPO, check=True, timeout=900,
    )
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "debug" / "taskstream-sidecar"


class Sidecar:
    """The real sidecar binary on free ports (`--auth none`), killed after the test."""

    def __init__(self, binary: Path, args: list[str]) -> None:
        self.public = free_port()
        self.admin = free_port()
        self.proc = subprocess.Popen(
            [str(binary), "--listen", f"127.0.0.1:{self.public}",
             "--admin-listen", f"127.0.0.1:{self.admin}", *args],
            env={**os.environ, "RUST_LOG": "warn"},
            stdout=subprocess.DEVNULL,
        )

        def healthy() -> Optional[bool]:
            assert self.proc.poll() is None, f"sidecar exited with {self.proc.returncode}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/readyz", timeout=1) as r:
                    return r.status == 200 or None
            except OSError:
                return None

        eventually("sidecar /readyz", healthy)

    def ws_url(self, query: str) -> str:
        return f"ws://127.0.0.1:{self.public}/ws/tasks/?{query}"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(WAIT)


@pytest.fixture(scope="session")
def sidecar_bin() -> Path:
    return sidecar_binary()


@pytest.fixture
def start_sidecar(sidecar_bin: Path) -> Iterator[Callable[..., Sidecar]]:
    started: list[Sidecar] = []

    def start(*args: str) -> Sidecar:
        s = Sidecar(sidecar_bin, list(args))
        started.append(s)
        return s

    try:
        yield start
    finally:
        for s in started:
            s.stop()
