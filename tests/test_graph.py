"""`nodehost graph`: the pipeline as Mermaid, DOT, SVG and PNG, annotated from a real run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import probe_chain


def nodehost(*args: str, env: dict[str, str] | None = None,
             timeout: float = 180) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "nodehost.cli", *args], capture_output=True,
                          timeout=timeout, env=env, check=False)


def drop_pipeline(tmp: Path) -> Path:
    config: dict[str, Any] = probe_chain(tmp / "sum.json", count=300, name="pic")
    config["nodes"][0]["params"]["interval_ms"] = 2.0
    config["nodes"][-1]["params"]["delay_ms"] = 8.0
    config["connections"][1]["backpressure"] = False
    config["connections"][1]["capacity"] = 65536
    path = tmp / "pic.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_mermaid_shows_types_ports_and_connections(tmp_out: Path) -> None:
    done = nodehost("graph", str(drop_pipeline(tmp_out)))
    assert done.returncode == 0, done.stderr
    text = done.stdout.decode()
    assert text.startswith("flowchart LR\n")
    assert 'src["<b>src</b><br/>ProbeSource<br/>→ out (tensor)"]' in text
    assert 'fwd["<b>fwd</b><br/>Forward<br/>← in (tensor)<br/>→ out (tensor)"]' in text
    assert 'src -->|"out → in: tensor, 16 MiB"| fwd' in text
    assert 'fwd -.->|"out → in: tensor, 64 KiB, drop oldest"| sink' in text


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz not installed")
@pytest.mark.parametrize("fmt", ["svg", "png"])
def test_rendered_through_graphviz(tmp_out: Path, fmt: str) -> None:
    out = tmp_out / f"pic.{fmt}"
    done = nodehost("graph", str(drop_pipeline(tmp_out)), "--format", fmt, "-o", str(out))
    assert done.returncode == 0, done.stderr
    data = out.read_bytes()
    if fmt == "png":
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
    else:
        svg = data.decode()
        assert "<svg" in svg and "ProbeSource" in svg and "drop oldest" in svg


def test_without_graphviz_the_error_says_how_to_get_it(tmp_out: Path) -> None:
    bare = tmp_out / "bin"
    bare.mkdir()  # a PATH with no `dot` on it
    env = dict(os.environ, PATH=str(bare))
    done = nodehost("graph", str(drop_pipeline(tmp_out)), "--format", "svg", "-o",
                    str(tmp_out / "x.svg"), env=env)
    assert done.returncode == 2
    assert b"needs Graphviz's `dot`, which is not installed: `apt install graphviz`" in \
        done.stderr
    assert b"Traceback" not in done.stderr
    assert nodehost("graph", str(drop_pipeline(tmp_out)), "--format", "dot",
                    env=env).returncode == 0


def test_stats_annotate_the_picture_with_what_happened(tmp_out: Path) -> None:
    config = drop_pipeline(tmp_out)
    run = nodehost("run", str(config), "--events", "json")
    assert run.returncode == 0, run.stderr
    events_file = tmp_out / "events.jsonl"
    events_file.write_bytes(run.stdout)
    final = [json.loads(line) for line in run.stdout.splitlines()
             if json.loads(line)["event"] == "stats"][-1]
    [fwd_out] = [c for c in final["channels"] if c["from"] == "fwd.out"]
    assert fwd_out["dropped"] > 0
    done = nodehost("graph", str(config), "--format", "dot", "--stats", str(events_file))
    assert done.returncode == 0, done.stderr
    text = done.stdout.decode()
    sink = final["nodes"]["sink"]
    assert f"in {sink['received']} / out 0" in text
    assert f"{fwd_out['sent']} sent, {fwd_out['dropped']} dropped" in text
    assert "msg/s" in text and "age p50" in text


def test_stats_file_that_is_not_events_is_a_usage_error(tmp_out: Path) -> None:
    bad = tmp_out / "bad.jsonl"
    bad.write_text("this is not json\n")
    done = nodehost("graph", str(drop_pipeline(tmp_out)), "--stats", str(bad))
    assert done.returncode == 2
    assert f"{bad}:1: not a JSON event".encode() in done.stderr
    empty = tmp_out / "empty.jsonl"
    empty.write_text('{"event": "status"}\n')
    done = nodehost("graph", str(drop_pipeline(tmp_out)), "--stats", str(empty))
    assert done.returncode == 2 and b"no stats events in it" in done.stderr
