"""End of utterance → first reply audio at a client of ``nodehost serve``, and connect → Ready.

    nodehost serve manifests/voice_chat.yaml [--warm 1] &
    python -m nodehost_speech.serve_latency ws://127.0.0.1:8765/ws [--runs 5] [--json]
                                            [--wait-warm]

Each run is one reference client (``python -m nodehost.client --realtime``) streaming the
sample utterance (``manifests/data/hello.wav``) followed by ``--tail-silence`` seconds of
silence, at speaking speed, like a microphone. From its JSON lines (all stamped with this
machine's clock):

- the client's ``streaming`` line is when the stream started; the sample at position ``t``
  leaves at ``start + t``;
- the SileroVAD's log event "segment N: speech A–B s" gives ``B``, so the **end of the
  utterance** is ``start + B`` (as in ``nodehost_speech.latency``, which measures the same
  pipeline under ``nodehost run``);
- the first ``output`` line of an audio output is the **first reply audio at the client**,
  after the server framed it and the WebSocket carried it;
- the ``ready`` line carries ``connect_to_ready_s``: from the client's connection to the
  moment its session was Ready (model loads included, unless the session was warm).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import wave
from pathlib import Path
from typing import Any

from nodehost_speech.latency import SPEECH_END, table

LABELS = {
    "connect_to_ready": "client connects → its session is Ready",
    "total": "end of utterance → first reply audio at the client",
}


def padded_sample(sample: Path, seconds: float, folder: Path) -> Path:
    with wave.open(str(sample)) as wav:
        params = wav.getparams()
        frames = wav.readframes(params.nframes)
    out = folder / "utterance_then_silence.wav"
    with wave.open(str(out), "wb") as wav:
        wav.setparams(params)
        wav.writeframes(frames + bytes(int(seconds * params.framerate) * params.sampwidth
                                       * params.nchannels))
    return out


def client_times(lines: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds for one client run, from the reference client's JSON lines."""
    start = next(line["ts"] for line in lines if line["event"] == "streaming")
    ready = next(line for line in lines if line["event"] == "ready")
    segment = next(line for line in lines if line["event"] == "log"
                   and line.get("node_type") == "SileroVAD"
                   and SPEECH_END.search(line.get("message", "")))
    match = SPEECH_END.search(segment["message"])
    assert match is not None
    speech_end = start + float(match.group(1))
    first_audio = next(line["ts"] for line in lines if line["event"] == "output"
                       and line.get("data_type") == "audio")
    return {"connect_to_ready": float(ready["connect_to_ready_s"]),
            "total": first_audio - speech_end, "warm": float(bool(ready.get("warm")))}


def run_client(url: str, wav: Path, token: str | None) -> list[dict[str, Any]]:
    command = [sys.executable, "-m", "nodehost.client", url, "--wav", str(wav), "--realtime"]
    if token:
        command += ["--token", token]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"client failed ({done.returncode}): {done.stderr.strip()}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def wait_warm(url: str, timeout: float = 300.0) -> None:
    """Until the server's pool holds a Ready session (its /health; polled, no event)."""
    import time
    import urllib.request

    health = url.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
    health = health.rsplit("/ws", 1)[0] + "/health"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(health, timeout=30) as response:
            if json.load(response)["idle_ready"] >= 1:
                return
        time.sleep(0.2)
    raise RuntimeError(f"no warm session at {health} after {timeout} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nodehost_speech.serve_latency",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the server's WebSocket, e.g. ws://127.0.0.1:8765/ws")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sample", default=str(Path.cwd() / "manifests" / "data" / "hello.wav"))
    parser.add_argument("--tail-silence", type=float, default=3.0, metavar="S")
    parser.add_argument("--token")
    parser.add_argument("--wait-warm", action="store_true",
                        help="before each run, wait until the server (--warm N) has a Ready "
                             "session in its pool")
    parser.add_argument("--json", action="store_true", help="one JSON object per run")
    args = parser.parse_args(argv)
    wav = padded_sample(Path(args.sample), args.tail_silence, Path(tempfile.mkdtemp()))
    runs = []
    for i in range(args.runs):
        if args.wait_warm:
            wait_warm(args.url)
        times = client_times(run_client(args.url, wav, args.token))
        runs.append(times)
        if args.json:
            print(json.dumps({"run": i + 1, **{k: round(v, 6) for k, v in times.items()}}),
                  flush=True)
        else:
            print(f"run {i + 1}: connect → Ready {1000 * times['connect_to_ready']:.0f} ms"
                  f"{' (warm)' if times['warm'] else ''}, end of utterance → first reply "
                  f"audio {1000 * times['total']:.0f} ms", file=sys.stderr, flush=True)
    if not args.json:
        print(table(runs, LABELS, "measure"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
