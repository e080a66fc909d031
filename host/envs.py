"""Per-node Python environments: a manifest's ``runtime: {python, requirements}``.

A node type that needs another interpreter or libraries that conflict with the host's (torch
builds, ``liquid-audio`` on Python 3.12) declares a runtime; the host builds a virtual
environment for it once, caches it, and spawns that node's process with the env's python::

    python = ensure_env(manifest.runtime, progress, plugin="nodehost-lfm2audio",
                        entrypoint=manifest.entrypoint)
    # spawn [python, "-m", "nodehost.runner", ...] instead of [sys.executable, ...]

**Cache.** ``$NODEHOST_CACHE_DIR/envs/<key>`` (default ``~/.cache/nodehost/envs/<key>``). The
key hashes what the *installed packages* depend on: the interpreter's full version, the
manifest's requirements, the plugin distribution's own dependencies and the node runner's
dependencies (nodehost's ``Requires-Dist``) with nodehost's version. A second
``ensure_env`` only reads a marker file: it is a few milliseconds.

**nodehost and the plugin are linked, not copied.** The env's ``site-packages`` gets a
symlink ``nodehost`` → the host's own package directory (``dirname(nodehost.__file__)``: the
source tree of an editable install, or ``site-packages/nodehost`` of a wheel install; both
work the same) and one symlink per top-level package of the node's plugin (found with
``importlib.util.find_spec``, which follows editable-install finders and never runs plugin
code). So the node runner in the env always is the host's runner — the two speak the same
control protocol and wire format by construction — and editing nodehost or a plugin never
rebuilds a multi-GB environment. The links are checked (and re-pointed when the host moved,
e.g. a recreated tox env) on every ``ensure_env``. A minimal ``nodehost-<ver>.dist-info``
makes pip treat nodehost as installed, so a requirement that depends on it never pulls a
``nodehost`` from an index.

**Atomic builds.** An env is built in ``envs/.build-<key>-<pid>`` under an exclusive lock
(``envs/.<key>.lock``, so two sessions never build the same env twice), byte-compiled with
the final path recorded in tracebacks, its scripts re-pointed at the final path, marked
complete (``nodehost-env.json``) and only then renamed into place. A failed or interrupted
build leaves nothing behind (the next build or ``prune`` sweeps a killed builder's debris),
and its error names the requirement pip could not install.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodehost.errors import EnvBuildError as EnvBuildError
from nodehost.errors import EnvError as EnvError
from nodehost.errors import InterpreterNotFound as InterpreterNotFound
from nodehost.errors import NodehostError

if TYPE_CHECKING:
    from nodehost.discovery import NodeType
    from nodehost.manifest import RuntimeSpec

__all__ = [
    "EnvBuildError", "EnvError", "EnvInfo", "EnvPlan", "Interpreter", "InterpreterNotFound",
    "add_cli", "cache_root", "ensure_env", "env_for_node_type", "envs_dir", "failing_requirement",
    "find_interpreter", "list_envs", "plan_env", "prune_envs", "remove_env",
    "runner_requirements",
]

ProgressFn = Callable[[float, str], None]

CACHE_ENV = "NODEHOST_CACHE_DIR"
MARKER = "nodehost-env.json"
LAST_USED = ".last-used"
FORMAT = 1  # bump when the layout of an env changes: every key changes with it
INSTALLER = "nodehost-envs"

# What the node runner imports, if nodehost's own metadata cannot be read (a bare checkout).
RUNNER_REQUIREMENTS_FALLBACK = (
    "pluggy>=1.5", "pydantic>=2.6,<3", "psutil>=5.9", "iceoryx2==0.10.0", "numpy>=1.26",
    "pyyaml>=6", "pyseccomp>=0.1.2",
)
_PROBE = ("import sys, platform; print(sys.executable); "
          "print(platform.python_implementation(), platform.python_version())")


# --- interpreters ------------------------------------------------------------------------------


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


# --- what goes into an env ---------------------------------------------------------------------


def cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "nodehost"


def envs_dir() -> Path:
    return cache_root() / "envs"


def _nodehost_dir() -> Path:
    import nodehost

    return Path(nodehost.__file__).resolve().parent


def _project_root() -> Path | None:
    """The nodehost source checkout, when nodehost runs from one (editable install or a bare
    checkout on sys.path): the folder whose pyproject.toml names the project ``nodehost``.
    None for a wheel install (site-packages/nodehost has no pyproject.toml above it)."""
    parent = _nodehost_dir().parent
    pyproject = parent / "pyproject.toml"
    if not pyproject.is_file():
        return None
    import tomllib

    try:
        data = tomllib.loads(pyproject.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return parent if data.get("project", {}).get("name") == "nodehost" else None


def _runtime_deps(requires: Iterable[str]) -> list[str]:
    """Requirements without extras-only entries (``; extra == "test"``)."""
    return sorted({r.strip() for r in requires if r.strip() and "extra ==" not in r
                   and "extra==" not in r})


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return _canonical(match.group(1)) if match else requirement.strip().lower()


def runner_requirements() -> tuple[str, list[str]]:
    """nodehost's version and the dependencies of its node runner (its own ``dependencies``).

    From the source checkout's pyproject.toml when nodehost runs from one (fresher than
    an editable install's metadata), else from the installed distribution's metadata."""
    import nodehost

    version = nodehost.__version__
    root = _project_root()
    if root is not None:
        import tomllib

        project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
        return str(project.get("version", version)), _runtime_deps(project["dependencies"])
    try:
        requires = importlib.metadata.requires("nodehost")
    except importlib.metadata.PackageNotFoundError:
        requires = None
    if requires is None:
        return version, sorted(RUNNER_REQUIREMENTS_FALLBACK)
    return version, _runtime_deps(requires)


def _plugin_packages(plugin: str | None, entrypoint: str | None) -> dict[str, str]:
    """Top-level import name → its real path, for the node's own code.

    The entrypoint's top-level package first, then every top-level name the distribution
    declares (``top_level.txt``). ``find_spec`` resolves editable installs (their finder
    hooks or direct_url.json source trees) and wheel installs alike, without running the
    plugin's code.
    """
    names: list[str] = []
    if entrypoint:
        names.append(entrypoint.split(":", 1)[0].split(".", 1)[0])
    if plugin:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            top = importlib.metadata.distribution(plugin).read_text("top_level.txt") or ""
            names += [n.strip() for n in top.split() if n.strip()]
    out: dict[str, str] = {}
    for name in dict.fromkeys(names):
        if name in ("nodehost",) or name.startswith("_"):
            continue
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            continue
        if spec.submodule_search_locations:
            locations = list(spec.submodule_search_locations)
            if len(locations) == 1:  # a namespace package spread over folders is not linked
                out[name] = os.path.realpath(locations[0])
        elif spec.origin and spec.origin.endswith(".py"):
            out[name + ".py"] = os.path.realpath(spec.origin)
    return out


def _plugin_requirements(plugin: str | None) -> list[str]:
    if not plugin:
        return []
    try:
        requires = importlib.metadata.requires(plugin) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    return [r for r in _runtime_deps(requires) if _req_name(r) != "nodehost"]


@dataclasses.dataclass(frozen=True)
class EnvPlan:
    """Everything that decides an env's contents, and where it lives."""

    interpreter: Interpreter
    requirements: tuple[str, ...]  # the manifest's
    plugin: str | None
    plugin_requirements: tuple[str, ...]
    nodehost_version: str
    runner_requirements: tuple[str, ...]
    links: dict[str, str]  # name in site-packages → real path (not part of the key)

    @property
    def key(self) -> str:
        identity = {
            "format": FORMAT,
            "python": [self.interpreter.implementation, self.interpreter.version],
            "requirements": sorted(self.requirements),
            "plugin_requirements": sorted(self.plugin_requirements),
            "nodehost": self.nodehost_version,
            "runner_requirements": sorted(self.runner_requirements),
        }
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        return f"py{self.interpreter.short.replace('.', '')}-{digest[:16]}"

    @property
    def path(self) -> Path:
        return envs_dir() / self.key

    def all_requirements(self) -> list[str]:
        """One pip call resolves them together (manifest first: its pins win the error)."""
        return list(dict.fromkeys([*self.requirements, *self.plugin_requirements,
                                   *self.runner_requirements]))

    def origin(self, requirement: str) -> str:
        name = _req_name(requirement)
        if any(_req_name(r) == name for r in self.requirements):
            return "the manifest's runtime.requirements"
        if any(_req_name(r) == name for r in self.plugin_requirements):
            return f"the dependencies of plugin {self.plugin}"
        if any(_req_name(r) == name for r in self.runner_requirements):
            return "the node runner (nodehost's dependencies)"
        return "a dependency of another requirement"


def plan_env(runtime: RuntimeSpec, *, plugin: str | None = None,
             entrypoint: str | None = None) -> EnvPlan:
    version, runner_reqs = runner_requirements()
    links = {"nodehost": str(_nodehost_dir())}
    links.update(_plugin_packages(plugin, entrypoint))
    return EnvPlan(
        interpreter=_find(runtime.python),
        requirements=tuple(r.strip() for r in runtime.requirements if r.strip()),
        plugin=plugin,
        plugin_requirements=tuple(_plugin_requirements(plugin)),
        nodehost_version=version,
        runner_requirements=tuple(runner_reqs),
        links=links,
    )


# --- building ----------------------------------------------------------------------------------


def _site_packages(env: Path, short: str) -> Path:
    return env / "lib" / f"python{short}" / "site-packages"


def _python(env: Path) -> Path:
    return env / "bin" / "python"


def _is_complete(env: Path) -> bool:
    return (env / MARKER).is_file() and _python(env).exists()


@contextlib.contextmanager
def _locked(path: Path, progress: ProgressFn | None = None, what: str = "") -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress is not None:
                progress(0.0, f"waiting for another process building {what}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _is_locked(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _link(site: Path, name: str, target: str) -> None:
    """Point ``site/name`` at ``target``, atomically (a reader never sees it missing)."""
    link = site / name
    try:
        if os.readlink(link) == target:
            return
    except OSError:
        pass
    tmp = site / f".{name}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    os.replace(tmp, link)


def _write_dist_info(site: Path, name: str, version: str, requires: Sequence[str],
                     linked: str) -> None:
    """A minimal installed-distribution record for a linked package (pip sees it installed)."""
    for old in site.glob(f"{_canonical(name).replace('-', '_')}-*.dist-info"):
        shutil.rmtree(old)
    dist = site / f"{_canonical(name).replace('-', '_')}-{version}.dist-info"
    dist.mkdir()
    metadata = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    metadata += [f"Requires-Dist: {r}" for r in requires]
    (dist / "METADATA").write_text("\n".join(metadata) + "\n")
    (dist / "INSTALLER").write_text(INSTALLER + "\n")
    record = [f"{dist.name}/{f},," for f in ("METADATA", "INSTALLER", "RECORD")]
    (dist / "RECORD").write_text("\n".join([*record, f"{linked},,"]) + "\n")


def _refresh_links(env: Path, plan: EnvPlan) -> None:
    site = _site_packages(env, plan.interpreter.short)
    for name, target in plan.links.items():
        _link(site, name, target)


class _PipProgress:
    """pip's output lines → progress messages (and the lines kept for an error)."""

    def __init__(self, progress: ProgressFn | None, start: float, end: float) -> None:
        self.progress = progress
        self.start, self.end = start, end
        self.collected = 0
        self.lines: deque[str] = deque(maxlen=2000)

    def report(self, fraction: float, message: str) -> None:
        if self.progress is not None:
            self.progress(self.start + (self.end - self.start) * fraction, message)

    def feed(self, line: str) -> None:
        line = line.rstrip()
        if not line or "is ignored: it is neither a file nor a directory" in line:
            return
        self.lines.append(line)
        text = line.strip()
        if text.startswith("Collecting "):
            self.collected += 1
            # pip does not say how many there will be: approach 60 % asymptotically.
            self.report(0.6 * (1 - 0.93 ** self.collected), f"collecting {text[11:]}")
        elif text.startswith("Downloading ") and ("MB" in text or "GB" in text):
            self.report(0.6 * (1 - 0.93 ** self.collected), text[0].lower() + text[1:])
        elif text.startswith("Installing collected packages:"):
            names = text.split(":", 1)[1].strip()
            count = len(names.split(","))
            shown = names if len(names) < 120 else names[:117] + "..."
            self.report(0.65, f"installing {count} packages: {shown}")
        elif text.startswith("Successfully installed"):
            self.report(1.0, "installed")


_FAIL_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"No matching distribution found for (\S+)"), "not found on the package index"),
    (re.compile(r"Could not find a version that satisfies the requirement (\S+)"),
     "no version satisfies it"),
    (re.compile(r"Invalid requirement: '([^']+)'"), "is not a valid requirement"),
    (re.compile(r"Package '([^']+)' requires a different Python"),
     "does not support this Python version"),
    (re.compile(r"Failed (?:to build|building wheel for) ([A-Za-z0-9._-]+)"),
     "failed to build"),
    (re.compile(r"Cannot install (.+?) because these package versions have conflicting"),
     "has conflicting dependencies"),
    (re.compile(r"ResolutionImpossible"), "has conflicting dependencies"),
]


def failing_requirement(lines: Sequence[str]) -> tuple[str | None, str]:
    """(requirement, why) from pip's output; (None, pip's last error line) when unknown."""
    for pattern, why in _FAIL_PATTERNS:
        for line in lines:
            match = pattern.search(line)
            if match and match.groups():
                return match.group(1).strip(), why
    # A build failure ("× Getting requirements to build wheel did not run successfully")
    # belongs to the last package pip was collecting.
    for i, line in enumerate(lines):
        if "did not run successfully" in line:
            for previous in reversed(lines[:i]):
                m = re.match(r"\s*Collecting (\S+)", previous)
                if m:
                    return m.group(1), "failed to build"
    errors = [line for line in lines if line.startswith("ERROR:")]
    return None, (errors[-1] if errors else (lines[-1] if lines else "no output"))


def _run(cmd: Sequence[str], feed: Callable[[str], None] | None = None) -> tuple[int, list[str]]:
    env = dict(os.environ)
    env.update({"PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                "PYTHONDONTWRITEBYTECODE": "1"})
    env.pop("PYTHONPATH", None)  # the host's import path must not leak into the new env
    env.pop("VIRTUAL_ENV", None)
    env.pop("PIP_REQUIRE_VIRTUALENV", None)
    lines: list[str] = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL, env=env, errors="replace")
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if feed is not None:
            feed(line)
    return proc.wait(), lines


def _relocate_scripts(tmp: Path, final: Path) -> None:
    """venv and pip write absolute paths into scripts and pyvenv.cfg: point them at ``final``."""
    old, new = str(tmp), str(final)
    for path in [tmp / "pyvenv.cfg", *(tmp / "bin").iterdir()]:
        if path.is_symlink() or not path.is_file():
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if b"\0" in data[:1024] or old.encode() not in data:
            continue
        path.write_bytes(data.replace(old.encode(), new.encode()))


def _build(plan: EnvPlan, tmp: Path, progress: ProgressFn | None) -> dict[str, Any]:
    def report(fraction: float, message: str) -> None:
        if progress is not None:
            progress(fraction, message)

    final = plan.path
    interp = plan.interpreter
    started = time.monotonic()
    report(0.01, f"creating a Python {interp.version} venv ({interp.path})")
    code, lines = _run([interp.path, "-m", "venv", str(tmp)])
    if code != 0:
        raise EnvBuildError(f"could not create a Python {interp.version} virtual environment "
                            f"with {interp.path}: " + (lines[-1] if lines else f"exit {code}"),
                            log_tail="\n".join(lines[-40:]))
    requirements = plan.all_requirements()
    pip = _PipProgress(progress, 0.05, 0.85)
    report(0.05, f"installing {len(requirements)} requirements: {', '.join(requirements)}")
    code, lines = _run([str(_python(tmp)), "-m", "pip", "install", "--no-compile",
                        "--progress-bar", "off", *requirements], pip.feed)
    if code != 0:
        kept = [line for line in lines
                if "is ignored: it is neither a file nor a directory" not in line]
        requirement, why = failing_requirement(kept)
        if requirement is not None:
            requirement = next((r for r in requirements
                                if _req_name(r) == _req_name(requirement)), requirement)
            pip_says = next((x for x in kept if x.startswith("ERROR:")), why)
            message = (f"requirement {requirement!r} {why} (from {plan.origin(requirement)}); "
                       f"pip: {pip_says}")
        else:
            message = f"pip install failed: {why}"
        raise EnvBuildError(f"could not build the Python {interp.short} environment: "
                            f"{message}", requirement=requirement,
                            log_tail="\n".join(kept[-60:]))
    site = _site_packages(tmp, interp.short)
    if not site.is_dir():
        raise EnvBuildError(f"the new environment has no {site}")
    report(0.86, "byte-compiling")
    # Compiled with the final path recorded, so tracebacks name files that exist.
    _run([str(_python(tmp)), "-m", "compileall", "-q", "-j", "0", "-s", str(tmp), "-p",
          str(final), str(site)])
    report(0.95, "linking nodehost and the plugin")
    _refresh_links(tmp, plan)
    _write_dist_info(site, "nodehost", plan.nodehost_version, plan.runner_requirements,
                     "nodehost")
    _relocate_scripts(tmp, final)
    freeze_code, freeze = _run([str(_python(tmp)), "-m", "pip", "list", "--format=freeze",
                                "--exclude-editable"])
    return {
        "key": plan.key,
        "format": FORMAT,
        "python": interp.version,
        "implementation": interp.implementation,
        "interpreter": interp.path,
        "requirements": list(plan.requirements),
        "plugin": plan.plugin,
        "plugin_requirements": list(plan.plugin_requirements),
        "nodehost_version": plan.nodehost_version,
        "runner_requirements": list(plan.runner_requirements),
        "installed": [x for x in freeze if "==" in x] if freeze_code == 0 else [],
        "created": time.time(),
        "build_seconds": round(time.monotonic() - started, 1),
    }


def _sweep_debris(key: str) -> None:
    """Build folders of this key whose builder died (we hold the key's lock: none is live)."""
    for debris in envs_dir().glob(f".build-{key}-*"):
        shutil.rmtree(debris, ignore_errors=True)
    for debris in envs_dir().glob(f".trash-{key}-*"):
        shutil.rmtree(debris, ignore_errors=True)


def ensure_env(runtime: RuntimeSpec, progress: ProgressFn | None = None, *,
               plugin: str | None = None, entrypoint: str | None = None) -> str:
    """The python executable of the env for ``runtime``; built first if it does not exist.

    ``plugin`` is the node type's distribution name (``NodeType.plugin``) and
    ``entrypoint`` its manifest's entrypoint: their code is linked into the env and the
    distribution's own dependencies installed. ``progress(fraction, message)`` reports the
    build. Raises InterpreterNotFound or EnvBuildError.
    """
    plan = plan_env(runtime, plugin=plugin, entrypoint=entrypoint)
    final = plan.path
    if not _is_complete(final):
        with _locked(envs_dir() / f".{plan.key}.lock", progress, f"env {plan.key}"):
            if not _is_complete(final):
                _sweep_debris(plan.key)
                if final.exists():  # incomplete: never renamed into place by us; remove it
                    shutil.rmtree(final)
                tmp = envs_dir() / f".build-{plan.key}-{os.getpid()}"
                try:
                    marker = _build(plan, tmp, progress)
                    (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
                    (tmp / LAST_USED).touch()
                    os.rename(tmp, final)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
                if progress is not None:
                    progress(1.0, f"environment {plan.key} ready "
                                  f"({marker['build_seconds']} s)")
                return str(_python(final))
    _refresh_links(final, plan)
    with contextlib.suppress(OSError):
        os.utime(final / LAST_USED)
    return str(_python(final))


def env_for_node_type(node_type: NodeType, progress: ProgressFn | None = None) -> str | None:
    """For session.py: the python to spawn ``node_type`` with, or None (the host's own)."""
    runtime = node_type.manifest.runtime
    if runtime is None:
        return None
    return ensure_env(runtime, progress, plugin=node_type.plugin,
                      entrypoint=node_type.manifest.entrypoint)


# --- listing and pruning -----------------------------------------------------------------------


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


# --- CLI ---------------------------------------------------------------------------------------


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def _age(ts: float | None) -> str:
    if ts is None:
        return "-"
    seconds = max(0.0, time.time() - ts)
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f}{unit} ago"
    return "just now"


def cmd_env_list(args: argparse.Namespace) -> int:
    envs = list_envs()
    if args.json:
        print(json.dumps({"cache": str(envs_dir()), "envs": [e.as_json() for e in envs]},
                         indent=2))
        return 0
    if not envs:
        print(f"No node environments in {envs_dir()}.")
        return 0
    rows = [("KEY", "PYTHON", "SIZE", "LAST USED", "STATE", "REQUIREMENTS")]
    for e in envs:
        state = "building" if e.building else "ready" if e.complete else "incomplete"
        if e.in_use_by:
            state += f" (in use: {len(e.in_use_by)} proc)"
        rows.append((e.key, e.python or "?", _human(e.size_bytes), _age(e.last_used), state,
                     " ".join(e.requirements) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)),
                         row[-1]]).rstrip())
    print(f"\n{len(envs)} env(s), {_human(sum(e.size_bytes for e in envs))} in {envs_dir()}")
    return 0


def cmd_env_prune(args: argparse.Namespace) -> int:
    removed = prune_envs(everything=args.all, unused_days=args.older_than,
                         dry_run=args.dry_run, force=args.force)
    verb = "would remove" if args.dry_run else "removed"
    for e in removed:
        print(f"{verb} {e.key} ({e.python or '?'}, {_human(e.size_bytes)})")
    print(f"{verb} {len(removed)} env(s), {_human(sum(e.size_bytes for e in removed))}")
    return 0


def cmd_env_build(args: argparse.Namespace) -> int:
    """Build (or find) the env of each named node type: for CI warm-up and for debugging."""
    from nodehost.discovery import discover

    registry = discover()
    code = 0
    for name in args.types:
        node_type = registry.get(name)
        if node_type.manifest.runtime is None:
            print(f"{name}: no runtime in its manifest; it runs in the host's environment")
            continue

        def show(fraction: float, message: str, name: str = name) -> None:
            print(f"[{name} {fraction * 100:3.0f}%] {message}", file=sys.stderr, flush=True)

        started = time.monotonic()
        try:
            python = env_for_node_type(node_type, show)
        except EnvError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            if isinstance(exc, EnvBuildError) and exc.log_tail and args.verbose:
                print(exc.log_tail, file=sys.stderr)
            code = 1
            continue
        print(f"{name}: {python} ({time.monotonic() - started:.2f} s)")
    return code


def cmd_env(args: argparse.Namespace) -> int:
    func: Callable[[argparse.Namespace], int] = args.env_func
    return func(args)


def add_cli(subparsers: Any) -> None:
    """Add ``nodehost env list|prune|build`` to the CLI's subparsers."""
    p = subparsers.add_parser("env", help="per-node Python environments: list, prune, build")
    sub = p.add_subparsers(dest="env_command", metavar="ACTION")
    sub.required = True
    q = sub.add_parser("list", help="cached environments with size, last use and state")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_env, env_func=cmd_env_list)
    q = sub.add_parser("prune", help="remove incomplete envs, and unused or all envs")
    q.add_argument("--all", action="store_true", help="remove every env not in use")
    q.add_argument("--older-than", type=float, metavar="DAYS",
                   help="remove envs not used for DAYS days")
    q.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    q.add_argument("--force", action="store_true",
                   help="also remove envs that running node processes use")
    q.set_defaults(func=cmd_env, env_func=cmd_env_prune)
    q = sub.add_parser("build", help="build (or reuse) the env of node types now")
    q.add_argument("types", nargs="+", metavar="TYPE", help="node type, e.g. LFM2Audio")
    q.add_argument("-v", "--verbose", action="store_true", help="pip's output on failure")
    q.set_defaults(func=cmd_env, env_func=cmd_env_build)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m nodehost.envs list|prune|build`` (the same as ``nodehost env ...``)."""
    parser = argparse.ArgumentParser(prog="nodehost")
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["env", *(argv if argv is not None else sys.argv[1:])])
    try:
        return cmd_env(args)
    except NodehostError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

