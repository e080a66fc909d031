"""The newcomer's path, for real: a wheel built from this repo (not editable) in a fresh venv,
``nodehost new textstats``, install it, ``nodehost nodes`` lists it, its sample pipeline runs
``TextSource → WordCount → TextSink``, and its generated tests pass.

Slow (~1-3 min: a wheel build and two installs; pip's cache makes the downloads local).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 900


@dataclass
class Fresh:
    root: Path
    venv: Path
    env: dict[str, str]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(list(args), cwd=self.root, env=self.env, capture_output=True,
                                text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
        if check:
            assert result.returncode == 0, (args, result.stdout[-4000:], result.stderr[-4000:])
        return result

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fresh]:
    root = tmp_path_factory.mktemp("newcomer")
    os.chmod(root, 0o755)
    # Nothing of this test run's environment leaks in: no NODEHOST_* settings, no venv.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NODEHOST_", "VIRTUAL_ENV", "PYTHON"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    fresh = Fresh(root, root / "venv", env)
    fresh.run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w",
              str(root / "dist"), str(REPO))
    (wheel,) = (root / "dist").glob("nodehost-*.whl")
    fresh.run(sys.executable, "-m", "venv", str(fresh.venv))
    fresh.run(fresh.bin("python"), "-m", "pip", "install", "--quiet", str(wheel))
    yield fresh


def test_the_wheel_is_installed_not_the_checkout(fresh: Fresh) -> None:
    where = fresh.run(fresh.bin("python"), "-c", "import nodehost; print(nodehost.__file__)")
    assert where.stdout.strip().startswith(str(fresh.venv)), where.stdout
    version = fresh.run(fresh.bin("nodehost"), "--version")
    assert version.stdout.strip() == "nodehost 0.1.0"


def test_new_plugin_installs_lists_runs_and_passes_its_tests(fresh: Fresh) -> None:
    created = fresh.run(fresh.bin("nodehost"), "new", "textstats")
    assert "node type WordCount" in created.stdout
    plugin = fresh.root / "textstats"
    assert (plugin / "textstats" / "manifests" / "word_count.yaml").is_file()

    # Installed as a user would, from the folder (a regular install: package data must ship).
    fresh.run(fresh.bin("python"), "-m", "pip", "install", "--quiet", "./textstats[test]")

    listing = json.loads(fresh.run(fresh.bin("nodehost"), "nodes", "--json").stdout)
    by_type = {n["node_type"]: n for n in listing["nodes"]}
    assert by_type["WordCount"]["plugin"] == "textstats", listing
    assert {"TextSource", "TextSink", "JsonlSink"} <= set(by_type), sorted(by_type)
    assert listing["failures"] == []

    ran = fresh.run(fresh.bin("nodehost"), "run", "textstats/pipelines/sample.yaml",
                    "--events", "json")
    events = [json.loads(line) for line in ran.stdout.splitlines() if line.startswith("{")]
    types = {e["node"]: e.get("node_type") for e in events if e["event"] == "status"}
    assert {"source", "count", "sink"} <= set(types), types
    said = [e["message"] for e in events if e["event"] == "log" and e["node"] == "sink"]
    assert said == ["4 words", "6 words"], said
    assert events[-1]["event"] == "session_end" and events[-1]["ok"] is True, events[-1]

    tested = fresh.run(fresh.bin("python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                       "textstats/tests", check=False)
    assert tested.returncode == 0, tested.stdout[-4000:] + tested.stderr[-4000:]
    assert "3 passed" in tested.stdout, tested.stdout[-2000:]


# --------------------------------------------------------------------------- docs/plugins.md

DOC = REPO / "docs" / "plugins.md"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
FILE_MARK = re.compile(r"^# file: (\S+)( \(excerpt\))?\n")


def doc_blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block of docs/plugins.md, in order."""
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(DOC.read_text())]


def test_plugins_doc_walkthrough_runs_as_written(fresh: Fresh) -> None:
    """Every ``bash`` block is run, every ``# file:`` block written (or, for an excerpt,
    found in the file ``nodehost new`` generated), in the order of the page."""
    walk = fresh.root / "docwalk"
    walk.mkdir()
    (walk / "plugins").symlink_to(REPO / "plugins")  # "from a nodehost checkout"
    env = {**fresh.env, "PATH": f"{fresh.venv / 'bin'}{os.pathsep}{fresh.env['PATH']}",
           "VIRTUAL_ENV": str(fresh.venv)}
    ran = files = 0
    for lang, text in doc_blocks():
        mark = FILE_MARK.match(text)
        if mark:
            path, body = walk / mark.group(1), text[mark.end():]
            if mark.group(2):  # an excerpt: each paragraph is in the generated file as is
                for paragraph in re.split(r"\n\s*\n", body.strip()):
                    assert paragraph in path.read_text(), f"{mark.group(1)}:\n{paragraph}"
            else:
                path.write_text(body)
            files += 1
        elif lang == "bash":
            result = subprocess.run(["bash", "-euo", "pipefail", "-c", text], cwd=walk,
                                    env=env, capture_output=True, text=True, timeout=TIMEOUT,
                                    stdin=subprocess.DEVNULL)
            assert result.returncode == 0, (text, result.stdout[-3000:], result.stderr[-3000:])
            ran += 1
            if "pytest -q textstats/tests" in text and "louder" in "".join(
                    p.name for p in (walk / "textstats" / "tests").iterdir()):
                assert "5 passed" in result.stdout, result.stdout[-2000:]
    assert ran >= 3 and files >= 9, (ran, files)
