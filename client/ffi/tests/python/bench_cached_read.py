"""Call overhead of the Python bindings: a cached read of a thread's 50 messages
(`ClientHandle.messages`, no request) timed through the bindings, next to the same read in
Rust (`Client::messages`, benches/src/bin/cached_read.rs) on the same folder, in one run.

Not a pytest test (it asserts no speed): `scripts/bench-bindings` builds the release library,
the release server and the Rust side, then runs this with the bindings on the path.
Prints the per-call medians and their difference.
"""

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from conftest import REPO, TOKENS, Server, wait_until

from audio_dedup_ffi import ClientHandle, ClientOptions, SendState

MESSAGES = 50
CALLS = int(os.environ.get("BENCH_CALLS", "2000"))
BATCHES = 5


async def fill(server, data_dir):
    """Alice's folder with one thread of MESSAGES sent messages."""
    alice = await ClientHandle.open(ClientOptions(base_url=server.url, data_dir=str(data_dir),
                                                  token=TOKENS["alice"]))
    thread = await alice.create_thread("Bench", ["bob"])
    for i in range(MESSAGES):
        await alice.send_message(thread.id, json.dumps({"i": i, "text": "a take"}))
    await wait_until(lambda: all(m.send_state == SendState.SENT for m in alice.messages(thread.id)),
                     60, "every message sent")
    return alice, thread.id


def time_python(alice, thread_id):
    per_call = []
    for _ in range(BATCHES):
        start = time.perf_counter_ns()
        for _ in range(CALLS):
            got = alice.messages(thread_id)
        per_call.append((time.perf_counter_ns() - start) // CALLS)
    assert len(got) == MESSAGES, len(got)
    return statistics.median(per_call)


def main():
    profile = os.environ.get("BENCH_PROFILE", "release")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        server = Server(tmp / "server-data", tmp / "server.log")
        server.start()
        try:
            alice, thread_id = asyncio.run(fill(server, tmp / "alice"))
            py_ns = time_python(alice, thread_id)
            alice.shutdown()
        finally:
            server.stop()
        # The folder is free once the handle is shut down; the Rust client opens it offline.
        rust = subprocess.run([str(REPO / f"target/{profile}/cached_read"), str(tmp / "alice"),
                               thread_id, str(CALLS)], capture_output=True, text=True, timeout=120)
        if rust.returncode != 0:
            sys.exit(f"cached_read failed: {rust.stderr}")
        line = rust.stdout.strip()
        rust_ns = int(line.split("median ")[1].split(" ns")[0])
    print(f"== bindings call overhead ({profile} library, {CALLS} calls x {BATCHES} batches, median batch)")
    print(f"python: {py_ns / 1000:.1f} us per messages() call ({MESSAGES} messages)")
    print(f"{line.replace('median ', 'median ')}")
    print(f"overhead of the bindings: {(py_ns - rust_ns) / 1000:.1f} us per call "
          f"({py_ns / max(rust_ns, 1):.2f}x the Rust call)")


if __name__ == "__main__":
    main()
