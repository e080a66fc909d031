"""Per-node Python environments: a manifest's ``runtime: {python, requirements}``.

One home per job: ``nodehost.env_python`` finds interpreters, ``nodehost.env_plan`` decides
what goes into an env and its cache key, ``nodehost.env_build`` builds one (``ensure_env``),
``nodehost.env_cache`` lists and prunes the cache, ``nodehost.env_cli`` is the command line
(``nodehost env ...``; ``python -m nodehost.envs ...`` runs the same). This module is the
public face: everything below is importable from ``nodehost.envs``.

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

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from nodehost.env_build import LAST_USED, MARKER, ProgressFn, ensure_env, failing_requirement
from nodehost.env_cache import EnvInfo, list_envs, prune_envs, remove_env
from nodehost.env_plan import (
    CACHE_ENV,
    EnvPlan,
    cache_root,
    envs_dir,
    plan_env,
    runner_requirements,
)
from nodehost.env_python import Interpreter, find_interpreter
from nodehost.errors import EnvBuildError, EnvError, InterpreterNotFound

if TYPE_CHECKING:
    from nodehost.discovery import NodeType

__all__ = [
    "CACHE_ENV", "LAST_USED", "MARKER", "EnvBuildError", "EnvError", "EnvInfo", "EnvPlan",
    "Interpreter", "InterpreterNotFound", "ProgressFn", "cache_root", "ensure_env",
    "env_for_node_type", "envs_dir", "failing_requirement", "find_interpreter", "list_envs",
    "main", "plan_env", "prune_envs", "remove_env", "runner_requirements",
]


def env_for_node_type(node_type: NodeType, progress: ProgressFn | None = None) -> str | None:
    """For session.py: the python to spawn ``node_type`` with, or None (the host's own)."""
    runtime = node_type.manifest.runtime
    if runtime is None:
        return None
    return ensure_env(runtime, progress, plugin=node_type.plugin,
                      entrypoint=node_type.manifest.entrypoint)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m nodehost.envs list|prune|build`` is ``nodehost env ...``: one parser."""
    from nodehost.cli import main as cli_main

    return cli_main(["env", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
