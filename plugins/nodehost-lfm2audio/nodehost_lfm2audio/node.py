"""LFM2Audio: speech in, a spoken reply out — text tokens and 24 kHz audio as generated.

Runs in its own Python 3.12 environment (the manifest's ``runtime``). Each input message is one
user utterance; the node appends it to the conversation, generates the assistant's reply and
streams it while generating:

- ``text`` port: the reply's text, one message per decoded piece (a few tokens at most);
  a final ``"\\n"`` ends the reply (sentence-buffering TTS nodes flush on it).
- ``audio`` port: 24 kHz mono float32 chunks of ``chunk_frames`` audio frames (80 ms each),
  detokenized as soon as they exist. The LFM detokenizer is causal (sliding-window attention),
  so each chunk is decoded with a few frames of left context and only its new samples are
  sent: chunks join without seams.

The conversation (system prompt + the last ``history_turns`` turns) is the session's state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

import nodehost
from nodehost.checkpoints import resolve_checkpoint
from nodehost_lfm2audio import compat

SAMPLE_RATE = 24_000
SAMPLES_PER_FRAME = 1_920  # 12.5 audio frames per second at 24 kHz
CONTEXT_FRAMES = 8  # left context when detokenizing a chunk (the window covers 5)
AUDIO_EOS = 2048
TEXT_END = 130  # <|text_end|>


@dataclass
class _Turn:
    wave: Any  # (1, n) float32 tensor of the user's audio
    sample_rate: int
    text: Any  # (1, t) generated text tokens
    audio: Any  # (codebooks, a) generated audio codes
    modality: Any  # (t + a,) modality flags in generation order


class _Detokenizer:
    """Audio codes → waveform chunks, streaming: LFM detokenizer (windowed) or Mimi."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self.use_mimi = processor.detokenizer_path is None
        self.frames: list[Any] = []
        self.done = 0  # frames already turned into samples
        self._mimi_ctx: Any = None

    def start(self) -> None:
        self.frames, self.done = [], 0
        if self.use_mimi:
            self._mimi_ctx = self.processor.mimi.streaming(1)
            self._mimi_ctx.__enter__()

    def stop(self) -> None:
        if self._mimi_ctx is not None:
            self._mimi_ctx.__exit__(None, None, None)
            self._mimi_ctx = None

    def add(self, frame: Any) -> None:
        self.frames.append(frame)

    @property
    def pending(self) -> int:
        return len(self.frames) - self.done

    def decode(self) -> np.ndarray:
        """Samples of the frames not yet decoded."""
        import torch

        if not self.pending:
            return np.zeros(0, np.float32)
        with torch.no_grad():
            if self.use_mimi:
                new = torch.stack(self.frames[self.done:], 1)[None]  # (1, C, n)
                pcm = [self.processor.mimi.decode(new[:, :, i:i + 1])
                       for i in range(new.shape[2])]
                wave = torch.cat(pcm, -1).reshape(-1)
            else:
                start = max(0, self.done - CONTEXT_FRAMES)
                codes = torch.stack(self.frames[start:], 1)[None]  # (1, C, n)
                wave = self.processor.decode(codes).reshape(-1)
                wave = wave[(self.done - start) * SAMPLES_PER_FRAME:]
        self.done = len(self.frames)
        return np.ascontiguousarray(wave.float().cpu().numpy(), dtype=np.float32)


class LFM2AudioParams(BaseModel):
    """The params of LFM2Audio's manifest, typed (nodehost checks the names match)."""

    checkpoint: str = 'LiquidAI/LFM2-Audio-1.5B'
    hf_cache: str | None = None
    device: str = 'cpu'
    dtype: Literal['float32', 'bfloat16', 'float16'] = 'float32'
    mode: Literal['interleaved', 'sequential'] = 'interleaved'
    system_prompt: str = 'Respond with interleaved text and audio.'
    max_new_tokens: int = 512
    text_temperature: float = 0.0
    text_top_k: int | None = None
    audio_temperature: float = 1.0
    audio_top_k: int = 4
    chunk_frames: int = 4
    history_turns: int = 8
    threads: int = 2
    seed: int | None = None


class LFM2Audio(nodehost.Node[LFM2AudioParams]):
    def initialize(self) -> None:
        import torch

        p: Any = self.params
        torch.set_num_threads(p.threads)
        if p.seed is not None:
            torch.manual_seed(p.seed)
        self.progress(0.05, f"resolving checkpoint {p.checkpoint}")
        path = resolve_checkpoint(p.checkpoint, p.hf_cache)
        self.progress(0.15, f"loading LFM2-Audio from {path}")
        started = time.monotonic()
        self.processor, self.model = compat.load(path, p.device, p.dtype)
        self.dtype = getattr(torch, compat.DTYPES[p.dtype])
        self.codebooks = self.model.codebooks
        self.detok = _Detokenizer(self.processor)
        self.turns: list[_Turn] = []
        self.closed_ports: set[str] = set()
        self.last_reply: dict[str, Any] = {}
        self.logger.info("LFM2-Audio loaded in %.1f s (%s, %s)", time.monotonic() - started,
                         p.device, p.dtype)
        self.progress(1.0, "ready")

    # -- conversation ----------------------------------------------------------------------
    def _chat(self) -> Any:
        """A ChatState holding the system prompt and the kept turns."""
        from liquid_audio import ChatState

        p: Any = self.params
        chat = ChatState(self.processor, codebooks=self.codebooks, dtype=self.dtype)
        if p.system_prompt:
            chat.new_turn("system")
            chat.add_text(p.system_prompt)
            chat.end_turn()
        for turn in self.turns:
            chat.new_turn("user")
            chat.add_audio(turn.wave, turn.sample_rate)
            chat.end_turn()
            chat.new_turn("assistant")
            chat.append(text=turn.text, audio_out=turn.audio, modality_flag=turn.modality)
            chat.end_turn()
        return chat

    def _send(self, port: str, data: nodehost.RuntimeData) -> None:
        """emit() to a port, unless nothing is connected to it."""
        if port in self.closed_ports:
            return
        try:
            self.emit(port, data)
        except KeyError:  # the runner has no channel for an unconnected output port
            self.closed_ports.add(port)

    # -- processing ------------------------------------------------------------------------
    def process(self, data: nodehost.RuntimeData, port: str) -> None:
        import torch
        from liquid_audio import LFMModality

        p: Any = self.params
        samples = np.asarray(data.as_array(), dtype=np.float32).reshape(-1)
        if samples.size == 0:
            return None
        rate = int(getattr(data.metadata, "sample_rate", None) or 16_000)
        wave = torch.from_numpy(samples.copy())[None]
        chat = self._chat()
        chat.new_turn("user")
        chat.add_audio(wave, rate)
        chat.end_turn()
        chat.new_turn("assistant")

        generate = (self.model.generate_interleaved if p.mode == "interleaved"
                    else self.model.generate_sequential)
        text_tokens: list[Any] = []
        audio_frames: list[Any] = []
        modality: list[int] = []
        shown = ""  # text already sent
        started = time.monotonic()
        first: dict[str, float] = {}
        self.detok.start()
        try:
            for token in generate(
                **chat, max_new_tokens=p.max_new_tokens,
                text_temperature=p.text_temperature or None, text_top_k=p.text_top_k,
                audio_temperature=p.audio_temperature or None, audio_top_k=p.audio_top_k,
            ):
                if token.numel() == 1:  # a text token
                    text_tokens.append(token)
                    modality.append(LFMModality.TEXT)
                    text = self.processor.text.decode(torch.cat(text_tokens),
                                                      skip_special_tokens=True)
                    # Send what is stable: a piece ending in a partial UTF-8 char waits.
                    if len(text) > len(shown) and text.startswith(shown) \
                            and not text.endswith("\ufffd"):
                        first.setdefault("text", time.monotonic() - started)
                        self._send("text", nodehost.RuntimeData.text(text[len(shown):]))
                        shown = text
                    continue
                audio_frames.append(token)
                modality.append(LFMModality.AUDIO_OUT)
                if int(token[0]) == AUDIO_EOS:
                    continue  # end of this audio segment: not a sound
                self.detok.add(token)
                if self.detok.pending >= p.chunk_frames:
                    self._send_audio(first, started)
            self._send_audio(first, started)
        finally:
            self.detok.stop()
        self._send("text", nodehost.RuntimeData.text("\n"))
        self.last_reply = {"text": shown, "text_tokens": len(text_tokens),
                           "audio_frames": len(audio_frames),
                           "first_text_s": first.get("text"), "first_audio_s": first.get("audio"),
                           "seconds": time.monotonic() - started}
        self.logger.info("reply: %d text tokens, %d audio frames in %.2f s",
                         len(text_tokens), len(audio_frames), self.last_reply["seconds"])
        if p.history_turns > 0:
            device = chat.device
            self.turns.append(_Turn(
                wave=wave, sample_rate=rate,
                text=(torch.cat(text_tokens)[None] if text_tokens
                      else torch.zeros((1, 0), dtype=torch.long, device=device)),
                audio=(torch.stack(audio_frames, 1) if audio_frames
                       else torch.zeros((self.codebooks, 0), dtype=torch.long, device=device)),
                modality=torch.tensor(modality, dtype=torch.long, device=device),
            ))
            del self.turns[:-p.history_turns]
        return None

    def _send_audio(self, first: dict[str, float], started: float) -> None:
        samples = self.detok.decode()
        if samples.size:
            first.setdefault("audio", time.monotonic() - started)
            self._send("audio", nodehost.RuntimeData.audio(samples, sample_rate=SAMPLE_RATE))

    def cleanup(self) -> None:
        self.turns = []
