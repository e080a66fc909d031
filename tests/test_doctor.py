"""``nodehost doctor`` on this machine, with a /dev/shm too small, a broken plugin and a
leftover shared-memory file; and the sandbox layers ``nodehost run`` says a node lacks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fixture_dists import Installed, installed

from nodehost.doctor import LAYER_NEEDS, NETWORK_LAYER_NEEDS, missing_layers

__all__ = ["installed"]  # the session fixture, used by name

DOCTOR = [sys.executable, "-m", "nodehost.cli", "doctor"]


def doctor_json(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, object]]:
    assert "Traceback" not in result.stderr, result.stderr
    return {c["name"]: c for c in json.loads(result.stdout)["checks"]}


def test_this_machine_has_what_nodehost_needs() -> None:
    result = subprocess.run([*DOCTOR], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for name in ("platform", "Python", "kernel", "pidfd", "Landlock", "seccomp", "/dev/shm",
                 "iceoryx2 leftovers", "plugins"):
        assert any(line[2:].startswith(name) and line[0] in "✓✗" for line in lines), name
    checks = doctor_json(subprocess.run([*DOCTOR, "--json"], capture_output=True, text=True,
                                        timeout=120))
    assert all(c["ok"] for c in checks.values() if c["required"]), checks
    # The kernel this suite runs on (notes.md: 6.18, Landlock ABI 7, libseccomp installed).
    assert checks["Landlock"]["ok"] and checks["seccomp"]["ok"], checks


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare(1) for a private /dev/shm")
def test_a_too_small_dev_shm_fails_with_what_to_do() -> None:
    # A private mount namespace with a 1 MiB tmpfs on /dev/shm: nothing else sees it.
    script = "mount -t tmpfs -o size=1m tmpfs /dev/shm && exec \"$@\""
    result = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *DOCTOR, "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    shm = doctor_json(result)["/dev/shm"]
    assert shm["ok"] is False and shm["required"] is True
    assert "--shm-size" in str(shm["fix"])


def test_a_broken_plugin_is_named_but_not_fatal(installed: Installed) -> None:
    result = installed.run(["doctor", "--json"], "good", "broken-import")
    assert result.returncode == 0, result.stderr
    checks = doctor_json(result)
    broken = checks["plugin nodehost-fixture-broken-import"]
    assert broken["ok"] is False and "import of" in str(broken["found"])
    assert "NODEHOST_DISABLE_PLUGINS=nodehost-fixture-broken-import" in str(broken["fix"])
    assert "nodehost-fixture-good" in str(checks["plugins"]["found"])
    text = installed.run(["doctor"], "good", "broken-import")
    assert "✗ plugin nodehost-fixture-broken-import" in text.stdout


def test_a_leftover_shared_memory_file_is_reported() -> None:
    leftover = Path(f"/dev/shm/iox2_nodehost_doctor_test_{os.getpid()}")
    leftover.write_bytes(b"\0" * 4096)
    try:
        result = subprocess.run([*DOCTOR, "--json"], capture_output=True, text=True,
                                timeout=120)
        check = doctor_json(result)["iceoryx2 leftovers"]
        assert check["ok"] is False and check["required"] is False
        assert result.returncode == 0  # a leftover wastes memory; it does not stop a session
    finally:
        leftover.unlink()


def test_missing_layers() -> None:
    full = [*LAYER_NEEDS, *NETWORK_LAYER_NEEDS, "landlock_scope_abstract_unix", "rlimit_memory"]
    assert missing_layers(full) == {}
    assert missing_layers(full, network=False) == {}
    # network: true nodes get no network layers, and none are expected.
    assert missing_layers(list(LAYER_NEEDS), network=True) == {}
    old_kernel = ["rlimit_memory", "no_new_privs", "seccomp_ptrace", "seccomp_net"]
    assert set(missing_layers(old_kernel)) == {"landlock_fs", "landlock_scope_signal",
                                               "landlock_net"}
    assert "6.7" in missing_layers(old_kernel)["landlock_net"]


def test_run_names_a_missing_sandbox_layer_and_stays_quiet_otherwise() -> None:
    from nodehost.runview import quiet_line, sandbox_warning

    base = {"event": "status", "node": "asr", "status": "Initializing", "error": None}
    full = [*LAYER_NEEDS, *NETWORK_LAYER_NEEDS]
    assert sandbox_warning({**base, "sandbox": full}) is None
    assert quiet_line({**base, "sandbox": full}) is None  # no line per state change
    line = quiet_line({**base, "sandbox": ["rlimit_memory", "seccomp_ptrace"]})
    assert line is not None and "sandbox without landlock_fs" in line
    assert "Linux ≥ 5.13" in line and "nodehost doctor" in line
