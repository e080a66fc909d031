"""Peak memory of every node of a pipeline, measured on a real run: what its cap must cover.

    python -m nodehost_speech.memory [CONFIG] [--env asr.CT2_USE_MKL=1] [--repeat 8]
                                     [--reply-chars 250] [--json]

Runs the config (default ``manifests/speech_to_speech.yaml``) through
``nodehost.Host().start_session`` with every node's memory limit lifted
(``resources: {memory_mb: null}``, so nothing fails before its peak), and samples each node
process's ``/proc/<pid>/status`` every 5 ms until the session ends: the peak of ``VmData``
(private memory, what the cap ``RLIMIT_DATA`` limits) and ``VmHWM`` (peak RSS, kept by the
kernel). ``--env NODE.NAME=VALUE`` sets a node's environment (e.g. ``asr.CT2_USE_MKL=1`` forces
CTranslate2's MKL path, ``=0`` forbids it), ``--repeat N`` plays the source file N times in a
row (a longer utterance for Whisper), ``--reply-chars N`` pads ReplyText's template so PiperTTS
speaks a sentence of about N characters. Every WavSink writes into a temp dir.

A host-side tool over the embedding API; it imports no model library.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from nodehost_speech.latency import default_config, load_config_dict, rewrite_files

SAMPLE_S = 0.005


def read_status(pid: int) -> dict[str, int]:
    """VmData and VmHWM of a process in bytes ({} once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return {line.split(":")[0]: int(line.split()[1]) << 10 for line in status
                    if line.startswith(("VmData:", "VmHWM:"))}
    except (OSError, ValueError, IndexError):
        return {}


def prepare(config: dict[str, Any], folder: Path, *, env: list[str], repeat: int,
            reply_chars: int) -> dict[str, Any]:
    import numpy as np

    def repeated(audio: Any, rate: int) -> Any:
        gap = np.zeros((int(0.3 * rate), audio.shape[1]), np.float32)
        return np.concatenate([audio, gap] * repeat)

    for item in env:
        target, _, value = item.partition("=")
        node_id, _, name = target.partition(".")
        node = next(n for n in config["nodes"] if n["id"] == node_id)
        node.setdefault("env", {})[name] = value
    rewrite_files(config, folder, repeated if repeat > 1 else None, f"x{repeat}")
    for node in config["nodes"]:
        node["resources"] = {"memory_mb": None}
        params = node.setdefault("params", {})
        if node["type"] == "ReplyText" and reply_chars:
            template = params.get("template", "You said: {text}")
            # no commas: Piper splits at clauses, and the worst case is one long clause
            filler = " and then after a long pause it said the very same words once more"
            while len(template) < reply_chars:
                template += filler
            params["template"] = template[:reply_chars].rstrip() + "."
    return config


def measure(config: dict[str, Any]) -> tuple[Any, dict[str, dict[str, Any]]]:
    import nodehost

    peaks: dict[str, dict[str, Any]] = {}
    with nodehost.Host() as host:
        session = host.start_session(config)
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                for node_id, proc in session.processes().items():
                    figures = read_status(proc.pid) if proc.pid else {}
                    row = peaks.setdefault(node_id, {"type": proc.node_type, "vm_data": 0,
                                                     "rss": 0})
                    row["vm_data"] = max(row["vm_data"], figures.get("VmData", 0))
                    row["rss"] = max(row["rss"], figures.get("VmHWM", 0))
                done.wait(SAMPLE_S)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            for event in session.events():
                if event["event"] == "log" and event["node_type"] in ("WhisperASR",
                                                                      "ReplyText"):
                    print(f"{event['node']:<12} {event['message']}", file=sys.stderr)
            result = session.wait()
        finally:
            done.set()
            sampler.join()
    for node in config["nodes"]:
        if node["id"] in peaks:
            peaks[node["id"]]["env"] = node.get("env", {})
    return result, peaks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nodehost_speech.memory",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="?", default=str(default_config()))
    parser.add_argument("--env", action="append", default=[], metavar="NODE.NAME=VALUE")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--reply-chars", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nodehost-memory-") as folder:
        config = prepare(load_config_dict(args.config), Path(folder), env=args.env,
                         repeat=args.repeat, reply_chars=args.reply_chars)
        result, peaks = measure(config)
    if args.json:
        print(json.dumps({"ok": result.ok, "reason": result.reason, "nodes": peaks}))
    else:
        print(f"{'NODE':<12} {'TYPE':<12} {'PEAK VmData':>12} {'PEAK RSS':>10}  ENV")
        for node_id, row in peaks.items():
            env = " ".join(f"{k}={v}" for k, v in row.get("env", {}).items())
            print(f"{node_id:<12} {row['type']:<12} {row['vm_data'] >> 20:>8} MiB "
                  f"{row['rss'] >> 20:>6} MiB  {env}")
        print(f"session ok: {result.ok} ({result.reason})")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
