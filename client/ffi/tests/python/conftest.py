"""Fixtures for the bindings' tests: the generated module, and the local server on a free
loopback port (stopped and started again by the offline test). Every wait is bounded."""

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[4]
# scripts/bindings-test generates the module (and links the library) here.
sys.path.insert(0, os.environ.get("AUDIO_DEDUP_PY_BINDINGS", str(REPO / "target/bindings/python")))

TOKENS = {u: f"{u}-token-for-bindings-tests" for u in ("alice", "bob", "carol")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The local server binary over a data folder that survives stop() and start()."""

    def __init__(self, data_dir: Path, log: Path):
        self.binary = os.environ.get(
            "AUDIO_DEDUP_SERVER_BIN", str(REPO / "target/debug/audio-dedup-server")
        )
        self.data_dir = data_dir
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self, timeout: float = 20.0) -> None:
        env = dict(os.environ)
        env["AUDIO_DEDUP_TOKENS"] = ",".join(f"{t}={u}" for u, t in TOKENS.items())
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, "--addr", f"127.0.0.1:{self.port}",
                 "--data-dir", str(self.data_dir), "--log-format", "text"],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}); see {self.log}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"server not listening after {timeout} s; see {self.log}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path / "server-data", tmp_path / "server.log")
    s.start()
    yield s
    s.stop()


async def wait_until(predicate, timeout: float = 15.0, what: str = "condition"):
    """Polls `predicate` (sync) every 50 ms until it is truthy; fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


def run(coro, timeout: float = 90.0):
    """Runs one test's coroutine with an overall bound."""
    return asyncio.run(asyncio.wait_for(coro, timeout))
