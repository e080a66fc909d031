"""End of utterance → first reply audio, per stage, measured from a session's own events.

    python -m nodehost_speech.latency [CONFIG] [--runs 5] [--json]

Runs the speech-to-speech config (default ``manifests/speech_to_speech.yaml``, whose
``WavSource`` plays the sample at speaking speed, like a microphone) through
``nodehost.Host().start_session`` and reads the timestamps (``ts``) of the nodes' log events:

- ``mic`` "streaming ...": the stream starts; with realtime pacing the sample at position
  ``t`` leaves at ``start + t``;
- ``vad`` "segment N: speech A–B s": ``B`` is where the last speech window ended, so the
  **end of the utterance** is ``start + B``; the event itself is when the segment was sent;
- ``utterances`` "utterance: ...", ``asr`` "heard: ...", ``reply`` "said: ...",
  ``tts`` "first audio after ...", ``speaker`` "first audio in ...": when each stage sent
  (or, for the sink, received) its first result for that utterance.

Node ids are found by node type, so any config with these node types works. Nothing here runs
in a node: this is a host-side tool over the embedding API (it imports no model library).

``--tail-silence S`` (default 3) appends S seconds of silence to the source's file (a copy in
a temp dir), so the "microphone" keeps streaming while the reply is made, as a live one
would; without it the source, resampler and VAD exit right after the utterance, and their
teardown competes with Whisper for the CPU. The reply WAV goes to the temp dir as well.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

STAGES = [  # (name, node type, log message prefix)
    ("vad", "SileroVAD", "segment "),
    ("buffer", "AudioBuffer", "utterance: "),
    ("asr", "WhisperASR", "heard: "),
    ("reply", "ReplyText", "said: "),
    ("tts", "PiperTTS", "first audio after "),
    ("sink", "WavSink", "first audio in"),
]
LABELS = {
    "vad": "end of speech → VAD segment out (silence it waits for)",
    "buffer": "VAD → AudioBuffer utterance out",
    "asr": "AudioBuffer → WhisperASR text out",
    "reply": "WhisperASR → ReplyText out",
    "tts": "ReplyText → PiperTTS first audio out",
    "sink": "PiperTTS → WavSink first audio in",
    "total": "end of utterance → first reply audio at the sink",
}
SPEECH_END = re.compile(r"speech [\d.]+[–-]([\d.]+) s")


def default_config() -> Path:
    return Path.cwd() / "manifests" / "speech_to_speech.yaml"


def load_config_dict(config: str | Path) -> dict[str, Any]:
    """The config file as a dict, its relative ``path`` params and grants made absolute
    against the file's folder (as ``nodehost run`` resolves them)."""
    import yaml

    base = Path(config).resolve().parent
    data: dict[str, Any] = yaml.safe_load(Path(config).read_text())

    def absolute(value: str) -> str:
        return value if value.startswith("/") else str(base / value)

    for node in data["nodes"]:
        params = node.get("params") or {}
        if isinstance(params.get("path"), str):
            params["path"] = absolute(params["path"])
        grants = node.get("sandbox") or {}
        for key in ("fs_read", "fs_write"):
            if key in grants:
                grants[key] = [absolute(p) for p in grants[key]]
    return data


def with_live_tail(config: dict[str, Any], folder: Path, seconds: float) -> dict[str, Any]:
    """``config`` with the WavSource file padded by ``seconds`` of silence and every WavSink
    writing into ``folder``."""
    import numpy as np

    def pad(audio: Any, rate: int) -> Any:
        return np.concatenate([audio, np.zeros((int(seconds * rate), audio.shape[1]),
                                               np.float32)])

    return rewrite_files(config, folder, pad, "live")


def rewrite_files(config: dict[str, Any], folder: Path,
                  edit: Callable[[Any, int], Any] | None, tag: str) -> dict[str, Any]:
    """``config`` with every WavSource's file replaced by ``edit(audio, rate)`` of it (float32
    ``(frames, channels)``; None: left as it is) and every WavSink writing into ``folder``,
    each granted its new file."""
    import soundfile as sf

    for node in config["nodes"]:
        params = node.setdefault("params", {})
        grants = node.setdefault("sandbox", {})
        if node["type"] == "WavSource" and edit is not None:
            audio, rate = sf.read(params["path"], dtype="float32", always_2d=True)
            path = folder / f"{node['id']}_{tag}.wav"
            sf.write(path, edit(audio, rate), rate, subtype="FLOAT")
            params["path"] = str(path)
            grants["fs_read"] = [str(path)]
        elif node["type"] == "WavSink":
            path = folder / f"{node['id']}.wav"
            params["path"] = str(path)
            grants["fs_write"] = [str(path)]
    return config


def stage_times(events: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds per stage (and ``total``) of the first utterance in one session's events."""
    start: float | None = None
    speech_end: float | None = None
    at: dict[str, float] = {}
    for event in events:
        if event["event"] != "log":
            continue
        node_type, message, ts = event["node_type"], event.get("message", ""), event["ts"]
        if node_type == "WavSource" and message.startswith("streaming ") and start is None:
            start = ts
            if "playback speed" not in message:
                print("warning: the source is not paced (realtime: false); the end of the "
                      "utterance is then not when it was said", file=sys.stderr)
        for stage, stage_type, prefix in STAGES:
            if node_type == stage_type and message.startswith(prefix) and stage not in at:
                at[stage] = ts
                if stage == "vad":
                    match = SPEECH_END.search(message)
                    speech_end = float(match.group(1)) if match else None
    missing = [s for s, _t, _p in STAGES if s not in at]
    if start is None or speech_end is None or missing:
        raise RuntimeError(f"events incomplete (stream start: {start is not None}, speech "
                           f"end: {speech_end is not None}, missing stages: {missing})")
    times: dict[str, float] = {}
    previous = start + speech_end
    for stage, _type, _prefix in STAGES:
        times[stage] = at[stage] - previous
        previous = at[stage]
    times["total"] = at["sink"] - (start + speech_end)
    return times


def run_once(config: str | Path | dict[str, Any]) -> tuple[dict[str, float],
                                                           list[dict[str, Any]]]:
    import nodehost

    with nodehost.Host() as host:
        session = host.start_session(config)
        events = list(session.events())
        result = session.wait()
    if not result.ok:
        raise RuntimeError(f"session failed: {result.reason}")
    return stage_times(events), events


def table(runs: list[dict[str, float]], labels: dict[str, str] | None = None,
          heading: str = "stage") -> str:
    """Median, min and max in ms of each measure ``labels`` names, as a Markdown table."""
    lines = [f"| {heading} | median (ms) | min | max |", "| --- | ---: | ---: | ---: |"]
    for key, label in (LABELS if labels is None else labels).items():
        values = [1000 * r[key] for r in runs]
        lines.append(f"| {label} | {statistics.median(values):.0f} | {min(values):.0f} | "
                     f"{max(values):.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nodehost_speech.latency",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", default=str(default_config()))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tail-silence", type=float, default=3.0, metavar="S",
                        help="seconds of silence appended to the input (0: the file as is)")
    parser.add_argument("--json", action="store_true", help="one JSON object per run")
    args = parser.parse_args(argv)
    runs: list[dict[str, float]] = []
    folder = Path(tempfile.mkdtemp(prefix="nodehost-latency-"))
    os.chmod(folder, 0o755)  # node processes read and write here under their own sandbox
    config: str | dict[str, Any] = args.config
    if args.tail_silence > 0:
        config = with_live_tail(load_config_dict(args.config), folder, args.tail_silence)
    for i in range(args.runs):
        times, _events = run_once(config)
        runs.append(times)
        if args.json:
            print(json.dumps({"run": i + 1, **{k: round(v, 6) for k, v in times.items()}}),
                  flush=True)
        else:
            print(f"run {i + 1}: end of utterance → first reply audio "
                  f"{1000 * times['total']:.0f} ms", file=sys.stderr, flush=True)
    if not args.json:
        print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
