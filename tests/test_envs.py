"""Per-node Python environments (nodehost.envs): real venvs, real pip, a private cache dir.

One small env (``six``, plus the node runner's own dependencies) is built once for the module
and reused by the tests; builds take ~10-20 s, reuse a few milliseconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nodehost import envs
from nodehost.manifest import RuntimeSpec

HOST_PY = f"{sys.version_info.major}.{sys.version_info.minor}"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nodehost-cache")
    old = os.environ.get(envs.CACHE_ENV)
    os.environ[envs.CACHE_ENV] = str(root)
    yield root  # type: ignore[misc]
    if old is None:
        os.environ.pop(envs.CACHE_ENV, None)
    else:
        os.environ[envs.CACHE_ENV] = old


@pytest.fixture(scope="module")
def built(cache: Path) -> tuple[str, list[tuple[float, str]], float]:
    progress: list[tuple[float, str]] = []
    started = time.monotonic()
    python = envs.ensure_env(RuntimeSpec(python=HOST_PY, requirements=["six"]),
                             lambda f, m: progress.append((f, m)),
                             plugin="nodehost-audio", entrypoint="nodehost_audio.gain:Gain")
    seconds = time.monotonic() - started
    print(f"\nenv build: {seconds:.1f} s")
    return python, progress, seconds


def test_find_interpreter_host_version() -> None:
    path = envs.find_interpreter(HOST_PY)
    out = subprocess.run([path, "-c", "import sys; print(sys.version_info[:2])"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(tuple(sys.version_info[:2]))


def test_missing_interpreter_names_where_it_looked() -> None:
    with pytest.raises(envs.InterpreterNotFound) as info:
        envs.find_interpreter("3.99")
    message = str(info.value)
    assert "Python 3.99 not found" in message
    assert "python3.99 on PATH" in message
    assert "pyenv" in message and "uv" in message
    assert "pyenv install 3.99" in message


def test_bad_version_is_refused() -> None:
    with pytest.raises(envs.EnvError, match="not a Python version"):
        envs.find_interpreter("python")


def test_env_is_built_with_requirements_runner_and_plugin(
        built: tuple[str, list[tuple[float, str]], float], cache: Path) -> None:
    python, progress, _ = built
    assert Path(python).is_file()
    assert Path(python).is_relative_to(cache / "envs")
    # The requirement, the node runner's side (nodehost and its deps) and the plugin's code.
    code = ("import six, iceoryx2, numpy, pydantic, yaml, nodehost.runner, nodehost_audio.gain, "
            "soxr, importlib.metadata as m; print(m.version('nodehost'))")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=cache,
                         env={"PATH": os.environ["PATH"]})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == __import__("nodehost").__version__
    # Progress: the venv, what pip installs, done; fractions never go backwards.
    messages = [m for _, m in progress]
    assert messages[0].startswith("creating a Python")
    assert any(m.startswith("installing") for m in messages)
    assert messages[-1].startswith("environment ") and "ready" in messages[-1]
    fractions = [f for f, _ in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    # Built atomically: nothing but the env, its lock file and no build debris.
    names = sorted(p.name for p in (cache / "envs").iterdir())
    key = Path(python).parent.parent.name
    assert names == sorted([key, f".{key}.lock"])
    # What pip installed, from its JSON report (not from its messages).
    import json

    installed = json.loads((Path(python).parent.parent / envs.MARKER).read_text())["installed"]
    assert any(i.startswith("six==") for i in installed), installed
    assert any(i.lower().startswith("iceoryx2==") for i in installed), installed


def test_scripts_point_at_the_final_path(built: tuple[str, list[tuple[float, str]], float]
                                         ) -> None:
    env = Path(built[0]).parent.parent
    pip_script = (env / "bin" / "pip").read_text().splitlines()[0]
    assert pip_script.startswith(f"#!{env}/bin/python")
    assert ".build-" not in (env / "pyvenv.cfg").read_text()


def test_second_ensure_reuses_the_env_fast(built: tuple[str, list[tuple[float, str]], float]
                                           ) -> None:
    python, _, build_s = built
    progress: list[str] = []
    started = time.monotonic()
    again = envs.ensure_env(RuntimeSpec(python=HOST_PY, requirements=["six"]),
                            lambda f, m: progress.append(m),
                            plugin="nodehost-audio", entrypoint="nodehost_audio.gain:Gain")
    seconds = time.monotonic() - started
    print(f"\nenv reuse: {seconds * 1000:.1f} ms (build was {build_s:.1f} s)")
    assert again == python
    assert progress == []  # nothing built


def test_key_ignores_requirement_order_but_not_content(cache: Path) -> None:
    a = envs.plan_env(RuntimeSpec(python=HOST_PY, requirements=["six", "idna"]))
    b = envs.plan_env(RuntimeSpec(python=HOST_PY, requirements=["idna", "six"]))
    c = envs.plan_env(RuntimeSpec(python=HOST_PY, requirements=["six==1.16.0"]))
    assert a.key == b.key != c.key
    assert a.key.startswith(f"py{HOST_PY.replace('.', '')}-")


def test_links_are_repointed_when_the_host_moves(
        built: tuple[str, list[tuple[float, str]], float]) -> None:
    env = Path(built[0]).parent.parent
    site = next(env.glob("lib/python*/site-packages"))
    link = site / "nodehost"
    os.unlink(link)
    os.symlink("/nonexistent", link)
    envs.ensure_env(RuntimeSpec(python=HOST_PY, requirements=["six"]),
                    plugin="nodehost-audio", entrypoint="nodehost_audio.gain:Gain")
    assert Path(os.readlink(link)) == Path(envs.__file__).resolve().parent


def test_bogus_requirement_fails_naming_it_and_leaves_nothing(cache: Path) -> None:
    before = sorted(p.name for p in (cache / "envs").iterdir()) \
        if (cache / "envs").exists() else []
    bogus = "nodehost-no-such-package-xyz==9.9.9"
    with pytest.raises(envs.EnvBuildError) as info:
        envs.ensure_env(RuntimeSpec(python=HOST_PY, requirements=["six", bogus]))
    message = str(info.value)
    print(f"\n{message}")
    assert info.value.requirement == bogus
    assert repr(bogus) in message and "runtime.requirements" in message
    after = sorted(p.name for p in (cache / "envs").iterdir())
    new = set(after) - set(before)
    assert all(name.endswith(".lock") for name in new), new  # no env, no build folder


def test_failing_requirement_found_by_exit_codes() -> None:
    bogus = "nodehost-no-such-package-xyz==9.9.9"
    python = Path(sys.executable)
    assert envs.failing_requirement(python, ["six", bogus]) == bogus
    assert envs.failing_requirement(python, ["six"]) is None


def test_one_cli_path(cache: Path) -> None:
    """``python -m nodehost.envs``, ``nodehost env`` and ``nodehost envs`` are one parser."""
    outs = [subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            for cmd in ([sys.executable, "-m", "nodehost.envs", "list", "--json"],
                        [sys.executable, "-m", "nodehost.cli", "env", "list", "--json"],
                        [sys.executable, "-m", "nodehost.cli", "envs", "list", "--json"])]
    assert all(o.returncode == 0 for o in outs), [o.stderr for o in outs]
    assert outs[0].stdout == outs[1].stdout == outs[2].stdout
    bad = subprocess.run([sys.executable, "-m", "nodehost.envs", "frobnicate"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "usage: nodehost env" in bad.stderr


def test_list_and_prune(built: tuple[str, list[tuple[float, str]], float], cache: Path) -> None:
    python = built[0]
    key = Path(python).parent.parent.name
    listed = {e.key: e for e in envs.list_envs()}
    assert listed[key].complete and not listed[key].building
    assert listed[key].requirements == ["six"]
    assert listed[key].size_bytes > 1_000_000
    # Debris of a killed build is pruned by default; a complete env is kept.
    debris = cache / "envs" / f".build-{key}-999999"
    (debris / "bin").mkdir(parents=True)
    assert any(e.path == str(debris) for e in envs.list_envs())
    removed = envs.prune_envs()
    assert [e.path for e in removed] == [str(debris)]
    assert not debris.exists() and Path(python).exists()
    # An env used by a running process is kept, even by --all.
    proc = subprocess.Popen([python, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.2)
        assert proc.pid in {e.key: e for e in envs.list_envs()}[key].in_use_by
        assert envs.prune_envs(everything=True) == []
    finally:
        proc.kill()
        proc.wait()
    # Dry run, then for real.
    assert [e.key for e in envs.prune_envs(everything=True, dry_run=True)] == [key]
    assert Path(python).exists()
    assert [e.key for e in envs.prune_envs(everything=True)] == [key]
    assert not Path(python).exists()
    assert envs.list_envs() == []


def test_cli(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert envs.main(["list"]) == 0
    assert "No node environments" in capsys.readouterr().out
    assert envs.main(["list", "--json"]) == 0
    assert '"envs": []' in capsys.readouterr().out
    assert envs.main(["prune", "--all", "--dry-run"]) == 0
    assert "would remove 0 env(s)" in capsys.readouterr().out
