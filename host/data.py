"""RuntimeData: one message between nodes — audio, video, text or a tensor — with metadata.

A RuntimeData is either *local* (built by node code around ordinary memory) or *received*
(straight onto a shared-memory sample). A received RuntimeData owns its sample through a
``SampleHold``; every array ``as_array()`` hands out has that hold in its ``base`` chain, so
the sample is deleted only when the RuntimeData *and* every view are gone. iceoryx2 aborts
the process when a deleted sample is touched; with this ownership no view can outlive one.
"""

from __future__ import annotations

import ctypes
import time
from typing import Any

import numpy as np

from nodehost import wire
from nodehost.errors import WireFormatError
from nodehost.wire import InvalidRuntimeData, Metadata

__all__ = ["RuntimeData", "SampleHold", "monotonic_stamp"]

_last_stamp = 0


class _Inherited:
    """The origin timestamp data created now derives from: the runner sets ``ns`` to the
    origin of the input it hands to ``process()`` (0 outside of it). See docs/wire-format.md,
    "Timestamps"."""

    __slots__ = ("ns",)

    def __init__(self) -> None:
        self.ns = 0


inherited_origin = _Inherited()


def monotonic_stamp() -> int:
    """CLOCK_MONOTONIC in ns, strictly increasing within this process.

    CLOCK_MONOTONIC is system-wide on Linux, so a reader in another process can subtract it
    from its own clock to get the hop latency.
    """
    global _last_stamp
    now = time.monotonic_ns()
    if now <= _last_stamp:
        now = _last_stamp + 1
    _last_stamp = now
    return now


class SampleHold:
    """Owns one received iceoryx2 sample and deletes it when garbage-collected.

    numpy arrays made from it (``array()``) keep it as their ``base``; the sample therefore
    lives exactly as long as the last RuntimeData or view that can reach its memory.
    """

    __slots__ = ("__array_interface__", "__weakref__", "_on_release", "nbytes", "ptr",
                 "sample")

    def __init__(self, sample: Any, ptr: int, nbytes: int, on_release: Any = None) -> None:
        self.sample = sample
        self.ptr = ptr
        self.nbytes = nbytes
        self._on_release = on_release

    def array(self, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray:
        # One dict per hold; numpy reads it once and keeps ``self`` as the array's base.
        self.__array_interface__ = {"data": (self.ptr, True), "shape": shape,
                                    "typestr": dtype.str, "version": 3}
        return np.asarray(self)

    def __del__(self) -> None:
        sample, self.sample = self.sample, None
        if sample is not None:
            sample.delete()
            if self._on_release is not None:
                self._on_release()


def _readonly(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


class RuntimeData:
    """One message. Build with ``RuntimeData.audio/.video/.text/.tensor``."""

    __slots__ = ("_array", "_fields", "_hold", "_kind", "_meta", "_text", "origin_ns",
                 "payload_size", "seq", "session_id", "timestamp_ns")

    def __init__(self, kind: int, meta: Metadata, payload_size: int, *,
                 array: np.ndarray | None = None, text: str | None = None,
                 hold: SampleHold | None = None, session_id: str = "",
                 timestamp_ns: int = 0, seq: int = 0, origin_ns: int = 0) -> None:
        self._kind = kind
        self._meta = meta
        self._fields: tuple[Any, ...] | None = None
        self._array = array
        self._text = text
        self._hold = hold
        self.payload_size = payload_size
        self.session_id = session_id
        self.timestamp_ns = timestamp_ns or monotonic_stamp()
        # When the data this derives from was created: inherited from the input being
        # processed, else this message's own creation.
        self.origin_ns = origin_ns or inherited_origin.ns or self.timestamp_ns
        self.seq = seq

    # -- constructors --------------------------------------------------------------------
    @classmethod
    def audio(cls, samples: Any, sample_rate: int, channels: int = 1, *,
              session_id: str = "") -> RuntimeData:
        """Interleaved PCM, float32 ("f32") or int16 ("s16"): a C-contiguous array shaped
        ``(frames,)`` (mono or interleaved) or ``(frames, channels)``."""
        array = np.asarray(samples)
        code = wire.SAMPLE_FORMAT_OF_DTYPE.get(array.dtype.newbyteorder("<"))
        if code is None or array.dtype.byteorder == ">":
            raise InvalidRuntimeData(
                f"audio samples must be float32 or int16, got {array.dtype}; convert with "
                "samples.astype(np.float32)")
        if not array.flags.c_contiguous:
            raise InvalidRuntimeData("audio samples must be C-contiguous (interleaved "
                                     "frames); pass np.ascontiguousarray(samples)")
        if int(sample_rate) <= 0 or int(channels) <= 0:
            raise InvalidRuntimeData(f"sample_rate ({sample_rate}) and channels ({channels}) "
                                     "must be > 0")
        if array.ndim > 2 or (array.ndim == 2 and array.shape[1] != channels) \
                or array.size % channels:
            raise InvalidRuntimeData(f"audio shape {array.shape} is not whole frames of "
                                     f"{channels} channel(s): use (frames,) or "
                                     f"(frames, {channels})")
        meta = wire.AudioMetadata(int(sample_rate), int(channels),
                                  wire.SAMPLE_FORMATS[code][0], array.size // channels)
        return cls._local(wire.AUDIO, meta, array, session_id)

    @classmethod
    def video(cls, frame: Any, format: str = "RGB24", fps: float = 30.0, *,
              width: int | None = None, height: int | None = None,
              session_id: str = "") -> RuntimeData:
        """One uint8 frame with every plane of its pixel format: ``(h, w, 3)`` RGB24/BGR24,
        ``(h, w, 4)`` RGBA/BGRA, ``(h, w)`` GRAY8, ``(h*3/2, w)`` I420 (= YUV420P) and NV12.
        A flat frame needs ``width`` and ``height``."""
        pf = wire.PIXEL_FORMAT_NAMES.get(format)
        if pf is None:
            raise InvalidRuntimeData(f"unknown pixel format {format!r} (known: "
                                     f"{', '.join(wire.PIXEL_FORMAT_NAMES)})")
        array = np.asarray(frame)
        if array.dtype != np.uint8:
            raise InvalidRuntimeData(f"video frames are uint8, got {array.dtype}")
        if not array.flags.c_contiguous:
            raise InvalidRuntimeData("video frames must be C-contiguous; pass "
                                     "np.ascontiguousarray(frame)")
        if not 0.0 < float(fps) < float("inf"):
            raise InvalidRuntimeData(f"fps must be a positive number, got {fps}")
        if width is None or height is None:
            if array.ndim < 2:
                raise InvalidRuntimeData(f"a flat {pf.name} frame needs width= and height=")
            rows, width = array.shape[0], array.shape[1]
            height = rows * 2 // 3 if pf.planar_420 else rows
        try:
            wire.check_video_size(pf, int(width), int(height), array.nbytes)
        except WireFormatError as exc:
            planes = " (Y plane w*h, then U and V at w/2 x h/2)" if pf.planar_420 else ""
            raise InvalidRuntimeData(f"{exc}{planes}; got a frame shaped {array.shape}") \
                from exc
        if array.ndim > 1 and array.shape != pf.shape(width, height):
            raise InvalidRuntimeData(f"a {width}x{height} {pf.name} frame is shaped "
                                     f"{pf.shape(width, height)}, got {array.shape}")
        meta = wire.VideoMetadata(int(width), int(height), pf.name, float(fps))
        return cls._local(wire.VIDEO, meta, array, session_id)

    @classmethod
    def text(cls, text: str, language: str | None = None, *,
             session_id: str = "") -> RuntimeData:
        """UTF-8 text; ``language`` an ASCII tag such as "en" or "en-US" (≤ 35 chars)."""
        if not isinstance(text, str):
            raise InvalidRuntimeData(f"text must be str, got {type(text).__name__}")
        if language is not None and (not language.isascii()
                                     or not 0 < len(language) <= wire.MAX_LANGUAGE):
            raise InvalidRuntimeData(f"language {language!r} must be an ASCII tag of 1 to "
                                     f"{wire.MAX_LANGUAGE} characters")
        raw = text.encode("utf-8")
        array = np.frombuffer(raw, dtype=np.uint8)
        meta = wire.TextMetadata("utf-8", language)
        return cls._local(wire.TEXT, meta, array, session_id, text=text)

    @classmethod
    def tensor(cls, array: Any, *, session_id: str = "") -> RuntimeData:
        """A C-contiguous numeric array (bool, ints, floats, complex; at most 8 dims)."""
        arr = np.asarray(array)
        if not arr.flags.c_contiguous:
            raise InvalidRuntimeData("tensors must be C-contiguous; pass "
                                     "np.ascontiguousarray(x)")
        if arr.dtype.kind not in wire.TENSOR_KINDS or arr.dtype.byteorder == ">":
            raise InvalidRuntimeData(f"unsupported tensor dtype {arr.dtype}: little-endian "
                                     "bool, integer, float or complex only")
        if arr.ndim > wire.MAX_TENSOR_NDIM:
            raise InvalidRuntimeData(f"tensors have at most {wire.MAX_TENSOR_NDIM} "
                                     f"dimensions, got {arr.ndim}")
        meta = wire.TensorMetadata(tuple(int(d) for d in arr.shape), arr.dtype.name)
        return cls._local(wire.TENSOR, meta, arr, session_id)

    @classmethod
    def _local(cls, kind: int, meta: Metadata, array: np.ndarray, session_id: str,
               text: str | None = None) -> RuntimeData:
        wire.encode_session_id(session_id)
        return cls(kind, meta, array.nbytes, array=_readonly(array), text=text,
                   session_id=session_id)

    # -- access --------------------------------------------------------------------------
    @property
    def data_type(self) -> str:
        """"audio", "video", "text" or "tensor"."""
        return wire.KIND_NAMES[self._kind]

    @property
    def metadata(self) -> Metadata:
        return self._meta

    @property
    def is_shared(self) -> bool:
        """True while the payload is a view onto a received shared-memory sample."""
        return self._hold is not None

    def as_array(self) -> np.ndarray:
        """The payload as a read-only numpy array, shaped by type (see ``wire.array_spec``).

        For received data it is a view onto shared memory: zero-copy, and the sample stays
        alive as long as this array (or any view of it) does.
        """
        if self._array is None:
            hold = self._hold
            if hold is None:
                raise ValueError("this RuntimeData was released")
            dtype, shape = wire.array_spec(self._kind, self._meta, self.payload_size)
            self._array = hold.array(dtype, shape)
        return self._array

    def as_text(self) -> str:
        if self._kind != wire.TEXT:
            raise TypeError(f"as_text() on {self.data_type} data")
        if self._text is None:
            try:
                self._text = self.as_array().tobytes().decode("utf-8")
            except UnicodeDecodeError as exc:
                raise WireFormatError(f"text payload is not valid UTF-8: {exc}") from exc
        return self._text

    def release(self) -> None:
        """Drop this message's hold on its payload. A received sample goes back to its
        writer now, unless arrays from ``as_array()`` are still alive (then when they die)."""
        self._array = None
        self._hold = None

    def __enter__(self) -> RuntimeData:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"RuntimeData({self.data_type}, {self.payload_size} bytes, {self._meta!r})"

    # -- wire ----------------------------------------------------------------------------
    @property
    def kind(self) -> int:
        """The wire data-type code."""
        return self._kind

    def wire_fields(self) -> tuple[Any, ...]:
        """The type-specific header fields (cached: a message may be sent more than once)."""
        if self._fields is None:
            self._fields = wire.meta_fields(self._kind, self._meta)
        return self._fields

    def payload_address(self) -> tuple[int, Any]:
        """``(address, keepalive)`` of the payload bytes, for a single memmove into a sample;
        ``keepalive`` must be held until the copy is done."""
        hold = self._hold
        if hold is not None:
            return hold.ptr, hold
        array = self.as_array()
        return array.__array_interface__["data"][0], array

    def to_bytes(self, seq: int = 0) -> bytes:
        """Header and payload as plain bytes (files, tests, fuzzing)."""
        header = wire.pack_header(self._kind, 0, self.payload_size, self.timestamp_ns, seq,
                                  self.session_id, self._meta, self.origin_ns)
        return header + self.as_array().tobytes()

    @classmethod
    def from_bytes(cls, raw: bytes | bytearray | memoryview) -> RuntimeData:
        """Parse and verify a message held in ordinary memory. The payload of a ``bytes``
        object is used in place (read-only); other buffers are copied once."""
        data = raw if isinstance(raw, bytes) else bytes(raw)
        header = wire.unpack_header(data[:wire.HEADER_SIZE],
                                    len(data) - wire.HEADER_SIZE)
        if header.kind == wire.EOS:
            raise WireFormatError("an end-of-stream marker is not a RuntimeData")
        dtype, shape = wire.array_spec(header.kind, header.meta, header.payload_size)
        array = np.frombuffer(data, dtype=dtype, offset=wire.HEADER_SIZE,
                              count=header.payload_size // dtype.itemsize).reshape(shape)
        return cls(header.kind, header.meta, header.payload_size, array=array,
                   session_id=header.session_id, timestamp_ns=header.timestamp_ns,
                   seq=header.seq, origin_ns=header.origin_ns)

    @classmethod
    def from_header(cls, header: wire.Header, hold: SampleHold | None,
                    array: np.ndarray | None = None) -> RuntimeData:
        """A received message: onto a sample (``hold``) or onto a private copy (``array``).
        (Built slot by slot: this runs once per message on every reader's hot path.)"""
        self = cls.__new__(cls)
        (self._kind, self._meta, self.payload_size, self.session_id, self.timestamp_ns,
         self.seq, self.origin_ns) = (header.kind, header.meta, header.payload_size,
                                      header.session_id, header.timestamp_ns, header.seq,
                                      header.origin_ns or header.timestamp_ns)
        self._fields = self._text = None
        self._array = array
        self._hold = hold
        return self


def copy_out(ptr: int, nbytes: int, kind: int, meta: Metadata) -> np.ndarray:
    """A private read-only copy of a payload sitting at ``ptr`` (when zero-copy must stop)."""
    dtype, shape = wire.array_spec(kind, meta, nbytes)
    out = np.empty(shape, dtype)
    if nbytes:
        ctypes.memmove(out.ctypes.data, ptr, nbytes)
    out.flags.writeable = False
    return out
