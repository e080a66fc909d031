"""Loading LFM2-Audio with liquid-audio 1.3.0 offline and on the CPU.

liquid-audio assumes a GPU and the Hugging Face hub. Three traps, each handled here (and
nowhere else), all at load time:

1. ``LFM2AudioModel/LFM2AudioProcessor.from_pretrained(str)`` calls ``snapshot_download`` —
   a network fetch. We always pass a ``pathlib.Path`` (a local folder; a hub id is resolved
   to its folder in the local cache first, with ``local_files_only=True``), and set
   ``HF_HUB_OFFLINE=1`` before huggingface_hub is imported.
2. The audio detokenizer (``LFM2AudioProcessor.audio_detokenizer``) is built with
   ``.cuda()``. We build it the same way on the requested device instead and hand it to the
   processor (``processor._audio_detokenizer``), so ``processor.decode`` never reaches the
   ``.cuda()`` call.
3. ``ConformerEncoder(xscaling=True)`` uses ``math.sqrt`` in a module that never imports
   ``math`` (NameError). We add ``math`` to that module's namespace — the scaling then works
   as designed instead of being switched off.
"""

from __future__ import annotations

import math
import os
import pwd
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def patch_conformer_math() -> None:
    """Trap 3: ``xscaling=True`` → NameError: name 'math' is not defined."""
    from liquid_audio.model.conformer import encoder

    if not hasattr(encoder, "math"):
        encoder.math = math  # type: ignore[attr-defined]


def hf_cache_dir(explicit: str | None = None) -> Path:
    """The hub cache: the param, $HF_HUB_CACHE, $HF_HOME/hub, else the *user's* home (the
    node's HOME is its private temp dir, so ``~`` would point there)."""
    if explicit:
        return Path(explicit)
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    home = pwd.getpwuid(os.getuid()).pw_dir
    return Path(home) / ".cache" / "huggingface" / "hub"


def resolve_checkpoint(checkpoint: str, hf_cache: str | None = None) -> Path:
    """Trap 1: a local folder as a Path; a hub id only from the local cache, never fetched.

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
            "folder in the node's sandbox.fs_read") from None


def build_detokenizer(processor: Any, device: Any) -> Any:
    """Trap 2: the processor's ``audio_detokenizer`` property, minus its ``.cuda()``."""
    from liquid_audio.detokenizer import LFM2AudioDetokenizer
    from safetensors.torch import load_file
    from transformers import Lfm2Config

    folder = Path(processor.detokenizer_path)
    config = Lfm2Config.from_pretrained(folder / "config.json")
    # As liquid-audio does: llama.cpp's sliding_attention layers are full attention plus the
    # detokenizer's own sliding-window mask.
    config.layer_types = ["full_attention" if t == "sliding_attention" else t
                          for t in config.layer_types]
    detok = LFM2AudioDetokenizer(config).eval()
    detok.load_state_dict(load_file(str(folder / "model.safetensors")))
    detok = detok.to(device).eval()
    processor._audio_detokenizer = detok
    return detok


def load(checkpoint: Path, device: str, dtype: str) -> tuple[Any, Any]:
    """(processor, model) on ``device``, with every trap handled."""
    import torch
    from liquid_audio import LFM2AudioModel, LFM2AudioProcessor

    patch_conformer_math()
    torch_dtype = getattr(torch, DTYPES[dtype])
    processor = LFM2AudioProcessor.from_pretrained(Path(checkpoint), device=device).eval()
    model = LFM2AudioModel.from_pretrained(Path(checkpoint), device=device,
                                           dtype=torch_dtype).eval()
    if processor.detokenizer_path is not None:
        build_detokenizer(processor, device)
    return processor, model
