"""The fixture plugin projects of tests/fixture_plugins, pip-installed for real, and a way to
run the ``nodehost`` CLI in a subprocess that sees exactly the chosen ones.

Each project is installed once per test session into its own ``--target`` directory; a
subprocess gets the directories of the plugins it should see on ``PYTHONPATH``, so the host
finds them through ``importlib.metadata`` entry points like any installed plugin. Plugins
installed in the environment itself (e.g. by tox) are disabled with NODEHOST_DISABLE_PLUGINS,
so that the subprocess sees only the fixtures.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

FIXTURE_PLUGINS = Path(__file__).parent / "fixture_plugins"
BACKEND = FIXTURE_PLUGINS / "_backend"
PROJECTS = sorted(p.name for p in FIXTURE_PLUGINS.iterdir() if (p / "pyproject.toml").exists())


def pip_install(projects: Iterable[Path], target: Path) -> None:
    """``pip install --no-deps --no-build-isolation --target`` with the fixture backend."""
    env = {**os.environ, "PYTHONPATH": str(BACKEND), "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           "PIP_NO_INDEX": "1", "PIP_ROOT_USER_ACTION": "ignore"}
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
           "--no-build-isolation", "--no-cache-dir", "--target", str(target),
           *map(str, projects)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"pip install failed:\n{result.stdout}\n{result.stderr}")


@functools.cache
def install_all(base: Path) -> dict[str, Path]:
    """Install every fixture project into ``base/<project>``; returns project → target."""
    targets = {name: base / name for name in PROJECTS}
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda n: pip_install([FIXTURE_PLUGINS / n], targets[n]), PROJECTS))
    return targets


@functools.cache
def environment_plugins() -> tuple[str, ...]:
    """Distributions providing nodehost plugins in this environment, not fixtures."""
    eps = importlib.metadata.entry_points(group="nodehost")
    return tuple(sorted({ep.dist.name for ep in eps if ep.dist is not None}))


class Installed:
    """The installed fixture projects and a runner for the CLI that sees some of them."""

    def __init__(self, targets: Mapping[str, Path]) -> None:
        self.targets = dict(targets)

    def env(self, *projects: str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NODEHOST_")}
        env["PYTHONPATH"] = os.pathsep.join(str(self.targets[p]) for p in projects)
        disabled = [*environment_plugins(), *filter(None, [extra.pop(
            "NODEHOST_DISABLE_PLUGINS", "")])]
        if disabled:
            env["NODEHOST_DISABLE_PLUGINS"] = ",".join(disabled)
        env.update(extra)
        return env

    def run(self, args: Iterable[str], *projects: str, cwd: Path | None = None,
            console_script: bool = False, **extra: str) -> subprocess.CompletedProcess[str]:
        """Run ``nodehost ARGS`` (``python -m nodehost.cli`` unless ``console_script``)."""
        if console_script:
            cmd = [str(Path(sys.executable).with_name("nodehost"))]
        else:
            cmd = [sys.executable, "-m", "nodehost.cli"]
        return subprocess.run([*cmd, *args], env=self.env(*projects, **extra), cwd=cwd,
                              capture_output=True, text=True, timeout=120)

    def python(self, code: str, *projects: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", code], env=self.env(*projects, **extra),
                              capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    return Installed(install_all(tmp_path_factory.getbasetemp() / "fixture-dists"))
