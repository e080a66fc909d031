"""Build a tiny, randomly initialised VibeVoice checkpoint with transformers' own classes.

    python -m nodehost_vibevoice.tiny DIR

``VibeVoiceConfig`` with a 2-layer Qwen2 backbone, small acoustic/semantic tokenizers (the
real 3200× downsampling, so 24 kHz and 7.5 frames/s stay true) and diffusion head, saved with
``save_pretrained`` next to a processor (byte-level tokenizer with VibeVoice's special tokens,
the acoustic feature extractor, a chat template in VibeVoice's prompt format). The node's real
loading and generation path runs on it; only the weights are small and random.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The audio placeholder first: see the zeroed rows in build().
SPECIAL = ["<|vision_pad|>", "<|vision_start|>", "<|vision_end|>", "<|endoftext|>"]

# VibeVoice's prompt layout: an optional voice section (one audio placeholder per speaker that
# has a reference recording), the script, then the start of speech.
CHAT_TEMPLATE = (
    "{{- ' Transform the text provided by various speakers into speech output, utilizing the "
    "distinct voice of each respective speaker.\\n' -}}"
    "{%- set ns = namespace(voiced='') -%}"
    "{%- for m in messages -%}{%- for c in m['content'] -%}"
    "{%- if c['type'] == 'audio' and (',' ~ m['role'] ~ ',') not in (',' ~ ns.voiced) -%}"
    "{%- set ns.voiced = ns.voiced ~ m['role'] ~ ',' -%}{%- endif -%}{%- endfor -%}{%- endfor -%}"
    "{%- if ns.voiced -%}{{- ' Voice input:\\n' -}}"
    "{%- for r in ns.voiced.rstrip(',').split(',') -%}"
    "{{- ' Speaker ' ~ r ~ ':<|vision_start|><|vision_pad|><|vision_end|>\\n' -}}"
    "{%- endfor -%}{%- endif -%}"
    "{{- ' Text input:\\n' -}}"
    "{%- for m in messages -%}{%- for c in m['content'] -%}{%- if c['type'] == 'text' -%}"
    "{{- ' Speaker ' ~ m['role'] ~ ': ' ~ c['text'] ~ '\\n' -}}"
    "{%- endif -%}{%- endfor -%}{%- endfor -%}"
    "{{- ' Speech output:\\n<|vision_start|>' -}}"
)


def _tokenizer() -> tuple[object, dict[str, int]]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {char: i for i, char in enumerate(alphabet)}
    for token in SPECIAL:
        vocab[token] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    return fast, {t: vocab[t] for t in SPECIAL}


def build(folder: str | Path, seed: int = 0) -> Path:
    import torch
    from transformers import (
        GenerationConfig,
        VibeVoiceAcousticTokenizerFeatureExtractor,
        VibeVoiceConfig,
        VibeVoiceForConditionalGeneration,
        VibeVoiceProcessor,
    )

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer, ids = _tokenizer()
    vocab_size = max(ids.values()) + 1
    tokenizer_config = {
        "vocab_size": vocab_size, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 4096, "tie_word_embeddings": True,
    }
    acoustic = {"hidden_size": 16, "num_filters": 4, "depths": [1, 1, 1, 1, 1, 1, 1],
                "downsampling_ratios": [2, 2, 4, 5, 5, 8]}
    config = VibeVoiceConfig(
        text_config={"model_type": "qwen2", **tokenizer_config},
        audio_config={"model_type": "vibevoice_acoustic_tokenizer", **acoustic},
        semantic_model_config={"model_type": "vibevoice_acoustic_tokenizer_encoder",
                               **{**acoustic, "hidden_size": 8}},
        diffusion_head_config={"num_hidden_layers": 1, "intermediate_size": 64,
                               "frequency_embedding_size": 32},
        pad_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|endoftext|>"],
        audio_bos_token_id=ids["<|vision_start|>"], audio_eos_token_id=ids["<|vision_end|>"],
        audio_token_id=ids["<|vision_pad|>"],
    )
    torch.manual_seed(seed)
    model = VibeVoiceForConditionalGeneration(config).eval()
    # Random weights would end most utterances at once (an EOS among the four tokens the
    # generation may pick). Zero the (tied) output rows of those four tokens: their logits
    # tie at 0, argmax takes the lowest id, the audio placeholder, so the tiny model speaks
    # until max_new_tokens and every frame runs the real diffusion and decoding path.
    with torch.no_grad():
        model.get_output_embeddings().weight[[ids[t] for t in SPECIAL]] = 0.0
    # As the released checkpoints: the default noise scheduler is named in the generation
    # config (diffusers' DPMSolverMultistepScheduler, cosine betas, v-prediction).
    model.generation_config = GenerationConfig(
        pad_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|endoftext|>"],
        noise_scheduler_class="DPMSolverMultistepScheduler",
        noise_scheduler_config={"beta_schedule": "squaredcos_cap_v2",
                                "prediction_type": "v_prediction"},
    )
    model.save_pretrained(str(out))
    processor = VibeVoiceProcessor(
        feature_extractor=VibeVoiceAcousticTokenizerFeatureExtractor(),
        tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(str(out))
    return out


if __name__ == "__main__":
    print(build(sys.argv[1] if len(sys.argv) > 1 else "vibevoice-tiny"))
