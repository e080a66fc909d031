"""The ``nodehost`` command line, run in subprocesses against pip-installed fixture plugins."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixture_dists import Installed, installed
from pipeline_cases import BAD_CONFIGS, BAD_FILES, VALID, Edit, edited, make_file

from nodehost.cli import build_parser

__all__ = ["installed"]  # the session fixture, used by name


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr


# ------------------------------------------------------------------------------ nodes

def test_nodes_table(installed: Installed) -> None:
    result = installed.run(["nodes"], "good")
    assert result.returncode == 0 and result.stderr == ""
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["TYPE", "VERSION", "PLUGIN", "INPUTS", "OUTPUTS"]
    assert [row.split() for row in rows] == [
        ["FixtureGain", "2.0.1", "nodehost-fixture-good", "in:audio", "out:audio"],
        ["FixtureTone", "0.3.0", "nodehost-fixture-good", "-", "out:audio"],
    ]


def test_nodes_lists_broken_plugins_with_their_reason(installed: Installed) -> None:
    result = installed.run(["nodes"], "good", "broken-import")
    assert result.returncode == 0
    no_traceback(result)
    lines = result.stdout.splitlines()
    assert "1 plugin problem(s):" in lines
    assert ("  nodehost-fixture-broken-import: import of 'nodehost_fixture_broken_import.plugin'"
            " failed: ModuleNotFoundError: No module named 'nodehost_fixture_no_such_dependency'"
            in lines)
    assert result.stderr == ""  # reported once, in the listing


def test_nodes_without_any_plugin(installed: Installed) -> None:
    result = installed.run(["nodes"])
    assert result.returncode == 0
    assert result.stdout.startswith("No node types installed.")


def test_nodes_json_shape(installed: Installed) -> None:
    result = installed.run(["nodes", "--json"], "good", "unknown-hook")
    assert result.returncode == 0
    data = json.loads(result.stdout)
    assert set(data) == {"nodes", "plugins", "failures"}
    for node in data["nodes"]:
        assert set(node) == {"node_type", "version", "plugin", "plugin_version", "description",
                             "inputs", "outputs", "runtime"}
    assert [n["node_type"] for n in data["nodes"]] == ["FixtureGain", "FixtureTone"]
    for plugin in data["plugins"]:
        assert set(plugin) == {"name", "version", "entry_point", "hooks", "node_types"}
    (failure,) = data["failures"]
    assert set(failure) == {"plugin", "entry_point", "reason"}
    assert (failure["plugin"], failure["entry_point"]) == ("nodehost-fixture-unknown-hook",
                                                           "unknownhook")


def test_console_script_and_module_agree(installed: Installed) -> None:
    script = Path(sys.executable).with_name("nodehost")
    if not script.exists():
        pytest.skip(f"no console script next to {sys.executable}")
    by_module = installed.run(["nodes", "--json"], "good")
    by_script = installed.run(["nodes", "--json"], "good", console_script=True)
    assert by_script.returncode == 0, by_script.stderr
    assert json.loads(by_script.stdout) == json.loads(by_module.stdout)


# ------------------------------------------------------------------------------ inspect

def test_inspect_table(installed: Installed) -> None:
    result = installed.run(["inspect", "FixtureGain"], "good")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "FixtureGain 2.0.1 — Multiply audio by a constant factor"
    assert "  plugin      nodehost-fixture-good 1.2.3" in lines
    assert "  in         audio   sample_rate 16000|48000, channels 1" in lines
    params = lines.index("PARAMS")
    assert lines[params + 1].split() == ["NAME", "TYPE", "DEFAULT", "RANGE", "DESCRIPTION"]
    assert lines[params + 2].split() == ["gain", "number", "1.0", "≥", "0.0", "linear",
                                         "factor"]
    assert any(line.startswith("SANDBOX     network denied") for line in lines)
    assert "RUNTIME     the host's Python environment" in lines


def test_inspect_yaml(installed: Installed) -> None:
    result = installed.run(["inspect", "FixtureGain", "--yaml"], "good")
    assert result.returncode == 0, result.stderr
    first, _ = result.stdout.split("\n", 1)
    assert first.startswith("# FixtureGain from nodehost-fixture-good 1.2.3 (")
    assert first.endswith("fixture_gain.yaml)")
    manifest = yaml.safe_load(result.stdout)
    assert manifest["node_type"] == "FixtureGain" and manifest["version"] == "2.0.1"
    assert manifest["entrypoint"] == "nodehost_fixture_good.nodes:Gain"
    assert manifest["inputs"]["in"]["sample_rate"] == [16000, 48000]
    assert manifest["params"]["gain"]["description"] == "linear factor"
    assert "description: ''" not in result.stdout  # nothing left at its default


def test_inspect_json(installed: Installed) -> None:
    result = installed.run(["inspect", "FixtureTone", "--json"], "good")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["plugin"], data["source"]) == ("nodehost-fixture-good", "<dict>")
    assert data["manifest"]["outputs"]["out"] == {"data_type": "audio", "description": "",
                                                  "sample_rate": [16000], "channels": [1]}
    assert data["manifest"]["params"]["frequency"]["default"] == 440.0


@pytest.mark.parametrize(("name", "hint"), [("FixtureGian", "(did you mean 'FixtureGain'"),
                                            ("Nothing", "`nodehost nodes` lists")])
def test_inspect_unknown_type(installed: Installed, name: str, hint: str) -> None:
    result = installed.run(["inspect", name], "good")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: unknown node type {name!r}")
    assert hint in result.stderr
    no_traceback(result)


# ------------------------------------------------------------------------------ validate

def write_config(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_validate_valid_config(installed: Installed, tmp_path: Path) -> None:
    config = copy.deepcopy(VALID)
    config["nodes"][1].update(resources={"memory_mb": 300}, env={"OMP_NUM_THREADS": 1})
    path = write_config(tmp_path, config)
    result = installed.run(["validate", str(path)], "catalog")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"{path}: valid pipeline 'catalog-demo': 4 nodes, 3 connections\n"
        "  nodes[0] mic (Mic): no memory limit (manifest)\n"
        "  nodes[1] gain (Gain): memory limit 300 MiB (config), env OMP_NUM_THREADS=1\n"
        "  nodes[2] resample (Resample): no memory limit (manifest)\n"
        "  nodes[3] speaker (Speaker48k): no memory limit (manifest)\n")


def test_validate_relative_path_and_json(installed: Installed, tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps(VALID))
    result = installed.run(["validate", "p.json"], "catalog", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


# In a config *file* a relative sandbox path means "next to the file" (see the test below);
# only configs built in code must use absolute paths.
FILE_BAD_CONFIGS = [case for case in BAD_CONFIGS if case.id != "sandbox-relative-path"]


def test_validate_resolves_relative_grants_against_the_file(installed: Installed,
                                                            tmp_path: Path) -> None:
    path = write_config(tmp_path, edited(_relative_grant))
    result = installed.run(["validate", str(path)], "catalog", cwd=Path("/"))
    assert result.returncode == 0, result.stderr


def _relative_grant(config: dict[str, Any]) -> None:
    config["nodes"][3]["sandbox"] = {"fs_write": ["out.wav"]}


@pytest.mark.parametrize(("edit", "expected"), FILE_BAD_CONFIGS)
def test_validate_bad_config(installed: Installed, tmp_path: Path, edit: Edit,
                             expected: list[str]) -> None:
    path = write_config(tmp_path, edited(edit))
    result = installed.run(["validate", str(path)], "catalog")
    assert result.returncode == 2, result.stdout
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: {path}: ")
    located = expected[0]
    lines = result.stderr.splitlines()
    assert any(line.startswith((f"error: {path}: {located}", f"  {located}"))
               for line in lines), result.stderr
    for fragment in expected[1:]:
        assert fragment in result.stderr
    no_traceback(result)


@pytest.mark.parametrize(("name", "content", "expected"), BAD_FILES)
def test_validate_unreadable_file(installed: Installed, tmp_path: Path, name: str,
                                  content: Any, expected: list[str]) -> None:
    path = make_file(tmp_path, name, content)
    result = installed.run(["validate", str(path)], "catalog")
    assert result.returncode == 2
    assert result.stdout == "" and result.stderr.startswith("error: ")
    for fragment in expected:
        assert fragment in result.stderr
    no_traceback(result)


def test_validate_reports_a_broken_plugin_and_still_validates(installed: Installed,
                                                              tmp_path: Path) -> None:
    path = write_config(tmp_path, VALID)
    result = installed.run(["validate", str(path)], "catalog", "broken-import")
    assert result.returncode == 0
    assert "nodehost-fixture-broken-import" in result.stderr  # a warning, not an error
    no_traceback(result)


# ------------------------------------------------------------------------------ usage

SUBCOMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]


@pytest.mark.parametrize("args", [
    [], ["frobnicate"], ["inspect"], ["validate"], ["validate", "a.yaml", "b.yaml"],
    ["nodes", "--bogus"], ["schema", "--write"], ["run"], ["run", "x.yaml", "--events", "xml"],
])
def test_usage_errors_exit_2(installed: Installed, args: list[str]) -> None:
    result = installed.run(args)
    assert result.returncode == 2
    assert "usage: nodehost" in result.stderr
    no_traceback(result)


@pytest.mark.parametrize("command", [None, *SUBCOMMANDS])
def test_help(installed: Installed, command: str | None) -> None:
    if command == "bench":
        import importlib.util

        if importlib.util.find_spec("nodehost.bench") is None:
            pytest.skip("nodehost.bench is not there yet")
    args = ["--help"] if command is None else [command, "--help"]
    result = installed.run(args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ")
    no_traceback(result)


def test_every_subcommand_is_known() -> None:
    assert set(SUBCOMMANDS) >= {"nodes", "inspect", "validate", "run", "schema"}


# ------------------------------------------------------------------------------ bundled types

def test_bundled_node_types_table_matches_the_plugins_folder() -> None:
    from nodehost.discovery import BUNDLED_NODE_TYPES

    repo = Path(__file__).resolve().parents[1]
    found = {}
    for manifest in (repo / "plugins").glob("nodehost-*/nodehost_*/manifests/*.yaml"):
        dist = manifest.parts[-4]
        if dist != "nodehost-testnodes":  # test nodes are no one's missing dependency
            found[yaml.safe_load(manifest.read_text())["node_type"]] = dist
    assert found == BUNDLED_NODE_TYPES


def test_a_missing_bundled_type_names_its_distribution(installed: Installed,
                                                       tmp_path: Path) -> None:
    config = tmp_path / "p.yaml"
    config.write_text(yaml.safe_dump({"nodes": [{"id": "m", "type": "LFM2Audio"}]}))
    result = installed.run(["validate", str(config)], "good")  # the bundled plugins disabled
    assert result.returncode == 2
    assert ("nodes[0].type: unknown node type 'LFM2Audio'; it is provided by "
            "nodehost-lfm2audio, which is not installed: pip install -e "
            "plugins/nodehost-lfm2audio") in result.stderr, result.stderr
    inspect = installed.run(["inspect", "VibeVoiceTTS"], "good")
    assert "provided by nodehost-vibevoice" in inspect.stderr


# ------------------------------------------------------------------------------ conventions

def test_version(installed: Installed) -> None:
    import nodehost

    result = installed.run(["--version"])
    assert result.returncode == 0 and result.stdout == f"nodehost {nodehost.__version__}\n"


def test_bash_completion_completes_commands_and_options() -> None:
    script = subprocess.run([sys.executable, "-m", "nodehost.cli", "completion", "bash"],
                            capture_output=True, text=True, timeout=60, check=True).stdout
    probe = script + (
        '\nCOMP_WORDS=(nodehost ins); COMP_CWORD=1; _shtab_nodehost; echo "${COMPREPLY[@]}"'
        '\nCOMP_WORDS=(nodehost run x.yaml --ev); COMP_CWORD=3; _shtab_nodehost; '
        'echo "${COMPREPLY[@]}"\n')
    result = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["inspect", "--events"]
