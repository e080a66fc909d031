"""Interrupting the real ``nodehost run`` at a chosen moment, and counting what is left.

A run is ``python -m nodehost.cli run CONFIG --events json`` in a session (process group) of
its own; the signal goes to that whole group, as a terminal's Ctrl-C does. While it runs, a
watcher records every process ever seen below the CLI. Afterwards the leftovers of the
pipeline are counted by its unique name: live processes (the watcher's and any carrying the
session's temp dir), temp dirs, and iceoryx2 node and service records.

Before the interpreter has installed nodehost's handlers (the first ~0.1–0.3 s), a signal
meets Python's own defaults: such a point is marked ``handled=False``; nothing can have been
spawned then, so only the leftover checks apply to it.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml
from conftest import probe_chain
from reliability.support import IOX2_ROOT, alive, dirs_of, poll_until_empty

NODEHOST = [sys.executable, "-m", "nodehost.cli"]
RUN_TIMEOUT_S = 120.0  # anti-hang only


def chain(out_dir: Path, name: str, middle: int) -> dict[str, Any]:
    """ProbeSource → ``middle`` Forwards → ProbeSink, sending for minutes unless stopped."""
    config = probe_chain(out_dir / f"{name}.json", count=10**6, name=name,
                         middle=[{"id": f"fwd{i}", "type": "Forward"} for i in range(middle)])
    config["nodes"][0]["params"]["interval_ms"] = 1.0
    return config


def write_config(out_dir: Path, config: dict[str, Any]) -> Path:
    path = out_dir / f"{config['name']}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def catches(pid: int, sig: signal.Signals) -> bool:
    """True when ``pid`` has a handler installed for ``sig`` (SigCgt in /proc)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except OSError:
        pass
    return False


@dataclass
class Interrupted:
    delay: float
    sig: signal.Signals
    handled: bool
    returncode: int
    stderr: str
    events: list[dict[str, Any]]
    seen: set[int] = field(default_factory=set)

    @property
    def phase(self) -> str:
        statuses = {e.get("status") for e in self.events if e["event"] == "status"}
        if "Processing" in statuses:
            return "running"
        if statuses:
            return "starting nodes"
        return "before the session"

    @property
    def end(self) -> dict[str, Any] | None:
        return next((e for e in self.events if e["event"] == "session_end"), None)


def interrupt(config_path: Path, sig: signal.Signals, delay: float) -> Interrupted:
    """Run the CLI, send ``sig`` to its process group after ``delay`` s, wait for its end."""
    proc = subprocess.Popen([*NODEHOST, "run", str(config_path), "--events", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    seen: set[int] = set()
    done = threading.Event()

    def watch() -> None:  # every process that ever ran below the CLI
        while not done.is_set():
            with contextlib.suppress(psutil.Error):
                seen.update(c.pid for c in psutil.Process(proc.pid).children(recursive=True))
            done.wait(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    time.sleep(delay)
    handled = catches(proc.pid, signal.SIGTERM)  # installed together with SIGINT's
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        done.set()
        watcher.join()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    events = []
    for line in out.splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            events.append(json.loads(line))
    return Interrupted(delay, sig, handled, proc.returncode, err, events, seen)


def session_leftovers(prefix: str, seen: set[int]) -> dict[str, list[Any]]:
    """What runs of pipelines named ``prefix`` left: empty lists when nothing."""
    def processes() -> set[int]:
        found = {p for p in seen if alive(p)}
        for pid in psutil.pids():
            if any(f"/nodehost-{prefix}" in d for d in dirs_of(pid)) and alive(pid):
                found.add(pid)
        return found

    def records(pattern: str, needle: str) -> list[str]:
        hits = []
        for path in glob.glob(str(IOX2_ROOT / pattern)):
            with contextlib.suppress(OSError), open(path, errors="replace") as fh:
                if needle in fh.read():
                    hits.append(path)
        return hits

    return {
        "processes": sorted(poll_until_empty(processes, 15.0, 0.05)),
        "tmp_dirs": glob.glob(f"/tmp/nodehost-{prefix}*"),
        "node_records": records("nodes/*/iox2_node.details", f'name = "{prefix}'),
        "service_records": records("services/*.service", f'service_name = "nodehost/{prefix}'),
    }


def check(run: Interrupted, prefix: str) -> None:
    """Every point: nothing left. A point nodehost handled: exit 128+signal, one line on
    stderr naming the signal, no traceback, no node blamed, no cleanup noise."""
    where = f"signal {run.sig.name} after {run.delay:.2f} s ({run.phase})"
    left = session_leftovers(prefix, run.seen)
    assert not any(left.values()), f"{where}: left behind {left}"
    if not run.handled:
        return
    lines = run.stderr.strip().splitlines()
    what = "interrupted" if run.sig == signal.SIGINT else "terminated"
    assert run.returncode == 128 + run.sig, f"{where}: exit {run.returncode}: {run.stderr}"
    assert len(lines) == 1 and lines[0].startswith(f"{what} ({run.sig.name})"), \
        f"{where}: stderr {run.stderr!r}"
    assert "Traceback" not in run.stderr
    end = run.end
    if end is not None:
        assert end["reason"] == f"{what} ({run.sig.name})" and end["failed_node"] is None, \
            f"{where}: {end}"
    noise = [e for e in run.events if e["event"] == "log" and "cleanup" in e.get("message", "")]
    assert not noise, f"{where}: {noise}"
    assert not [e for e in run.events if e["event"] == "status" and e.get("error")], \
        f"{where}: a node reported an error while stopping"


def time_to_processing(config_path: Path) -> float:
    """Seconds from starting the CLI to the first Processing status (then it is stopped)."""
    started = time.monotonic()
    proc = subprocess.Popen([*NODEHOST, "run", str(config_path), "--events", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    assert proc.stdout is not None
    took = RUN_TIMEOUT_S
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "status" and event["status"] == "Processing":
            took = time.monotonic() - started
            break
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=RUN_TIMEOUT_S)
    return took


def sweep(out_dir: Path, prefix: str, middle: int, sig: signal.Signals, step: float,
          minimum_s: float = 1.5) -> list[Interrupted]:
    """Interrupt runs at 0, step, 2·step, ... until past start-up on this machine (at
    least ``minimum_s``, at least 1.2 × the measured time to the first Processing, and at
    least until one interrupted run was past start-up)."""
    config = write_config(out_dir, chain(out_dir, prefix, middle))
    end = max(minimum_s, 1.2 * time_to_processing(config))
    left = session_leftovers(prefix, set())
    assert not any(left.values()), f"the calibration run left {left}"
    runs: list[Interrupted] = []
    delay = 0.0
    # A loaded machine starts slower than the calibration run did: go on until one signal
    # met a running pipeline (bounded: a pipeline that never runs fails the test).
    while delay <= end + 1e-9 or not any(r.phase == "running" for r in runs):
        assert delay < RUN_TIMEOUT_S, "no interrupted run ever reached Processing"
        run = interrupt(config, sig, delay)
        check(run, prefix)
        runs.append(run)
        delay += step
    return runs
