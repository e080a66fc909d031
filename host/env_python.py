"""Per-node environments: finding the Python interpreter a manifest's ``runtime.python`` names
(``$NODEHOST_PYTHON_3_12``, the host's own, PATH, pyenv, uv's pythons, /usr/bin)."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

from nodehost.errors import EnvError, InterpreterNotFound

_PROBE = ("import sys, platform; print(sys.executable); "
          "print(platform.python_implementation(), platform.python_version())")


@dataclasses.dataclass(frozen=True)
class Interpreter:
    path: str
    implementation: str  # "CPython"
    version: str  # full: "3.12.1"

    @property
    def short(self) -> str:
        return ".".join(self.version.split(".")[:2])


_probe_cache: dict[tuple[str, float], Interpreter | None] = {}


def _probe(candidate: str) -> Interpreter | None:
    """Run ``candidate`` and ask what it is; None when it does not run (a pyenv shim for a
    version that is not selected exits 127)."""
    try:
        stamp = os.stat(candidate).st_mtime
    except OSError:
        return None
    cached = _probe_cache.get((candidate, stamp), False)
    if cached is not False:
        return cached  # type: ignore[return-value]
    result: Interpreter | None = None
    try:
        proc = subprocess.run([candidate, "-I", "-c", _PROBE], capture_output=True, text=True,
                              timeout=30, stdin=subprocess.DEVNULL)
        lines = proc.stdout.split("\n")
        if proc.returncode == 0 and len(lines) >= 2:
            impl, _, version = lines[1].partition(" ")
            result = Interpreter(lines[0].strip(), impl, version.strip())
    except (OSError, subprocess.SubprocessError):
        result = None
    _probe_cache[(candidate, stamp)] = result
    return result


def _version_key(path: Path) -> tuple[int, ...]:
    digits = re.findall(r"\d+", path.parent.parent.name)
    return tuple(int(d) for d in digits)


def _candidates(version: str) -> list[tuple[str, list[str]]]:
    """(description of where we looked, paths found there), in order of preference."""
    name = f"python{version}"
    out: list[tuple[str, list[str]]] = []
    override = os.environ.get(f"NODEHOST_PYTHON_{version.replace('.', '_')}")
    if override:
        out.append((f"$NODEHOST_PYTHON_{version.replace('.', '_')} ({override})", [override]))
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        out.append((f"the host's own interpreter ({sys.executable})", [sys.executable]))
    path_dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    on_path = [str(Path(d) / name) for d in path_dirs if os.access(Path(d) / name, os.X_OK)]
    out.append((f"{name} on PATH ({os.pathsep.join(path_dirs) or 'empty'})", on_path))
    pyenv_root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    pattern = f"versions/{version}*/bin/{name}"
    found = sorted(pyenv_root.glob(pattern), key=_version_key, reverse=True)
    out.append((f"pyenv: {pyenv_root}/{pattern}", [str(p) for p in found]))
    uv_root = Path(os.environ.get("UV_PYTHON_INSTALL_DIR")
                   or Path.home() / ".local/share/uv/python")
    uv_pattern = f"cpython-{version}.*/bin/{name}"
    found = sorted(uv_root.glob(uv_pattern), reverse=True)
    out.append((f"uv: {uv_root}/{uv_pattern}", [str(p) for p in found]))
    fixed = [p for p in (f"/usr/local/bin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)]
    out.append((f"/usr/local/bin/{name}, /usr/bin/{name}", fixed))
    return out


def find_interpreter(version: str) -> str:
    """The path of a working ``python<version>`` ("3.12"); InterpreterNotFound names every
    place searched (and why a candidate that exists did not qualify)."""
    return _find(version).path


def _find(version: str) -> Interpreter:
    if not re.fullmatch(r"3\.\d+", version):
        raise EnvError(f"not a Python version like '3.12': {version!r}")
    searched: list[str] = []
    for where, paths in _candidates(version):
        if not paths:
            searched.append(f"{where}: none")
            continue
        for path in paths:
            info = _probe(path)
            if info is not None and info.short == version:
                return info
            why = "does not run" if info is None else f"is Python {info.version}"
            searched.append(f"{where}: {path} {why}")
    raise InterpreterNotFound(version, searched)
