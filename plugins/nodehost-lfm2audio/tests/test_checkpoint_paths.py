"""Where LFM2Audio and VibeVoiceTTS find their weights: a folder relative to the config file,
or a Hugging Face id from the local hub cache only — also when a config file made it a path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

PIPELINE = Path(__file__).resolve().parents[3] / "manifests" / "lfm2_vibevoice.yaml"


def resolvers() -> list[Callable[..., Path]]:
    pytest.importorskip("huggingface_hub")
    from nodehost_lfm2audio.node import resolve_checkpoint as lfm2
    from nodehost_vibevoice.node import resolve_checkpoint as vibevoice

    from nodehost.checkpoints import resolve_checkpoint

    # Both plugins call the host's one resolver, so testing it tests both.
    assert lfm2 is resolve_checkpoint and vibevoice is resolve_checkpoint
    return [resolve_checkpoint]


def fake_hub_cache(cache: Path, repo_id: str) -> Path:
    """The layout huggingface_hub's snapshot_download(local_files_only=True) reads."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    return snapshot


def test_folder_id_and_config_resolved_id(tmp_path: Path) -> None:
    snapshot = fake_hub_cache(tmp_path / "hub", "acme/tiny-model")
    folder = tmp_path / "weights"
    folder.mkdir()
    for resolve in resolvers():
        assert resolve(str(folder)) == folder.resolve()
        assert resolve("acme/tiny-model", str(tmp_path / "hub")) == snapshot
        # What a config file in /configs makes of `checkpoint: acme/tiny-model`:
        assert resolve("/configs/acme/tiny-model", str(tmp_path / "hub")) == snapshot
        with pytest.raises(FileNotFoundError, match="never download"):
            resolve("acme/missing", str(tmp_path / "hub"))
        with pytest.raises(FileNotFoundError, match="neither a folder"):
            resolve("missing-folder")


def test_relative_checkpoints_resolve_against_the_config_file() -> None:
    if not PIPELINE.exists():
        pytest.skip("runs inside the nodehost repository")
    from nodehost.config import load_config, validate_pipeline
    from nodehost.discovery import discover

    pipeline: Any = validate_pipeline(load_config(PIPELINE), discover().node_types)
    config = yaml.safe_load(PIPELINE.read_text())
    checked = 0
    for node in config["nodes"]:
        if "checkpoint" in node.get("params", {}):
            resolved = pipeline.nodes[node["id"]]
            expected = str(PIPELINE.parent / node["params"]["checkpoint"])
            assert resolved.params.checkpoint == expected
            assert expected in [str(p) for p in resolved.sandbox.fs_read]
            checked += 1
    assert checked == 2
