"""Files named in params (``format: path``) are checked against the node's grants before
anything starts; a sandbox denial at run time is reported as one, naming the grant to add."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import yaml

from nodehost.errors import ConfigError


def wav(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(1600, np.float32), 16000)
    return path


def copy_config(src: Path, out: Path, *, read: list[str] | None = None,
                write: list[str] | None = None) -> dict[str, Any]:
    return {
        "nodes": [
            {"id": "mic", "type": "WavSource", "params": {"path": str(src)},
             "sandbox": {"fs_read": read if read is not None else [str(src)]}},
            {"id": "speaker", "type": "WavSink", "params": {"path": str(out)},
             "sandbox": {"fs_write": write if write is not None else [str(out)]}},
        ],
        "connections": [{"from": "mic", "to": "speaker"}],
    }


def problems(host: Any, config: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        host.validate(config)
    return [str(issue) for issue in info.value.issues]


def test_granted_files_validate(host: Any, tmp_path: Path) -> None:
    src = wav(tmp_path / "in" / "in.wav")
    host.validate(copy_config(src, tmp_path / "out.wav"))
    # a folder grant covers what is inside it
    host.validate(copy_config(src, tmp_path / "out.wav", read=[str(src.parent)],
                              write=[str(tmp_path)]))


def test_a_missing_input_is_reported_before_anything_starts(host: Any, tmp_path: Path) -> None:
    src = tmp_path / "in.wav"
    assert problems(host, copy_config(src, tmp_path / "out.wav")) == [
        f"nodes[0].params.path: {src} does not exist"]


def test_an_input_outside_the_read_grants(host: Any, tmp_path: Path) -> None:
    src = wav(tmp_path / "in.wav")
    assert problems(host, copy_config(src, tmp_path / "out.wav", read=[])) == [
        f"nodes[0].params.path: {src} is outside what the node may read; add its folder to "
        "nodes[0].sandbox.fs_read"]
    # a grant of a sibling is not a grant of the file
    assert problems(host, copy_config(src, tmp_path / "out.wav",
                                      read=[str(tmp_path / "in.wa")]))


def test_a_symlink_into_an_ungranted_folder_is_outside(host: Any, tmp_path: Path) -> None:
    real = wav(tmp_path / "private" / "in.wav")
    link = tmp_path / "public" / "in.wav"
    link.parent.mkdir()
    link.symlink_to(real)
    found = problems(host, copy_config(link, tmp_path / "out.wav", read=[str(link.parent)]))
    assert found == [f"nodes[0].params.path: {link} is outside what the node may read; add "
                     "its folder to nodes[0].sandbox.fs_read"]


def test_an_output_outside_the_write_grants_or_in_a_missing_folder(
        host: Any, tmp_path: Path) -> None:
    src = wav(tmp_path / "in.wav")
    out = tmp_path / "out.wav"
    assert problems(host, copy_config(src, out, write=[])) == [
        f"nodes[1].params.path: {out} is outside what the node may write; add it (or its "
        "folder) to nodes[1].sandbox.fs_write"]
    out = tmp_path / "nowhere" / "out.wav"
    assert problems(host, copy_config(src, out)) == [
        f"nodes[1].params.path: {out}: folder {out.parent} does not exist"]


def test_run_refuses_before_starting_a_process(host: Any, tmp_path: Path) -> None:
    src = wav(tmp_path / "in.wav")
    with pytest.raises(ConfigError, match="is outside what the node may read"):
        host.start_session(copy_config(src, tmp_path / "out.wav", read=[]))
    assert host.sessions() == []


def test_validate_cli_reports_relative_paths_resolved(tmp_path: Path) -> None:
    wav(tmp_path / "data" / "in.wav")
    config = copy_config(Path("data/in.wav"), Path("out.wav"), read=[], write=["out.wav"])
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "nodehost.cli", "validate", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout
    assert (f"nodes[0].params.path: {tmp_path / 'data' / 'in.wav'} is outside what the node "
            "may read; add its folder to nodes[0].sandbox.fs_read") in result.stderr


def test_lookup_params_accept_names_that_are_not_files(tmp_path: Path) -> None:
    from nodehost.config import load_config, validate_pipeline
    from nodehost.discovery import discover

    types = discover().node_types
    if "LFM2Audio" not in types:
        pytest.skip("nodehost-lfm2audio is not installed")
    node = {"id": "chat", "type": "LFM2Audio", "params": {"checkpoint": "LiquidAI/LFM2-Audio-1.5B"}}
    config = {"nodes": [{"id": "mic", "type": "WavSource",
                         "params": {"path": str(wav(tmp_path / "in.wav"))},
                         "sandbox": {"fs_read": [str(tmp_path)]}}, node],
              "connections": []}
    with pytest.raises(ConfigError) as info:  # the unconnected input, not the checkpoint
        validate_pipeline(load_config(config), types)
    assert not [i for i in info.value.issues if "checkpoint" in i.loc]
    node["params"]["checkpoint"] = str(tmp_path)  # an existing folder must be granted
    with pytest.raises(ConfigError) as info:
        validate_pipeline(load_config(config), types)
    assert [str(i) for i in info.value.issues if "checkpoint" in i.loc] == [
        f"nodes[1].params.checkpoint: {tmp_path} is outside what the node may read; add its "
        "folder to nodes[1].sandbox.fs_read"]


# ------------------------------------------------------------------- denial at run time

@pytest.mark.parametrize("reader", ["open", "soundfile"])
def test_a_sandbox_denial_at_run_time_names_the_path_and_the_grant(
        host: Any, tmp_path: Path, reader: str) -> None:
    from nodehost.sandbox import probe

    if not probe()["landlock_fs"]:
        pytest.skip("no Landlock on this kernel: nothing denies the read")
    secret = wav(tmp_path / "secret.wav")
    out = tmp_path / "lines.txt"
    config = {
        "nodes": [{"id": "reader", "type": "FileReader",
                   "params": {"path": str(secret), "reader": reader}},
                  {"id": "sink", "type": "TextSink", "params": {"path": str(out)},
                   "sandbox": {"fs_write": [str(out)]}}],
        "connections": [{"from": "reader", "to": "sink"}],
    }
    session = host.start_session(config)
    result = session.wait(120)
    assert not result.ok and result.failed_node == "reader"
    assert result.reason.startswith(
        f"node 'reader' (FileReader) was denied {secret} by its sandbox in generate(); add "
        "its folder to nodes[0].sandbox.fs_read or fs_write; the error: "), result.reason
    # granted, the same node reads it
    config["nodes"][0]["sandbox"] = {"fs_read": [str(tmp_path)]}
    assert host.run(config, timeout=120).ok
    assert out.read_text().strip().isdigit()
