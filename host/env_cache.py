"""Per-node environments in the cache: listing (size, last use, state, processes using one)
and pruning (debris of killed builds always; unused or all complete envs on request)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nodehost.env_build import LAST_USED, MARKER, _is_complete, _is_locked, _locked
from nodehost.env_plan import envs_dir


@dataclasses.dataclass
class EnvInfo:
    key: str
    path: str
    complete: bool
    building: bool
    python: str | None = None
    requirements: list[str] = dataclasses.field(default_factory=list)
    plugin: str | None = None
    created: float | None = None
    last_used: float | None = None
    size_bytes: int = 0
    in_use_by: list[int] = dataclasses.field(default_factory=list)  # pids running from it

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):  # does not follow the nodehost/plugin links
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _pids_using(paths: Sequence[Path]) -> dict[str, list[int]]:
    """Processes whose executable path lies in one of ``paths`` (node processes of an env)."""
    prefixes = {str(p): [] for p in paths}  # type: dict[str, list[int]]
    proc = Path("/proc")
    if not proc.is_dir():
        return prefixes
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv0 = (entry / "cmdline").read_bytes().split(b"\0", 1)[0].decode()
        except OSError:
            continue
        for prefix, pids in prefixes.items():
            if argv0.startswith(prefix + "/"):
                pids.append(int(entry.name))
    return prefixes


def list_envs(*, sizes: bool = True) -> list[EnvInfo]:
    """Every env in the cache, complete or not (a build in progress or a killed build)."""
    base = envs_dir()
    if not base.is_dir():
        return []
    out: list[EnvInfo] = []
    for path in sorted(base.iterdir()):
        if not path.is_dir():
            continue
        if path.name.startswith(".build-"):
            key = path.name[len(".build-"):].rsplit("-", 1)[0]
        elif path.name.startswith("."):
            continue
        else:
            key = path.name
        info = EnvInfo(key=key, path=str(path), complete=_is_complete(path),
                       building=_is_locked(base / f".{key}.lock") and path.name.startswith("."))
        marker = path / MARKER
        if marker.is_file():
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(marker.read_text())
                info.python = data.get("python")
                info.requirements = list(data.get("requirements", []))
                info.plugin = data.get("plugin")
                info.created = data.get("created")
        with contextlib.suppress(OSError):
            info.last_used = (path / LAST_USED).stat().st_mtime
        if sizes:
            info.size_bytes = _size(path)
        out.append(info)
    using = _pids_using([Path(i.path) for i in out])
    for info in out:
        info.in_use_by = using.get(info.path, [])
    return out


def remove_env(info: EnvInfo) -> None:
    """Remove one env: renamed away first (under its lock), so no reader sees half of it."""
    base = envs_dir()
    path = Path(info.path)
    with _locked(base / f".{info.key}.lock"):
        if not path.exists():
            return
        trash = base / f".trash-{info.key}-{os.getpid()}"
        os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def prune_envs(*, everything: bool = False, unused_days: float | None = None,
               dry_run: bool = False, force: bool = False) -> list[EnvInfo]:
    """Remove envs; return the ones removed (or that would be, with ``dry_run``).

    Always: incomplete envs and dead builds (never a build in progress). ``unused_days``:
    complete envs not used for that many days. ``everything``: every complete env. An env a
    running process uses (a node of a live session) is kept unless ``force``.
    """
    now = time.time()
    removed: list[EnvInfo] = []
    for info in list_envs(sizes=True):
        if info.building:
            continue
        if info.complete:
            if info.in_use_by and not force:
                continue
            stale = unused_days is not None and \
                now - (info.last_used or info.created or 0) > unused_days * 86400
            if not (everything or stale):
                continue
        removed.append(info)
        if not dry_run:
            remove_env(info)
    if not dry_run:  # lock files of keys that no longer have an env
        base = envs_dir()
        for lock in base.glob(".*.lock") if base.is_dir() else []:
            key = lock.name[1:-len(".lock")]
            if not (base / key).exists() and not _is_locked(lock):
                with contextlib.suppress(OSError):
                    lock.unlink()
    return removed
