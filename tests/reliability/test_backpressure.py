"""Backpressure under load: a source as fast as it can go, a pass-through, and a sink that
sleeps 0.5 ms per message, through channels of 64 KiB (about 15 messages of 4 KiB), for
``--backpressure-seconds`` (45 s in CI; minutes behind the option).

Over that time the source offers hundreds of MiB, thousands of times what the channels hold.
With lossless backpressure the source blocks instead of outrunning the sink, so:

- nothing is dropped and order is kept: the sink counts every sequence number once, in order,
  with intact payloads;
- memory stays bounded: every node's RSS (psutil, sampled every 0.5 s) stays within 24 MiB of
  its level once streaming began — data piling up anywhere would grow by the MiBs offered
  per second — and the shared memory the session maps does not grow at all;
- nothing is kept per message: over the second half of the run each node's RSS may grow by
  at most 512 KiB (one CPython arena and a few pages of noise) plus 4 bytes per message
  that passed. The smallest object Python can retain per message (a float in a list) costs
  32 bytes, so a per-message leak exceeds this bound and noise does not.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import psutil
import pytest

from .conftest import Tracker, option
from .support import record, slope

PAYLOAD = 4096
CAPACITY = 64 * 1024
SINK_DELAY_MS = 0.5
RATE_ESTIMATE = 1200  # messages/s through a 2 ms sink; only sizes the run, never asserted
RSS_GROWTH_LIMIT = 24 * 2**20
LATE_NOISE = 512 * 1024
LATE_PER_MESSAGE = 4  # bytes


def session_shm_bytes(pids: list[int]) -> int:
    """Bytes of /dev/shm that the session's processes map (iceoryx2 segments are sparse:
    counted by the blocks tmpfs holds)."""
    files: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/maps") as fh:
            for line in fh:
                at = line.find("/dev/shm/")
                if at >= 0:
                    files.add(line[at:].rstrip("\n").removesuffix(" (deleted)"))
    total = 0
    for f in files:
        with contextlib.suppress(OSError):
            total += os.stat(f).st_blocks * 512
    return total


def test_fast_source_slow_sink_bounded_lossless_ordered(request: pytest.FixtureRequest,
                                                        tracked: Tracker,
                                                        tmp_out: Path) -> None:
    seconds = option(request.config, "--backpressure-seconds")
    count = int(seconds * RATE_ESTIMATE)
    out = tmp_out / "bp.json"
    config = {
        "name": "backpressure",
        "nodes": [
            {"id": "src", "type": "ProbeSource",
             "params": {"count": count, "payload_bytes": PAYLOAD, "seed": 5}},
            {"id": "fwd", "type": "Forward"},
            {"id": "sink", "type": "ProbeSink",
             "params": {"out_path": str(out), "delay_ms": SINK_DELAY_MS},
             "sandbox": {"fs_write": [str(out)]}},
        ],
        "connections": [{"from": "src", "to": "fwd", "capacity": CAPACITY},
                        {"from": "fwd", "to": "sink", "capacity": CAPACITY}],
    }
    session = tracked.host.start_session(config)
    for event in session.events(timeout=120):
        if event["event"] == "status" and event["node"] == "sink" \
                and event["status"] == "Processing":
            break
    pids = {node: proc.pid for node, proc in session.processes().items()}
    procs = {node: psutil.Process(pid) for node, pid in pids.items()}
    rss: dict[str, list[tuple[float, int]]] = {node: [] for node in pids}
    shm: list[int] = []
    started = time.monotonic()
    deadline = started + 4 * seconds + 120  # anti-hang only
    while True:
        try:
            result = session.wait(0.5)
            break
        except TimeoutError:
            pass
        now = time.monotonic() - started
        for node, proc in procs.items():
            with contextlib.suppress(psutil.Error):
                rss[node].append((now, proc.memory_info().rss))
        shm.append(session_shm_bytes(list(pids.values())))
        if time.monotonic() > deadline:
            session.stop("hung", timeout=60)
            raise AssertionError(f"backpressure session still running after {deadline} s")
    wall = time.monotonic() - started
    assert result.ok, result.reason
    summary = json.loads(out.read_text())

    rate = summary["count"] / max(1e-9, summary["last_ts"] - summary["first_ts"])  # msg/s
    growth = {}
    slopes = {}
    late = {}  # node → (RSS growth over the second half, what the bound allows)
    for node, samples in rss.items():
        if len(samples) < 4:
            continue
        values = [v for _, v in samples]
        warm = max(values[: max(2, len(values) // 10)])
        growth[node] = max(values) - warm
        half = samples[len(samples) // 2:]
        per_s = slope([t for t, _ in half], [v for _, v in half])
        slopes[node] = per_s * 60
        window = half[-1][0] - half[0][0]
        late[node] = (per_s * window, LATE_NOISE + LATE_PER_MESSAGE * rate * window)
    offered = count * (PAYLOAD + 256)
    record("backpressure", seconds=round(wall, 1), messages=count,
           offered_mib=round(offered / 2**20, 1), channel_capacity_kib=CAPACITY // 1024,
           received=summary["count"], dropped=count - summary["count"],
           in_order=summary["in_order"], intact=summary["intact"],
           rss_growth_kib={n: g // 1024 for n, g in growth.items()},
           rss_slope_kib_per_min_2nd_half={n: round(s / 1024) for n, s in slopes.items()},
           rss_bytes_per_message_2nd_half={n: round(s / 60 / rate, 2)
                                           for n, s in slopes.items()},
           rss_peak_mib={n: round(max(v for _, v in s) / 2**20, 1) for n, s in rss.items()
                         if s},
           shm_mapped_kib_min_max=(min(shm, default=0) // 1024, max(shm, default=0) // 1024),
           throughput_msg_per_s=round(count / wall))

    assert summary["count"] == count, f"dropped {count - summary['count']} of {count}"
    assert summary["in_order"] and summary["intact"]
    assert summary["seeds"] == {"5": count}
    assert offered > 100 * 2 * CAPACITY, "the run must offer far more than the channels hold"
    for node, g in growth.items():
        assert g < RSS_GROWTH_LIMIT, f"{node} RSS grew {g >> 20} MiB under backpressure"
    for node, (grew, allowed) in late.items():
        assert grew < allowed, \
            f"{node} RSS kept growing: {grew / 1024:.0f} KiB over the second half, " \
            f"{slopes[node] / 60 / rate:.1f} bytes per message; allowed {allowed / 1024:.0f} KiB"
    half = len(shm) // 2
    assert half >= 2 and max(shm[half:]) <= max(shm[:half]) + 2**20, \
        f"shared memory kept growing under backpressure: {shm}"
