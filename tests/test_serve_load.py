"""``nodehost serve`` under load and bad input, on the lightest pipeline (one Gain node):
20 clients at once each get exactly their own data back; clients that leave mid-stream, send
malformed or oversized frames, read too slowly, or come past ``--max-sessions`` each get a
clear outcome while a well-behaved client goes on; memory stays bounded; nothing is left."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import websockets
from serve_support import (
    MANIFESTS,
    ServeProcess,
    assert_nothing_left,
    audio_frames,
    close_input,
    gain_config,
    run_client,
    stop_cleanly,
    talk,
)

from nodehost import serve_protocol as proto
from nodehost.data import RuntimeData

MAX_FRAME = 65536


@pytest.fixture
def echo(tmp_path: Path) -> Iterator[ServeProcess]:
    server = ServeProcess(gain_config(tmp_path / "echo.json"), "--max-sessions", "4",
                          "--max-frame-bytes", str(MAX_FRAME), log_dir=tmp_path)
    yield server
    stop_cleanly(server)


def test_twenty_concurrent_clients_each_get_their_own_data(tmp_path: Path) -> None:
    server = ServeProcess(gain_config(tmp_path / "echo.json"), log_dir=tmp_path)
    try:
        signals = [np.random.default_rng(i).standard_normal(16000).astype(np.float32)
                   for i in range(20)]

        async def all_clients() -> list:
            return await asyncio.gather(*(
                talk(server.ws_url, [*audio_frames("in", s), close_input("in")])
                for s in signals))

        rss_before = server.rss()
        outcomes = asyncio.run(all_clients())
        rounds = [asyncio.run(all_clients()) for _ in range(2)]  # the same again, twice
        rss_after = server.rss()
        print(f"20 clients x 3 rounds: server RSS {rss_before / 2**20:.0f} → "
              f"{rss_after / 2**20:.0f} MiB")
        # what a session costs the server is given back when it ends: 60 sessions later the
        # server has not grown by anything like 60 sessions' worth (each moved 1.3 MB)
        assert rss_after - rss_before < 64 * 2**20
        for extra in rounds:
            assert all(o.events[-1]["event"] == "session_end" and o.events[-1]["ok"]
                       for o in extra)
        for i, (signal_, outcome) in enumerate(zip(signals, outcomes, strict=True)):
            assert outcome.events[-1]["event"] == "session_end", (i, outcome.kinds()[-3:])
            assert outcome.events[-1]["ok"], outcome.events[-1]
            assert np.array_equal(outcome.audio("out"), signal_ * 2), f"client {i}"
            assert len(outcome.outputs["out"]) == 50  # 16000 samples in chunks of 320
        sessions = [outcome.session_ids for outcome in (*outcomes, *rounds[0], *rounds[1])]
        assert all(len(s) == 1 for s in sessions)
        every = set().union(*sessions)
        assert len(every) == 60
        assert_nothing_left(every)
    finally:
        stop_cleanly(server)


async def steady_client(url: str, seconds: float) -> tuple[np.ndarray, object]:
    """A well-behaved client streaming at speaking pace while the others misbehave."""
    signal_ = np.random.default_rng(99).standard_normal(int(16000 * seconds)).astype(np.float32)
    frames = audio_frames("in", signal_)
    outcome: dict[str, object] = {}

    async def paced() -> None:
        async with websockets.connect(url, max_size=None) as ws:
            ready = json.loads(await ws.recv())
            while ready["event"] != "ready":
                ready = json.loads(await ws.recv())
            received: list[np.ndarray] = []

            async def reader() -> None:
                async for message in ws:
                    if isinstance(message, bytes):
                        _name, data = proto.decode(message)
                        assert data is not None
                        received.append(np.asarray(data.as_array()).copy())
                    elif json.loads(message)["event"] == "session_end":
                        outcome["end"] = json.loads(message)

            task = asyncio.create_task(reader())
            for frame in frames:
                await ws.send(frame)
                await asyncio.sleep(0.02)
            await ws.send(close_input("in"))
            await asyncio.wait_for(task, 120)
            outcome["audio"] = np.concatenate(received)

    await paced()
    return signal_, outcome


def test_bad_clients_get_clear_outcomes_while_a_good_one_goes_on(echo: ServeProcess) -> None:
    async def scenario() -> dict[str, object]:
        steady = asyncio.create_task(steady_client(echo.ws_url, 6.0))
        results: dict[str, object] = {}
        ok = audio_frames("in", np.zeros(320, np.float32))[0]

        # malformed: random bytes, a bad CRC, a frame for an unknown input, bad JSON
        bad_crc = bytearray(ok)
        bad_crc[8 + 20] ^= 0xFF
        for label, frame in (("garbage", os.urandom(300)), ("crc", bytes(bad_crc)),
                             ("unknown_input", audio_frames("nope", np.zeros(8, np.float32))[0]),
                             ("text", "hello?"), ("wrong_type", proto.encode(
                                 "in", RuntimeData.text("not audio")))):
            results[label] = await talk(echo.ws_url, [frame])
        # oversized: one byte over --max-frame-bytes
        results["oversized"] = await talk(echo.ws_url, [ok + bytes(MAX_FRAME + 1 - len(ok))])

        # a client that leaves in the middle of its stream
        async with websockets.connect(echo.ws_url) as ws:
            events = []
            while not events or events[-1]["event"] != "ready":
                events.append(json.loads(await ws.recv()))
            for frame in audio_frames("in", np.ones(3200, np.float32)):
                await ws.send(frame)
        results["left"] = {e["session"] for e in events if e.get("session")}

        results["steady"] = await steady
        return results

    results = asyncio.run(scenario())
    expected = {"garbage": (proto.CLOSE_INVALID_DATA, "malformed binary frame"),
                "crc": (proto.CLOSE_INVALID_DATA, "CRC mismatch"),
                "unknown_input": (proto.CLOSE_POLICY, "no session input 'nope'"),
                "text": (proto.CLOSE_UNSUPPORTED, "unknown control message"),
                "wrong_type": (proto.CLOSE_POLICY, "input 'in'"),
                "oversized": (proto.CLOSE_TOO_BIG, f"over the limit of {MAX_FRAME} bytes")}
    ids: set[str] = set()
    for label, (code, words) in expected.items():
        outcome = results[label]
        error = outcome.first("error")  # type: ignore[attr-defined]
        assert words in error["error"], (label, error)
        assert outcome.close_code == code, (label, outcome.close_code)  # type: ignore[attr-defined]
        ids |= outcome.session_ids  # type: ignore[attr-defined]
    ids |= results["left"]  # type: ignore[arg-type]
    signal_, steady = results["steady"]  # type: ignore[misc]
    assert steady["end"]["ok"]
    assert np.array_equal(steady["audio"], signal_ * 2)
    assert_nothing_left(ids)


def test_past_max_sessions_a_client_is_refused_at_once(echo: ServeProcess) -> None:
    async def scenario() -> tuple[list[dict], tuple[int, list, str]]:
        holders = []
        for _ in range(4):  # --max-sessions 4
            ws = await websockets.connect(echo.ws_url)
            while json.loads(await ws.recv())["event"] != "ready":
                pass
            holders.append(ws)
        refused = await talk(echo.ws_url)
        client = await asyncio.to_thread(
            run_client, echo.ws_url, "--wav", str(MANIFESTS / "data" / "hello.wav"))
        for ws in holders:
            await ws.close()
        return [refused.__dict__], client

    (refused,), (code, lines, stderr) = asyncio.run(scenario())
    assert [e["event"] for e in refused["events"]] == ["refused"]
    assert "--max-sessions 4" in refused["events"][0]["reason"]
    assert refused["close_code"] == proto.CLOSE_TRY_LATER
    assert code == 3, stderr
    assert "refused by the server" in stderr and "--max-sessions 4" in stderr, stderr
    assert lines and lines[0]["event"] == "refused"


def test_a_slow_reader_is_held_back_and_server_memory_stays_bounded(echo: ServeProcess
                                                                    ) -> None:
    """A client that sends as fast as it can and never reads: the server stops reading from
    it once the pipeline is full (backpressure) instead of buffering; its memory stays flat."""
    chunk = audio_frames("in", np.ones(8000, np.float32), chunk=8000)[0]  # 32 KB each
    rss_before = echo.rss()

    async def flood() -> tuple[int, set[str]]:
        sent = 0
        async with websockets.connect(echo.ws_url, max_queue=1, max_size=None) as ws:
            events = []
            while not events or events[-1]["event"] != "ready":
                events.append(json.loads(await ws.recv()))
            # stop reading from here on: a slow reader
            deadline = time.monotonic() + 20.0
            while time.monotonic() < deadline:
                try:
                    await asyncio.wait_for(ws.send(chunk), 2.0)
                except TimeoutError:
                    break  # held back: the server no longer takes our frames
                sent += len(chunk)
            held_back = time.monotonic() < deadline
            steady = await steady_client(echo.ws_url, 2.0)  # others are still served
            assert held_back, f"sent {sent} bytes in 20 s without being held back"
            ws.transport.abort()
        signal_, outcome = steady
        assert outcome["end"]["ok"] and np.array_equal(outcome["audio"], signal_ * 2)
        return sent, {e["session"] for e in events if e.get("session")}

    sent, ids = asyncio.run(flood())
    growth = echo.rss() - rss_before
    print(f"slow reader: held back after {sent / 2**20:.1f} MiB sent; server RSS "
          f"{rss_before / 2**20:.0f} → {(rss_before + growth) / 2**20:.0f} MiB")
    # what is in flight is bounded by the channel capacity and socket buffers, not by what
    # the client tried to send
    assert sent < 256 * 2**20, sent
    assert growth < 128 * 2**20, f"server grew by {growth / 2**20:.0f} MiB"
    assert_nothing_left(ids)


def test_many_blocked_clients_leaving_at_once_do_not_stall_the_server(tmp_path: Path) -> None:
    """Eight clients fill their pipelines without reading (eight sends blocked in the server)
    and hang up together; the server tears every session down and serves the next client
    (blocked calls run in threads of their own, not in a small pool they could exhaust)."""
    server = ServeProcess(gain_config(tmp_path / "echo.json"), log_dir=tmp_path)
    chunk = audio_frames("in", np.ones(8000, np.float32), chunk=8000)[0]
    try:
        async def blocked_client() -> set[str]:
            ws = await websockets.connect(server.ws_url, max_queue=1, max_size=None)
            events = []
            while not events or events[-1]["event"] != "ready":
                events.append(json.loads(await ws.recv()))
            while True:
                try:
                    await asyncio.wait_for(ws.send(chunk), 2.0)
                except TimeoutError:
                    break  # held back: the pipeline is full
            ws.transport.abort()
            return {e["session"] for e in events if e.get("session")}

        async def scenario() -> tuple[set[str], object]:
            ids = set().union(*await asyncio.gather(*(blocked_client() for _ in range(8))))
            return ids, await steady_client(server.ws_url, 1.0)

        ids, (signal_, outcome) = asyncio.run(asyncio.wait_for(scenario(), 300))
        assert outcome["end"]["ok"] and np.array_equal(outcome["audio"], signal_ * 2)  # type: ignore[index]
        assert len(ids) == 8
        assert_nothing_left(ids)
    finally:
        stop_cleanly(server)
