"""The data plane on its own: wire format, RuntimeData validation and zero-copy views, and
channels between real processes over real iceoryx2 shared memory."""

from __future__ import annotations

import gc
import itertools
import multiprocessing as mp
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from conftest import leaked_shm_files, shm_files
from dataplane_procs import read_all

from nodehost import wire
from nodehost.channels import ChannelError, DataPlane
from nodehost.data import RuntimeData
from nodehost.errors import WireFormatError
from nodehost.wire import CRC_OFFSET, HEADER_SIZE

# -- wire format -----------------------------------------------------------------------

SAMPLES = {
    "audio": lambda: RuntimeData.audio(np.linspace(-1, 1, 480, dtype=np.float32), 48000),
    "audio-stereo-s16": lambda: RuntimeData.audio(np.arange(20, dtype=np.int16).reshape(10, 2),
                                                  16000, channels=2),
    "video-rgb": lambda: RuntimeData.video(np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)),
    "video-i420": lambda: RuntimeData.video(np.zeros((6, 4), np.uint8), format="I420"),
    "text": lambda: RuntimeData.text("héllo wörld", language="de"),
    "tensor": lambda: RuntimeData.tensor(np.arange(24, dtype=np.float64).reshape(2, 3, 4)),
}


@pytest.mark.parametrize("kind", list(SAMPLES))
def test_round_trip(kind: str) -> None:
    original = SAMPLES[kind]()
    raw = original.to_bytes()
    assert len(raw) == HEADER_SIZE + original.payload_size
    back = RuntimeData.from_bytes(raw)
    assert back.data_type == original.data_type
    assert back.payload_size == original.payload_size
    np.testing.assert_array_equal(back.as_array(), original.as_array())
    assert back.as_array().shape == original.as_array().shape
    if original.data_type == "text":
        assert back.as_text() == "héllo wörld"
        assert back.metadata.language == "de"


def test_metadata_of_each_type() -> None:
    audio = RuntimeData.from_bytes(SAMPLES["audio-stereo-s16"]().to_bytes())
    assert (audio.metadata.sample_rate, audio.metadata.channels) == (16000, 2)
    video = RuntimeData.from_bytes(SAMPLES["video-i420"]().to_bytes())
    assert (video.metadata.width, video.metadata.height) == (4, 4)
    tensor = RuntimeData.from_bytes(SAMPLES["tensor"]().to_bytes())
    assert tuple(tensor.metadata.shape) == (2, 3, 4)


def test_timestamps_strictly_increase_within_a_process() -> None:
    stamps = [RuntimeData.text("x").timestamp_ns for _ in range(1000)]
    assert all(b > a for a, b in itertools.pairwise(stamps))


def _corrupt(raw: bytes, offset: int) -> bytes:
    out = bytearray(raw)
    out[offset] ^= 0xFF
    return bytes(out)


@pytest.mark.parametrize("damage", [
    pytest.param(lambda raw: raw[:HEADER_SIZE - 1], id="truncated-header"),
    pytest.param(lambda raw: raw[:-1], id="truncated-payload"),
    pytest.param(lambda raw: raw + b"\0", id="extra-payload"),
    pytest.param(lambda raw: _corrupt(raw, 0), id="bad-magic"),
    pytest.param(lambda raw: _corrupt(raw, 8), id="flipped-type"),
    pytest.param(lambda raw: _corrupt(raw, 20), id="flipped-size"),
    pytest.param(lambda raw: _corrupt(raw, CRC_OFFSET), id="bad-crc"),
    pytest.param(lambda raw: b"", id="empty"),
])
def test_damaged_messages_are_rejected(damage: Any) -> None:
    raw = SAMPLES["tensor"]().to_bytes()
    with pytest.raises(WireFormatError):
        RuntimeData.from_bytes(damage(raw))


def test_an_empty_tensor_with_an_impossible_shape_is_rejected() -> None:
    # Found by fuzzing: 0 x 2**62 elements fill a 0-byte payload, but no array has that shape;
    # it must be a damaged message, not a numpy ValueError in the reader.
    header = wire.pack_header(wire.TENSOR, 0, 0, 1, 1, "s",
                              wire.TensorMetadata((0, 1 << 62), "int16"))
    with pytest.raises(WireFormatError, match="larger than any array"):
        RuntimeData.from_bytes(header)
    ok = wire.pack_header(wire.TENSOR, 0, 0, 1, 1, "s", wire.TensorMetadata((0, 5), "int16"))
    assert RuntimeData.from_bytes(ok).as_array().shape == (0, 5)


@pytest.mark.parametrize("build", [
    pytest.param(lambda: RuntimeData.audio(np.zeros(10, np.int32), 16000), id="audio-dtype"),
    pytest.param(lambda: RuntimeData.audio(np.zeros((10, 4), np.float32)[:, 0], 16000),
                 id="audio-not-contiguous"),
    pytest.param(lambda: RuntimeData.audio(np.zeros(9, np.float32), 16000, channels=2),
                 id="audio-partial-frame"),
    pytest.param(lambda: RuntimeData.video(np.zeros((4, 4), np.uint8), format="I420"),
                 id="video-missing-planes"),
    pytest.param(lambda: RuntimeData.video(np.zeros((4, 4, 3), np.uint8), format="NOPE"),
                 id="video-unknown-format"),
    pytest.param(lambda: RuntimeData.tensor(np.zeros((4, 4), np.float32).T),
                 id="tensor-not-c-contiguous"),
    pytest.param(lambda: RuntimeData.tensor(np.zeros((1,) * 9, np.float32)),
                 id="tensor-too-many-dims"),
    pytest.param(lambda: RuntimeData.text("x", language="x" * 64), id="language-too-long"),
    pytest.param(lambda: RuntimeData.tensor(np.zeros(4), session_id="s" * 200),
                 id="session-id-too-long"),
])
def test_invalid_data_is_refused_when_built(build: Any) -> None:
    with pytest.raises(WireFormatError):
        build()


# -- channels between processes ----------------------------------------------------------

@pytest.fixture
def plane(request: pytest.FixtureRequest) -> Iterator[DataPlane]:
    before = shm_files()
    p = DataPlane(f"test-writer-{os.getpid()}")
    yield p
    p.close()
    gc.collect()
    assert not leaked_shm_files(before), "channels left shared memory behind"


def _channel(request: pytest.FixtureRequest) -> str:
    return f"nodehost-test/{os.getpid()}/{request.node.name}"


def _start_readers(name: str, capacity: int, *, count: int = 1, backpressure: bool = True,
                   delay_s: float = 0.0) -> list[tuple[Any, Any]]:
    ctx = mp.get_context("spawn")
    readers = []
    for _ in range(count):
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=read_all, args=(name, capacity, backpressure, delay_s, theirs))
        proc.start()
        theirs.close()  # a reader that dies makes poll() see end of file, not hang
        assert ours.poll(60) and ours.recv() == "ready", f"reader exited with {proc.exitcode}"
        readers.append((proc, ours))
    return readers


def _results(readers: list[tuple[Any, Any]]) -> list[dict[str, Any]]:
    out = []
    for proc, conn in readers:
        assert conn.poll(60), "reader did not finish"
        out.append(conn.recv())
        proc.join(30)
        assert proc.exitcode == 0
    return out


def test_zero_copy_backpressure_and_order(plane: DataPlane,
                                          request: pytest.FixtureRequest) -> None:
    name = _channel(request)
    readers = _start_readers(name, 1 << 16, delay_s=0.002)
    writer = plane.open_writer(name, 1 << 16, readers=1)
    for i in range(200):
        with writer.loan_tensor((1024,), np.uint8) as array:
            array[:] = i % 256  # filled in place, inside the shared-memory sample
    writer.close()
    (result,) = _results(readers)
    assert result["seen"] == [i % 256 for i in range(200)], "lost or reordered messages"
    assert result["dropped"] == 0
    assert result["zero_copy"], "reader's array is not a read-only view onto the sample"
    assert writer.blocked > 0, "a slow reader must make the writer wait"


def test_fan_out_reaches_every_reader(plane: DataPlane,
                                      request: pytest.FixtureRequest) -> None:
    name = _channel(request)
    readers = _start_readers(name, 1 << 16, count=2)
    writer = plane.open_writer(name, 1 << 16, readers=2)
    for i in range(50):
        writer.send(RuntimeData.tensor(np.full(64, i, np.uint8)))
    writer.close()
    for result in _results(readers):
        assert result["seen"] == list(range(50))


def test_without_backpressure_the_oldest_are_dropped_and_counted(
        plane: DataPlane, request: pytest.FixtureRequest) -> None:
    name = _channel(request)
    readers = _start_readers(name, 1 << 16, backpressure=False, delay_s=0.01)
    writer = plane.open_writer(name, 1 << 16, backpressure=False, readers=1)
    for i in range(250):  # each message's first byte is its index: below 256, so no wrap
        writer.send(RuntimeData.tensor(np.full(16, i, np.uint8)))
    assert writer.blocked == 0, "without backpressure the writer never waits to send"
    writer.close()  # (closing does wait, for the reader to drain what is queued)
    (result,) = _results(readers)
    assert result["dropped"] > 0
    assert len(result["seen"]) + result["dropped"] == 250
    assert result["seen"][-1] == 249, "drop-oldest keeps the newest"
    assert result["seen"] == sorted(result["seen"]), "what survives arrives in order"


def test_64_mib_payload(plane: DataPlane, request: pytest.FixtureRequest) -> None:
    name = _channel(request)
    capacity = 1 << 27
    readers = _start_readers(name, capacity)
    writer = plane.open_writer(name, capacity, readers=1)
    with writer.loan_tensor((64 << 20,), np.uint8) as array:
        array[:] = 7
    writer.close()
    (result,) = _results(readers)
    assert result["seen"] == [7] and result["sizes"] == [64 << 20]


def test_a_message_larger_than_the_capacity_is_a_clear_error(
        plane: DataPlane, request: pytest.FixtureRequest) -> None:
    writer = plane.open_writer(_channel(request), 1 << 12, readers=0)
    with pytest.raises(ChannelError, match="capacity"):
        writer.send(RuntimeData.tensor(np.zeros(1 << 13, np.uint8)))


def test_views_outlive_their_runtime_data_safely(plane: DataPlane,
                                                 request: pytest.FixtureRequest) -> None:
    name = _channel(request)
    # writer first: a reader opened earlier in this same thread could not answer the
    # writer's roll call, as a reader in another process does while it waits
    writer = plane.open_writer(name, 1 << 16, readers=1)
    reader = plane.open_reader(name, 1 << 16)
    writer.send(RuntimeData.tensor(np.arange(256, dtype=np.uint8)))
    plane.wait([reader], timeout=10)
    data = reader.receive()
    assert data is not None and data.is_shared
    view = data.as_array()[10:20]
    del data
    gc.collect()
    # The sample is still held by the view: reading it is safe and correct.
    assert view.tolist() == list(range(10, 20))
    assert reader.borrowed == 1
    del view
    gc.collect()
    assert reader.borrowed == 0


def test_a_blocked_writer_wakes_on_its_interrupt_fd_without_polling(
        plane: DataPlane, request: pytest.FixtureRequest) -> None:
    """What a runner's stop rests on: a writer blocked by a reader that takes nothing sleeps
    until the control socket is readable, then the interrupt callback runs (once) and aborts
    the send."""
    name = _channel(request)
    writer = plane.open_writer(name, 1 << 12, readers=1)
    plane.open_reader(name, 1 << 12)  # connected, never reads
    host_end, node_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    calls: list[bytes] = []

    class Stop(Exception):
        pass

    def on_control() -> None:
        calls.append(node_end.recv(64))
        raise Stop

    plane.set_interrupt([node_end.fileno()], on_control)
    sender = threading.Timer(0.5, host_end.send, args=(b"stop",))
    sender.start()
    try:
        with pytest.raises(Stop):
            for _ in range(10_000):
                writer.send(RuntimeData.tensor(np.zeros(1024, np.uint8)))
    finally:
        sender.join()
        writer.close(drain_timeout=0, eos=False)
        host_end.close()
        node_end.close()
    assert calls == [b"stop"], "the callback runs when the fd is readable, and only then"
