"""Soak: hundreds of short sessions created and destroyed in one long-lived Host through the
embedding API, and the host's footprint sampled between batches.

Sessions are a mix of the three ways a session ends: healthy to end of stream (8 in 10),
a node killed by a signal (1 in 10), and ``Session.stop()`` in the middle of a stream (1 in
10). They run two at a time (one per core). After each batch, with no session running, the
host's RSS, open file descriptors, threads, live ``Session`` objects, and the iceoryx2 files
and node temp dirs attributable to its sessions are sampled.

Tolerances (after a warm-up, which lets allocator pools, import caches and pydantic's
validator caches fill):

- open fds, threads and live Session objects: **exactly** back to the baseline after every
  batch. A session owns a wake-up pipe, a control socket, a stdout pipe and a pidfd per node
  and one supervisor thread; one of them leaked per session is 100+ after a soak.
- iceoryx2 files, node/service records, node temp dirs: **zero** at every sample.
- RSS: the least-squares slope over the post-warm-up samples below 512 KiB per 100 sessions,
  i.e. under 5 KiB a session. The smallest thing a session could leak whole — its event list
  (~40 dicts) plus its Session, children and plan — is tens of KiB, so a real per-session leak
  shows up as MiBs per 100 sessions; what remains under the bound is allocator noise (CPython
  arenas are freed only when entirely empty, and the sample is the OS's RSS).
"""

from __future__ import annotations

import gc
import glob
import json
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest

from .conftest import Tracker, option
from .support import (
    node_records,
    probe_pipeline,
    record,
    run,
    service_records,
    shm_bytes,
    slope,
    unexplained_shm,
)

BATCH = 10
RSS_SLOPE_LIMIT = 512 * 1024  # bytes per 100 sessions, after warm-up (see module docstring)


def tmp_dirs(session_ids: list[str]) -> list[str]:
    return [d for sid in session_ids for d in glob.glob(f"/tmp/nodehost-{sid}-*")]


def one_session(host: Any, index: int, folder: Path, live: list[Any]) -> str:
    out = folder / f"soak{index % 4}-{threading.get_ident()}.json"
    kind = index % 10
    if kind == 7:  # a node killed by a signal mid-stream
        outcome = run(host, probe_pipeline(out, name="soak-crash", count=500, middle=[
            {"id": "bad", "type": "Faulty", "params": {"mode": "sigkill", "after": 3}}]))
        assert not outcome.result.ok and outcome.result.failed_node == "bad", \
            outcome.result.reason
        return "crashed"
    if kind == 3:  # stopped by the embedder in the middle of a stream
        session = host.start_session(probe_pipeline(out, name="soak-stop", count=10**6,
                                                    interval_ms=1.0))
        live.append(weakref.ref(session))
        for event in session.events(timeout=120):
            if event["event"] == "status" and event["status"] == "Processing":
                break
        result = session.stop("soak stop", timeout=120)
        assert not result.ok and result.reason == "soak stop", result.reason
        return "stopped"
    session = host.start_session(probe_pipeline(out, name="soak", count=20, seed=index))
    live.append(weakref.ref(session))
    result = session.wait(120)
    assert result.ok, result.reason
    summary = json.loads(out.read_text())
    assert (summary["count"], summary["in_order"], summary["intact"], summary["seeds"]) == \
        (20, True, True, {str(index): 20})
    return "ok"


def test_soak_one_host_hundreds_of_sessions(request: pytest.FixtureRequest,
                                           tmp_out: Path) -> None:
    total = max(4 * BATCH, option(request.config, "--soak-sessions"))
    warmup = max(4 * BATCH, (total // 5) // BATCH * BATCH)
    tracker = Tracker()
    me = psutil.Process()
    live: list[Any] = []
    samples: list[dict[str, Any]] = []
    ends: dict[str, int] = {"ok": 0, "crashed": 0, "stopped": 0}
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            for first in range(0, total, BATCH):
                batch = range(first, min(total, first + BATCH))
                for end in pool.map(lambda i: one_session(tracker.host, i, tmp_out, live),
                                    batch):
                    ends[end] += 1
                assert tracker.host.sessions() == [], "finished sessions still listed"
                gc.collect()
                new_shm = unexplained_shm(tracker.shm_before)
                samples.append({
                    "sessions": batch.stop,
                    "rss": me.memory_info().rss,
                    "fds": me.num_fds(),
                    "threads": me.num_threads(),
                    "py_threads": threading.active_count(),
                    "live_sessions": sum(1 for ref in live if ref() is not None),
                    "shm_files": len(new_shm),
                    "shm_bytes": shm_bytes(new_shm),
                    "iox2_records": len(node_records(tracker.session_ids))
                    + len(service_records(tracker.session_ids)),
                    "tmp_dirs": len(tmp_dirs(tracker.session_ids)),
                })
    finally:
        left = tracker.close()
    wall = time.monotonic() - started

    steady = [s for s in samples if s["sessions"] > warmup]
    base = steady[0]
    xs = [s["sessions"] for s in steady]
    per100 = {k: slope(xs, [s[k] for s in steady]) * 100
              for k in ("rss", "fds", "threads", "shm_files")}
    record("soak", sessions=total, ended_ok=ends["ok"], ended_by_crash=ends["crashed"],
           ended_by_stop=ends["stopped"], warmup_sessions=warmup, samples=len(samples),
           rss_start_mib=round(samples[0]["rss"] / 2**20, 1),
           rss_end_mib=round(samples[-1]["rss"] / 2**20, 1),
           rss_slope_kib_per_100=round(per100["rss"] / 1024, 1),
           rss_slope_limit_kib_per_100=RSS_SLOPE_LIMIT // 1024,
           fds_baseline=base["fds"], fds_max_delta=max(abs(s["fds"] - base["fds"])
                                                     for s in steady),
           fds_slope_per_100=round(per100["fds"], 3),
           threads_baseline=base["threads"],
           threads_max_delta=max(abs(s["threads"] - base["threads"]) for s in steady),
           threads_slope_per_100=round(per100["threads"], 3),
           live_session_objects_max=max(s["live_sessions"] for s in steady),
           shm_files_max=max(s["shm_files"] for s in samples),
           shm_bytes_max=max(s["shm_bytes"] for s in samples),
           iox2_records_max=max(s["iox2_records"] for s in samples),
           tmp_dirs_max=max(s["tmp_dirs"] for s in samples),
           sessions_per_s=round(total / wall, 2), wall_s=round(wall, 1))

    assert left.total == 0, f"left behind: {left}"
    for s in steady:
        assert (s["fds"], s["threads"], s["py_threads"]) == \
            (base["fds"], base["threads"], base["py_threads"]), \
            f"after {s['sessions']} sessions: {s} (baseline {base})"
        assert s["live_sessions"] == 0, f"Session objects kept alive: {s}"
    for s in samples:
        assert (s["shm_files"], s["iox2_records"], s["tmp_dirs"]) == (0, 0, 0), s
    assert per100["rss"] < RSS_SLOPE_LIMIT, \
        f"host RSS grows {per100['rss'] / 1024:.0f} KiB per 100 sessions: " \
        f"{[(s['sessions'], s['rss'] >> 10) for s in steady]}"
