"""`nodehost run` as a user runs it: exit codes, JSON events, errors, and the host dying."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from conftest import pid_alive, probe_chain, shm_files
from reliability.support import unexplained_shm

NODEHOST = [sys.executable, "-m", "nodehost.cli"]


def write(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def nodehost(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NODEHOST, *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_run_json_events_and_exit_0(tmp_out: Path) -> None:
    out = tmp_out / "r.json"
    cfg = write(tmp_out / "p.yaml", probe_chain(out, count=20))
    proc = nodehost("run", str(cfg), "--events", "json")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert all({"event", "ts"} <= e.keys() and isinstance(e["ts"], float) for e in events)
    assert events[-1]["event"] == "session_end" and events[-1]["ok"] is True
    kinds = {e["event"] for e in events}
    assert {"status", "session_end"} <= kinds
    assert json.loads(out.read_text())["count"] == 20


def test_run_plain_output_summarises(tmp_out: Path) -> None:
    cfg = write(tmp_out / "p.yaml", probe_chain(tmp_out / "r.json", count=5))
    proc = nodehost("run", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert "READY AFTER" in proc.stdout and ": ok in" in proc.stdout
    # Not a terminal: no line per state change, no sandbox list per node (--events log has
    # them), only the nodes' logs, errors and the summary.
    assert "Initializing" not in proc.stdout and "sandbox=" not in proc.stdout
    assert len(proc.stdout.splitlines()) <= 12, proc.stdout
    full = nodehost("run", str(cfg), "--events", "log")
    assert full.returncode == 0 and "Initializing" in full.stdout and "sandbox=" in full.stdout


def test_run_failure_exits_1_naming_the_node(tmp_out: Path) -> None:
    middle = [{"id": "boom", "type": "Faulty", "params": {"mode": "process_exception"}}]
    cfg = write(tmp_out / "p.yaml", probe_chain(tmp_out / "r.json", middle=middle))
    proc = nodehost("run", str(cfg))
    assert proc.returncode == 1
    assert "node 'boom' (Faulty) failed in process(): ValueError" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_invalid_config_exits_2(tmp_out: Path) -> None:
    cfg = write(tmp_out / "p.yaml", {"nodes": [{"id": "x", "type": "NoSuchNode"}]})
    proc = nodehost("run", str(cfg))
    assert proc.returncode == 2
    assert "nodes[0].type: unknown node type 'NoSuchNode'" in proc.stderr
    assert "Traceback" not in proc.stderr


HOST_SCRIPT = """
import sys, time, nodehost
host = nodehost.Host()
session = host.start_session(sys.argv[1])
for event in session.events():
    if event["event"] == "status" and event["status"] == "Processing":
        break
print(" ".join(str(p.pid) for p in session.processes().values()), flush=True)
time.sleep(600)
"""


def test_children_die_with_a_sigkilled_host_and_shm_is_reclaimed(tmp_out: Path) -> None:
    before = shm_files()
    config = probe_chain(tmp_out / "r.json", count=10**6)
    config["nodes"][0]["params"]["interval_ms"] = 2.0
    cfg = write(tmp_out / "p.yaml", config)
    host = subprocess.Popen([sys.executable, "-c", HOST_SCRIPT, str(cfg)],
                            stdout=subprocess.PIPE, text=True)
    assert host.stdout is not None
    pids = [int(p) for p in host.stdout.readline().split()]
    assert len(pids) == 3 and all(pid_alive(p) for p in pids)
    os.kill(host.pid, signal.SIGKILL)
    host.wait()
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(pid_alive(p) for p in pids), "node processes outlived their host"
    assert shm_files() - before, "a killed session leaves shared memory (else nothing to test)"
    # The next host start reclaims what the killed one left behind.
    subprocess.run([sys.executable, "-c", "import nodehost; nodehost.Host()"], check=True)
    # New files that another live process maps are that process's, not this session's leak.
    assert not unexplained_shm(before)


def _text_pipeline(tmp_out: Path) -> tuple[Path, Path]:
    out = tmp_out / "out.jsonl"
    cfg = write(tmp_out / "t.yaml", {
        "name": "set", "nodes": [
            {"id": "src", "type": "TextSource", "params": {"text": "from the file"}},
            {"id": "sink", "type": "JsonlSink", "params": {"path": str(out)},
             "sandbox": {"fs_write": [str(out)]}}],
        "connections": [{"from": "src", "to": "sink"}]})
    return cfg, out


def test_run_set_overrides_params_typed_by_the_manifest(tmp_out: Path) -> None:
    cfg, out = _text_pipeline(tmp_out)
    proc = nodehost("run", str(cfg), "--set", "src.text=a b\nc", "--set", "src.split=none",
                    "--set", "src.interval_ms=1")
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["text"] for line in out.read_text().splitlines()] == ["a b\nc"]


def test_run_set_errors_are_located(tmp_out: Path) -> None:
    cfg, _ = _text_pipeline(tmp_out)
    proc = nodehost("run", str(cfg), "--set", "src.interval_ms=fast", "--set", "srx.text=a",
                    "--set", "src.nope=1", "--set", "src=1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    for line in ("--set src.interval_ms=fast: TextSource.interval_ms: 'fast' is not a number",
                 "--set srx.text=a: no node 'srx' in the config (did you mean 'src'?)",
                 "--set src.nope=1: TextSource has no param 'nope'; its params: text, path",
                 "--set src=1: expected NODE.PARAM=VALUE"):
        assert line in proc.stderr, proc.stderr
    ranged = nodehost("run", str(cfg), "--set", "src.interval_ms=-3")
    assert ranged.returncode == 2
    assert "nodes[0].params.interval_ms: Input should be greater than or equal to 0" in \
        ranged.stderr
