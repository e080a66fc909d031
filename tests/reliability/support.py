"""Helpers of the reliability suite: pipeline configs, sessions run under anti-hang timeouts,
an account of what sessions leave behind, least-squares slopes, and the figures table.

Leftovers are attributed, not merely diffed. A machine that runs other nodehost sessions at
the same time (another test run, a demo) creates and removes iceoryx2 files of its own, so
"files in /dev/shm that were not there before" is not by itself a leak of ours:

- processes: a node process and everything it forks carry ``TMPDIR=/tmp/nodehost-<session
  id>-<node>-...`` in their environment, so a survivor is found by its session id even after
  it was reparented to init;
- iceoryx2 node and service records (``/tmp/iceoryx2/nodes/*/iox2_node.details``,
  ``/tmp/iceoryx2/services/*.service``) name the session (node ``<session id>/<node>``,
  service ``nodehost/<session id>/...``);
- ``/dev/shm/iox2_*`` files carry no session name; a new file counts as ours unless a live
  process outside this test process's tree maps it or holds it open. (On a machine where
  only this suite runs, that is simply every new file.)
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

from nodehost.session import Session, SessionResult
from nodehost.testing import is_resource_tracker

T = TypeVar("T")

IOX2_ROOT = Path("/tmp/iceoryx2")
SESSION_TIMEOUT_S = 180.0  # anti-hang only: no healthy session here takes more than seconds
DEATH_TIMEOUT_S = 15.0  # a SIGKILLed process is gone within milliseconds; this is anti-hang

# Measured figures, by section; conftest prints them at the end and writes them as JSON.
FIGURES: dict[str, dict[str, Any]] = {}


def record(section: str, **values: Any) -> None:
    FIGURES.setdefault(section, {}).update(values)


# ------------------------------------------------------------------------------ configs

def probe_pipeline(out: Path, *, name: str = "rel", seed: int = 0, count: int = 50,
                   payload: int = 1024, middle: Sequence[dict[str, Any]] = (),
                   source: dict[str, Any] | None = None, sink: dict[str, Any] | None = None,
                   sink_delay_ms: float = 0.0, capacity: int | None = None,
                   init_timeout_s: float | None = None, interval_ms: float = 0.0
                   ) -> dict[str, Any]:
    """ProbeSource(seed) → middle... → ProbeSink writing its JSON summary to ``out``."""
    src = source or {"id": "src", "type": "ProbeSource",
                     "params": {"count": count, "payload_bytes": payload, "seed": seed,
                                "interval_ms": interval_ms}}
    snk = sink or {"id": "sink", "type": "ProbeSink",
                   "params": {"out_path": str(out), "delay_ms": sink_delay_ms},
                   "sandbox": {"fs_write": [str(out)]}}
    nodes = [src, *middle, snk]
    connections = []
    for a, b in itertools.pairwise(nodes):
        conn: dict[str, Any] = {"from": a["id"], "to": b["id"]}
        if capacity is not None:
            conn["capacity"] = capacity
        connections.append(conn)
    config: dict[str, Any] = {"name": name, "nodes": nodes, "connections": connections}
    if init_timeout_s is not None:
        config["init_timeout_s"] = init_timeout_s
    return config


def text_pipeline(out: Path, source: dict[str, Any], name: str = "escape") -> dict[str, Any]:
    """``source`` (a text source such as Hostile or Intruder) → TextSink writing to ``out``."""
    return {
        "name": name,
        "nodes": [source, {"id": "log", "type": "TextSink", "params": {"path": str(out)},
                           "sandbox": {"fs_write": [str(out)]}}],
        "connections": [{"from": source["id"], "to": "log"}],
    }


# ------------------------------------------------------------------------------ running

@dataclass
class Outcome:
    session_id: str
    result: SessionResult
    events: list[dict[str, Any]]

    @property
    def pids(self) -> set[int]:
        return {e["pid"] for e in self.events if e["event"] == "status" and e.get("pid")}

    def statuses(self, node: str) -> list[str]:
        return [e["status"] for e in self.events
                if e["event"] == "status" and e["node"] == node]

    def final_statuses(self) -> dict[str, str]:
        return {e["node"]: e["status"] for e in self.events if e["event"] == "status"}


def finish(session: Session, timeout: float = SESSION_TIMEOUT_S) -> Outcome:
    """Collect a session's events until it ends; a session that outlives ``timeout`` (a hang)
    is stopped and reported as a failure of the test."""
    deadline = time.monotonic() + timeout
    events: list[dict[str, Any]] = []
    for event in session.events(timeout=timeout):
        events.append(event)
        if time.monotonic() > deadline:
            break
    try:
        result = session.wait(max(1.0, deadline - time.monotonic()))
    except TimeoutError:
        session.stop("hung: stopped by the reliability suite", timeout=60)
        raise AssertionError(f"session {session.id} still running after {timeout} s: a hang"
                             ) from None
    if not events or events[-1]["event"] != "session_end":
        events.extend(session.events(timeout=5))
    return Outcome(session.id, result, events)


def run(host: Any, config: Any, timeout: float = SESSION_TIMEOUT_S) -> Outcome:
    return finish(host.start_session(config), timeout)


# ------------------------------------------------------------------------------ processes

def alive(pid: int) -> bool:
    """True while any thread of ``pid`` is not yet dead. A zombie thread-group leader whose
    other threads are still exiting still holds its files (and iceoryx2's node lock)."""
    try:
        for stat in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{stat}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
                if state not in ("Z", "X"):
                    return True
    except OSError:
        return False
    return False


def wait_dead(pids: Iterable[int], timeout: float = DEATH_TIMEOUT_S) -> set[int]:
    """Wait (bounded) until every pid is dead; return those still alive."""
    pending = set(pids)
    deadline = time.monotonic() + timeout
    while True:
        pending = {p for p in pending if alive(p)}
        if not pending or time.monotonic() >= deadline:
            return pending
        time.sleep(0.02)


def dirs_of(pid: int) -> list[str]:
    """Where a process says it lives: the TMPDIR it was exec'd with and its working
    directory. A node forked by the zygote took its TMPDIR after exec (so /proc/PID/environ
    still shows the zygote's); its cwd, and its children's, is the node's temp dir."""
    dirs = []
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            env = fh.read()
    except OSError:
        env = b""
    for item in env.split(b"\0"):
        if item.startswith(b"TMPDIR="):
            dirs.append(item[7:].decode(errors="replace"))
    with contextlib.suppress(OSError):
        dirs.append(os.readlink(f"/proc/{pid}/cwd"))
    return dirs


def session_processes(session_ids: Iterable[str]) -> set[int]:
    """Live processes that belong to these sessions: the nodes and whatever they forked
    (found by the node temp dir in their environment or as their working directory,
    wherever they were reparented)."""
    markers = [f"/nodehost-{sid}-" for sid in session_ids]
    if not markers:
        return set()
    found = set()
    for pid in psutil.pids():
        if any(m in d for d in dirs_of(pid) for m in markers) and alive(pid):
            found.add(pid)
    return found


def poll_until_empty(probe: Callable[[], set[T]], timeout: float, interval: float) -> set[T]:
    """``probe()`` again every ``interval`` s until it is empty or ``timeout`` s passed; its
    last answer. (Outside state — other processes, the kernel — has no event to wait on.)"""
    deadline = time.monotonic() + timeout
    while True:
        left = probe()
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(interval)


def wait_no_session_processes(session_ids: Sequence[str],
                              timeout: float = DEATH_TIMEOUT_S) -> set[int]:
    return poll_until_empty(lambda: session_processes(session_ids), timeout, 0.05)


def own_tree() -> set[int]:
    me = psutil.Process()
    pids = {me.pid}
    with contextlib.suppress(psutil.Error):
        pids |= {p.pid for p in me.children(recursive=True)}
    return pids


def live_descendants() -> set[int]:
    """Live processes under this one, multiprocessing's resource tracker excepted (kept by
    design for the test process's life, as ``nodehost.testing.child_processes`` says)."""
    out = set()
    with contextlib.suppress(psutil.Error):
        for proc in psutil.Process().children(recursive=True):
            if alive(proc.pid) and not is_resource_tracker(proc):
                out.add(proc.pid)
    return out


# ------------------------------------------------------------------------------ shared memory

def shm_files() -> set[str]:
    return set(glob.glob("/dev/shm/iox2_*"))


def shm_holders() -> dict[str, set[int]]:
    """/dev/shm/iox2_* file → pids that map it or hold it open."""
    holders: dict[str, set[int]] = {}
    for pid in psutil.pids():
        with contextlib.suppress(OSError), open(f"/proc/{pid}/maps") as fh:
            for line in fh:
                at = line.find("/dev/shm/iox2_")
                if at >= 0:
                    holders.setdefault(line[at:].rstrip("\n").removesuffix(" (deleted)"),
                                       set()).add(pid)
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("/dev/shm/iox2_"):
                        holders.setdefault(target, set()).add(pid)
    return holders


def unexplained_shm(before: set[str]) -> set[str]:
    """iceoryx2 files created since ``before`` that no process outside this test process
    (and its children) maps or holds open: ours, left behind."""
    new = shm_files() - before
    if not new:
        return set()
    holders = shm_holders()
    mine = own_tree()
    return {f for f in new if os.path.exists(f) and not (holders.get(f, set()) - mine)}


def leaked_shm(before: set[str], settle_s: float = 15.0) -> set[str]:
    """``unexplained_shm``, given other activity on the machine up to ``settle_s`` to finish
    what it was doing (a file of another run between create and map)."""
    return poll_until_empty(lambda: unexplained_shm(before), settle_s, 0.25)


def shm_bytes(files: Iterable[str]) -> int:
    total = 0
    for f in files:
        with contextlib.suppress(OSError):
            total += os.stat(f).st_blocks * 512  # what tmpfs really holds (segments are sparse)
    return total


def node_records(session_ids: Iterable[str]) -> list[str]:
    """iceoryx2 node records (/tmp/iceoryx2/nodes/<id>/) of nodes of these sessions."""
    names = tuple(f'name = "{sid}/' for sid in session_ids)
    found = []
    for details in glob.glob(str(IOX2_ROOT / "nodes" / "*" / "iox2_node.details")):
        with contextlib.suppress(OSError), open(details, encoding="utf-8", errors="replace") as fh:
            if any(n in fh.read() for n in names):
                found.append(os.path.dirname(details))
    return found


def service_records(session_ids: Iterable[str]) -> list[str]:
    """iceoryx2 service records of these sessions' channels."""
    names = tuple(f'service_name = "nodehost/{sid}/' for sid in session_ids)
    found = []
    for path in glob.glob(str(IOX2_ROOT / "services" / "*.service")):
        with contextlib.suppress(OSError), open(path, encoding="utf-8", errors="replace") as fh:
            if any(n in fh.read() for n in names):
                found.append(path)
    return found


@dataclass
class Leftovers:
    processes: set[int] = field(default_factory=set)
    descendants: set[int] = field(default_factory=set)
    shm: set[str] = field(default_factory=set)
    node_records: list[str] = field(default_factory=list)
    service_records: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return (len(self.processes) + len(self.descendants) + len(self.shm)
                + len(self.node_records) + len(self.service_records))

    def __str__(self) -> str:
        return (f"processes={sorted(self.processes)} descendants={sorted(self.descendants)} "
                f"shm={sorted(self.shm)[:6]}{'...' if len(self.shm) > 6 else ''} "
                f"({len(self.shm)}) node_records={self.node_records[:3]} "
                f"({len(self.node_records)}) service_records={self.service_records[:3]} "
                f"({len(self.service_records)})")


def leftovers(session_ids: Sequence[str], shm_before: set[str]) -> Leftovers:
    """Everything these sessions left behind, after bounded waits for dying processes."""
    return Leftovers(
        processes=wait_no_session_processes(session_ids),
        descendants=wait_dead(live_descendants()),
        shm=leaked_shm(shm_before),
        node_records=node_records(session_ids),
        service_records=service_records(session_ids),
    )


# ------------------------------------------------------------------------------ numbers

def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
