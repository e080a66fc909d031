"""Open sessions: the application feeds session inputs and reads session outputs.

Real node processes from the installed plugins (nodehost-audio's Resample and Gain,
nodehost-speech's ReplyText, nodehost-testnodes' Forward and Faulty) and the real iceoryx2
data plane; the host's ends are ordinary channel ends, so what is checked here is what nodes
get from each other: order, exact bytes, backpressure, end of stream, crash handling.
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soxr
from conftest import ManifestsPlugin, probe_chain
from reliability.support import leftovers, node_records, shm_files

from nodehost import RuntimeData, SendTimeout, SessionEnded, SessionFailed
from nodehost.config import load_config, validate_pipeline
from nodehost.discovery import Registry, discover
from nodehost.errors import ConfigError, SessionError
from nodehost.session import Host, Session
from nodehost.wire import InvalidRuntimeData

TIMEOUT = 120.0  # anti-hang only
RATE = 48_000


def chunks(count: int, frames: int = 480, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-0.5, 0.5, frames).astype(np.float32) for _ in range(count)]


def gain_chain(name: str = "open") -> dict[str, Any]:
    """mic → g1 (×2) → g2 (×0.5) → out: exact in float32, so the bytes must come back."""
    return {"name": name,
            "inputs": {"mic": "g1.in"}, "outputs": {"out": "g2.out"},
            "nodes": [{"id": "g1", "type": "Gain", "params": {"gain": 2.0}},
                      {"id": "g2", "type": "Gain", "params": {"gain": 0.5}}],
            "connections": [{"from": "g1", "to": "g2"}]}


def read_all(session: Session) -> list[tuple[str, np.ndarray]]:
    return [(name, np.array(data.as_array())) for name, data in session.outputs()]


def in_thread(target: Any, *args: Any) -> tuple[threading.Thread, list[Any]]:
    """Run ``target`` in a thread; the list gets its result, or the exception it raised."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(target(*args))
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def stream(session: Session, name: str, arrays: list[np.ndarray]) -> list[tuple[str, Any]]:
    """Send ``arrays`` as 48 kHz audio to input ``name`` and close it, while another thread
    reads every output: what it read."""
    reader, got = in_thread(read_all, session)
    for array in arrays:
        session.send(name, RuntimeData.audio(array, sample_rate=RATE), timeout=TIMEOUT)
    session.close_input(name)
    reader.join(TIMEOUT)
    (received,) = got
    assert isinstance(received, list), received
    return received


@pytest.fixture(scope="module")
def registry() -> Registry:
    return discover()


# ------------------------------------------------------------------------- data flow

def test_audio_chunks_come_back_in_order_and_bit_exact(host: Host) -> None:
    sent = chunks(200)
    session = host.start_session(gain_chain())
    received = stream(session, "mic", sent)
    assert [name for name, _ in received] == ["out"] * len(sent)
    for (_, back), chunk in zip(received, sent, strict=True):
        assert back.tobytes() == chunk.tobytes()
    result = session.wait(TIMEOUT)
    assert result.ok, result.reason


def test_resampled_stream_matches_soxr_run_directly(host: Host) -> None:
    """Session inputs may be a pipeline's only sources: mic → Resample → Gain → out."""
    config = {"name": "resample", "inputs": {"mic": "rs.in"}, "outputs": {"out": "g.out"},
              "nodes": [{"id": "rs", "type": "Resample", "params": {"sample_rate": 16_000}},
                        {"id": "g", "type": "Gain", "params": {"gain": 1.0}}],
              "connections": [{"from": "rs", "to": "g"}]}
    sent = chunks(100, frames=960, seed=3)
    session = host.start_session(config)
    received = stream(session, "mic", sent)
    resampler = soxr.ResampleStream(RATE, 16_000, 1, dtype="float32", quality="HQ")
    expected = np.concatenate([resampler.resample_chunk(c.reshape(-1, 1)).reshape(-1)
                               for c in sent]
                              + [resampler.resample_chunk(np.zeros((0, 1), np.float32),
                                                       last=True).reshape(-1)])
    back = np.concatenate([a.reshape(-1) for _, a in received])
    assert back.tobytes() == expected.tobytes()
    assert session.wait(TIMEOUT).ok


def test_text_through_a_session_and_the_sequential_form(host: Host) -> None:
    """send, close_input, then outputs() — the short-stream form the docs show."""
    config = {"name": "text", "inputs": {"heard": "reply.in"}, "outputs": {"said": "reply.out"},
              "nodes": [{"id": "reply", "type": "ReplyText"}]}
    session = host.start_session(config)
    words = ["hello", "wörld ✓", "third"]
    for word in words:
        session.send("heard", RuntimeData.text(word, language="en"), timeout=TIMEOUT)
    session.close_input("heard")
    texts = [(name, data.as_text()) for name, data in session.outputs()]
    assert texts == [("said", f"You said: {w}") for w in words]
    assert session.wait(TIMEOUT).ok


def test_fan_out_of_one_input_and_two_outputs(host: Host) -> None:
    config = {"name": "fan", "inputs": {"mic": ["a.in", "b.in"]},
              "outputs": {"double": "a.out", "half": "b.out"},
              "nodes": [{"id": "a", "type": "Gain", "params": {"gain": 2.0}},
                        {"id": "b", "type": "Gain", "params": {"gain": 0.5}}]}
    sent = chunks(60, seed=5)
    session = host.start_session(config)
    received = stream(session, "mic", sent)
    by_name: dict[str, list[np.ndarray]] = {"double": [], "half": []}
    for name, array in received:
        by_name[name].append(array)
    assert [a.tobytes() for a in by_name["double"]] == [(c * 2).tobytes() for c in sent]
    assert [a.tobytes() for a in by_name["half"]] == [(c * 0.5).tobytes() for c in sent]
    assert session.wait(TIMEOUT).ok


def test_end_of_stream_ends_outputs_and_closed_inputs_refuse_data(host: Host) -> None:
    session = host.start_session(gain_chain("eos"))
    session.close_input("mic")
    session.close_input("mic")  # idempotent
    assert read_all(session) == []
    with pytest.raises(SessionError, match="was closed"):
        session.send("mic", RuntimeData.audio(chunks(1)[0], sample_rate=RATE))
    result = session.wait(TIMEOUT)
    assert result.ok
    with pytest.raises(SessionEnded, match="ended") as info:
        session.send("mic", RuntimeData.audio(chunks(1)[0], sample_rate=RATE))
    assert info.value.result == result
    assert not isinstance(info.value, SessionFailed)


def test_unknown_names_and_unaccepted_data_are_refused(host: Host) -> None:
    config = {"name": "checks", "inputs": {"speech": "tts.in"}, "outputs": {"wav": "tts.out"},
              "nodes": [{"id": "tts", "type": "PiperTTS"}]}
    session = host.start_session(config)
    try:
        with pytest.raises(SessionError, match=r"no input 'mic' \(its inputs: speech\)"):
            session.send("mic", RuntimeData.text("hi", language="en"))
        with pytest.raises(InvalidRuntimeData, match="takes text, got audio"):
            session.send("speech", RuntimeData.audio(chunks(1)[0], sample_rate=RATE))
        with pytest.raises(InvalidRuntimeData, match="takes language en"):
            session.send("speech", RuntimeData.text("hallo", language="de"))
        with pytest.raises(TypeError, match="takes RuntimeData"):
            session.send("speech", "plain str")  # type: ignore[arg-type]
    finally:
        session.stop()


def test_a_sealed_pipeline_has_no_ends(host: Host, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    session = host.start_session(probe_chain(out, count=3))
    with pytest.raises(SessionError, match="no session inputs or outputs"):
        session.send("mic", RuntimeData.text("x"))
    assert session.wait(TIMEOUT).ok


# ------------------------------------------------------------------------- backpressure

def test_a_consumer_that_does_not_read_blocks_send_then_everything_arrives(
        host: Host) -> None:
    session = host.start_session(gain_chain("bp"))
    session.wait_ready(TIMEOUT)
    sent = chunks(400, frames=256, seed=7)
    accepted = 0
    with pytest.raises(SendTimeout, match="input 'mic' stayed full") as info:
        for chunk in sent:
            session.send("mic", RuntimeData.audio(chunk, sample_rate=RATE), timeout=1.0)
            accepted += 1
    assert isinstance(info.value, TimeoutError)
    # bounded by the channels' depth: two hops of DEPTH (32) messages plus what the nodes hold
    assert 16 <= accepted < 100, accepted
    reader, got = in_thread(read_all, session)
    for chunk in sent[accepted:]:
        session.send("mic", RuntimeData.audio(chunk, sample_rate=RATE), timeout=TIMEOUT)
    session.close_input("mic")
    reader.join(TIMEOUT)
    (received,) = got
    # nothing lost or duplicated: the timed-out send had not sent its message
    assert [a.tobytes() for _, a in received] == [c.tobytes() for c in sent]
    assert session.wait(TIMEOUT).ok


def test_send_before_ready_waits_for_the_nodes(host: Host) -> None:
    config = {"name": "early", "inputs": {"x": "slow.in"}, "outputs": {"y": "slow.out"},
              "nodes": [{"id": "slow", "type": "SlowInit", "params": {"init_s": 1.0}}]}
    session = host.start_session(config)
    assert not session.ready
    sent = [np.full(8, i, np.int32) for i in range(40)]  # more than the channel holds
    reader, got = in_thread(lambda: [np.array(d.as_array()) for _, d in session.outputs()])
    for array in sent:
        session.send("x", RuntimeData.tensor(array), timeout=TIMEOUT)
    session.wait_ready(TIMEOUT)
    assert session.ready
    session.close_input("x")
    reader.join(TIMEOUT)
    assert [a.tolist() for a in got[0]] == [a.tolist() for a in sent]
    assert session.wait(TIMEOUT).ok
    assert not session.ready


# ------------------------------------------------------------------------- failures

def test_a_crashing_node_ends_outputs_with_the_failure(host: Host) -> None:
    config = {"name": "crash", "inputs": {"x": "f.in"}, "outputs": {"y": "f.out"},
              "nodes": [{"id": "f", "type": "Faulty", "params": {"mode": "sigkill",
                                                                 "after": 5}}]}
    session = host.start_session(config)
    reader, got = in_thread(read_all, session)
    with pytest.raises(SessionFailed) as sending:  # the node dies with messages still coming
        for i in range(10_000):
            session.send("x", RuntimeData.tensor(np.full(4, i)), timeout=TIMEOUT)
    reader.join(TIMEOUT)
    (failure,) = got
    assert isinstance(failure, SessionFailed)
    assert failure.result.failed_node == "f"
    assert "SIGKILL" in failure.result.reason
    assert sending.value.result == failure.result == session.wait(TIMEOUT)


def test_a_node_failing_in_initialize_releases_a_blocked_send_and_wait_ready(
        host: Host) -> None:
    config = {"name": "initfail", "inputs": {"x": "f.in"}, "outputs": {"y": "f.out"},
              "nodes": [{"id": "f", "type": "Faulty", "params": {"mode": "init_exception"}}]}
    session = host.start_session(config)
    with pytest.raises(SessionFailed, match="injected failure in initialize"):
        for i in range(10_000):  # fills the channel, then blocks until the session ends
            session.send("x", RuntimeData.tensor(np.full(4, i)))
    with pytest.raises(SessionFailed, match="before it was Ready"):
        session.wait_ready(TIMEOUT)
    with pytest.raises(SessionFailed):
        read_all(session)


def test_stop_ends_outputs_quietly_and_releases_a_blocked_sender(host: Host) -> None:
    session = host.start_session(gain_chain("stop"))
    session.wait_ready(TIMEOUT)

    def fill() -> None:
        for chunk in chunks(1000):
            session.send("mic", RuntimeData.audio(chunk, sample_rate=RATE))

    sender, sent = in_thread(fill)
    session.stop()
    sender.join(TIMEOUT)
    assert isinstance(sent[0], SessionEnded) and not isinstance(sent[0], SessionFailed)
    read_all(session)  # ends without raising: a stop is not a failure
    with pytest.raises(SessionEnded):
        session.close_input("mic")


# ------------------------------------------------------------------------- concurrency

def test_two_senders_and_a_reader_on_their_own_threads(host: Host) -> None:
    config = {"name": "threads", "inputs": {"left": "a.in", "right": "b.in"},
              "outputs": {"a": "a.out", "b": "b.out"},
              "nodes": [{"id": "a", "type": "Gain", "params": {"gain": 1.0}},
                        {"id": "b", "type": "Gain", "params": {"gain": 1.0}}]}
    left, right = chunks(150, seed=1), chunks(150, seed=2)
    session = host.start_session(config)

    def feed(name: str, data: list[np.ndarray]) -> None:
        for chunk in data:
            session.send(name, RuntimeData.audio(chunk, sample_rate=RATE), timeout=TIMEOUT)
        session.close_input(name)

    reader, got = in_thread(read_all, session)
    senders = [in_thread(feed, "left", left)[0], in_thread(feed, "right", right)[0]]
    for thread in [*senders, reader]:
        thread.join(TIMEOUT)
    (received,) = got
    assert [a.tobytes() for n, a in received if n == "a"] == [c.tobytes() for c in left]
    assert [a.tobytes() for n, a in received if n == "b"] == [c.tobytes() for c in right]
    assert session.wait(TIMEOUT).ok


def test_asyncio_forms_keep_the_event_loop_free(host: Host) -> None:
    sent = chunks(300, frames=256, seed=9)
    session = host.start_session(gain_chain("aio"))

    async def main() -> tuple[list[bytes], int]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:  # runs only while neither form blocks the loop
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.001)

        async def feed() -> None:
            for chunk in sent:
                await session.asend("mic", RuntimeData.audio(chunk, sample_rate=RATE))
            await session.aclose_input("mic")

        async def collect() -> list[bytes]:
            return [np.array(d.as_array()).tobytes() async for _, d in session.aoutputs()]

        tick_task = asyncio.create_task(ticker())
        # a cancelled wait for output loses nothing: the waiting thread takes no message
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(collect(), timeout=0.2)
        _, received = await asyncio.gather(feed(), collect())
        done.set()
        await tick_task
        return received, ticks

    received, ticks = asyncio.run(main())
    assert received == [c.tobytes() for c in sent]
    assert ticks > 10
    assert session.wait(TIMEOUT).ok


def test_many_asyncio_sessions_in_one_loop_under_backpressure(host: Host) -> None:
    """More blocked sends and output waits at once than the loop's default executor has
    workers: each wait has a thread of its own, so every session finishes."""
    config = {"name": "many", "inputs": {"mic": "g.in"}, "outputs": {"out": "g.out"},
              "nodes": [{"id": "g", "type": "Gain", "params": {"gain": 1.0}}]}
    sessions = [host.start_session(config) for _ in range(6)]
    sent = [chunks(80, frames=128, seed=20 + i) for i in range(len(sessions))]

    async def one(session: Session, data: list[np.ndarray]) -> list[bytes]:
        async def feed() -> None:
            await asyncio.sleep(0.2)  # the reader waits first
            for chunk in data:
                await session.asend("mic", RuntimeData.audio(chunk, sample_rate=RATE))
            await session.aclose_input("mic")

        async def collect() -> list[bytes]:
            return [np.array(d.as_array()).tobytes() async for _, d in session.aoutputs()]

        _, received = await asyncio.gather(feed(), collect())
        return received

    async def main() -> list[list[bytes]]:
        return await asyncio.wait_for(
            asyncio.gather(*(one(s, d) for s, d in zip(sessions, sent, strict=True))),
            TIMEOUT)

    for received, data in zip(asyncio.run(main()), sent, strict=True):
        assert received == [c.tobytes() for c in data]
    assert all(s.wait(TIMEOUT).ok for s in sessions)


def test_asyncio_outputs_end_with_the_failure(host: Host) -> None:
    config = {"name": "aiocrash", "inputs": {"x": "f.in"}, "outputs": {"y": "f.out"},
              "nodes": [{"id": "f", "type": "Faulty", "params": {"mode": "process_exception",
                                                                 "after": 2}}]}
    session = host.start_session(config)

    async def main() -> int:
        for i in range(3):
            await session.asend("x", RuntimeData.tensor(np.full(4, i)), timeout=TIMEOUT)
        seen = 0
        with pytest.raises(SessionFailed, match="injected failure after 2 messages"):
            async for _ in session.aoutputs():
                seen += 1
        return seen

    assert asyncio.run(main()) == 2


# ------------------------------------------------------------------------- lifetimes

def test_views_outlive_the_session_safely_and_release_returns_them(host: Host) -> None:
    session = host.start_session(gain_chain("views"))
    sent = chunks(30, seed=11)
    for chunk in sent[:20]:  # the short, sequential form: fits in the channels
        session.send("mic", RuntimeData.audio(chunk, sample_rate=RATE), timeout=TIMEOUT)
    session.close_input("mic")
    kept, shared = [], []
    for index, (_, data) in enumerate(session.outputs()):
        shared.append(data.is_shared)
        if index % 3 == 2:
            data.release()
            with pytest.raises(ValueError, match="released"):
                data.as_array()
        else:
            kept.append((index, data.as_array()[::2]))  # a view of a view onto the sample
        del data
    assert session.wait(TIMEOUT).ok
    # zero-copy views while the host holds few samples, private copies beyond (no stall)
    assert shared[0] and not all(shared), shared
    gc.collect()
    for index, view in kept:  # still readable, and right, after the session ended
        assert view.tobytes() == sent[index][::2].tobytes()
        assert not view.flags.writeable
    kept.clear()
    gc.collect()


def test_no_leftovers_by_session_id() -> None:
    before = shm_files()
    ids = []
    with Host() as host:
        done = host.start_session(gain_chain("leftA"))
        for chunk in chunks(5):
            done.send("mic", RuntimeData.audio(chunk, sample_rate=RATE))
        done.close_input("mic")
        read_all(done)
        done.wait(TIMEOUT)
        abandoned = host.start_session(gain_chain("leftB"))
        abandoned.send("mic", RuntimeData.audio(chunks(1)[0], sample_rate=RATE))
        ids = [done.id, abandoned.id]
        assert node_records([abandoned.id]), "the host's own iceoryx2 node is missing"
    found = leftovers(ids, before)
    # by session id (``descendants`` counts every child of this test process, whoever made it)
    assert not (found.processes or found.shm or found.node_records or found.service_records), \
        str(found)


def test_a_host_that_exits_mid_session_leaves_nothing(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import numpy as np, nodehost, sys
        sys.path.insert(0, sys.argv[1])
        from test_open_session import gain_chain
        host = nodehost.Host()
        session = host.start_session(gain_chain("exiting"))
        session.send("mic", nodehost.RuntimeData.audio(np.zeros(480, np.float32), 48000))
        session.wait_ready(120)
        print(session.id, flush=True)
        # exits without stop(): the nodes die with it, the host's ends are released
    """)
    before = shm_files()
    done = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    session_id = done.stdout.split()[-1]
    found = leftovers([session_id], before)
    assert not (found.processes or found.shm or found.node_records or found.service_records), \
        str(found)


# ------------------------------------------------------------------------- validation

def _problems(registry: Registry, config: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate_pipeline(load_config(config), registry.node_types)
    return [str(issue) for issue in info.value.issues]


GAINS = [{"id": "a", "type": "Gain"}, {"id": "b", "type": "Gain"}]


def test_the_plan_counts_the_host_among_readers(registry: Registry) -> None:
    from nodehost.plan import plan_host_ends, plan_session

    pipeline = validate_pipeline(load_config({
        "name": "plan", "nodes": GAINS, "inputs": {"mic": ["a.in", "b.in"]},
        "outputs": {"o": "a.out"}, "connections": []}), registry.node_types)
    launches = plan_session(pipeline, "plan-1234")
    ends = plan_host_ends(pipeline, launches)
    (a_out,) = next(launch for launch in launches if launch.node_id == "a").outputs
    assert a_out.host_reads and a_out.subscribers == 1
    assert ends.outputs["o"] == a_out
    assert ends.inputs["mic"].channel == "nodehost/plan-1234/@inputs/mic"
    assert ends.inputs["mic"].subscribers == 2  # one channel, fanned out to a.in and b.in
    fanned = validate_pipeline(load_config({
        "name": "plan", "nodes": [*GAINS, {"id": "c", "type": "Gain"}],
        "inputs": {"mic": "a.in"}, "outputs": {"o": "a.out", "p": "b.out", "q": "c.out"},
        "connections": [{"from": "a", "to": "b"}, {"from": "a", "to": "c"}]}),
        registry.node_types)
    launches = plan_session(fanned, "plan-1234")
    (a_out,) = next(launch for launch in launches if launch.node_id == "a").outputs
    assert a_out.subscribers == 3 and a_out.host_reads  # b, c and the host


@pytest.mark.parametrize(("extra", "nodes", "expected"), [
    ({"inputs": {"mic": "nope.in"}}, GAINS, "inputs.mic: unknown node 'nope'"),
    ({"inputs": {"mic": "a.inn"}}, GAINS, "inputs.mic: node 'a' (Gain) has no input port 'inn'"),
    ({"inputs": {"mic": "a.out"}}, GAINS, "a.out is an output port"),
    ({"outputs": {"o": "a.in"}}, GAINS, "outputs.o: node 'a' (Gain) has no output port 'in' "
                                        "(its output ports: out); a.in is an input port"),
    ({"inputs": {"mic": "b.in"}, "connections": [{"from": "a", "to": "b"}]}, GAINS,
     "inputs.mic: input b.in is already fed by connections[0]"),
    ({"inputs": {"mic": ["a.in", "b.in"], "two": "a.in"}}, GAINS,
     "inputs.two: input a.in is already fed by inputs.mic[0]"),
    ({"inputs": {"mic": ["a.in", "a.in"]}}, GAINS,
     "inputs.mic[1]: input a.in is already fed by inputs.mic[0]"),
    ({"inputs": {"mic": "a.in"}}, GAINS, "nodes[1]: input port b.in is not connected (wire it, "
                                         "or feed it from a session input)"),
    ({"inputs": {"x": ["a.in", "t.in"]}}, [*GAINS, {"id": "t", "type": "ReplyText"}],
     "inputs.x: fans out to a.in (audio) and t.in (text)"),
    ({"inputs": {"9mic": "a.in"}}, GAINS, "inputs['9mic']: '9mic' is not a valid session "
                                          "input/output name"),
    ({"inputs": {"mic": []}}, GAINS, "inputs.mic: List should have at least 1 item"),
    ({"inputs": {"mic": 3}}, GAINS, 'inputs.mic: expected "node.port" or a list of them'),
    ({"inputs": {"mic": "a..in"}}, GAINS, "inputs.mic[0]: 'a..in' is not \"node\" or"),
    ({"inputs": {"x": "a.in"}, "outputs": {"x": "b.out"}}, GAINS,
     "inputs.x: 'x' names both a session input and a session output"),
    ({"inputs": {"x": ["a.in", "b.in"]}, "outputs": {"o": "a.out", "p": "a"}}, GAINS,
     "outputs.p: output port a.out is already read as session output 'o'"),
])
def test_bad_session_ports_are_located_errors(registry: Registry, extra: dict[str, Any],
                                              nodes: list[dict[str, Any]],
                                              expected: str) -> None:
    problems = _problems(registry, {"name": "bad", "nodes": nodes, **extra})
    assert any(expected in p for p in problems), problems


def test_session_ports_take_their_constraints_from_the_ports(registry: Registry) -> None:
    nodes = [{"id": "vad", "type": "SileroVAD"}, {"id": "lm", "type": "LFM2Audio"},
             {"id": "tts", "type": "PiperTTS"}]
    ok = validate_pipeline(load_config({
        "name": "ok", "nodes": nodes,
        "inputs": {"mic": ["vad.in", "lm.in"], "text": "tts.in"},
        "outputs": {"speech": "tts.out"}}), registry.node_types)
    assert ok.inputs["mic"].spec.sample_rate == [16000]
    assert ok.inputs["mic"].spec.channels == [1]
    assert ok.outputs["speech"].spec.sample_rate == [22050]
    # a Resample output's rate comes from its params
    resampled = validate_pipeline(load_config({
        "name": "rs", "nodes": [{"id": "rs", "type": "Resample",
                                 "params": {"sample_rate": 24000}}],
        "inputs": {"mic": "rs"}, "outputs": {"out": "rs"}}), registry.node_types)
    assert resampled.outputs["out"].spec.sample_rate == [24000]


def test_incompatible_constraints_of_a_fanned_out_input(registry: Registry,
                                                        tmp_path: Path) -> None:
    """Two ports that accept no common rate: one error naming both, and the fix."""
    def node(node_type: str, rate: int) -> dict[str, Any]:
        return {"node_type": node_type, "version": "1.0.0", "entrypoint": "x.y:Z",
                "inputs": {"in": {"data_type": "audio", "sample_rate": [rate]}}}

    plugin = ManifestsPlugin([node("Takes16k", 16000), node("Takes48k", 48000)])
    types = discover(plugins=(plugin,)).node_types
    with pytest.raises(ConfigError) as info:
        validate_pipeline(load_config({
            "name": "clash", "nodes": [{"id": "a", "type": "Takes16k"},
                                       {"id": "b", "type": "Takes48k"}],
            "inputs": {"mic": ["a.in", "b"]}}), types)
    (issue,) = info.value.issues
    assert str(issue) == ("inputs.mic: fans out to a.in and b.in, which accept no sample rate "
                          "in common (a.in takes 16000, b.in takes 48000); use two session "
                          "inputs or insert a converter before one of them")


def test_validate_command_lists_session_ports(tmp_path: Path) -> None:
    config = tmp_path / "voice.yaml"
    config.write_text(textwrap.dedent("""
        name: voice
        inputs: {mic: rs.in}
        outputs: {reply: g.out}
        nodes:
          - {id: rs, type: Resample, params: {sample_rate: 16000}}
          - {id: g, type: Gain}
        connections: [{from: rs, to: g}]
    """))
    done = subprocess.run([sys.executable, "-m", "nodehost.cli", "validate", str(config)],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert "session input mic → rs.in (audio)" in done.stdout
    assert "session output reply ← g.out (audio)" in done.stdout


@pytest.fixture(autouse=True)
def _no_stray_threads() -> Iterator[None]:
    yield
    gc.collect()


def test_run_command_refuses_inputs_and_drains_outputs(tmp_path: Path) -> None:
    fed = tmp_path / "fed.yaml"
    fed.write_text("name: fed\ninputs: {mic: g.in}\noutputs: {o: g.out}\n"
                   "nodes: [{id: g, type: Gain}]\n")
    done = subprocess.run([sys.executable, "-m", "nodehost.cli", "run", str(fed)],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 2
    assert "inputs: session inputs (mic) are fed by an application" in done.stderr
    produced = tmp_path / "produced.yaml"
    produced.write_text("name: produced\noutputs: {o: f.out}\n"
                        "nodes: [{id: src, type: ProbeSource, params: {count: 40}},"
                        " {id: f, type: Forward}]\nconnections: [{from: src, to: f}]\n")
    done = subprocess.run([sys.executable, "-m", "nodehost.cli", "run", "--events", "json",
                           str(produced)], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert '"ok": true' in done.stdout.splitlines()[-1]
