"""`nodehost bench` runs end to end and reports what it promises (shape, not speed: the
performance targets are judged by the bench itself, never by a timed test)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from conftest import leaked_shm_files, shm_files

from nodehost import bench


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    before = shm_files()
    result = subprocess.run(
        [sys.executable, "-m", "nodehost.cli", "bench", "--json", "--quick", "--no-runtime",
         "--sizes", "1024,65536", "--placement", "same-core"],
        capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    assert not leaked_shm_files(before), "the bench left iceoryx2 files behind"
    return dict(json.loads(result.stdout))


def test_every_transport_and_size_is_measured(report: dict[str, Any]) -> None:
    rows = {(r["transport"], r["payload_bytes"]): r for r in report["results"]}
    assert set(rows) == {(t, s) for t in bench.TRANSPORTS for s in (1024, 65536)}
    for row in rows.values():
        assert row["placement"] == "same-core"
        assert 0 < row["p50_us"] <= row["p95_us"] <= row["p99_us"], row
    for transport in bench.TRANSPORTS:
        assert rows[(transport, 1024)]["msgs_per_s"] > 0
        assert "msgs_per_s" not in rows[(transport, 65536)]


def test_memory_and_cleanup_are_reported(report: dict[str, Any]) -> None:
    memory = report["memory"]
    assert memory["messages"] == 1000 and memory["payload_bytes"] == 1 << 20
    assert memory["rss_at"] == [100, 500, 1000]
    assert len(memory["writer_rss_kib"]) == len(memory["reader_rss_kib"]) == 3
    assert memory["writer_growth_kib"] == memory["writer_rss_kib"][2] - memory["writer_rss_kib"][1]
    assert report["leftover_files"] == []


def test_forwarding_is_measured_against_one_memmove(report: dict[str, Any]) -> None:
    forward = report["forward"]
    assert forward["payload_bytes"] == 10 << 20 and forward["messages"] == 10
    assert forward["send_us"] > 0 and forward["memmove_us"] > 0
    assert forward["ratio"] == round(forward["send_us"] / forward["memmove_us"], 2)
    targets = {t["target"]: t for t in report["targets"]}
    assert targets["forwarding 10 MiB costs <= 1.5x one memmove"]["value"] == forward["ratio"]


def test_targets_are_judged_from_the_measurements(report: dict[str, Any]) -> None:
    targets = {t["target"]: t for t in report["targets"]}
    assert "nodehost p99 <= 1 ms" in targets
    assert "1 KiB messages/s through one channel >= 50,000" in targets
    worst = max(r["p99_us"] for r in report["results"] if r["transport"] == "nodehost")
    assert targets["nodehost p99 <= 1 ms"]["met"] == (worst <= 1000)
    assert targets["nodehost p99 <= 1 ms"]["value"] == worst
    assert targets["nodehost p99 <= 1 ms"]["limit"] == 1000
    assert all(t.keys() == set(bench.Target._fields) for t in report["targets"])
    assert report["machine"]["cpus"] >= 1


def test_the_targets_judge_a_slow_transport_as_missed() -> None:
    rows = [{"transport": t, "payload_bytes": s, "placement": "same-core", "p50_us": p50,
             "p95_us": p50, "p99_us": p50 * 30}
            for t, s, p50 in [("nodehost", 1024, 60.0), ("nodehost", 4096, 200.0),
                              ("iceoryx2-raw", 1024, 10.0), ("mp-pipe", 4096, 100.0)]]
    rows[0]["msgs_per_s"] = 1000
    checks = {t.target: t.met for t in bench.targets(rows, None, leftovers=2)}
    assert checks == {
        "same-core: nodehost p50 <= 50 us at every size": False,
        "same-core: p50 at 4096 B <= 2x p50 at 1024 B": False,
        "same-core: 1024 B within 2.5x of raw iceoryx2": False,
        "same-core: 4096 B >= 50x faster than mp-pipe": False,
        "nodehost p99 <= 1 ms": False,
        "1 KiB messages/s through one channel >= 50,000": False,
        "no iceoryx2 file left after the channels closed": False,
    }


def test_a_check_flags_only_what_missed_its_target_by_more_than_the_factor() -> None:
    from nodehost import bench_runtime

    runtime = [{"id": "hop_throughput", "msgs_per_s": 20_000},      # 2.5x below 50k: slack
               {"id": "chain_throughput", "msgs_per_s": 9_000},     # 4.4x below 40k
               {"id": "crash_teardown", "p50_ms": 150.0},           # 3x above 50 ms: slack
               {"id": "chain_latency", "p50_us": 250.0},            # 4.2x above 60 us
               {"id": "parallel_branches", "speedup": 1.9}]         # met
    checks = bench_runtime.targets(runtime)
    assert {t.target: t.met for t in checks} == {
        "runtime: 1-hop 1 KiB msgs/s through nodes >= 50000": False,
        "runtime: 3-node chain 1 KiB msgs/s >= 40000": False,
        "runtime: crash → session torn down, ms <= 50": False,
        "runtime: per-hop p50 incl. runner (paced), us <= 60": False,
        "runtime: 2 CPU-bound branches ÷ 2 threads >= 1.8": True}
    regressed = {t.target for t in bench.regressions(checks, 4)}
    assert regressed == {"runtime: 3-node chain 1 KiB msgs/s >= 40000",
                         "runtime: per-hop p50 incl. runner (paced), us <= 60"}
    leftovers = bench.targets([], None, leftovers=1)
    assert [t.target for t in bench.regressions(leftovers, 100)] == [
        "no iceoryx2 file left after the channels closed"]


@pytest.mark.parametrize(("sizes", "message"), [
    ("4", "at least 8 bytes"), ("1k,2k", "not a comma-separated list of byte counts")])
def test_bad_sizes_are_a_usage_error(sizes: str, message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "nodehost.cli", "bench", "--sizes", sizes],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_the_multiprocessing_peer_delivers_every_message_through_a_chain() -> None:
    from nodehost import bench_peers

    summary = bench_peers.run_mp_queue(300, middle=1, interval_ms=0.0)
    assert summary["count"] == 300
    assert summary["msgs_per_s"] > 0 and summary["p50_us"] > 0


def test_the_dora_dataflow_chains_source_forwards_and_sink(tmp_path: Any) -> None:
    import yaml

    from nodehost import bench_peers

    out = tmp_path / "sink.json"
    flow = yaml.safe_load(bench_peers._dora_dataflow(tmp_path, 500, 2, 0.0, out).read_text())
    nodes = {n["id"]: n for n in flow["nodes"]}
    assert list(nodes) == ["src", "fwd0", "fwd1", "sink"]
    assert nodes["fwd0"]["inputs"]["in"] == {"source": "src/out", "queue_size": 500}
    assert nodes["sink"]["inputs"]["in"]["source"] == "fwd1/out"
    assert nodes["sink"]["args"].endswith(f"dora-node sink {out}")
    assert "outputs" not in nodes["sink"]


def test_the_peers_table_gives_ratios_against_nodehost_and_says_what_was_skipped() -> None:
    from nodehost import bench_peers

    peers: dict[str, Any] = {"rounds": 3, "payload_bytes": 1024, "rows": [
        {"framework": "nodehost", "1-hop msgs/s": 40000, "3-node msgs/s": 20000,
         "1-hop p50 us": 50.0},
        {"framework": "dora", "skipped": "dora-rs not installed"},
        {"framework": "mp-queue", "1-hop msgs/s": 20000, "3-node msgs/s": 40000,
         "1-hop p50 us": 100.0}]}
    bench_peers.compare(peers["rows"])
    assert {k: v for k, v in peers["rows"][2].items() if k.startswith("nodehost vs")} == {
        "nodehost vs 1-hop msgs/s": 2.0, "nodehost vs 3-node msgs/s": 0.5,
        "nodehost vs 1-hop p50 us": 2.0}
    text = bench_peers.table(peers)
    assert "dora      skipped: dora-rs not installed" in text
    assert "2.00×" in text and "0.50×" in text


@pytest.mark.parametrize("size", [1008, 200_000])
def test_the_probe_sink_notices_a_single_damaged_byte(size: int) -> None:
    import numpy as np
    from nodehost_testnodes.probes import HEADER, fill_probe, fill_value, intact

    buf = np.empty(size + HEADER, dtype=np.uint8)
    fill_probe(buf, 12, 3)
    assert intact(buf[HEADER:], fill_value(12, 3))
    assert np.frombuffer(buf[:HEADER].tobytes(), "<u8").tolist() == [12, 3]
    buf[-1] ^= 1
    assert not intact(buf[HEADER:], fill_value(12, 3))


def test_leftovers_are_attributed_to_this_run_by_channel_name() -> None:
    import os

    from nodehost.channels import DataPlane
    from nodehost.testing import shm_files

    before = shm_files()
    plane = DataPlane(f"bench-leftover-{os.getpid()}")
    try:
        plane.open_writer(f"nodehost-bench/{os.getpid()}/left", 1 << 16, readers=1)
        still_open = bench.leftovers_of_this_run(before, settle_s=0)
        assert any(path.endswith(".service") for path in still_open), still_open
    finally:
        plane.close()
    assert bench.leftovers_of_this_run(before, settle_s=5) == []
