"""Sandbox escapes through real sessions: a hostile node (``Hostile``, ``Intruder``) tries one
way out per session and reports ``allowed: ...`` or ``denied: <exception>: <reason>``.

Each attempt names the layer expected to stop it; the test checks that this layer was
reported enforced in the node's status events, that the attempt was denied (or, for what is
contained rather than denied, that nothing of it outlived the session), and that the host is
unharmed. Where this kernel lacks the layer, the attempt is skipped, not run: some of them
(signalling the host) would hit the test process itself. Known gaps are ``xfail(strict)``
tests that assert the secure behaviour: they document the gap, and fail loudly once fixed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import nodehost
from nodehost import sandbox

from .conftest import Tracker
from .support import Outcome, probe_pipeline, record, run, text_pipeline, wait_dead

KERNEL = sandbox.probe()
NEEDS = {  # layer reported in status events → what the kernel must offer for it
    "landlock_fs": KERNEL["landlock_fs"], "landlock_net": KERNEL["landlock_net"],
    "landlock_scope_signal": KERNEL["landlock_scope"],
    "landlock_scope_abstract_unix": KERNEL["landlock_scope"],
    "seccomp_net": KERNEL["seccomp"], "seccomp_ptrace": KERNEL["seccomp"],
    "rlimit_memory": True, "rlimit_fsize": True, "no_capabilities": True,
    "no_new_privs": True,
}
ESCAPES: dict[str, str] = {}  # attempt → what stopped it, for the figures


def attempt(tracked: Tracker, tmp_out: Path, node_type: str, what: str, target: str = "",
            layers: tuple[str, ...] = (), grant: dict[str, Any] | None = None,
            **params: Any) -> tuple[str, Outcome]:
    missing = [layer for layer in layers if not NEEDS[layer]]
    if missing:
        pytest.skip(f"this kernel does not offer {', '.join(missing)}: {what} is not stopped "
                    "here (see docs/reliability.md)")
    out = tmp_out / f"{what}.txt"
    node: dict[str, Any] = {"id": "evil", "type": node_type,
                            "params": {"attempt": what, "target": target, **params}}
    if grant:
        node["sandbox"] = grant
    outcome = run(tracked.host, text_pipeline(out, node, name=f"escape-{what}"))
    assert outcome.result.ok, outcome.result.reason
    reported = next(e["sandbox"] for e in outcome.events if e["event"] == "status"
                    and e["node"] == "evil" and e["status"] == "Initializing")
    for layer in layers:
        assert layer in reported, f"{layer} not enforced (reported: {reported})"
    return out.read_text().strip(), outcome


def denied(text: str, what: str, by: str) -> None:
    assert text.startswith("denied:"), f"{what}: {text}"
    ESCAPES[what] = f"denied by {by} ({text.removeprefix('denied: ')})"
    record("sandbox escapes", **{what: ESCAPES[what]})


@pytest.fixture
def victim() -> Iterator[subprocess.Popen[bytes]]:
    """A process of the same user that is not part of any session."""
    proc = subprocess.Popen(["sleep", "300"])
    yield proc
    proc.kill()
    proc.wait()


# ------------------------------------------------------------------------------ network

def test_tcp_connect_denied(tracked: Tracker, tmp_out: Path, listener: str) -> None:
    text, _ = attempt(tracked, tmp_out, "Hostile", "network", listener,
                      layers=("seccomp_net", "landlock_net"))
    denied(text, "tcp connect to 127.0.0.1", "seccomp_net (socket AF_INET → EPERM), "
                                             "landlock_net behind it")


def test_udp_denied(tracked: Tracker, tmp_out: Path) -> None:
    text, _ = attempt(tracked, tmp_out, "Intruder", "udp", "127.0.0.1:9",
                      layers=("seccomp_net",))
    denied(text, "udp datagram", "seccomp_net")


def test_netlink_denied(tracked: Tracker, tmp_out: Path) -> None:
    text, _ = attempt(tracked, tmp_out, "Intruder", "netlink", layers=("seccomp_net",))
    denied(text, "netlink socket", "seccomp_net")


def test_abstract_unix_socket_of_another_process_denied(tracked: Tracker,
                                                        tmp_out: Path) -> None:
    name = f"nodehost-reliability-{secrets.token_hex(4)}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind("\0" + name)
    server.listen(1)
    try:
        text, _ = attempt(tracked, tmp_out, "Intruder", "unix_abstract", name,
                          layers=("landlock_scope_abstract_unix",))
    finally:
        server.close()
    denied(text, "abstract unix socket (D-Bus, X11 style)", "landlock_scope_abstract_unix")


@pytest.mark.xfail(strict=True, reason="known gap: Landlock (ABI <= 7) does not restrict "
                                       "connect() to a unix socket by path")
def test_unix_socket_by_path_denied(tracked: Tracker, tmp_out: Path) -> None:
    path = tmp_out / "host.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    try:
        text, _ = attempt(tracked, tmp_out, "Intruder", "unix_path", str(path),
                          layers=("landlock_fs",))
    finally:
        server.close()
    ESCAPES["unix socket by path"] = f"NOT stopped: {text}"
    record("sandbox escapes", **{"unix socket by path": ESCAPES["unix socket by path"]})
    assert text.startswith("denied:"), text


# ------------------------------------------------------------------------------ files

def test_write_outside_granted_paths_denied(tracked: Tracker, tmp_out: Path) -> None:
    target = tmp_out / "not-granted.txt"
    text, _ = attempt(tracked, tmp_out, "Hostile", "write_outside", str(target),
                      layers=("landlock_fs",))
    assert not target.exists()
    denied(text, "write outside granted paths", "landlock_fs")


def test_overwrite_host_code_denied(tracked: Tracker, tmp_out: Path) -> None:
    target = Path(nodehost.__file__).resolve()
    before = target.read_bytes()
    text, _ = attempt(tracked, tmp_out, "Intruder", "write_code", str(target),
                      layers=("landlock_fs",))
    assert target.read_bytes() == before
    denied(text, "open nodehost's own code for writing", "landlock_fs (read-only grant)")


def test_read_the_host_config_denied(tracked: Tracker, tmp_out: Path) -> None:
    config = tmp_out / "pipeline.yaml"
    config.write_text("name: secret-pipeline\napi_key: hunter2\n")
    text, _ = attempt(tracked, tmp_out, "Hostile", "read_outside", str(config),
                      layers=("landlock_fs",))
    denied(text, "read the host's config file", "landlock_fs")


@pytest.mark.parametrize("path", ["/etc/shadow", "/etc/hostname", "/root/.bashrc"])
def test_read_other_files_denied(tracked: Tracker, tmp_out: Path, path: str) -> None:
    if not os.path.exists(path):
        pytest.skip(f"{path} does not exist here")
    text, _ = attempt(tracked, tmp_out, "Hostile", "read_outside", path,
                      layers=("landlock_fs",))
    denied(text, f"read {path}", "landlock_fs (root's DAC would allow it)")


# "parent": the node's parent process (the host's zygote, which forked it); "host": the host
# process itself (this test process). Both must be out of a node's reach.
HOSTS = ("parent", "host")


def host_pid(who: str) -> str:
    return str(os.getpid()) if who == "host" else ""


@pytest.mark.parametrize("who", HOSTS)
def test_host_environment_hidden(tracked: Tracker, tmp_out: Path,
                                 monkeypatch: pytest.MonkeyPatch, who: str) -> None:
    monkeypatch.setenv("NODEHOST_RELIABILITY_SECRET", "hunter2")
    text, _ = attempt(tracked, tmp_out, "Hostile", "read_env", host_pid(who),
                      layers=("landlock_fs",))
    assert "NODEHOST_RELIABILITY_SECRET" not in text
    denied(text, f"read the {who}'s environment", "scrubbed env + landlock_fs "
                                                  "(/proc/<pid>/environ)")


@pytest.mark.parametrize("who", HOSTS)
def test_host_memory_denied(tracked: Tracker, tmp_out: Path, who: str) -> None:
    text, _ = attempt(tracked, tmp_out, "Intruder", "proc_mem", host_pid(who),
                      layers=("landlock_fs",))
    denied(text, f"open /proc/<{who}>/mem", "landlock_fs (/proc/self only)")


def test_execute_code_it_wrote_denied(tracked: Tracker, tmp_out: Path) -> None:
    text, _ = attempt(tracked, tmp_out, "Intruder", "exec_written", layers=("landlock_fs",))
    denied(text, "execute a script written to its temp dir", "landlock_fs (no execute "
                                                             "right on tmp_dir)")


# ------------------------------------------------------------------------------ processes

@pytest.mark.parametrize("who", HOSTS)
def test_signal_the_host_denied(tracked: Tracker, tmp_out: Path, who: str) -> None:
    text, _ = attempt(tracked, tmp_out, "Hostile", "signal_host", host_pid(who),
                      layers=("landlock_scope_signal",))
    denied(text, f"SIGTERM the {who}", "landlock_scope_signal")


@pytest.mark.parametrize("who", HOSTS)
def test_signal_the_host_process_group_denied(tracked: Tracker, tmp_out: Path,
                                              who: str) -> None:
    text, _ = attempt(tracked, tmp_out, "Intruder", "signal_host_group", host_pid(who),
                      layers=("landlock_scope_signal",))
    denied(text, f"SIGTERM the {who}'s process group", "landlock_scope_signal")


def test_signal_another_process_denied(tracked: Tracker, tmp_out: Path,
                                       victim: subprocess.Popen[bytes]) -> None:
    text, _ = attempt(tracked, tmp_out, "Intruder", "signal_pid", str(victim.pid),
                      layers=("landlock_scope_signal",))
    assert victim.poll() is None, "the victim was killed"
    denied(text, "SIGTERM another process of the same user", "landlock_scope_signal")


@pytest.mark.parametrize("who", HOSTS)
def test_ptrace_the_host_denied(tracked: Tracker, tmp_out: Path, who: str) -> None:
    text, _ = attempt(tracked, tmp_out, "Hostile", "ptrace_host", host_pid(who),
                      layers=("seccomp_ptrace",))
    denied(text, f"ptrace the {who}", "seccomp_ptrace")


def test_ptrace_another_process_denied(tracked: Tracker, tmp_out: Path,
                                       victim: subprocess.Popen[bytes]) -> None:
    text, _ = attempt(tracked, tmp_out, "Intruder", "ptrace_pid", str(victim.pid),
                      layers=("seccomp_ptrace",))
    denied(text, "ptrace another process", "seccomp_ptrace")


def test_raise_own_limits_denied(tracked: Tracker, tmp_out: Path) -> None:
    text, _ = attempt(tracked, tmp_out, "Intruder", "raise_rlimit",
                      layers=("no_capabilities", "rlimit_memory"))
    denied(text, "raise its own RLIMIT_DATA", "no_capabilities (no CAP_SYS_RESOURCE)")


def test_new_namespaces_cannot_mount(tracked: Tracker, tmp_out: Path) -> None:
    """Creating user and mount namespaces is not denied (a forked child may; the node itself
    has threads, so the kernel refuses it EINVAL): that is kernel attack surface, documented.
    What must hold inside them: Landlock forbids a sandboxed process to mount anything, even
    with every capability of its new user namespace."""
    text, _ = attempt(tracked, tmp_out, "Intruder", "unshare", layers=("landlock_fs",))
    mounted = "mount inside them: done" in text
    what = "unshare user+mount namespaces, then mount"
    ESCAPES[what] = (f"namespaces {'entered' if 'user+mount ns: done' in text else 'refused'}"
                     f"; mount {'NOT stopped' if mounted else 'denied by landlock_fs'} ({text})")
    record("sandbox escapes", **{what: ESCAPES[what]})
    assert not mounted, text


def forked_pids(text: str) -> list[int]:
    assert "pids=" in text, text
    return [int(p) for p in text.rsplit("pids=", 1)[1].split(",")]


def test_fork_bomb_contained_by_the_session(tracked: Tracker, tmp_out: Path) -> None:
    """Not denied: RLIMIT_NPROC does not bind root and seccomp_fork is off (nodes may start
    subprocesses). Bounded here at 128 processes alive at once; what contains it is the
    session: every one of them is killed with the node's process group at teardown."""
    text, _ = attempt(tracked, tmp_out, "Intruder", "fork_bomb", "128", linger_s=300.0)
    assert text.startswith("allowed: forked 128"), text
    pids = forked_pids(text)
    survivors = wait_dead(pids)
    assert not survivors, f"{len(survivors)} forked processes outlived the session"
    ESCAPES["fork bomb (128 lingering children)"] = \
        "not denied; all killed at session end (process group)"
    record("sandbox escapes", **{"fork bomb (128 lingering children)":
                                 ESCAPES["fork bomb (128 lingering children)"]})


def test_forked_child_dies_with_the_session(tracked: Tracker, tmp_out: Path) -> None:
    text, _ = attempt(tracked, tmp_out, "Intruder", "orphan", linger_s=300.0)
    assert not wait_dead(forked_pids(text)), "a child forked by a node outlived its session"
    ESCAPES["forked child outliving the session"] = "killed at session end (process group)"
    record("sandbox escapes", **{"forked child outliving the session":
                                 ESCAPES["forked child outliving the session"]})


@pytest.mark.xfail(strict=True, reason="known gap: a child that calls setsid() leaves the "
                                       "node's process group; only cgroups or a PID "
                                       "namespace would hold it")
def test_setsid_child_dies_with_the_session(tracked: Tracker, tmp_out: Path) -> None:
    text, _ = attempt(tracked, tmp_out, "Intruder", "orphan_setsid", linger_s=300.0)
    pids = forked_pids(text)
    survivors = wait_dead(pids, timeout=2.0)
    for pid in survivors:  # clean up before the tracked fixture counts leftovers
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_dead(pids)
    ESCAPES["setsid() child"] = "NOT contained: outlives the session" if survivors else \
        "killed at session end"
    record("sandbox escapes", **{"setsid() child": ESCAPES["setsid() child"]})
    assert not survivors, "a setsid() child of a node outlived its session"


def test_node_deaf_to_stop_and_sigterm_is_killed(tracked: Tracker, tmp_out: Path) -> None:
    out = tmp_out / "deaf.txt"
    node = {"id": "evil", "type": "Intruder",
            "params": {"attempt": "hang_ignore_term", "linger_s": 3600.0}}
    session = tracked.host.start_session(text_pipeline(out, node, name="escape-deaf"))
    for event in session.events(timeout=120):
        if event["event"] == "status" and event["node"] == "evil" \
                and event["status"] == "Processing":
            break
    pid = session.processes()["evil"].pid
    result = session.stop("operator stop", timeout=60)  # anti-hang; stop_grace_s + 1 s
    assert not result.ok and result.reason == "operator stop"
    assert not wait_dead([pid]), "a node ignoring stop and SIGTERM survived stop()"
    ESCAPES["ignore stop and SIGTERM, spin forever"] = \
        "killed by stop() (SIGKILL stop_grace_s + 1 s after stop)"
    record("sandbox escapes", **{"ignore stop and SIGTERM, spin forever":
                                 ESCAPES["ignore stop and SIGTERM, spin forever"]})


# ------------------------------------------------------------------------------ resources

def test_memory_past_the_limit_denied(tracked: Tracker, tmp_out: Path) -> None:
    text, _ = attempt(tracked, tmp_out, "Hostile", "memory", "1024", layers=("rlimit_memory",))
    assert text == "denied: MemoryError", text
    denied(text, "allocate 1 GiB (limit 256 MiB)", "rlimit_memory (RLIMIT_DATA)")


def test_file_past_the_size_limit_denied(tracked: Tracker, tmp_out: Path) -> None:
    """One byte at the RLIMIT_FSIZE offset: EFBIG without writing gigabytes. The kernel also
    sends SIGXFSZ, which CPython ignores, so the write fails instead of killing the node."""
    text, _ = attempt(tracked, tmp_out, "Intruder", "fill_tmp_sparse", layers=("rlimit_fsize",))
    assert "File too large" in text, text
    denied(text, "grow one file past 4 GiB", "rlimit_fsize (EFBIG; SIGXFSZ ignored)")


def test_temp_dir_filled_then_reclaimed(tracked: Tracker, tmp_out: Path) -> None:
    """Within the per-file limit a node may write its temp dir (64 MiB here); the whole dir
    goes when the session ends. Many files, each under the limit, are not bounded: see
    docs/reliability.md."""
    text, outcome = attempt(tracked, tmp_out, "Hostile", "fill_tmp", "64")
    assert text.startswith("allowed: wrote 64 MiB"), text
    tmp_dir = text.rsplit(" to ", 1)[1].rsplit("/", 1)[0]
    assert outcome.session_id in tmp_dir and not os.path.exists(tmp_dir)
    ESCAPES["fill its temp dir (64 MiB)"] = "allowed, temp dir removed at session end"
    record("sandbox escapes", **{"fill its temp dir (64 MiB)":
                                 ESCAPES["fill its temp dir (64 MiB)"]})


@pytest.mark.xfail(strict=True, reason="known gap: /dev/shm is writable as a whole (iceoryx2 "
                                       "needs it); files there are not counted by RLIMIT_DATA")
def test_filling_dev_shm_denied(tracked: Tracker, tmp_out: Path) -> None:
    text, _ = attempt(tracked, tmp_out, "Intruder", "fill_shm", "8")
    ESCAPES["write 8 MiB to /dev/shm"] = f"NOT stopped: {text}"
    record("sandbox escapes", **{"write 8 MiB to /dev/shm": ESCAPES["write 8 MiB to /dev/shm"]})
    assert text.startswith("denied:"), text


# ------------------------------------------------------------------------------ the host

def test_host_unharmed_after_every_attempt(tracked: Tracker, tmp_out: Path) -> None:
    """Last in this module: the host process still runs sessions, and once closed it has
    the threads and file descriptors it had (its zygote's thread and socket included), and
    every process it ever started for a session is gone."""
    me = psutil.Process()
    threads, fds = threading.active_count(), me.num_fds()
    out = tmp_out / "after.json"
    outcome = run(tracked.host, probe_pipeline(out, name="after-escapes", count=100))
    assert outcome.result.ok, outcome.result.reason
    tracked.host.close()
    assert (threading.active_count(), me.num_fds()) == (threads, fds)
    record("sandbox escapes", attempts_recorded=len(ESCAPES),
           not_stopped=sum(v.startswith("NOT") for v in ESCAPES.values()),
           host_unharmed=True)
