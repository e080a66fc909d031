"""Where a model node finds its weights — offline, always.

For node plugins that load Hugging Face checkpoints (the bundled ``LFM2Audio`` and
``VibeVoiceTTS`` use it). A ``checkpoint`` param is a local folder, or a hub id
(``org/name``) that is looked up in the local hub cache only: nodes never download models.
``huggingface_hub`` is imported only when an id has to be looked up.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

__all__ = ["hf_cache_dir", "resolve_checkpoint"]


def hf_cache_dir(explicit: str | None = None) -> Path:
    """The hub cache: ``explicit``, $HF_HUB_CACHE, $HF_HOME/hub, else the *user's* home (a
    node's HOME is its private temp dir, so ``~`` would point there)."""
    if explicit:
        return Path(explicit)
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path(pwd.getpwuid(os.getuid()).pw_dir) / ".cache" / "huggingface" / "hub"


def resolve_checkpoint(checkpoint: str, hf_cache: str | None = None) -> Path:
    """A local folder as a Path; a hub id only from the local cache, never fetched.

    ``checkpoint`` is a ``format: path`` param, so a config file turns a relative value into a
    path next to the file: a hub id written there arrives as ``/config/folder/org/name``. When
    no such folder exists, its last two parts are tried as the id.
    """
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        return path.resolve()
    repo_id: str | None = None
    if checkpoint.count("/") == 1 and not checkpoint.startswith((".", "/", "~")):
        repo_id = checkpoint
    elif path.is_absolute() and len(path.parts) >= 3:
        repo_id = "/".join(path.parts[-2:])
    if repo_id is None:
        raise FileNotFoundError(f"checkpoint {checkpoint!r} is neither a folder nor a Hugging "
                                "Face id (org/name); grant the folder in the node's "
                                "sandbox.fs_read")
    cache = hf_cache_dir(hf_cache)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, cache_dir=str(cache), local_files_only=True))
    except Exception as exc:
        folder = "" if repo_id == checkpoint else f"there is no folder {checkpoint}, and "
        raise FileNotFoundError(
            f"{folder}checkpoint {repo_id!r} is not in the local Hugging Face cache {cache} "
            f"({type(exc).__name__}); nodes never download models: fetch it where there is "
            f"network (`hf download {repo_id}`), or pass a local folder, and grant that "
            "folder in the node's sandbox.fs_read") from exc
