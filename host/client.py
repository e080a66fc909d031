"""The reference client of ``nodehost serve``: stream a WAV file in, write the reply out.

    python -m nodehost.client ws://127.0.0.1:8765/ws --wav IN.wav [--realtime] [--out OUT.wav]
                              [--token T] [--input NAME] [--chunk-ms 20]

stdout carries one JSON object per line: the server's events (``ready``, ``status``,
``progress``, ``log``, ``session_end``, ...), one ``output`` line per received message (text
in full; audio as its length), and the client's own ``streaming`` / ``input_closed`` marks,
each with ``ts`` (this machine's clock, seconds since the epoch) when it was received or done.
Exit 0 when the session ended ok; 1 when it failed; 2 for bad arguments; 3 when the server
refused the client (e.g. ``--max-sessions`` reached, wrong token) or could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import wave
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nodehost import serve_protocol as proto
from nodehost.data import RuntimeData
from nodehost.wire import AudioMetadata

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3


class ClientError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def read_wav(path: str | Path) -> tuple[np.ndarray, int, int]:
    """``(samples, sample_rate, channels)`` of a PCM WAV: int16 as it is, other widths as
    float32 in [-1, 1]. Interleaved, shaped ``(frames * channels,)``."""
    try:
        with wave.open(str(path), "rb") as wav:
            width, rate, channels = wav.getsampwidth(), wav.getframerate(), wav.getnchannels()
            raw = wav.readframes(wav.getnframes())
    except (OSError, wave.Error, EOFError) as exc:
        raise ClientError(f"{path}: not a readable PCM WAV file ({exc})", EXIT_USAGE) from exc
    if width == 2:
        return np.frombuffer(raw, "<i2"), rate, channels
    if width == 1:
        return ((np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128), rate, channels
    if width in (3, 4):
        if width == 3:
            b = np.frombuffer(raw, np.uint8).reshape(-1, 3)
            raw = np.pad(b, ((0, 0), (1, 0))).tobytes()  # to 32-bit, little-endian
        return (np.frombuffer(raw, "<i4") / 2.0**31).astype(np.float32), rate, channels
    raise ClientError(f"{path}: {width * 8}-bit samples are not supported", EXIT_USAGE)


def write_wav(path: str | Path, chunks: list[np.ndarray], rate: int, channels: int) -> None:
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if audio.dtype != np.int16:
        audio = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(audio.tobytes())


def chunks(samples: np.ndarray, rate: int, channels: int, chunk_ms: float
           ) -> Iterator[RuntimeData]:
    step = max(1, round(rate * chunk_ms / 1000)) * channels
    for start in range(0, len(samples), step):
        yield RuntimeData.audio(np.ascontiguousarray(samples[start:start + step]),
                                sample_rate=rate, channels=channels)


def emit(record: dict[str, Any]) -> None:
    record.setdefault("ts", time.time())
    print(json.dumps(record, default=str), flush=True)


def http_to_ws(url: str) -> str:
    if url.startswith(("http://", "https://")):
        url = "ws" + url[4:]
    if not url.startswith(("ws://", "wss://")):
        raise ClientError(f"{url}: expected a ws://, wss:// or http:// URL", EXIT_USAGE)
    scheme, rest = url.split("://", 1)
    if "/" not in rest:
        rest += "/ws"
    elif rest.endswith("/"):
        rest += "ws"
    return f"{scheme}://{rest}"


class Client:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.audio: dict[str, list[np.ndarray]] = {}
        self.audio_format: dict[str, tuple[int, int]] = {}
        self.result: dict[str, Any] | None = None

    async def run(self) -> int:
        import websockets
        from websockets.exceptions import ConnectionClosed, InvalidStatus

        samples, rate, channels = read_wav(self.args.wav)
        headers = {"Authorization": f"Bearer {self.args.token}"} if self.args.token else {}
        url = http_to_ws(self.args.url)
        try:
            ws = await websockets.connect(url, additional_headers=headers, max_size=None,
                                          open_timeout=self.args.timeout)
        except InvalidStatus as exc:
            body = exc.response.body.decode(errors="replace").strip()
            raise ClientError(f"refused by {url}: HTTP {exc.response.status_code}"
                              f"{': ' + body if body else ''}", EXIT_REFUSED) from exc
        except (OSError, TimeoutError, websockets.InvalidURI, websockets.InvalidHandshake) \
                as exc:
            raise ClientError(f"cannot connect to {url}: {exc}", EXIT_REFUSED) from exc
        async with ws:
            sender: asyncio.Task[None] | None = None
            try:
                async for message in ws:
                    if isinstance(message, bytes):
                        self.on_frame(message)
                        continue
                    event = json.loads(message)
                    emit(event)
                    kind = event.get("event")
                    if kind == proto.READY:
                        name = self.pick_input(event["inputs"])
                        sender = asyncio.create_task(
                            self.stream(ws, name, samples, rate, channels))
                    elif kind == proto.REFUSED:
                        raise ClientError(f"refused by the server: {event['reason']}",
                                          EXIT_REFUSED)
                    elif kind == proto.ERROR:
                        raise ClientError(f"the server reported an error: {event['error']}",
                                          EXIT_FAILED)
                    elif kind == proto.SESSION_END:
                        self.result = event
            except ConnectionClosed:
                pass
            finally:
                if sender is not None:
                    sender.cancel()
                    await asyncio.gather(sender, return_exceptions=True)
        self.write_out()
        if self.result is None:
            raise ClientError(f"connection closed before the session ended "
                              f"(code {ws.close_code}: {ws.close_reason or 'no reason'})",
                              EXIT_FAILED)
        if not self.result.get("ok"):
            raise ClientError(f"session failed: {self.result.get('reason')}", EXIT_FAILED)
        return EXIT_OK

    def pick_input(self, inputs: dict[str, Any]) -> str:
        if self.args.input:
            if self.args.input not in inputs:
                raise ClientError(f"--input {self.args.input}: the session's inputs are "
                                  f"{', '.join(inputs) or 'none'}", EXIT_USAGE)
            return str(self.args.input)
        audio = [name for name, spec in inputs.items() if spec.get("data_type") == "audio"]
        if not audio:
            raise ClientError(f"the session has no audio input (inputs: "
                              f"{', '.join(inputs) or 'none'})", EXIT_USAGE)
        return audio[0]

    async def stream(self, ws: Any, name: str, samples: np.ndarray, rate: int,
                     channels: int) -> None:
        start = time.monotonic()
        sent = 0.0
        emit({"event": "streaming", "input": name, "sample_rate": rate, "channels": channels,
              "realtime": self.args.realtime})
        for seq, data in enumerate(chunks(samples, rate, channels, self.args.chunk_ms), 1):
            if self.args.realtime:
                await asyncio.sleep(max(0.0, start + sent - time.monotonic()))
            await ws.send(proto.encode(name, data, seq))
            sent += data.payload_size / samples.itemsize / channels / rate
        await ws.send(json.dumps({"control": proto.CLOSE, "input": name}))
        emit({"event": "input_closed", "input": name, "seconds": round(sent, 6)})

    def on_frame(self, frame: bytes) -> None:
        name, data = proto.decode(frame)
        if data is None:
            emit({"event": "output", "output": name, "end_of_stream": True})
            return
        record: dict[str, Any] = {"event": "output", "output": name,
                                  "data_type": data.data_type}
        if data.data_type == "text":
            record["text"] = data.as_text()
        elif data.data_type == "audio":
            meta = data.metadata
            assert isinstance(meta, AudioMetadata)
            record.update(sample_rate=meta.sample_rate, channels=meta.channels,
                          frames=meta.frames)
            self.audio.setdefault(name, []).append(np.array(data.as_array()).reshape(-1))
            self.audio_format.setdefault(name, (meta.sample_rate, meta.channels))
        else:
            record["bytes"] = data.payload_size
        emit(record)

    def write_out(self) -> None:
        if not self.args.out:
            return
        name = self.args.output or next(iter(self.audio), None)
        if name is None:
            emit({"event": "no_audio", "out": self.args.out})
            return
        rate, channels = self.audio_format[name]
        write_wav(self.args.out, self.audio.get(name, []), rate, channels)
        emit({"event": "wrote", "out": self.args.out, "output": name,
              "seconds": round(sum(len(c) for c in self.audio[name]) / rate / channels, 6)})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nodehost.client",
                                description="Stream a WAV file to `nodehost serve` and write "
                                            "what comes back.")
    p.add_argument("url", help="the server, e.g. ws://127.0.0.1:8765/ws (or http://host:port)")
    p.add_argument("--wav", required=True, help="PCM WAV file to stream into the session")
    p.add_argument("--realtime", action="store_true", help="send at playback speed")
    p.add_argument("--out", help="write the received audio here (WAV, 16-bit)")
    p.add_argument("--token", help="the server's --token")
    p.add_argument("--input", help="session input to feed (default: its first audio input)")
    p.add_argument("--output", help="audio output to write to --out (default: the first one)")
    p.add_argument("--chunk-ms", type=float, default=20.0, help="chunk length (default 20)")
    p.add_argument("--timeout", type=float, default=30.0, help="connect timeout, seconds")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.chunk_ms <= 0:
        print("error: --chunk-ms must be > 0", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(Client(args).run())
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
