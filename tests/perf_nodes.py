"""How long ``nodehost nodes`` takes with a dozen plugins installed (a script, not a test).

Generates 12 small plugin distributions (each: one YAML manifest shipped as package data,
one dict manifest), pip-installs them into a temporary ``--target`` (with the fixture
backend: no network, no setuptools needed), then times ``python -m nodehost.cli nodes`` and
the ``nodehost`` console script over several runs and prints the medians, next to the
interpreter's own start-up as the floor. Target: < 0.3 s.

    python tests/perf_nodes.py [--runs 10] [--plugins 12] [--importtime]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from fixture_dists import environment_plugins, pip_install

PYPROJECT = """\
[build-system]
requires = []
build-backend = "fixture_backend"

[project]
name = "nodehost-perf-{i}"
version = "1.0.{i}"

[project.entry-points.nodehost]
perf{i} = "nodehost_perf_{i}.plugin"
"""
PLUGIN = """\
from importlib.resources import files

import nodehost


@nodehost.hookimpl
def nodehost_node_manifests():
    return [
        files("nodehost_perf_{i}") / "manifest.yaml",
        {{"node_type": "PerfSink{i}", "version": "1.0.0",
          "entrypoint": "nodehost_perf_{i}.nodes:Sink",
          "inputs": {{"in": {{"data_type": "audio", "sample_rate": [16000, 48000]}}}},
          "params": {{"path": {{"type": "string", "required": True}}}}}},
    ]
"""
MANIFEST = """\
node_type: PerfGain{i}
version: 1.0.0
description: generated for timing
entrypoint: nodehost_perf_{i}.nodes:Gain
inputs:
  in: {{data_type: audio, sample_rate: [16000, 24000, 48000], channels: 1}}
outputs:
  out: {{data_type: audio}}
params:
  gain: {{type: number, default: 1.0, minimum: 0.0, description: linear factor}}
  mode: {{type: string, enum: [linear, db], default: linear}}
"""


def make_plugins(root: Path, count: int) -> list[Path]:
    projects = []
    for i in range(count):
        project = root / f"perf-{i}"
        package = project / f"nodehost_perf_{i}"
        package.mkdir(parents=True)
        (project / "pyproject.toml").write_text(PYPROJECT.format(i=i))
        (package / "__init__.py").write_text("")
        (package / "plugin.py").write_text(PLUGIN.format(i=i))
        (package / "manifest.yaml").write_text(MANIFEST.format(i=i))
        (package / "nodes.py").write_text("raise RuntimeError('the host imported node code')\n")
        projects.append(project)
    return projects


def median_time(cmd: list[str], env: dict[str, str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--plugins", type=int, default=12)
    parser.add_argument("--importtime", action="store_true",
                        help="also print the slowest imports of one run")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pip_install(make_plugins(root / "src", args.plugins), root / "target")
        env = {k: v for k, v in os.environ.items() if not k.startswith("NODEHOST_")}
        env["PYTHONPATH"] = str(root / "target")
        if environment_plugins():
            env["NODEHOST_DISABLE_PLUGINS"] = ",".join(environment_plugins())

        check = subprocess.run([sys.executable, "-m", "nodehost.cli", "nodes", "--json"],
                               env=env, capture_output=True, text=True, check=True)
        assert check.stdout.count('"node_type"') == 2 * args.plugins, check.stdout
        assert '"failures": []' in check.stdout, check.stdout

        script = str(Path(sys.executable).with_name("nodehost"))
        commands = {
            "python -c pass (floor)": [sys.executable, "-c", "pass"],
            "python -m nodehost.cli nodes": [sys.executable, "-m", "nodehost.cli", "nodes"],
            "nodehost nodes": [script, "nodes"],
            "nodehost nodes --json": [script, "nodes", "--json"],
        }
        print(f"{args.plugins} plugins, {2 * args.plugins} node types, median of {args.runs}:")
        for label, cmd in commands.items():
            print(f"  {label:32s} {median_time(cmd, env, args.runs) * 1000:7.1f} ms")

        if args.importtime:
            result = subprocess.run([sys.executable, "-X", "importtime", "-m", "nodehost.cli",
                                     "nodes"], env=env, capture_output=True, text=True)
            rows = [line.split("|") for line in result.stderr.splitlines()
                    if line.startswith("import time:") and "cumulative" not in line]
            rows.sort(key=lambda r: int(r[1]), reverse=True)
            print("slowest imports (cumulative µs):")
            for row in rows[:25]:
                print(f"  {int(row[1]):8d}  {row[2].rstrip()}")


if __name__ == "__main__":
    main()
