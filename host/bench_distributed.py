"""The cost of crossing machines: one hop through Zenoh beside raw Zenoh pub/sub and beside
the same pipeline on one machine, in one run.

    python -m nodehost.bench_distributed [--count N] [--json]

An agent is started on loopback (its own process: a real Zenoh router on TCP), so source and
sink share one monotonic clock and the sink's input age (origin timestamp → receive) is the
end-to-end hop latency. Throughput: messages over the sink's first-to-last receive time.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

SIZES = (1024, 1024 * 1024)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raw_zenoh(locator: str, size: int, count: int) -> dict[str, float]:
    """Two client sessions through the agent's router: ping-pong latency, one-way rate."""
    import zenoh

    from nodehost.zlink import open_client

    a, b = open_client(locator, "bench"), open_client(locator, "bench")
    try:
        block = zenoh.CongestionControl.BLOCK
        pong = threading.Event()
        got = [0]
        done = threading.Event()
        echo = b.declare_publisher("bench/pong", congestion_control=block)
        b.declare_subscriber("bench/ping", lambda s: echo.put(s.payload))
        a.declare_subscriber("bench/pong", lambda s: pong.set())

        def sink(sample: Any) -> None:
            got[0] += 1
            if got[0] == count:
                done.set()
        b.declare_subscriber("bench/data", sink)
        ping = a.declare_publisher("bench/ping", congestion_control=block)
        data = a.declare_publisher("bench/data", congestion_control=block)
        time.sleep(0.5)  # declarations propagate
        payload = os.urandom(size)
        rtts = []
        for _ in range(max(20, count // 10)):
            pong.clear()
            start = time.perf_counter()
            ping.put(payload)
            pong.wait(10)
            rtts.append(time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(count):
            data.put(payload)
        done.wait(120)
        elapsed = time.perf_counter() - start
        return {"latency_p50_us": statistics.median(rtts) / 2 * 1e6,
                "msgs_per_s": got[0] / elapsed}
    finally:
        a.close()
        b.close()


def pipeline(out: Path, size: int, count: int, interval_ms: float,
             machine: str | None, machines: dict[str, Any]) -> dict[str, Any]:
    sink: dict[str, Any] = {"id": "sink", "type": "ProbeSink",
                            "params": {"out_path": str(out)}, "sandbox": {"fs_write": [str(out)]}}
    if machine:
        sink["machine"] = machine
    return {"name": "benchlink", "machines": machines, "nodes": [
        {"id": "src", "type": "ProbeSource",
         "params": {"count": count, "payload_bytes": size, "interval_ms": interval_ms}},
        sink], "connections": [{"from": "src", "to": "sink"}]}


def hop(machine: str | None, machines: dict[str, Any], size: int, count: int
        ) -> dict[str, float]:
    from nodehost.session import Host

    with tempfile.TemporaryDirectory() as tmp, Host() as host:
        out = Path(tmp) / "out.json"
        # paced: latency without queueing; then flat out: throughput
        ages: list[float] = []
        session = host.start_session(pipeline(out, size, max(50, count // 4), 5.0, machine,
                                              machines))
        for event in session.events():
            if event["event"] == "stats":
                age = event.get("nodes", {}).get("sink", {}).get("input_age_s", {}).get("p50")
                if age is not None:
                    ages.append(age)
        if not session.wait().ok:
            raise RuntimeError(f"paced run failed: {session.wait().reason}")
        result = host.run(pipeline(out, size, count, 0.0, machine, machines))
        if not result.ok:
            raise RuntimeError(f"flat-out run failed: {result.reason}")
        summary = json.loads(out.read_text())
        span = summary["last_ts"] - summary["first_ts"]
        return {"latency_p50_us": statistics.median(ages) * 1e6 if ages else float("nan"),
                "msgs_per_s": (summary["count"] - 1) / span if span > 0 else float("nan")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nodehost.bench_distributed")
    parser.add_argument("--count", type=int, default=400, help="messages per size (1 KiB); "
                        "1 MiB runs a quarter of it")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    token = secrets.token_hex(16)
    locator = f"tcp/127.0.0.1:{_port()}"
    agent = subprocess.Popen(
        [sys.executable, "-m", "nodehost.agent", "--listen", locator, "--name", "benchlink",
         "--state-dir", tempfile.mkdtemp(prefix="nodehost-bench-agent-"),
         "--allow-write", tempfile.gettempdir()],  # the sink's summary file
        env={**os.environ, "NODEHOST_AGENT_TOKEN": token, "NH_BENCH_TOKEN": token},
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    rows: list[dict[str, Any]] = []
    try:
        assert agent.stdout is not None
        agent.stdout.readline()  # "... listening on ..."
        os.environ["NH_BENCH_TOKEN"] = token
        machines = {"benchlink": {"connect": locator, "token_env": "NH_BENCH_TOKEN"}}
        for size in SIZES:
            count = args.count if size < 65536 else max(40, args.count // 4)
            rows.append({"size": size, "path": "raw Zenoh pub/sub (client→router→client)",
                         **raw_zenoh(locator, size, count)})
            rows.append({"size": size, "path": "nodehost, one machine (iceoryx2)",
                         **hop(None, {}, size, count)})
            rows.append({"size": size, "path": "nodehost, across machines (bridge + Zenoh)",
                         **hop("benchlink", machines, size, count)})
    finally:
        agent.terminate()
        agent.wait(30)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'size':>8}  {'path':<44} {'p50 latency':>12} {'msgs/s':>10}")
    for row in rows:
        label = f"{row['size'] // 1024} KiB" if row["size"] < 1 << 20 else "1 MiB"
        print(f"{label:>8}  {row['path']:<44} {row['latency_p50_us']:>9.0f} µs "
              f"{row['msgs_per_s']:>10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
