"""Per-node environments: building one (venv, pip, links to nodehost and the plugin) under
a lock, atomically, and ``ensure_env``, which finds or builds the env of a runtime.

pip is driven by exit codes and its JSON ``--report`` (what it installed); nothing is read from
its human-readable output. When an install fails, each requirement is tried alone
(``pip install --dry-run --no-deps``) to name the one that cannot be installed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodehost.env_plan import FORMAT, EnvPlan, _canonical, envs_dir, plan_env
from nodehost.errors import EnvBuildError

if TYPE_CHECKING:
    from nodehost.manifest import RuntimeSpec

ProgressFn = Callable[[float, str], None]

MARKER = "nodehost-env.json"
LAST_USED = ".last-used"
INSTALLER = "nodehost-envs"


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


def _run(cmd: Sequence[str]) -> tuple[int, list[str]]:
    """Run a tool; its exit code and output lines (kept for an error's log tail only)."""
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
        if "is ignored: it is neither a file nor a directory" not in line:
            lines.append(line.rstrip("\n"))
    return proc.wait(), lines


def _installed_from_report(path: Path) -> list[str]:
    """``name==version`` of what pip installed, from its JSON ``--report``."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    out = []
    for item in data.get("install", []):
        meta = item.get("metadata") or {}
        if meta.get("name") and meta.get("version"):
            out.append(f"{meta['name']}=={meta['version']}")
    return sorted(out, key=str.lower)


def failing_requirement(python: Path, requirements: Sequence[str]) -> str | None:
    """The first of ``requirements`` that pip cannot install on its own (``--dry-run``; exit
    codes only, nothing read from pip's messages), or None when each one can."""
    for requirement in requirements:
        code, _ = _run([str(python), "-m", "pip", "install", "--dry-run", "--quiet",
                        "--no-deps", requirement])
        if code != 0:
            return requirement
    return None


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
    report(0.05, f"installing {len(requirements)} requirements with pip: "
                 f"{', '.join(requirements)}")
    report_file = tmp.parent / f".{tmp.name}.pip-report.json"
    try:
        code, lines = _run([str(_python(tmp)), "-m", "pip", "install", "--no-compile",
                            "--progress-bar", "off", "--report", str(report_file),
                            *requirements])
        installed = _installed_from_report(report_file) if code == 0 else []
    finally:
        with contextlib.suppress(FileNotFoundError):
            report_file.unlink()
    if code != 0:
        report(0.5, "pip failed: finding the requirement it cannot install")
        requirement = failing_requirement(_python(tmp), requirements)
        if requirement is not None:
            message = (f"requirement {requirement!r} cannot be installed (from "
                       f"{plan.origin(requirement)}): pip install {requirement} fails on its "
                       "own with this Python")
        else:
            message = (f"pip install failed (exit {code}) though each requirement installs "
                       "on its own: they conflict with each other")
        raise EnvBuildError(f"could not build the Python {interp.short} environment: "
                            f"{message}", requirement=requirement,
                            log_tail="\n".join(lines[-60:]))
    report(0.85, f"installed {len(installed)} distributions")
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
        "installed": installed,
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
