"""``nodehost bench --peers``: the same node workloads on nodehost and on its peers, in one run.

Three workloads, each on every framework that is installed (the peers are the optional extra
``nodehost[peers]``; nothing else needs them):

- **1 hop**: a source node streams 1 KiB messages as fast as the framework takes them to a
  sink node; messages per second from the sink's first receive to its last.
- **3 nodes**: the same through a forwarding node in the middle (source → forward → sink).
- **latency**: the source paced (one message every 2 ms, so nothing queues), 1 hop; the sink
  takes ``CLOCK_MONOTONIC`` when its node code holds the message and subtracts the send
  stamp; the median of every message.

Frameworks:

- ``nodehost``: a session of the ``nodehost-testnodes`` probe nodes (real sandboxed node
  processes; the send stamp is the one the channel writes into each message's header).
- ``dora``: dora-rs Python nodes (``dora run`` of a generated dataflow; the send stamp is
  written into the payload just before ``send_output``). dora has no backpressure: each
  input gets a queue as long as the whole stream, yet under a stream that never pauses dora
  still drops some (each row lists how many were lost per run); the rate counts what
  arrived.
- ``mp-queue``: three ``multiprocessing`` processes linked by ``multiprocessing.Queue``
  (bounded, so a fast source blocks like nodehost's backpressure), the payload a 1 KiB
  ``bytes`` with the stamp in front.

Each figure is the median over ``rounds`` runs, and each row carries its ratio to nodehost
measured in the same run. This module is also the dora node program
(``python -m nodehost.bench_peers dora-node ROLE ...``), so it imports nothing heavy at the
top.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PAYLOAD = 1024
THROUGHPUT_COUNT = 20_000
LATENCY_COUNT = 400
LATENCY_INTERVAL_MS = 2.0
MP_QUEUE_SIZE = 16          # nodehost's per-channel depth
_STAMP = struct.Struct("<Q")
WORKLOADS = ("1-hop msgs/s", "3-node msgs/s", "1-hop p50 us")
FRAMEWORKS = ("nodehost", "dora", "mp-queue")


# --------------------------------------------------------------------------- the sink's sums

class Tally:
    """What a sink measures: count, first/last receive time, one-way latencies."""

    def __init__(self) -> None:
        self.count = 0
        self.first_ns = 0
        self.last_ns = 0
        self.latencies_us: list[float] = []

    def take(self, stamp_ns: int) -> None:
        now = time.monotonic_ns()
        if not self.count:
            self.first_ns = now
        self.last_ns = now
        self.count += 1
        self.latencies_us.append((now - stamp_ns) / 1e3)

    def summary(self) -> dict[str, Any]:
        return summarize(self.count, self.first_ns / 1e9, self.last_ns / 1e9,
                         self.latencies_us)


def summarize(count: int, first_s: float, last_s: float,
              latencies_us: list[float]) -> dict[str, Any]:
    span = last_s - first_s
    return {"count": count,
            "msgs_per_s": round((count - 1) / span) if count > 1 and span > 0 else None,
            "p50_us": round(statistics.median(latencies_us), 1) if latencies_us else None}


# --------------------------------------------------------------------------- nodehost

def run_nodehost(host: Any, tmp: Path, count: int, middle: int,
                 interval_ms: float) -> dict[str, Any]:
    from nodehost.bench_runtime import _chain, _run_summary

    out = tmp / f"nodehost-{middle}-{interval_ms:g}.json"
    summary = _run_summary(host, _chain(out, count, PAYLOAD, middle, interval_ms=interval_ms,
                                        name="peers"), out)
    result = summarize(summary["count"], summary["first_mono"] or 0.0,
                       summary["last_mono"] or 0.0, [])
    result["p50_us"] = summary["latency_p50_us"]
    if not (summary["in_order"] and summary["intact"]):
        raise RuntimeError("nodehost peers run: messages arrived out of order or damaged")
    return result


# --------------------------------------------------------------------------- dora-rs

def dora_cli() -> str | None:
    """The ``dora`` CLI of this interpreter's environment (the PyPI ``dora-rs-cli``)."""
    beside = Path(sys.executable).with_name("dora")
    if beside.exists():
        return str(beside)
    return shutil.which("dora")


def dora_available() -> str | None:
    """None when dora-rs can be benchmarked here, else why not."""
    try:
        import dora  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError:
        return "dora-rs not installed (pip install 'nodehost[peers]')"
    if dora_cli() is None:
        return "the dora CLI is not installed (pip install dora-rs-cli)"
    return None


def _dora_dataflow(tmp: Path, count: int, middle: int, interval_ms: float, out: Path) -> Path:
    def node(node_id: str, args: list[str], source: str | None) -> list[str]:
        lines = [f"  - id: {node_id}", f"    path: {sys.executable}",
                 f"    args: -m nodehost.bench_peers dora-node {' '.join(args)}"]
        if node_id != "sink":
            lines.append("    outputs: [out]")
        if source is not None:
            lines += ["    inputs:", f"      in: {{source: {source}/out, queue_size: {count}}}"]
        return lines

    ids = ["src", *(f"fwd{i}" for i in range(middle)), "sink"]
    lines = ["nodes:"]
    lines += node("src", ["source", str(count), str(interval_ms)], None)
    for prev, node_id in itertools.pairwise(ids[:-1]):
        lines += node(node_id, ["forward"], prev)
    lines += node("sink", ["sink", str(out)], ids[-2])
    path = tmp / f"dora-{middle}-{interval_ms:g}.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_dora(tmp: Path, count: int, middle: int, interval_ms: float) -> dict[str, Any]:
    cli = dora_cli()
    assert cli is not None
    out = tmp / f"dora-{middle}-{interval_ms:g}.json"
    out.unlink(missing_ok=True)
    flow = _dora_dataflow(tmp, count, middle, interval_ms, out)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    result = subprocess.run([cli, "run", str(flow)], cwd=tmp, env=env, capture_output=True,
                            text=True, timeout=600, check=False)
    if result.returncode != 0 or not out.exists():
        raise RuntimeError(f"dora run failed ({result.returncode}): "
                           f"{(result.stderr or result.stdout)[-2000:]}")
    summary: dict[str, Any] = json.loads(out.read_text())
    return summary


def dora_node(role: str, args: list[str]) -> None:
    """One dora node (run by ``dora run``)."""
    import numpy as np
    import pyarrow as pa
    from dora import Node

    node = Node()
    if role == "source":
        count, interval_s = int(args[0]), float(args[1]) / 1000
        payload = np.zeros(PAYLOAD, dtype=np.uint8)
        stamp = payload[:8].view("<u8")
        for _ in range(count):
            stamp[0] = time.monotonic_ns()
            node.send_output("out", pa.array(payload))
            if interval_s:
                time.sleep(interval_s)
    elif role == "forward":
        for event in node:
            if event["type"] == "INPUT":
                node.send_output("out", event["value"], event["metadata"])
    else:
        tally = Tally()
        for event in node:
            if event["type"] == "INPUT":
                head = event["value"].to_numpy(zero_copy_only=False)[:8]
                tally.take(int(head.view("<u8")[0]))
        Path(args[0]).write_text(json.dumps(tally.summary()))


# --------------------------------------------------------------------------- multiprocessing

def _mp_source(out: Any, count: int, interval_s: float) -> None:
    payload = bytearray(PAYLOAD)
    for _ in range(count):
        _STAMP.pack_into(payload, 0, time.monotonic_ns())
        out.put(bytes(payload))
        if interval_s:
            time.sleep(interval_s)
    out.put(None)


def _mp_forward(inp: Any, out: Any) -> None:
    while (item := inp.get()) is not None:
        out.put(item)
    out.put(None)


def _mp_sink(inp: Any, result: Any) -> None:
    tally = Tally()
    while (item := inp.get()) is not None:
        tally.take(_STAMP.unpack_from(item)[0])
    result.put(tally.summary())


def run_mp_queue(count: int, middle: int, interval_ms: float) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queues = [ctx.Queue(MP_QUEUE_SIZE) for _ in range(middle + 1)]
    result = ctx.Queue()
    procs = [ctx.Process(target=_mp_source, args=(queues[0], count, interval_ms / 1000))]
    procs += [ctx.Process(target=_mp_forward, args=(queues[i], queues[i + 1]))
              for i in range(middle)]
    procs.append(ctx.Process(target=_mp_sink, args=(queues[-1], result)))
    for proc in procs:
        proc.start()
    try:
        summary: dict[str, Any] = result.get(timeout=600)
    finally:
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join()
    return summary


# --------------------------------------------------------------------------- the table

def run_all(rounds: int = 3, quick: bool = False,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every workload on every framework, ``rounds`` times; medians and ratios."""
    from nodehost.bench_runtime import PROBE_TYPES
    from nodehost.session import Host

    count = THROUGHPUT_COUNT // 4 if quick else THROUGHPUT_COUNT
    lat_count = LATENCY_COUNT // 4 if quick else LATENCY_COUNT
    skipped: dict[str, str] = {}
    host = Host()
    missing = [t for t in PROBE_TYPES if t not in host.registry.node_types]
    if missing:
        skipped["nodehost"] = f"install plugins/nodehost-testnodes (missing {missing})"
    if (why := dora_available()) is not None:
        skipped["dora"] = why
    workloads: dict[str, tuple[int, int, float, str]] = {
        "1-hop msgs/s": (count, 0, 0.0, "msgs_per_s"),
        "3-node msgs/s": (count, 1, 0.0, "msgs_per_s"),
        "1-hop p50 us": (lat_count, 0, LATENCY_INTERVAL_MS, "p50_us"),
    }
    samples: dict[tuple[str, str], list[float]] = {}
    lost: dict[tuple[str, str], list[int]] = {}  # dora drops what overflows an input queue
    with tempfile.TemporaryDirectory(prefix="nodehost-peers-") as tmp_name:
        tmp = Path(tmp_name)
        tmp.chmod(0o755)
        runners: dict[str, Callable[[int, int, float], dict[str, Any]]] = {
            "nodehost": lambda n, m, i: run_nodehost(host, tmp, n, m, i),
            "dora": lambda n, m, i: run_dora(tmp, n, m, i),
            "mp-queue": run_mp_queue,
        }
        for round_no in range(rounds):
            # interleaved: every framework sees the same machine load in each round
            for workload, (n, middle, interval, key) in workloads.items():
                for framework, run in runners.items():
                    if framework in skipped:
                        continue
                    if progress:
                        progress(f"peers round {round_no + 1}/{rounds}: {framework} "
                                 f"{workload}")
                    summary = run(n, middle, interval)
                    if summary["count"] != n and framework == "nodehost":
                        raise RuntimeError(f"{framework} {workload}: {summary['count']} of "
                                           f"{n} messages arrived")
                    lost.setdefault((framework, workload), []).append(n - summary["count"])
                    if summary[key] is not None:
                        samples.setdefault((framework, workload), []).append(summary[key])
    host.close()
    rows: list[dict[str, Any]] = []
    for framework in FRAMEWORKS:
        if framework in skipped:
            rows.append({"framework": framework, "skipped": skipped[framework]})
            continue
        row: dict[str, Any] = {"framework": framework}
        for workload in WORKLOADS:
            values = samples.get((framework, workload), [])
            row[workload] = round(statistics.median(values), 1) if values else None
            row[f"{workload} runs"] = values
            row[f"{workload} lost"] = lost.get((framework, workload), [])
        rows.append(row)
    compare(rows)
    return {"rounds": rounds, "payload_bytes": PAYLOAD, "messages": count,
            "latency_messages": lat_count, "latency_interval_ms": LATENCY_INTERVAL_MS,
            "rows": rows}


def compare(rows: list[dict[str, Any]]) -> None:
    """Add each peer's ratio to nodehost (the first row): > 1 means nodehost is better —
    msgs/s ours ÷ theirs, latency theirs ÷ ours."""
    ours = rows[0] if rows and "skipped" not in rows[0] else None
    for row in rows[1:]:
        if ours is None or "skipped" in row:
            continue
        for workload in WORKLOADS:
            a, b = ours[workload], row[workload]
            if a and b:
                row[f"nodehost vs {workload}"] = round(b / a if "p50" in workload else a / b,
                                                       2)


def table(peers: dict[str, Any]) -> str:
    lines = [f"peers ({peers['payload_bytes']} B messages, median of {peers['rounds']} "
             "run(s); 'nodehost ×' > 1: nodehost better)",
             f"{'framework':<10}" + "".join(f"{w:>16}{'nodehost ×':>12}" for w in WORKLOADS)]
    for row in peers["rows"]:
        if "skipped" in row:
            lines.append(f"{row['framework']:<10}skipped: {row['skipped']}")
            continue
        cells = ""
        for workload in WORKLOADS:
            value = row[workload]
            ratio = row.get(f"nodehost vs {workload}")
            cells += f"{value if value is not None else '-':>16}"
            cells += f"{f'{ratio:.2f}×' if ratio else '':>12}"
        lines.append(f"{row['framework']:<10}{cells}")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "dora-node":
        dora_node(sys.argv[2], sys.argv[3:])
    else:
        rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
        peers = run_all(rounds, progress=lambda s: print(s, file=sys.stderr, flush=True))
        print(json.dumps(peers), file=sys.stderr)
        print(table(peers))
