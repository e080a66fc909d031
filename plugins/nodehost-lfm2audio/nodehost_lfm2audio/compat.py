"""Loading LFM2-Audio with liquid-audio 1.3.0 offline and on the CPU.

liquid-audio assumes a GPU and the Hugging Face hub. Three traps, each handled here (and
nowhere else), all at load time:

1. ``LFM2AudioModel/LFM2AudioProcessor.from_pretrained(str)`` calls ``snapshot_download`` —
   a network fetch. We always pass a ``pathlib.Path`` (a local folder; a hub id is resolved
   to its folder in the local cache first by ``nodehost.checkpoints``), and set
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
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def patch_conformer_math() -> None:
    """Trap 3: ``xscaling=True`` → NameError: name 'math' is not defined."""
    from liquid_audio.model.conformer import encoder

    if not hasattr(encoder, "math"):
        encoder.math = math


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
