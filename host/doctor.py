"""``nodehost doctor``: does this machine have what nodehost needs, and what to do if not.

Each check is ✓ or ✗ with what was found and, for a ✗, what to do. A ✗ on a *required*
check (Linux, Python ≥ 3.11, pidfd, a usable /dev/shm) makes the exit code 1; a missing
sandbox layer or a broken plugin is reported but does not (nodes still run, with less
isolation or without that plugin's node types). The same knowledge tells ``nodehost run``
which sandbox layers a node did *not* get (``missing_layers``).
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import asdict, dataclass
from typing import Any

# Layers every node gets on a fully equipped machine (Linux ≥ 6.12 with libseccomp), and the
# kernel feature each needs: what `nodehost run` names when a node did not get one.
LAYER_NEEDS = {
    "landlock_fs": "Landlock (Linux ≥ 5.13)",
    "landlock_scope_signal": "Landlock ABI 6 (Linux ≥ 6.12)",
    "seccomp_ptrace": "seccomp with libseccomp (libseccomp2)",
}
# With network: false a node also gets these two.
NETWORK_LAYER_NEEDS = {
    "landlock_net": "Landlock ABI 4 (Linux ≥ 6.7)",
    "seccomp_net": "seccomp with libseccomp (libseccomp2)",
}
SHM_MIN_FREE = 256 * 2**20
GLOBAL_MGMT_SUFFIX = ".global_mgmt"  # iceoryx2's machine-wide segment: not a leftover


def missing_layers(layers: list[str], network: bool | None = None) -> dict[str, str]:
    """Of the layers a node should have got, the ones it did not: layer → what it needs.
    ``network`` unknown (None): the network layers count as expected when either is there."""
    got = set(layers)
    expected = dict(LAYER_NEEDS)
    if network is False or (network is None and got & set(NETWORK_LAYER_NEEDS)):
        expected.update(NETWORK_LAYER_NEEDS)
    return {layer: need for layer, need in expected.items() if layer not in got}


@dataclass
class Check:
    name: str
    ok: bool
    found: str
    fix: str = ""
    required: bool = False

    def line(self) -> str:
        mark = "✓" if self.ok else "✗"
        text = f"{mark} {self.name:<22} {self.found}"
        if not self.ok and self.fix:
            text += f"\n  {'':<22} → {self.fix}"
        return text


def _kernel() -> tuple[int, int]:
    parts = platform.release().split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)


def _pidfd() -> Check:
    try:
        fd = os.pidfd_open(os.getpid())
    except (AttributeError, OSError) as exc:
        return Check("pidfd", False, f"unavailable ({type(exc).__name__}: {exc})",
                     "needs Linux ≥ 5.3 and Python ≥ 3.9: sessions cannot start without it",
                     required=True)
    os.close(fd)
    return Check("pidfd", True, "pidfd_open works", required=True)


def _landlock() -> list[Check]:
    from nodehost import sandbox

    abi = sandbox.probe()["landlock_abi"]
    upgrade = "a newer kernel (and `lsm=...,landlock` on its command line if it is built in " \
              "but not enabled)"
    return [
        Check("Landlock", abi >= 1, f"ABI {abi}" if abi else "not available",
              f"nodes run without the landlock_fs layer (no file access limits); {upgrade}"),
        Check("Landlock network", abi >= 4, "TCP bind/connect rules" if abi >= 4 else
              f"ABI {abi} < 4", "Linux ≥ 6.7; meanwhile seccomp_net still denies sockets"),
        Check("Landlock scoping", abi >= 6, "signal and abstract-socket scoping" if abi >= 6
              else f"ABI {abi} < 6", "Linux ≥ 6.12; without it a node can signal other "
              "processes of its user"),
    ]


def _seccomp() -> Check:
    from nodehost import sandbox

    if sandbox._seccomp_module() is None:
        return Check("seccomp", False, "libseccomp (or pyseccomp) not found",
                     "apt install libseccomp2 (Debian/Ubuntu), dnf install libseccomp "
                     "(Fedora): without it sockets and ptrace are not filtered")
    if not sandbox.probe()["seccomp"]:
        return Check("seccomp", False, "the kernel has no seccomp filter support",
                     "a kernel built with CONFIG_SECCOMP_FILTER")
    return Check("seccomp", True, "libseccomp loaded, filters supported")


def _shm() -> Check:
    try:
        st = os.statvfs("/dev/shm")
    except OSError as exc:
        return Check("/dev/shm", False, f"missing ({exc.strerror})",
                     "mount a tmpfs on /dev/shm (containers: --shm-size=1g)", required=True)
    size, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    found = f"{size / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
    if free < SHM_MIN_FREE:
        return Check("/dev/shm", False, found, f"needs ≥ {SHM_MIN_FREE >> 20} MiB free for "
                     "channels (containers: --shm-size=1g; remove leftovers below)",
                     required=True)
    return Check("/dev/shm", True, found, required=True)


def _leftovers() -> Check:
    from nodehost.testing import leaked_shm_files

    files = sorted(f for f in leaked_shm_files(set()) if not f.endswith(GLOBAL_MGMT_SUFFIX))
    dirs = [d for d in ("/tmp/iceoryx2",) if os.path.isdir(d)]
    if not files:
        return Check("iceoryx2 leftovers", True,
                     "none in /dev/shm" + (f" ({dirs[0]} in use)" if dirs else ""))
    size = sum(os.path.getsize(f) for f in files if os.path.exists(f))
    return Check("iceoryx2 leftovers", False,
                 f"{len(files)} file(s) no process maps, {size / 2**20:.0f} MiB "
                 f"(e.g. {files[0]})",
                 "left by killed processes; with no nodehost session running: "
                 "rm /dev/shm/iox2_* (keep *.global_mgmt)")


def _plugins() -> list[Check]:
    import logging

    from nodehost.discovery import discover

    logging.getLogger("nodehost.discovery").setLevel(logging.ERROR)
    registry = discover()
    dists = sorted({t.plugin for t in registry.node_types.values()})
    checks = [Check("plugins", bool(registry.node_types),
                    f"{len(registry.node_types)} node types from {len(dists)} distribution(s): "
                    f"{', '.join(dists) or '-'}",
                    "pip install -e plugins/nodehost-audio (or `nodehost new NAME`)")]
    checks += [Check(f"plugin {f.plugin}", False, "broken: " + f.reason,
                     f"reinstall or fix {f.plugin}, or skip it: NODEHOST_DISABLE_PLUGINS="
                     f"{f.plugin}") for f in registry.failures]
    return checks


def checks() -> list[Check]:
    linux = sys.platform == "linux"
    out = [
        Check("platform", linux, f"{platform.system()} {platform.release()} "
              f"{platform.machine()}", "nodehost runs on Linux only", required=True),
        Check("Python", sys.version_info >= (3, 11), platform.python_version(),
              "Python ≥ 3.11", required=True),
    ]
    if not linux:
        return out
    major, minor = _kernel()
    out.append(Check("kernel", (major, minor) >= (5, 3), f"{major}.{minor}",
                     "Linux ≥ 5.3 (pidfd); ≥ 5.13 for Landlock, ≥ 6.7 for its network rules",
                     required=True))
    out += [_pidfd(), *_landlock(), _seccomp(), _shm(), _leftovers(), *_plugins()]
    return out


def main(as_json: bool = False) -> int:
    results = checks()
    failed = [c for c in results if c.required and not c.ok]
    if as_json:
        import json

        doc: dict[str, Any] = {"ok": not failed, "checks": [asdict(c) for c in results]}
        print(json.dumps(doc, indent=2))
    else:
        for check in results:
            print(check.line())
        warnings = sum(1 for c in results if not c.ok and not c.required)
        print()
        if failed:
            print(f"{len(failed)} required check(s) failed: "
                  f"{', '.join(c.name for c in failed)}")
        else:
            print("nodehost can run here" + (f" ({warnings} warning(s): less isolation or "
                                             "fewer node types, see ✗ above)" if warnings
                                             else "."))
    return 1 if failed else 0
