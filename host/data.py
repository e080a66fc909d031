"""RuntimeData: one message between nodes — audio, video, text or a tensor — with metadata.

A RuntimeData is either *local* (built by node code around ordinary memory) or *received*
(a read-only view straight onto a shared-memory sample). A received RuntimeData owns its
sample: every numpy array handed out by ``as_array()`` keeps that owner alive through its
``base`` chain, so the sample is released only when the last view is gone. iceoryx2 aborts
the process if a released sample is touched; with this ownership no view can outlive it.
"""

from __future__ import annotations

import ctypes
import time
from typing import Any

import numpy as np

from nodehost.errors import WireFormatError
from nodehost.wire import (
    HEADER_SIZE,
    MAX_NDIM,
    MAX_SESSION_ID,
    PIXEL_FORMATS,
    TENSOR_DTYPES,
    Header,
    WireType,
    frame_bytes,
    pack_header,
    unpack_header,
)

AUDIO_DTYPES = {np.dtype(np.float32): "f32", np.dtype(np.int16): "s16"}
AUDIO_NUMPY = {"f32": np.dtype(np.float32), "s16": np.dtype(np.int16)}


class Metadata:
    """Type-specific metadata with attribute access (``data.metadata.sample_rate``)."""

    __slots__ = ("_fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        object.__setattr__(self, "_fields", fields)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._fields[name]
        except KeyError:
            raise AttributeError(f"metadata has no field {name!r} "
                                 f"(fields: {', '.join(self._fields)})") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("RuntimeData metadata is read-only")

    def as_dict(self) -> dict[str, Any]:
        return dict(self._fields)

    def __repr__(self) -> str:
        return f"Metadata({', '.join(f'{k}={v!r}' for k, v in self._fields.items())})"


class _Clock:
    """Per-process timestamps: CLOCK_MONOTONIC (comparable across processes on one machine,
    which is what hop latency needs) and strictly increasing within the process."""

    last = 0

    @classmethod
    def now(cls) -> int:
        ts = time.monotonic_ns()
        if ts <= cls.last:
            ts = cls.last + 1
        cls.last = ts
        return ts


class _SampleOwner:
    """Holds a received iceoryx2 sample; releases it exactly once, when nothing uses it."""

    __slots__ = ("__weakref__", "on_release", "sample")

    def __init__(self, sample: Any, on_release: Any = None) -> None:
        self.sample = sample
        self.on_release = on_release

    def __del__(self) -> None:
        sample, self.sample = self.sample, None
        if sample is not None:
            sample.delete()
            if self.on_release is not None:
                self.on_release()


def _view(address: int, size: int, owner: object) -> np.ndarray:
    """A read-only uint8 array over ``size`` bytes at ``address`` whose base keeps ``owner``
    alive (numpy views of it keep the ctypes buffer, which keeps the owner)."""
    buffer = (ctypes.c_uint8 * size).from_address(address)
    buffer._nodehost_owner = owner  # type: ignore[attr-defined]
    array = np.frombuffer(buffer, dtype=np.uint8)
    array.flags.writeable = False
    return array


def _check_session_id(session_id: str) -> bytes:
    raw = session_id.encode("ascii", errors="strict") if session_id.isascii() else None
    if raw is None:
        raise WireFormatError(f"session id {session_id!r} must be ASCII")
    if len(raw) > MAX_SESSION_ID:
        raise WireFormatError(f"session id {session_id!r} is {len(raw)} bytes; at most "
                              f"{MAX_SESSION_ID}")
    return raw


class RuntimeData:
    """One message. Build with ``RuntimeData.audio/.video/.text/.tensor``."""

    __slots__ = ("_array", "_owner", "data_type", "metadata", "session_id", "timestamp_ns",
                 "_wire_type", "_meta", "sequence")

    def __init__(self, wire_type: WireType, array: np.ndarray, meta: dict[str, Any], *,
                 session_id: str = "", timestamp_ns: int = 0, sequence: int = 0,
                 owner: object = None) -> None:
        self._wire_type = wire_type
        self._array = array
        self._meta = meta
        self._owner = owner
        self.data_type = _NAMES[wire_type]
        self.metadata = Metadata(meta)
        self.session_id = session_id
        self.timestamp_ns = timestamp_ns
        self.sequence = sequence

    # -- constructors --------------------------------------------------------------------
    @classmethod
    def audio(cls, samples: Any, sample_rate: int, channels: int = 1) -> RuntimeData:
        array = np.asarray(samples)
        fmt = AUDIO_DTYPES.get(array.dtype)
        if fmt is None:
            if array.dtype.kind == "f":  # float64 from numpy math: one conversion, not an error
                array, fmt = array.astype(np.float32), "f32"
            else:
                raise WireFormatError(f"audio samples must be float32 or int16, got "
                                      f"{array.dtype}")
        if not array.flags.c_contiguous:
            raise WireFormatError("audio samples must be C-contiguous (interleaved frames); "
                                  "pass np.ascontiguousarray(samples)")
        if sample_rate <= 0 or channels <= 0:
            raise WireFormatError("sample_rate and channels must be > 0")
        if array.ndim == 2 and array.shape[1] != channels:
            raise WireFormatError(f"audio array has {array.shape[1]} columns but "
                                  f"channels={channels}")
        if array.ndim > 2 or array.size % channels:
            raise WireFormatError(f"audio shape {array.shape} does not hold whole frames of "
                                  f"{channels} channel(s)")
        meta = {"sample_rate": int(sample_rate), "channels": int(channels),
                "sample_format": fmt, "frames": array.size // channels}
        return cls(WireType.AUDIO, array, meta)

    @classmethod
    def video(cls, frame: Any, format: str = "RGB24", fps: float = 30.0,  # noqa: A002
              width: int | None = None, height: int | None = None) -> RuntimeData:
        array = np.asarray(frame)
        if format not in PIXEL_FORMATS:
            raise WireFormatError(f"unknown pixel format {format!r} (known: "
                                  f"{', '.join(PIXEL_FORMATS)})")
        if array.dtype != np.uint8:
            raise WireFormatError(f"video frames are uint8, got {array.dtype}")
        if not array.flags.c_contiguous:
            raise WireFormatError("video frame must be C-contiguous")
        if not fps > 0:
            raise WireFormatError("fps must be > 0")
        if height is None or width is None:
            if array.ndim < 2:
                raise WireFormatError("pass width and height for a flat video frame")
            height, width = array.shape[0], array.shape[1]
            if PIXEL_FORMATS[format][1] == 2:  # planar 4:2:0: (h*3/2, w) layout
                height = height * 2 // 3
        needed = frame_bytes(format, width, height)
        if array.nbytes != needed:
            raise WireFormatError(f"a {width}x{height} {format} frame has {needed} bytes "
                                  f"(all planes); got {array.nbytes}")
        meta = {"width": int(width), "height": int(height), "format": format,
                "fps": float(fps)}
        return cls(WireType.VIDEO, array, meta)

    @classmethod
    def text(cls, text: str, language: str | None = None) -> RuntimeData:
        if not isinstance(text, str):
            raise WireFormatError(f"text must be str, got {type(text).__name__}")
        if language is not None and (not language.isascii() or len(language) > 16):
            raise WireFormatError(f"language {language!r} must be ASCII, at most 16 chars")
        array = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        return cls(WireType.TEXT, array, {"encoding": "utf-8", "language": language})

    @classmethod
    def tensor(cls, array: Any) -> RuntimeData:
        arr = np.asarray(array)
        if not arr.flags.c_contiguous:
            raise WireFormatError("tensors must be C-contiguous; pass np.ascontiguousarray(x)")
        dtype = arr.dtype.newbyteorder("<").str if arr.dtype.byteorder == ">" else arr.dtype.str
        if dtype.startswith("="):
            dtype = "<" + dtype[1:]
        if dtype not in TENSOR_DTYPES:
            raise WireFormatError(f"unsupported tensor dtype {arr.dtype}")
        if arr.dtype.byteorder == ">":
            raise WireFormatError("big-endian tensors are not supported; use .astype('<...')")
        if arr.ndim > MAX_NDIM:
            raise WireFormatError(f"tensors have at most {MAX_NDIM} dimensions")
        return cls(WireType.TENSOR, arr, {"dtype": dtype, "shape": tuple(arr.shape)})

    @classmethod
    def end_of_stream(cls) -> RuntimeData:
        return cls(WireType.END_OF_STREAM, np.empty(0, np.uint8), {})

    # -- access --------------------------------------------------------------------------
    @property
    def is_end_of_stream(self) -> bool:
        return self._wire_type is WireType.END_OF_STREAM

    @property
    def payload_size(self) -> int:
        return int(self._array.nbytes)

    @property
    def is_shared(self) -> bool:
        """True when the payload is a view onto a shared-memory sample."""
        return self._owner is not None

    def as_array(self) -> np.ndarray:
        """The payload as numpy, shaped by type. Received data: a read-only zero-copy view."""
        return self._array

    def as_text(self) -> str:
        if self._wire_type is not WireType.TEXT:
            raise TypeError(f"as_text() on {self.data_type} data")
        return self._array.tobytes().decode("utf-8")

    def __repr__(self) -> str:
        return (f"RuntimeData({self.data_type}, {self.payload_size} bytes, "
                f"{self.metadata!r})")

    # -- wire ----------------------------------------------------------------------------
    def write_into(self, buf: memoryview, session_id: bytes, sequence: int,
                   timestamp_ns: int | None = None, *, payload: bool = True) -> None:
        """Header (and, unless ``payload=False``, one copy of the payload) into ``buf``."""
        ts = _Clock.now() if timestamp_ns is None else timestamp_ns
        pack_header(buf, self._wire_type, self.payload_size, ts, sequence, session_id,
                    self._meta)
        if payload and self.payload_size:
            dst = np.frombuffer(buf, dtype=np.uint8, count=self.payload_size,
                                offset=HEADER_SIZE)
            np.copyto(dst, self._array.reshape(-1).view(np.uint8))

    def to_bytes(self, session_id: str = "", sequence: int = 0) -> bytes:
        buf = bytearray(HEADER_SIZE + self.payload_size)
        self.write_into(memoryview(buf), _check_session_id(session_id), sequence)
        return bytes(buf)

    @classmethod
    def from_bytes(cls, raw: bytes | bytearray | memoryview) -> RuntimeData:
        """Parse a message held in ordinary memory (tests, fuzzing, files)."""
        header = unpack_header(raw)
        array = np.frombuffer(raw, dtype=np.uint8, offset=HEADER_SIZE).copy()
        array.flags.writeable = False
        return cls._from_header(header, array, None)

    @classmethod
    def from_sample(cls, sample: Any, on_release: Any = None) -> RuntimeData:
        """Take ownership of a received iceoryx2 sample (released when unused)."""
        owner = _SampleOwner(sample, on_release)
        payload = sample.payload()
        size = payload.len()
        address = payload.data_ptr if isinstance(payload.data_ptr, int) else payload.data_ptr()
        whole = _view(address, size, owner)
        header = unpack_header(whole[:HEADER_SIZE].data, total_size=size)
        return cls._from_header(header, whole[HEADER_SIZE:], owner)

    @classmethod
    def _from_header(cls, header: Header, payload: np.ndarray, owner: object) -> RuntimeData:
        meta = dict(header.meta)
        wt = header.wire_type
        if wt is WireType.AUDIO:
            arr = payload.view(_AUDIO_NUMPY[meta["sample_format"]])
            if meta["channels"] > 1:
                arr = arr.reshape(-1, meta["channels"])
        elif wt is WireType.VIDEO:
            h, w = meta["height"], meta["width"]
            num, den = PIXEL_FORMATS[meta["format"]]
            if den == 1:
                arr = payload.reshape(h, w, num) if num > 1 else payload.reshape(h, w)
            else:
                arr = payload.reshape(h * num // den, w)
        elif wt is WireType.TENSOR:
            arr = payload.view(np.dtype(meta["dtype"])).reshape(meta["shape"])
        else:
            arr = payload
        return cls(wt, arr, meta, session_id=header.session_id,
                   timestamp_ns=header.timestamp_ns, sequence=header.sequence, owner=owner)


_AUDIO_NUMPY = AUDIO_NUMPY
_NAMES = {WireType.AUDIO: "audio", WireType.VIDEO: "video", WireType.TEXT: "text",
          WireType.TENSOR: "tensor", WireType.END_OF_STREAM: "end_of_stream"}
