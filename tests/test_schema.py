"""The JSON Schemas checked in under manifests/schema are what ``nodehost schema`` prints.

After a model change: ``nodehost schema --write manifests/schema`` and commit the result.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nodehost.cli import SCHEMA_FILES, schemas

SCHEMA_DIR = Path(__file__).parents[1] / "manifests" / "schema"
REGENERATE = "run `nodehost schema --write manifests/schema` and commit the result"


@pytest.mark.parametrize(("key", "filename"), sorted(SCHEMA_FILES.items()))
def test_checked_in_schema_is_current(key: str, filename: str) -> None:
    checked_in = json.loads((SCHEMA_DIR / filename).read_text())
    assert checked_in == schemas()[key], f"{filename} is out of date: {REGENERATE}"


def test_schema_command_prints_both(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "nodehost.cli", "schema"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert set(printed) == set(SCHEMA_FILES)
    for key, filename in SCHEMA_FILES.items():
        assert printed[key] == json.loads((SCHEMA_DIR / filename).read_text())


def test_schema_write_reproduces_the_checked_in_files_byte_for_byte(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "nodehost.cli", "schema", "--write",
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for filename in SCHEMA_FILES.values():
        written = (tmp_path / "out" / filename).read_text()
        assert written == (SCHEMA_DIR / filename).read_text(), f"{filename}: {REGENERATE}"


def test_schemas_describe_the_public_fields() -> None:
    manifest, pipeline = schemas()["manifest"], schemas()["pipeline"]
    assert {"node_type", "version", "entrypoint", "inputs", "outputs", "params", "resources",
            "sandbox", "runtime"} <= set(manifest["properties"])
    assert set(manifest["required"]) == {"node_type", "version", "entrypoint"}
    assert manifest["properties"]["node_type"]["pattern"] == "^[A-Za-z_][A-Za-z0-9_]*$"
    connection = pipeline["$defs"]["Connection"]
    assert "from" in connection["properties"] and "from_" not in connection["properties"]
    assert pipeline["$defs"]["NodeConfig"]["properties"]["id"]["pattern"]
