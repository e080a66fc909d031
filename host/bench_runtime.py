"""Runtime scenarios for ``nodehost bench``: whole sessions of real node processes.

Uses the probe node types of the ``nodehost-testnodes`` plugin. Each figure is a median over
repeated sessions, measured from the session's own events or the sink's own clock.
"""

from __future__ import annotations

import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # probe nodes import spin() from here: keep this module light
    from nodehost.bench import Target
    from nodehost.session import Host


PROBE_TYPES = ("ProbeSource", "Forward", "ProbeSink", "Faulty")


def _chain(out: Path, count: int, payload: int, middle: int, *, interval_ms: float = 0.0,
           name: str = "bench") -> dict[str, Any]:
    nodes: list[dict[str, Any]] = [{"id": "src", "type": "ProbeSource", "params": {
        "count": count, "payload_bytes": payload, "interval_ms": interval_ms}}]
    nodes += [{"id": f"fwd{i}", "type": "Forward"} for i in range(middle)]
    nodes.append({"id": "sink", "type": "ProbeSink", "params": {"out_path": str(out)},
                  "sandbox": {"fs_write": [str(out)]}})
    ids = [n["id"] for n in nodes]
    return {"name": name, "nodes": nodes,
            "connections": [{"from": a, "to": b} for a, b in itertools.pairwise(ids)]}


def _run_summary(host: Host, config: dict[str, Any], out: Path) -> dict[str, Any]:
    session = host.start_session(config)
    events = list(session.events())
    result = session.wait()
    if not result.ok:
        raise RuntimeError(f"benchmark session failed: {result.reason}")
    summary: dict[str, Any] = json.loads(out.read_text())
    summary["events"] = events
    return summary


def _throughput(host: Host, tmp: Path, count: int, middle: int) -> dict[str, Any]:
    out = tmp / f"throughput{middle}.json"
    summary = _run_summary(host, _chain(out, count, 1024, middle), out)
    elapsed = summary["last_mono"] - summary["first_mono"]
    return {"scenario": f"{middle + 2}-node chain throughput (1 KiB)",
            "messages": summary["count"],
            "msgs_per_s": round((summary["count"] - 1) / elapsed) if elapsed > 0 else None}


def hop_throughput(host: Host, tmp: Path, count: int = 20000) -> dict[str, Any]:
    """Source → sink: one hop through two real nodes."""
    return _throughput(host, tmp, count, 0)


def chain_throughput(host: Host, tmp: Path, count: int = 20000) -> dict[str, Any]:
    """Source → forward → sink."""
    return _throughput(host, tmp, count, 1)


def stats_overhead(host: Host, tmp: Path, count: int = 20000,
                   rounds: int = 3) -> dict[str, Any]:
    """The 1 KiB chain with stats reported every 0.5 s against stats effectively off (one
    report an hour), alternating, median of each: what live figures cost the hot path."""
    from nodehost.session import Host as HostClass
    from nodehost.stats import STATS_INTERVAL_S

    rates: dict[float, list[float]] = {STATS_INTERVAL_S: [], 3600.0: []}
    for i in range(rounds):
        for interval, runs in rates.items():
            out = tmp / f"stats_overhead{i}.json"
            with HostClass(registry=host.registry, stats_interval_s=interval) as timed:
                summary = _run_summary(timed, _chain(out, count, 1024, 1,
                                                     name=f"stats{i}"), out)
            elapsed = summary["last_ts"] - summary["first_ts"]
            runs.append((summary["count"] - 1) / elapsed)
    on, off = (statistics.median(r) for r in rates.values())
    return {"scenario": "stats overhead: 3-node chain 1 KiB, stats every 0.5 s vs off",
            "on_msgs_per_s": round(on), "off_msgs_per_s": round(off),
            "overhead_pct": round(100 * (off - on) / off, 1)}


def chain_latency(host: Host, tmp: Path, count: int = 400) -> dict[str, Any]:
    """Paced source, so each hop's latency is measured without queueing in front of it."""
    out = tmp / "latency.json"
    summary = _run_summary(host, _chain(out, count, 1024, 1, interval_ms=2.0), out)
    # fwd0's input age: from the source creating a message to fwd0 taking it, one hop
    hops = [e["nodes"]["fwd0"]["input_age_s"]["p50"] for e in summary["events"]
            if e["event"] == "stats" and e["nodes"]["fwd0"]["input_age_s"]["p50"] is not None]
    return {"scenario": "per-hop latency p50 incl. runner (1 KiB, paced)",
            "p50_us": round(statistics.median(hops) * 1e6, 1) if hops else None}


def _ready_and_teardown(host: Host, tmp: Path, name: str) -> tuple[float, float]:
    """One session of 5 trivial nodes: (start_session → all Ready, stop → all reaped) s."""
    out = tmp / f"{name}.json"
    config = _chain(out, 10**9, 1024, 3, interval_ms=50.0, name=name)
    t0 = time.monotonic()
    session = host.start_session(config)
    for event in session.events():
        status = session.status()
        if event["event"] == "status" and all(s.value in ("Ready", "Processing")
                                              for s in status.values()):
            break
    ready = time.monotonic() - t0
    t1 = time.monotonic()
    session.stop("bench teardown")
    return ready, time.monotonic() - t1


def startup_teardown(host: Host, tmp: Path, rounds: int = 5) -> dict[str, Any]:
    """Start-up three ways, interleaved: the bench's host (its zygote warm after the first
    round), a new host's first session (its zygote starts with it: what ``nodehost run``
    pays) and a host that execs every node (``zygote=False``: the baseline)."""
    from nodehost.session import Host

    ready_s: list[float] = []
    teardown_s: list[float] = []
    cold_s: list[float] = []
    exec_s: list[float] = []
    for i in range(rounds):
        ready, teardown = _ready_and_teardown(host, tmp, f"startup{i}")
        ready_s.append(ready)
        teardown_s.append(teardown)
        for zygote, into in ((True, cold_s), (False, exec_s)):
            with Host(registry=host.registry, zygote=zygote) as fresh:
                into.append(_ready_and_teardown(fresh, tmp, f"startup{i}z{zygote:d}")[0])
    return {"scenario": "5 trivial nodes: start → all Ready; stop → all reaped",
            "ready_p50_s": round(statistics.median(ready_s), 3),
            "teardown_p50_s": round(statistics.median(teardown_s), 3),
            "ready_new_host_p50_s": round(statistics.median(cold_s), 3),
            "ready_exec_p50_s": round(statistics.median(exec_s), 3)}


def crash_teardown(host: Host, tmp: Path, rounds: int = 7) -> dict[str, Any]:
    detect_ms = []
    for i in range(rounds):
        out = tmp / f"crash{i}.json"
        config = _chain(out, 10**9, 1024, 0, interval_ms=1.0, name=f"crash{i}")
        config["nodes"].insert(1, {"id": "bad", "type": "Faulty",
                                   "params": {"mode": "sigkill", "after": 50}})
        config["connections"] = [{"from": "src", "to": "bad"}, {"from": "bad", "to": "sink"}]
        session = host.start_session(config)
        crash_ts = end_ts = None
        for event in session.events():
            if event["event"] == "log" and "failing now" in event["message"]:
                crash_ts = float(event["message"].rsplit(" ", 1)[1])
            if event["event"] == "session_end":
                end_ts = event["ts"]
        if crash_ts is not None and end_ts is not None:
            detect_ms.append((end_ts - crash_ts) * 1000)
    return {"scenario": "crash → session fully torn down (SIGKILL in a 3-node chain)",
            "p50_ms": round(statistics.median(detect_ms), 1) if detect_ms else None}


def spin(iterations: int) -> int:
    """A fixed amount of pure-Python CPU work: it holds the GIL, so threads of one process
    cannot share it out — the case process-per-node exists for. (The probe Forward node
    runs the same function.)"""
    x = 0
    for i in range(iterations):
        x += i * i
    return x


def iterations_per_ms() -> int:
    """Calibrate ``spin`` on this machine (best of a few tries, so a busy core does not
    inflate the work)."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        spin(100_000)
        best = min(best, time.perf_counter() - start)
    return max(1, int(100_000 / (best * 1000)))


def parallel_branches(host: Host, tmp: Path, count: int = 200,
                      work_ms: float = 5.0) -> dict[str, Any]:
    """Two CPU-bound nodes on parallel branches vs the same work on two threads of one
    process (the GIL serialises them). The work is a fixed amount of CPU per message,
    calibrated once, the same in both."""

    iterations = int(work_ms * iterations_per_ms())
    outs = [tmp / "branch_a.json", tmp / "branch_b.json"]
    config: dict[str, Any] = {"name": "parallel", "nodes": [
        {"id": "src", "type": "ProbeSource", "params": {"count": count, "payload_bytes": 1024}},
        {"id": "a", "type": "Forward", "params": {"work_iterations": iterations}},
        {"id": "b", "type": "Forward", "params": {"work_iterations": iterations}},
        *({"id": f"sink_{x}", "type": "ProbeSink", "params": {"out_path": str(o)},
           "sandbox": {"fs_write": [str(o)]}} for x, o in zip("ab", outs, strict=True)),
    ], "connections": [{"from": "src", "to": "a"}, {"from": "src", "to": "b"},
                       {"from": "a", "to": "sink_a"}, {"from": "b", "to": "sink_b"}]}
    cpu_before, machine_before, wall_before = _children_cpu_s(), _machine_jiffies(), \
        time.monotonic()
    session = host.start_session(config)
    session.wait()
    wall = time.monotonic() - wall_before
    # exec'd nodes are the host's children; forked ones the zygote's, which reports theirs
    nodes_cpu = _children_cpu_s() - cpu_before + sum(
        child.proc.cpu_s or 0.0 for child in session._children.values())
    machine = [b - a for a, b in zip(machine_before, _machine_jiffies(), strict=True)]
    sums = [json.loads(o.read_text()) for o in outs]
    span = max(s["last_ts"] for s in sums) - min(s["first_ts"] for s in sums)
    nodes_rate = 2 * count / span

    def worker() -> None:
        for _ in range(count):
            spin(iterations)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    threads_rate = 2 * count / (time.perf_counter() - t0)
    processes_rate = _bare_processes_rate(count, iterations)
    # Where the two cores went while the session ran (its whole life, start-up included):
    # busy and steal are cores' worth of /proc/stat time, session_cores the node processes'
    # own CPU — so busy − session_cores is what other processes on the machine took.
    cpus = os.cpu_count() or 1
    total = sum(machine) or 1
    busy_cores = cpus * (total - machine[3] - machine[4]) / total
    return {"scenario": f"2 CPU-bound branches ({work_ms:g} ms/msg) vs 2 threads in 1 process",
            "nodes_msgs_per_s": round(nodes_rate, 1),
            "threads_msgs_per_s": round(threads_rate, 1),
            "speedup": round(nodes_rate / threads_rate, 2),
            # the machine's own ceiling: the same work in 2 bare processes, no nodehost
            "processes_msgs_per_s": round(processes_rate, 1) if processes_rate else None,
            "processes_speedup": round(processes_rate / threads_rate, 2)
            if processes_rate else None,
            "work_cpu_s": round(2 * count * work_ms / 1000, 2),
            "nodes_cpu_s": round(nodes_cpu, 2), "session_wall_s": round(wall, 2),
            "machine_busy_cores": round(busy_cores, 2),
            "session_cores": round(nodes_cpu / wall, 2),
            "steal_cores": round(cpus * machine[7] / total, 2) if len(machine) > 7 else None}


def _bare_processes_rate(count: int, iterations: int) -> float | None:
    """msgs/s of the branches' work in two plain processes (``python -c``, no nodehost
    session), timed inside them from the first start to the last end, interpreter start-up
    excluded; None if they failed."""
    code = ("import time; from nodehost.bench_runtime import spin; "
            f"t = time.monotonic(); [spin({iterations}) for _ in range({count})]; "
            "print(t, time.monotonic())")
    workers = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                text=True) for _ in range(2)]
    spans = []
    for worker in workers:
        out, _ = worker.communicate(timeout=600)
        if worker.returncode != 0:
            return None
        started, ended = (float(v) for v in out.split())
        spans.append((started, ended))
    return 2 * count / (max(end for _, end in spans) - min(start for start, _ in spans))


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _machine_jiffies() -> list[int]:
    """/proc/stat's first line: user nice system idle iowait irq softirq steal ..."""
    with open("/proc/stat", encoding="ascii") as fh:
        return [int(v) for v in fh.readline().split()[1:]]


SCENARIOS: list[Callable[..., dict[str, Any]]] = [
    hop_throughput, chain_throughput, stats_overhead, chain_latency, startup_teardown,
    crash_teardown, parallel_branches,
]
QUICK: dict[str, dict[str, int]] = {  # --quick: fewer messages and rounds, same scenarios
    "hop_throughput": {"count": 5000}, "chain_throughput": {"count": 5000},
    "stats_overhead": {"count": 3000, "rounds": 1},
    "chain_latency": {"count": 150}, "startup_teardown": {"rounds": 3},
    "crash_teardown": {"rounds": 3}, "parallel_branches": {"count": 60},
}
# (scenario, figure, target, higher is better, what) — issue 14's targets for real nodes
TARGETS: list[tuple[str, str, float, bool, str]] = [
    ("hop_throughput", "msgs_per_s", 50_000, True, "1-hop 1 KiB msgs/s through nodes"),
    ("chain_throughput", "msgs_per_s", 40_000, True, "3-node chain 1 KiB msgs/s"),
    ("chain_latency", "p50_us", 60, False, "per-hop p50 incl. runner (paced), us"),
    ("startup_teardown", "ready_p50_s", 0.5, False, "5 nodes start → all Ready, s"),
    ("startup_teardown", "ready_new_host_p50_s", 0.5, False,
     "5 nodes start → all Ready on a new host (zygote starting too), s"),
    ("startup_teardown", "teardown_p50_s", 0.3, False, "stop → all reaped, s"),
    ("crash_teardown", "p50_ms", 50, False, "crash → session torn down, ms"),
    ("parallel_branches", "speedup", 1.8, True, "2 CPU-bound branches ÷ 2 threads"),
]


def targets(runtime: list[dict[str, Any]]) -> list[Target]:
    """The runtime targets, judged from ``run_all``'s results (as ``bench.Target``)."""
    from nodehost.bench import at_least, at_most

    by_id = {r.get("id"): r for r in runtime}
    out: list[Target] = []
    for scenario, figure, limit, higher, what in TARGETS:
        value = by_id.get(scenario, {}).get(figure)
        if value is None:
            continue
        judge = at_least if higher else at_most
        out.append(judge(f"runtime: {what} {'>=' if higher else '<='} {limit:g}",
                         f"{value:,}", value, limit))
    return out


def run_all(progress: Callable[[str], None] | None = None,
            quick: bool = False) -> list[dict[str, Any]]:
    from nodehost.session import Host

    host = Host()
    missing = [t for t in PROBE_TYPES if t not in host.registry.node_types]
    if missing:
        return [{"scenario": "runtime", "skipped": "install plugins/nodehost-testnodes "
                                                   f"(missing {', '.join(missing)})"}]
    results = []
    with tempfile.TemporaryDirectory(prefix="nodehost-bench-") as tmp:
        Path(tmp).chmod(0o755)
        for scenario in SCENARIOS:
            if progress:
                progress(scenario.__name__)
            kwargs = QUICK.get(scenario.__name__, {}) if quick else {}
            results.append({"id": scenario.__name__, **scenario(host, Path(tmp), **kwargs)})
    host.close()
    return results
