"""The sandbox, tested from the inside: real child processes apply a plan, then misbehave.

Each test spawns ``sandbox_cases/child.py`` (a stand-in for the runner: numpy, iceoryx2 and an
iceoryx2 node ready before ``apply``) with the environment the host gives a node, and checks
what the child could and could not do. A test is skipped only when the kernel lacks the layer.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodehost import sandbox

CASES = Path(__file__).parent / "sandbox_cases"
PROBE = sandbox.probe()
ABI = PROBE["landlock_abi"]

needs_landlock = pytest.mark.skipif(ABI < 1, reason="kernel has no Landlock")
needs_seccomp = pytest.mark.skipif(not PROBE["seccomp"], reason="no seccomp filter support")
needs_scoping = pytest.mark.skipif(ABI < 6, reason="Landlock ABI < 6: no signal/socket scoping")


def run_child(plan: dict[str, Any], *actions: str) -> dict[str, str]:
    """Run the sandboxed stand-in node; return its outcomes by action."""
    proc = subprocess.run(
        [sys.executable, str(CASES / "child.py"), json.dumps(plan), *actions],
        env=sandbox.scrubbed_env(tmp_dir=plan["tmp_dir"]),
        cwd=plan["tmp_dir"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, str] = json.loads(proc.stdout.splitlines()[-1])
    return result


@pytest.fixture
def node_tmp(tmp_path: Path) -> str:
    path = tmp_path / "node-tmp"
    path.mkdir()
    return str(path)


@pytest.fixture
def victim() -> Iterator[subprocess.Popen[bytes]]:
    """An unsandboxed process of the same user, as the host or another node would be."""
    proc = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
    yield proc
    proc.kill()
    proc.wait()


def denied(outcome: str) -> bool:
    return outcome in ("OSError:EPERM", "OSError:EACCES")


# --- plan and layers ---------------------------------------------------------------------------


def test_plan_rejects_relative_paths_and_bad_limits() -> None:
    with pytest.raises(sandbox.SandboxError, match="absolute"):
        sandbox.SandboxPlan(tmp_dir="/tmp", fs_write=("result.json",))
    with pytest.raises(sandbox.SandboxError, match="memory_mb"):
        sandbox.SandboxPlan(tmp_dir="/tmp", memory_mb=0)


def test_layers_follow_the_kernel_and_missing_paths_are_skipped(node_tmp: str) -> None:
    plan = {"tmp_dir": node_tmp, "memory_mb": 512,
            "fs_read": ["/nonexistent/data"], "fs_write": ["/nonexistent/dir/out.json"]}
    layers = run_child(plan)["layers"]
    assert {"no_new_privs", "rlimit_memory", "rlimit_fsize", "rlimit_nofile"} <= set(layers)
    assert ("landlock_fs" in layers) == (ABI >= 1)
    assert ("landlock_net" in layers) == (ABI >= 4)
    assert ("landlock_scope_signal" in layers) == (ABI >= 6)
    assert ("seccomp_net" in layers) == bool(PROBE["seccomp"])
    assert not os.path.exists("/nonexistent/dir/out.json")


def test_memory_limit_below_the_baseline_is_a_clear_error(node_tmp: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(CASES / "child.py"), json.dumps({"tmp_dir": node_tmp,
                                                               "memory_mb": 8})],
        env=sandbox.scrubbed_env(tmp_dir=node_tmp), capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    assert "SandboxError: resources.memory_mb=8 is below" in proc.stderr


# --- network -----------------------------------------------------------------------------------


@needs_seccomp
def test_network_sockets_denied_but_unix_sockets_work(node_tmp: str) -> None:
    out = run_child({"tmp_dir": node_tmp}, "inet", "inet6", "unix_pair")
    assert out["inet"] == "OSError:EPERM"
    assert out["inet6"] == "OSError:EPERM"
    assert out["unix_pair"] == "ok:ping"


@pytest.mark.skipif(ABI < 4 and not PROBE["seccomp"], reason="neither Landlock net nor seccomp")
def test_tcp_connect_to_a_loopback_listener_denied(node_tmp: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        out = run_child({"tmp_dir": node_tmp}, f"tcp:127.0.0.1:{port}")
        assert denied(out[f"tcp:127.0.0.1:{port}"])
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever connected


def test_network_granted_allows_tcp(node_tmp: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        out = run_child({"tmp_dir": node_tmp, "network": True}, f"tcp:127.0.0.1:{port}")
    assert out[f"tcp:127.0.0.1:{port}"] == "ok"
    assert "seccomp_net" not in out["layers"]
    assert "landlock_net" not in out["layers"]


# --- filesystem --------------------------------------------------------------------------------


@needs_landlock
def test_writes_only_to_granted_paths(tmp_path: Path, node_tmp: str) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = out_dir / "result.json"  # does not exist yet, like the sink's /tmp/result.json
    sibling = out_dir / "sibling.txt"
    outside_tmp = Path(f"/tmp/nodehost-sandbox-test-{os.getpid()}")
    outside_root = Path(f"/root/nodehost-sandbox-test-{os.getpid()}")
    try:
        out = run_child(
            {"tmp_dir": node_tmp, "fs_write": [str(result)]},
            f"write:{result}", f"write:{node_tmp}/scratch.txt", f"write:{sibling}",
            f"write:{outside_tmp}", f"write:{outside_root}",
        )
        assert out[f"write:{result}"] == "ok"
        assert result.read_text() == "written by a sandboxed child\n"
        assert out[f"write:{node_tmp}/scratch.txt"] == "ok"
        for path in (sibling, outside_tmp, outside_root):
            assert out[f"write:{path}"] == "OSError:EACCES"
            assert not path.exists()
    finally:
        outside_tmp.unlink(missing_ok=True)
        outside_root.unlink(missing_ok=True)


@needs_landlock
def test_reads_only_allowed_paths(tmp_path: Path, node_tmp: str) -> None:
    (tmp_path / "private").mkdir()
    secret = tmp_path / "private" / "secret.txt"
    secret.write_text("host secret")
    (tmp_path / "shared").mkdir()
    shared = tmp_path / "shared" / "data.txt"
    shared.write_text("granted data")
    host_environ = f"/proc/{os.getpid()}/environ"
    out = run_child(
        {"tmp_dir": node_tmp, "fs_read": [str(tmp_path / "shared")]},
        f"read:{secret}", f"read:{shared}", f"read:{host_environ}", "read:/etc/passwd",
        "listdir:/root", "listdir:/proc", "read:/proc/self/status",
    )
    assert out[f"read:{shared}"] == "ok:granted data"
    assert out["read:/proc/self/status"].startswith("ok:Name:")
    for action in (f"read:{secret}", f"read:{host_environ}", "read:/etc/passwd",
                   "listdir:/root", "listdir:/proc"):
        assert out[action] == "OSError:EACCES", action


# --- what a node needs keeps working -----------------------------------------------------------


def test_numpy_and_iceoryx2_work_inside(node_tmp: str) -> None:
    # 10 MiB slices for up to 8 subscribers map some 700 MiB of shared memory in this process;
    # the memory limit counts private memory only, so 256 MiB is plenty.
    out = run_child({"tmp_dir": node_tmp, "memory_mb": 256},
                    "iceoryx2:10", "numpy_work:40", "thread")
    assert out["iceoryx2:10"] == f"ok:{42 * 1024}"
    assert out["numpy_work:40"].startswith("ok:")
    assert out["thread"] == "ok:1"


def test_memory_limit_gives_memory_error(node_tmp: str) -> None:
    out = run_child({"tmp_dir": node_tmp, "memory_mb": 300},
                    "numpy_work:60", "alloc:400", "numpy_work:20")
    assert out["numpy_work:60"].startswith("ok:")
    assert out["alloc:400"] == "MemoryError"
    assert out["numpy_work:20"].startswith("ok:")  # the node survives to report it


def test_node_cannot_lift_its_memory_limit(node_tmp: str) -> None:
    out = run_child({"tmp_dir": node_tmp, "memory_mb": 300}, "raise_rlimit")
    assert out["raise_rlimit"] == "OSError:EPERM"


# --- other processes ---------------------------------------------------------------------------


@needs_seccomp
def test_ptrace_and_memory_reads_of_other_processes_denied(
    node_tmp: str, victim: subprocess.Popen[bytes]
) -> None:
    host = os.getpid()
    out = run_child({"tmp_dir": node_tmp}, f"ptrace:{victim.pid}", f"vm_readv:{victim.pid}",
                    f"ptrace:{host}", f"vm_readv:{host}")
    for action in (f"ptrace:{victim.pid}", f"vm_readv:{victim.pid}",
                   f"ptrace:{host}", f"vm_readv:{host}"):
        assert out[action] == "OSError:EPERM", action


@needs_scoping
def test_signals_to_the_host_and_other_processes_denied(
    node_tmp: str, victim: subprocess.Popen[bytes]
) -> None:
    host = os.getpid()
    out = run_child({"tmp_dir": node_tmp}, f"kill:{host},0",
                    f"kill:{victim.pid},{int(signal.SIGTERM)}")
    assert out[f"kill:{host},0"] == "OSError:EPERM"
    assert out[f"kill:{victim.pid},{int(signal.SIGTERM)}"] == "OSError:EPERM"
    assert victim.poll() is None


@needs_scoping
def test_abstract_unix_sockets_outside_the_sandbox_denied(node_tmp: str) -> None:
    name = f"nodehost-sandbox-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind("\0" + name)
        listener.listen()
        out = run_child({"tmp_dir": node_tmp}, f"abstract_unix:{name}")
    assert out[f"abstract_unix:{name}"] == "OSError:EPERM"


@needs_seccomp
def test_subprocesses_denied_on_request_threads_still_work(node_tmp: str) -> None:
    out = run_child({"tmp_dir": node_tmp, "allow_subprocesses": False},
                    "fork", "run_true", "thread", "numpy_work:20")
    assert "seccomp_fork" in out["layers"]
    assert out["fork"] == "OSError:EPERM"
    assert out["run_true"] == "OSError:EPERM"
    assert out["thread"] == "ok:1"
    assert out["numpy_work:20"].startswith("ok:")
    assert run_child({"tmp_dir": node_tmp}, "fork")["fork"] == "ok"  # the default allows it


# --- environment -------------------------------------------------------------------------------


def test_environment_is_scrubbed(node_tmp: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODEHOST_TEST_SECRET", "hunter2")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter3")
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    env = sandbox.scrubbed_env({"NODEHOST_NODE_ID": "sink"}, tmp_dir=node_tmp)
    assert env["NODEHOST_NODE_ID"] == "sink"
    assert env["LC_ALL"] == "C.UTF-8"
    out = run_child({"tmp_dir": node_tmp}, "env:NODEHOST_TEST_SECRET",
                    "env:AWS_SECRET_ACCESS_KEY", "env:OPENBLAS_CORETYPE", "env:HOME",
                    "env:TMPDIR", "env:HF_HUB_OFFLINE", "env:TRANSFORMERS_OFFLINE")
    assert out["env:NODEHOST_TEST_SECRET"] == "ok:<unset>"
    assert out["env:AWS_SECRET_ACCESS_KEY"] == "ok:<unset>"
    assert out["env:OPENBLAS_CORETYPE"] == "ok:Haswell"
    assert out["env:HOME"] == out["env:TMPDIR"] == f"ok:{node_tmp}"
    assert out["env:HF_HUB_OFFLINE"] == out["env:TRANSFORMERS_OFFLINE"] == "ok:1"


# --- parent death ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["preexec_fn", "in_child", "none"])
def test_child_dies_with_its_parent(mode: str) -> None:
    spawner = subprocess.Popen([sys.executable, str(CASES / "spawner.py"), mode],
                               stdout=subprocess.PIPE, text=True)
    assert spawner.stdout is not None
    grandchild = int(spawner.stdout.readline())
    pidfd = os.pidfd_open(grandchild)
    try:
        assert select.select([pidfd], [], [], 0)[0] == []  # alive while its parent lives
        spawner.kill()
        spawner.wait()
        if mode == "none":
            assert select.select([pidfd], [], [], 0)[0] == []  # the control: orphaned, alive
        else:
            # A deadline, not a timing: the pidfd turns readable once the grandchild has exited.
            assert select.select([pidfd], [], [], 30)[0] == [pidfd]
    finally:
        with contextlib.suppress(ProcessLookupError):  # already gone (and reaped)
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        os.close(pidfd)
        spawner.stdout.close()


@pytest.mark.parametrize("group", [{}, {"process_group": 0}, {"start_new_session": True}])
def test_preexec_works_however_the_host_groups_its_children(group: dict[str, Any]) -> None:
    code = ("import os; from nodehost import sandbox; sandbox.preexec(os.getppid()); "
            "print(os.getpgid(0) == os.getpid())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, **group)
    assert (proc.returncode, proc.stdout.strip()) == (0, "True"), proc.stderr


def test_ensure_parent_exits_when_the_host_is_gone() -> None:
    proc = subprocess.run([sys.executable, "-c",
                           "from nodehost import sandbox; sandbox.ensure_parent(1)"], timeout=60)
    assert proc.returncode == sandbox.EXIT_PARENT_GONE
