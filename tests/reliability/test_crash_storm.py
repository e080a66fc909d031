"""Crash storm: many sessions through one Host, most failing in one of the ways a node can
fail, several at once, mixed with healthy sessions; and a host SIGKILLed with live sessions.

Every failure must be detected with the right node, node type and cause; every process of
every session must be gone afterwards (nodes and anything they forked); no iceoryx2 shared
memory or record may be left; the healthy sessions running beside the failing ones must
deliver everything, in order, intact, from their own source only.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from .conftest import Tracker, option
from .support import (
    leaked_shm,
    node_records,
    percentile,
    poll_until_empty,
    probe_pipeline,
    record,
    run,
    service_records,
    session_processes,
    shm_bytes,
    shm_files,
    unexplained_shm,
    wait_dead,
)

FAULTS = ["sigkill", "sigsegv", "exit", "init_exception", "process_exception", "hang_init",
          "memory"]
KINDS = ["healthy", *FAULTS]
POSITIONS = ["source", "middle", "sink"]
FAULTY_TYPE = {"source": "FaultySource", "middle": "Faulty", "sink": "FaultySink"}
HANG_INIT_TIMEOUT_S = 8.0  # the hung node's session; far above a node's start-up under load
ANTI_HANG_INIT_S = 120.0  # every other session: only there to turn a hang into a failure
NAMES = ["asr", "vad", "tts", "mixer", "encoder", "resampler", "denoise", "buffer"]


def expected_cause(kind: str, position: str) -> str:
    stage = "generate" if position == "source" else "process"
    return {
        "sigkill": r"was killed by SIGKILL",
        "sigsegv": r"was killed by SIGSEGV",
        "exit": r"exited with code 3",
        "init_exception": r"failed in initialize\(\): RuntimeError: injected failure in "
                          r"initialize",
        "process_exception": rf"failed in {stage}\(\): ValueError: injected failure after "
                             r"\d+ messages",
        "hang_init": rf"did not become Ready within init_timeout_s={HANG_INIT_TIMEOUT_S:g} s",
        "memory": rf"hit its memory limit of 256 MiB in {stage}\(\) \(raise "
                  r"nodes\[\d+\]\.resources\.memory_mb\); the error: MemoryError",
    }[kind]


@dataclass
class Scenario:
    index: int
    kind: str
    position: str
    node_id: str
    node_type: str
    seed: int
    count: int
    out: Path
    config: dict[str, Any]


@dataclass
class Verdict:
    scenario: Scenario
    session_id: str = ""
    detected: bool = False
    problems: list[str] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)
    latency_s: float | None = None  # from the node saying "failing now" to session_end


def make_scenario(index: int, kind: str, rng: random.Random, folder: Path) -> Scenario:
    out = folder / f"s{index}.json"
    seed = 1000 + index
    count = rng.randint(100, 300)
    names = rng.sample(NAMES, 4)
    fwd = [{"id": n, "type": "Forward"} for n in names[1:rng.randint(1, 3)]]
    position = "middle" if kind == "healthy" else rng.choice(POSITIONS)
    node_id = names[0]
    node_type = FAULTY_TYPE[position]
    params = {"mode": kind, "after": rng.randint(0, 10)} if kind != "healthy" else {}
    source = sink = None
    middle: list[dict[str, Any]] = list(fwd)
    if kind == "healthy":
        node_id, node_type = "sink", "ProbeSink"
    elif position == "source":
        source = {"id": node_id, "type": node_type,
                  "params": {**params, "count": count, "seed": seed}}
    elif position == "sink":
        sink = {"id": node_id, "type": node_type, "params": params}
    else:
        middle.insert(rng.randint(0, len(middle)), {"id": node_id, "type": node_type,
                                                     "params": params})
    config = probe_pipeline(
        out, name=f"storm{index}-{kind}", seed=seed, count=count,
        payload=rng.choice([64, 1024, 4096, 65536]), middle=middle, source=source, sink=sink,
        init_timeout_s=HANG_INIT_TIMEOUT_S if kind == "hang_init" else ANTI_HANG_INIT_S,
    )
    return Scenario(index, kind, position, node_id, node_type, seed, count, out, config)


def check(host: Any, sc: Scenario) -> Verdict:
    verdict = Verdict(sc)
    try:
        outcome = run(host, sc.config)
    except Exception as exc:  # a hang or a start failure: reported with the others
        verdict.problems.append(f"{type(exc).__name__}: {exc}")
        return verdict
    verdict.session_id = outcome.session_id
    verdict.pids = outcome.pids
    problems = verdict.problems
    r = outcome.result
    end = outcome.events[-1]
    if end["event"] != "session_end":
        problems.append(f"last event is {end['event']}, not session_end")
    finals = outcome.final_statuses()
    if set(finals.values()) != {"Stopped"}:
        problems.append(f"final statuses {finals}")
    if sc.kind == "healthy":
        if not r.ok:
            problems.append(f"healthy session failed: {r.reason}")
        else:
            summary = json.loads(sc.out.read_text())
            want = {"count": sc.count, "in_order": True, "intact": True,
                    "seeds": {str(sc.seed): sc.count}, "session_id": outcome.session_id}
            got = {k: summary.get(k) for k in want}
            if got != want:
                problems.append(f"sink summary {got}, expected {want}")
        verdict.detected = r.ok and not problems
        return verdict
    cause = expected_cause(sc.kind, sc.position)
    if r.ok:
        problems.append("failure not detected: session ended ok")
    if (r.failed_node, r.failed_node_type) != (sc.node_id, sc.node_type):
        problems.append(f"blamed {r.failed_node} ({r.failed_node_type}), expected "
                        f"{sc.node_id} ({sc.node_type}): {r.reason}")
    if f"node '{sc.node_id}' ({sc.node_type})" not in r.reason:
        problems.append(f"reason does not name the node: {r.reason}")
    if not re.search(cause, r.reason):
        problems.append(f"reason {r.reason!r} does not match /{cause}/")
    if end.get("failed_node") != sc.node_id or end.get("ok") is not False:
        problems.append(f"session_end event {end}")
    # The sandbox creates the granted file empty; ProbeSink fills it at end of stream only.
    if sc.out.exists() and sc.out.stat().st_size:  # a failed stream passed off as complete
        problems.append(f"downstream sink finished normally after the failure: "
                        f"{sc.out.read_text()[:200]}")
    verdict.detected = not problems
    failing = [e for e in outcome.events if e["event"] == "log" and
               e["message"].startswith("failing now")]
    if failing and end["event"] == "session_end":
        verdict.latency_s = end["ts"] - failing[0]["ts"]
    return verdict


def test_crash_storm(request: pytest.FixtureRequest, tmp_out: Path) -> None:
    total = option(request.config, "--storm-sessions")
    concurrency = option(request.config, "--storm-concurrency")
    rng = random.Random(7)
    kinds = [KINDS[i % len(KINDS)] for i in range(total)]
    rng.shuffle(kinds)
    scenarios = [make_scenario(i, kind, rng, tmp_out) for i, kind in enumerate(kinds)]

    tracker = Tracker()
    me = psutil.Process()
    threads_before = threading.active_count()
    fds_before = me.num_fds()
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        verdicts = list(pool.map(lambda sc: check(tracker.host, sc), scenarios))
    wall = time.monotonic() - started
    tracker.host.close()

    # Every node of every session (and anything forked by one) is gone.
    all_pids = set().union(*(v.pids for v in verdicts))
    survivors = wait_dead(all_pids) | session_processes(tracker.session_ids)
    left = tracker.leftovers()
    threads_after = threading.active_count()
    fds_after = me.num_fds()

    failing = [v for v in verdicts if v.scenario.kind != "healthy"]
    healthy = [v for v in verdicts if v.scenario.kind == "healthy"]
    per_kind = {k: f"{sum(v.detected for v in verdicts if v.scenario.kind == k)}/"
                   f"{sum(v.scenario.kind == k for v in verdicts)}" for k in KINDS}
    latencies = [v.latency_s for v in verdicts if v.latency_s is not None]
    record("crash storm",
           sessions=len(verdicts), failing=len(failing), healthy=len(healthy),
           concurrency=concurrency,
           detected=f"{sum(v.detected for v in failing)}/{len(failing)}",
           healthy_intact=f"{sum(v.detected for v in healthy)}/{len(healthy)}",
           **{f"detected {k}": per_kind[k] for k in FAULTS},
           positions={p: sum(v.scenario.position == p for v in failing) for p in POSITIONS},
           node_processes=len(all_pids), surviving_processes=len(survivors),
           leftover_shm_files=len(left.shm), leftover_iox2_records=len(left.node_records)
           + len(left.service_records),
           host_threads_delta=threads_after - threads_before,
           host_fds_delta=fds_after - fds_before,
           detection_latency_p50_s=percentile(latencies, 0.5),
           detection_latency_max_s=max(latencies, default=float("nan")),
           wall_s=round(wall, 1))

    bad = [f"#{v.scenario.index} {v.scenario.kind}@{v.scenario.position} "
           f"({v.session_id}): {'; '.join(v.problems)}" for v in verdicts if not v.detected]
    assert not bad, f"{len(bad)} of {len(verdicts)} sessions wrong:\n" + "\n".join(bad)
    assert not survivors, f"processes outlived their sessions: {sorted(survivors)}"
    assert left.total == 0, f"left behind: {left}"
    assert threads_after == threads_before, "supervisor threads outlived their sessions"
    assert fds_after == fds_before, "file descriptors leaked by the host"


# ------------------------------------------------------------------------------ host crash

HOST_SCRIPT = r"""
import json, sys, nodehost
configs, wanted = json.loads(sys.argv[1]), json.loads(sys.argv[2])
host = nodehost.Host()
sessions = [host.start_session(c) for c in configs]
for session, (node, status) in zip(sessions, wanted):
    for event in session.events(timeout=120):
        if event["event"] == "status" and event["node"] == node and event["status"] == status:
            break
    else:
        sys.exit(f"session {session.id} never reached {node} {status}")
pids = [p.pid for s in sessions for p in s.processes().values()]
print(json.dumps({"pids": pids, "sessions": [s.id for s in sessions]}), flush=True)
sys.stdin.read()  # until killed
"""


def crash_configs(folder: Path, round_: int) -> tuple[list[dict[str, Any]], list[list[str]]]:
    """Three sessions caught in three phases: initializing, streaming, blocked on a slow sink."""
    initializing = probe_pipeline(
        folder / f"init{round_}.json", name=f"hostcrash{round_}-init", count=10,
        middle=[{"id": "slow", "type": "SlowInit", "params": {"init_s": 300.0}}])
    streaming = probe_pipeline(
        folder / f"stream{round_}.json", name=f"hostcrash{round_}-stream", count=10**7,
        interval_ms=1.0, middle=[{"id": "fwd", "type": "Forward"}])
    blocked = probe_pipeline(
        folder / f"blocked{round_}.json", name=f"hostcrash{round_}-blocked", count=10**7,
        payload=4096, capacity=65536, sink_delay_ms=20.0,
        middle=[{"id": "fwd", "type": "Forward"}])
    return ([initializing, streaming, blocked],
            [["slow", "Initializing"], ["sink", "Processing"], ["sink", "Processing"]])


def start_host(configs: list[dict[str, Any]], wanted: list[list[str]], zygote: bool = True
               ) -> tuple[subprocess.Popen[str], list[int], list[str]]:
    host = subprocess.Popen(
        [sys.executable, "-c", HOST_SCRIPT, json.dumps(configs), json.dumps(wanted)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "NODEHOST_ZYGOTE": "1" if zygote else "0"})
    assert host.stdout is not None
    line = host.stdout.readline()
    if not line:
        host.kill()
        raise AssertionError(f"host script failed (exit {host.wait(30)})")
    info = json.loads(line)
    return host, info["pids"], info["sessions"]


def test_host_sigkilled_mid_session_then_restarted(request: pytest.FixtureRequest,
                                                   tmp_out: Path) -> None:
    rounds = option(request.config, "--host-crashes")
    totals = {"rounds": 0, "node_processes": 0, "surviving_processes": 0,
              "stale_shm_files_before_restart": 0, "stale_shm_bytes_before_restart": 0,
              "stale_iox2_records_before_restart": 0, "left_after_restart": 0}
    for round_ in range(rounds):
        before = shm_files()
        configs, wanted = crash_configs(tmp_out, round_)
        host, pids, sids = start_host(configs, wanted)
        try:
            assert len(pids) == 9 and all(psutil.pid_exists(p) for p in pids)
        finally:
            os.kill(host.pid, signal.SIGKILL)
            host.wait(30)
        survivors = wait_dead(pids) | session_processes(sids)
        stale = unexplained_shm(before)
        records = node_records(sids) + service_records(sids)
        totals["rounds"] += 1
        totals["node_processes"] += len(pids)
        totals["surviving_processes"] += len(survivors)
        totals["stale_shm_files_before_restart"] += len(stale)
        totals["stale_shm_bytes_before_restart"] += shm_bytes(stale)
        totals["stale_iox2_records_before_restart"] += len(records)
        record("host crash", **totals)
        assert not survivors, f"nodes outlived their SIGKILLed host: {sorted(survivors)}"
        assert records, "a killed host leaves iceoryx2 records (else nothing to reclaim)"

        restarted = Tracker()  # the next host start reclaims what the killed one left
        try:
            left = (node_records(sids) + service_records(sids), leaked_shm(before))
            totals["left_after_restart"] += len(left[0]) + len(left[1])
            record("host crash", **totals)
            assert left == ([], set()), f"not reclaimed by the next host start: {left}"
            out = tmp_out / f"after{round_}.json"
            outcome = run(restarted.host, probe_pipeline(out, name="restarted", count=200,
                                                         seed=round_))
            assert outcome.result.ok, outcome.result.reason
            summary = json.loads(out.read_text())
            assert (summary["count"], summary["in_order"], summary["intact"]) == \
                (200, True, True)
        finally:
            left_over = restarted.close()
            # Temp dirs of the killed sessions stay (a known gap, see
            # test_killed_host_leaves_no_temp_dirs): counted, then removed.
            dirs = [d for sid in sids for d in glob.glob(f"/tmp/nodehost-{sid}-*")]
            totals["temp_dirs_left_by_killed_host"] = \
                totals.get("temp_dirs_left_by_killed_host", 0) + len(dirs)
            record("host crash", **totals)
            for d in dirs:
                shutil.rmtree(d, ignore_errors=True)
        assert left_over.total == 0, f"left behind: {left_over}"


# ------------------------------------------------------------------------------ known gaps

def kill_host_with(configs: list[dict[str, Any]], wanted: list[list[str]], zygote: bool = True
                   ) -> tuple[list[int], list[str]]:
    host, pids, sids = start_host(configs, wanted, zygote)
    os.kill(host.pid, signal.SIGKILL)
    host.wait(30)
    assert not wait_dead(pids), "nodes outlived their SIGKILLed host"
    Tracker().close()  # a host start: reclaims shared memory (and nothing else, yet)
    return pids, sids


# Nodes forked by the host's zygote: the zygote outlives a SIGKILLed host long enough to end
# what the nodes forked and remove their temp dirs. Exec'd nodes: nobody is left to do it.
ZYGOTE_OR_EXEC = [
    pytest.param(True, id="zygote"),
    pytest.param(False, id="exec", marks=pytest.mark.xfail(
        strict=True, reason="known gap for exec'd nodes: with the host SIGKILLed, nobody is "
                            "left to clean up after them")),
]


@pytest.mark.parametrize("zygote", ZYGOTE_OR_EXEC)
def test_killed_host_leaves_no_temp_dirs(tmp_out: Path, zygote: bool) -> None:
    configs, wanted = crash_configs(tmp_out, 99)
    _, sids = kill_host_with(configs[1:2], wanted[1:2], zygote)
    left = poll_until_empty(
        lambda: {d for sid in sids for d in glob.glob(f"/tmp/nodehost-{sid}-*")}, 5, 0.05)
    how = "zygote" if zygote else "exec"
    record("host crash", **{f"temp_dirs_left_after_restart ({how})": len(left)})
    for d in left:
        shutil.rmtree(d, ignore_errors=True)
    assert not left, f"temp dirs of the killed host's sessions: {left}"


@pytest.mark.parametrize("zygote", ZYGOTE_OR_EXEC)
def test_killed_host_leaves_no_forked_children(tmp_out: Path, zygote: bool) -> None:
    """Processes a node forked have no parent-death signal: with the host SIGKILLed, only
    the zygote (for the nodes it forked) can kill their group."""
    out = tmp_out / "forker.txt"
    forker = {"id": "forker", "type": "Intruder",
              "params": {"attempt": "fork_bomb", "target": "4", "linger_s": 120.0,
                         "hold_s": 120.0}}
    config = {"name": "hostcrash-forks",
              "nodes": [forker, {"id": "log", "type": "TextSink",
                                 "params": {"path": str(out)},
                                 "sandbox": {"fs_write": [str(out)]}}],
              "connections": [{"from": "forker", "to": "log"}]}
    _, sids = kill_host_with([config], [["log", "Processing"]], zygote)
    survivors = poll_until_empty(lambda: session_processes(sids), 5, 0.05)
    how = "zygote" if zygote else "exec"
    record("host crash", **{f"forked_children_left_by_killed_host ({how})": len(survivors)})
    for pid in survivors:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_dead(survivors)
    for d in glob.glob(f"/tmp/nodehost-{sids[0]}-*"):
        shutil.rmtree(d, ignore_errors=True)
    assert not survivors, f"forked children outlived their SIGKILLed host: {survivors}"
