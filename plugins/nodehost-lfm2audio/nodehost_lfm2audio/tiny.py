"""Build a tiny, randomly initialised LFM2-Audio checkpoint with liquid-audio's own classes.

    python -m nodehost_lfm2audio.tiny DIR

The folder has the layout of a real one — ``config.json``, ``model.safetensors``, a
tokenizer, ``audio_detokenizer/{config.json,model.safetensors}`` — so the node's real loading
and generation path runs on it; only the sizes are small (a few MB). Tests use it; it also
shows what a real checkpoint folder must hold. Runs in the node's environment (Python 3.12,
liquid-audio).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# Token ids liquid-audio hard-codes in its generation loops.
SPECIAL = {0: "<|pad|>", 1: "<|startoftext|>", 2: "<|endoftext|>", 6: "<|im_start|>",
           7: "<|im_end|>", 128: "<|audio_start|>", 130: "<|text_end|>"}


def _tokenizer(folder: Path) -> int:
    """A byte-level BPE tokenizer (one token per byte) with the special tokens at the ids
    liquid-audio expects; returns the vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {tok: i for i, tok in SPECIAL.items()}
    next_id = 0
    for char in alphabet:
        while next_id in SPECIAL:
            next_id += 1
        vocab[char] = next_id
        next_id += 1
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL.values()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>",
                                   eos_token="<|im_end|>", pad_token="<|pad|>")
    fast.save_pretrained(str(folder))
    return max(vocab.values()) + 1


def config(vocab_size: int) -> dict[str, Any]:
    return {
        "architectures": ["LFM2AudioModel"],
        "codebooks": 8,
        "tie_audio_embeddings": False,
        "semantic_codebook_factor": 100.0,
        "codebook_weight": "log",
        "interleaved_n_text": 6,
        "interleaved_n_audio": 12,
        "preprocessor": {
            "sample_rate": 16000, "normalize": "per_feature", "window_size": 0.025,
            "window_stride": 0.01, "window": "hann", "features": 128, "n_fft": 512,
            "log": True, "frame_splicing": 1, "dither": 1e-05, "pad_to": 0, "pad_value": 0.0,
        },
        "encoder": {
            "feat_in": 128, "feat_out": -1, "n_layers": 1, "d_model": 32,
            "subsampling": "dw_striding", "subsampling_factor": 8,
            "subsampling_conv_channels": 32, "causal_downsampling": False,
            "reduction": None, "reduction_position": None, "reduction_factor": 1,
            "ff_expansion_factor": 2, "self_attention_model": "rel_pos", "n_heads": 2,
            "att_context_size": [-1, -1],
            "xscaling": True,  # exercises the NameError trap that compat.py handles
            "untie_biases": True, "pos_emb_max_len": 5000, "conv_kernel_size": 9,
            "conv_norm_type": "batch_norm", "conv_context_size": None, "dropout": 0.0,
            "dropout_pre_encoder": 0.0, "dropout_emb": 0.0, "dropout_att": 0.0,
        },
        "lfm": {
            "vocab_size": vocab_size, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "layer_types": ["conv", "full_attention"], "max_position_embeddings": 4096,
            "norm_eps": 1e-5, "conv_L_cache": 3, "block_auto_adjust_ff_dim": False,
            "tie_word_embeddings": True, "pad_token_id": 0, "bos_token_id": 1,
            "eos_token_id": 7,
        },
        "depthformer": {"layers": 1, "dim": 64, "tie": True},
    }


def _detokenizer(folder: Path) -> None:
    import torch
    from liquid_audio.detokenizer import LFM2AudioDetokenizer
    from safetensors.torch import save_file
    from transformers import Lfm2Config

    folder.mkdir(parents=True, exist_ok=True)
    # hidden_size 512 is fixed by the detokenizer's own embedding and output layers.
    conf = Lfm2Config(vocab_size=16, hidden_size=512, intermediate_size=256,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      layer_types=["conv", "sliding_attention"], sliding_window=30,
                      block_auto_adjust_ff_dim=False, max_position_embeddings=8192)
    conf.save_pretrained(str(folder))
    torch.manual_seed(1)
    detok = LFM2AudioDetokenizer(_renamed(conf))
    state = {k: v.contiguous() for k, v in detok.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _renamed(conf: Any) -> Any:
    """The config as liquid-audio loads it (sliding_attention → full_attention)."""
    from transformers import Lfm2Config

    data = conf.to_dict()
    data["layer_types"] = ["full_attention" if t == "sliding_attention" else t
                           for t in data["layer_types"]]
    return Lfm2Config(**{k: v for k, v in data.items() if k != "transformers_version"})


def build(folder: str | Path, seed: int = 0) -> Path:
    import torch
    from liquid_audio.model.conformer.encoder import ConformerEncoderConfig
    from liquid_audio.model.lfm2_audio import DepthformerConfig, LFM2AudioConfig, LFM2AudioModel
    from liquid_audio.processor import PreprocessorConfig
    from safetensors.torch import save_model
    from transformers import Lfm2Config

    from nodehost_lfm2audio.compat import patch_conformer_math

    patch_conformer_math()
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    vocab_size = _tokenizer(out)
    conf_dict = config(vocab_size)
    (out / "config.json").write_text(json.dumps(conf_dict, indent=2))
    c = json.loads(json.dumps(conf_dict))
    conf = LFM2AudioConfig(
        lfm=Lfm2Config(**c.pop("lfm")),
        encoder=ConformerEncoderConfig(**c.pop("encoder")),
        depthformer=DepthformerConfig(**c.pop("depthformer")),
        preprocessor=PreprocessorConfig(**c.pop("preprocessor")),
        **c,
    )
    torch.manual_seed(seed)
    model = LFM2AudioModel(conf).eval()
    # save_model handles tied (shared) tensors; accelerate wants the "format" metadata.
    save_model(model, str(out / "model.safetensors"), metadata={"format": "pt"})
    _detokenizer(out / "audio_detokenizer")
    return out


if __name__ == "__main__":
    print(build(sys.argv[1] if len(sys.argv) > 1 else "lfm2-audio-tiny"))
