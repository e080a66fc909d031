"""Per-node environments: what goes into one and its cache key (interpreter, the manifest's
requirements, the plugin's and the runner's dependencies), and where the cache lives."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from nodehost.env_python import Interpreter, _find

if TYPE_CHECKING:
    from nodehost.manifest import RuntimeSpec

CACHE_ENV = "NODEHOST_CACHE_DIR"
FORMAT = 1  # bump when the layout of an env changes: every key changes with it
# What the node runner imports, if nodehost's own metadata cannot be read (a bare checkout).
RUNNER_REQUIREMENTS_FALLBACK = (
    "pluggy>=1.5", "pydantic>=2.6,<3", "psutil>=5.9", "iceoryx2==0.10.0", "numpy>=1.26",
    "pyyaml>=6", "pyseccomp>=0.1.2",
)


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
