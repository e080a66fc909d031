"""VibeVoiceTTS: text in, 24 kHz speech out, streamed in chunks while it is generated.

Runs in its own environment (the manifest's ``runtime``: torch 2.13 CPU, transformers 5,
diffusers). Two backends:

- ``transformers``: ``VibeVoiceForConditionalGeneration`` (VibeVoice-1.5B/7B "-hf"
  checkpoints). Its ``generate()`` turns one acoustic latent at a time into 3200 samples with
  ``_decode_audio_latent`` (a streaming, causal decoder) and returns the whole utterance at
  the end. The node wraps that method *on its model instance* to see each decoded frame as it
  is made and sends every ``chunk_frames`` frames at once — streaming without changing what is
  generated. The noise scheduler is diffusers' DPMSolverMultistepScheduler (the checkpoint's
  generation config may name another).
- ``realtime``: VibeVoice-Realtime-0.5B through the ``vibevoice`` package's
  ``VibeVoiceStreamingForConditionalGenerationInference`` and its ``AudioStreamer``. That
  package is not on PyPI: the code path is used only when it is importable (install it into
  the node's environment yourself).

Text arrives in pieces (e.g. LFM2Audio's tokens); by default it is collected into sentences
(``. ! ?`` or a newline end one) and each sentence is spoken as soon as it is complete; the
rest is spoken at end of stream.
"""

from __future__ import annotations

import copy
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

import nodehost
from nodehost.checkpoints import resolve_checkpoint

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SAMPLE_RATE = 24_000
SAMPLES_PER_FRAME = 3_200  # 7.5 acoustic frames per second
_SENTENCE_END = re.compile(r"(?<=[.!?…。！？])[\"')\]]*\s+|\n+")

try:  # the realtime-streaming model's package (not on PyPI)
    from vibevoice.modular.modeling_vibevoice_streaming_inference import (
        VibeVoiceStreamingForConditionalGenerationInference as _RealtimeModel,
    )
    from vibevoice.modular.streamer import AudioStreamer as _AudioStreamer
    from vibevoice.processor.vibevoice_streaming_processor import (
        VibeVoiceStreamingProcessor as _RealtimeProcessor,
    )

    REALTIME_AVAILABLE = True
except ImportError:
    REALTIME_AVAILABLE = False


def _is_streaming_checkpoint(path: Path) -> bool:
    import json

    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return "streaming" in str(config.get("model_type", "")).lower()


class _Transformers:
    """transformers' VibeVoiceForConditionalGeneration, frames observed as they decode."""

    def __init__(self, path: Path, device: str, dtype: Any, params: Any) -> None:
        import torch
        from transformers import AutoProcessor, VibeVoiceForConditionalGeneration

        self.params = params
        self.device = device
        self.processor = AutoProcessor.from_pretrained(str(path))
        self.model = VibeVoiceForConditionalGeneration.from_pretrained(
            str(path), dtype=dtype, local_files_only=True).to(device).eval()
        self.voice: np.ndarray | None = None
        if params.voice:
            self.voice = _read_voice(params.voice)
        self.on_frame: Callable[[Any], None] | None = None
        decode = self.model._decode_audio_latent

        def observed(*args: Any, **kwargs: Any) -> Any:
            output = decode(*args, **kwargs)
            if self.on_frame is not None:
                self.on_frame(output.audio)
            return output

        # An instance attribute shadows the class's method for this model only.
        self.model._decode_audio_latent = observed
        self.torch = torch

    def speak(self, text: str, send: Callable[[np.ndarray], None]) -> None:
        p = self.params
        content: list[dict[str, Any]] = [{"type": "text", "text": text}]
        if self.voice is not None:
            content.append({"type": "audio", "audio": self.voice})
        conversation = [{"role": "0", "content": content}]
        prompt = self.processor.apply_chat_template(conversation, tokenize=False)
        if isinstance(prompt, list):
            prompt = prompt[0]
        kwargs: dict[str, Any] = {"text": [prompt], "return_tensors": "pt"}
        if self.voice is not None:
            kwargs.update(audio=[self.voice], sampling_rate=SAMPLE_RATE)
        inputs = self.processor(**kwargs).to(self.device)
        # The processor makes float32 audio features; a bfloat16/float16 model needs its own.
        for key, value in list(inputs.items()):
            if self.torch.is_tensor(value) and value.is_floating_point():
                inputs[key] = value.to(self.model.dtype)

        def on_frame(audio: Any) -> None:
            send(audio[0].reshape(-1).float().cpu().numpy())

        self.on_frame = on_frame
        try:
            with self.torch.no_grad():
                self.model.generate(**inputs, max_new_tokens=p.max_new_tokens,
                                    num_diffusion_steps=p.inference_steps,
                                    guidance_scale=p.cfg_scale)
        finally:
            self.on_frame = None


class _Realtime:
    """VibeVoice-Realtime through the vibevoice package (only when it is importable)."""

    def __init__(self, path: Path, device: str, dtype: Any, params: Any) -> None:
        if not REALTIME_AVAILABLE:
            raise ImportError("backend 'realtime' needs the vibevoice package (VibeVoice-Realtime"
                              "), which is not on PyPI: install it into this node's environment")
        import torch

        self.params = params
        self.device = device
        self.processor = _RealtimeProcessor.from_pretrained(str(path))
        self.model = _RealtimeModel.from_pretrained(
            str(path), torch_dtype=dtype, device_map=device,
            attn_implementation="sdpa").eval()
        self.model.set_ddpm_inference_steps(num_steps=params.inference_steps)
        if not params.voice:
            raise ValueError("backend 'realtime' needs a voice preset: set params.voice to a .pt "
                             "file of the VibeVoice-Realtime voices")
        self.prompt = torch.load(params.voice, map_location=device, weights_only=False)
        self.torch = torch

    def speak(self, text: str, send: Callable[[np.ndarray], None]) -> None:
        inputs = self.processor.process_input_with_cached_prompt(
            text=text, cached_prompt=self.prompt, padding=True, return_tensors="pt",
            return_attention_mask=True)
        inputs = {k: v.to(self.device) if self.torch.is_tensor(v) else v
                  for k, v in inputs.items()}
        streamer = _AudioStreamer(batch_size=1)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                self.model.generate(
                    **inputs, max_new_tokens=None, cfg_scale=self.params.cfg_scale,
                    tokenizer=self.processor.tokenizer, generation_config={"do_sample": False},
                    audio_streamer=streamer,
                    all_prefilled_outputs=copy.deepcopy(self.prompt))
            except BaseException as exc:
                failure.append(exc)
                streamer.end()

        worker = threading.Thread(target=run, name="vibevoice-realtime", daemon=True)
        worker.start()
        for chunk in streamer.get_stream(0):
            send(chunk.reshape(-1).float().cpu().numpy())
        worker.join()
        if failure:
            raise failure[0]


def _read_voice(path: str) -> np.ndarray:
    """A reference recording as 24 kHz mono float32."""
    import soundfile

    samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    if rate != SAMPLE_RATE:
        import soxr

        mono = soxr.resample(mono, rate, SAMPLE_RATE)
    return np.ascontiguousarray(mono, dtype=np.float32)


class VibeVoiceTTSParams(BaseModel):
    """The params of VibeVoiceTTS's manifest, typed (nodehost checks the names match)."""

    checkpoint: str = 'vibevoice/VibeVoice-1.5B-hf'
    hf_cache: str | None = None
    backend: Literal['auto', 'transformers', 'realtime'] = 'auto'
    voice: str | None = None
    inference_steps: int = 10
    cfg_scale: float = 1.3
    max_new_tokens: int = 600
    chunk_frames: int = 2
    sentence_buffer: bool = True
    max_chars: int = 400
    device: str = 'cpu'
    dtype: Literal['float32', 'bfloat16', 'float16'] = 'bfloat16'
    threads: int = 2
    seed: int | None = None


class VibeVoiceTTS(nodehost.Node[VibeVoiceTTSParams]):
    def initialize(self) -> None:
        import torch

        p: Any = self.params
        torch.set_num_threads(p.threads)
        if p.seed is not None:
            torch.manual_seed(p.seed)
        self.progress(0.05, f"resolving checkpoint {p.checkpoint}")
        path = resolve_checkpoint(p.checkpoint, p.hf_cache)
        realtime = p.backend == "realtime" or (
            p.backend == "auto" and REALTIME_AVAILABLE and _is_streaming_checkpoint(path))
        self.backend_name = "realtime" if realtime else "transformers"
        self.progress(0.15, f"loading VibeVoice ({self.backend_name}) from {path}")
        started = time.monotonic()
        dtype = getattr(torch, p.dtype)
        backend_cls = _Realtime if realtime else _Transformers
        self.backend: _Transformers | _Realtime = backend_cls(path, p.device, dtype, p)
        self.pending = ""
        self.last_utterance: dict[str, Any] = {}
        self.logger.info("VibeVoice (%s) loaded in %.1f s", self.backend_name,
                         time.monotonic() - started)
        self.progress(1.0, "ready")

    def process(self, data: nodehost.RuntimeData, port: str) -> Iterator[nodehost.RuntimeData]:
        p: Any = self.params
        self.pending += data.as_text()
        if not p.sentence_buffer:
            text, self.pending = self.pending, ""
            yield from self._speak(text)
            return
        while True:
            match = _SENTENCE_END.search(self.pending)
            if match is None:
                if len(self.pending) < p.max_chars:
                    return
                cut = self.pending.rfind(" ", 0, p.max_chars)
                cut = cut if cut > 0 else p.max_chars
                sentence, self.pending = self.pending[:cut], self.pending[cut:]
            else:
                sentence, self.pending = self.pending[:match.end()], self.pending[match.end():]
            yield from self._speak(sentence)

    def end_of_stream(self, port: str) -> Iterator[nodehost.RuntimeData]:
        text, self.pending = self.pending, ""
        yield from self._speak(text)

    def _speak(self, text: str) -> Iterator[nodehost.RuntimeData]:
        """Speak ``text``; chunks are sent from inside generation (see the module doc)."""
        text = " ".join(text.split())
        if not any(ch.isalnum() for ch in text):
            if text:
                self.logger.info("nothing to speak in %r (no letters or digits)", text[:80])
            return iter(())
        p: Any = self.params
        frames: list[np.ndarray] = []
        started = time.monotonic()
        stats: dict[str, Any] = {"text": text, "chunks": 0, "samples": 0, "first_chunk_s": None}

        def flush() -> None:
            if not frames:
                return
            samples = np.concatenate(frames).astype(np.float32, copy=False)
            frames.clear()
            if stats["first_chunk_s"] is None:
                stats["first_chunk_s"] = time.monotonic() - started
            stats["chunks"] += 1
            stats["samples"] += samples.size
            self.emit("out", nodehost.RuntimeData.audio(samples, sample_rate=SAMPLE_RATE))

        def send(samples: np.ndarray) -> None:
            frames.append(samples)
            if sum(f.size for f in frames) >= p.chunk_frames * SAMPLES_PER_FRAME:
                flush()

        self.backend.speak(text, send)
        flush()
        stats["seconds"] = time.monotonic() - started
        self.last_utterance = stats
        self.logger.info("spoke %d chars: %d chunks, %.2f s of audio in %.2f s", len(text),
                         stats["chunks"], stats["samples"] / SAMPLE_RATE, stats["seconds"])
        return iter(())
