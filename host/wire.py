"""The RuntimeData wire format: a fixed 256-byte header, then the payload, in one sample.

Documented byte for byte in docs/wire-format.md. Everything read from a channel is checked
(magic, version, CRC, sizes, type-specific fields) before any of it is trusted.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum

from nodehost.errors import WireFormatError

HEADER_SIZE = 256
MAGIC = b"NHRD"
VERSION = 1
MAX_SESSION_ID = 47
MAX_NDIM = 8

# magic, version, data_type, flags, payload_size, timestamp_ns, sequence, session id
_COMMON = struct.Struct("<4sHBBQQQB47s")  # 80 bytes
_AUDIO = struct.Struct("<IHBxQ")  # sample_rate, channels, sample_format, frames
_VIDEO = struct.Struct("<II8sd")  # width, height, pixel format, fps
_TEXT = struct.Struct("<8s16s")  # encoding, language
_TENSOR = struct.Struct("<8sB7x8Q")  # dtype, ndim, shape[8]
_TYPE_OFFSET = 80
_CRC_OFFSET = 248
assert _COMMON.size == _TYPE_OFFSET


class WireType(IntEnum):
    AUDIO = 1
    VIDEO = 2
    TEXT = 3
    TENSOR = 4
    END_OF_STREAM = 15


DATA_TYPE_NAMES = {WireType.AUDIO: "audio", WireType.VIDEO: "video", WireType.TEXT: "text",
                   WireType.TENSOR: "tensor"}
SAMPLE_FORMATS = {1: "f32", 2: "s16"}
SAMPLE_FORMAT_CODES = {v: k for k, v in SAMPLE_FORMATS.items()}
SAMPLE_FORMAT_BYTES = {"f32": 4, "s16": 2}
# bytes per pixel, as (numerator, denominator): I420 carries 1.5 bytes per pixel
PIXEL_FORMATS: dict[str, tuple[int, int]] = {
    "RGB24": (3, 1), "BGR24": (3, 1), "RGBA": (4, 1), "BGRA": (4, 1), "GRAY8": (1, 1),
    "I420": (3, 2), "NV12": (3, 2),
}
TENSOR_DTYPES = {"|b1", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4",
                 "<f8", "<c8", "<c16"}


@dataclass(frozen=True)
class Header:
    """A parsed, validated header. ``meta`` holds the type-specific fields."""

    wire_type: WireType
    payload_size: int
    timestamp_ns: int
    sequence: int
    session_id: str
    meta: dict[str, object]


def _text(raw: bytes, field: str) -> str:
    try:
        return raw.rstrip(b"\0").decode("ascii")
    except UnicodeDecodeError:
        raise WireFormatError(f"header field {field} is not ASCII") from None


def frame_bytes(fmt: str, width: int, height: int) -> int:
    num, den = PIXEL_FORMATS[fmt]
    return width * height * num // den


def pack_header(buf: memoryview | bytearray, wire_type: WireType, payload_size: int,
                timestamp_ns: int, sequence: int, session_id: bytes,
                meta: dict[str, object]) -> None:
    """Write a header into the first 256 bytes of ``buf`` (in place: no allocation of the
    payload, which may already sit in shared memory)."""
    if len(session_id) > MAX_SESSION_ID:
        raise WireFormatError(f"session id is {len(session_id)} bytes; at most "
                              f"{MAX_SESSION_ID} fit in the header")
    if isinstance(buf, memoryview) and buf.format != "B":
        buf = buf.cast("B")  # iceoryx2 hands out "<B" views, which refuse slice assignment
    buf[:HEADER_SIZE] = bytes(HEADER_SIZE)
    _COMMON.pack_into(buf, 0, MAGIC, VERSION, int(wire_type), 0, payload_size, timestamp_ns,
                      sequence, len(session_id), session_id)
    if wire_type is WireType.AUDIO:
        _AUDIO.pack_into(buf, _TYPE_OFFSET, meta["sample_rate"], meta["channels"],
                         SAMPLE_FORMAT_CODES[str(meta["sample_format"])], meta["frames"])
    elif wire_type is WireType.VIDEO:
        _VIDEO.pack_into(buf, _TYPE_OFFSET, meta["width"], meta["height"],
                         str(meta["format"]).encode(), meta["fps"])
    elif wire_type is WireType.TEXT:
        _TEXT.pack_into(buf, _TYPE_OFFSET, str(meta["encoding"]).encode(),
                        str(meta.get("language") or "").encode())
    elif wire_type is WireType.TENSOR:
        shape = tuple(meta["shape"])  # type: ignore[call-overload]
        _TENSOR.pack_into(buf, _TYPE_OFFSET, str(meta["dtype"]).encode(), len(shape),
                          *shape, *([0] * (MAX_NDIM - len(shape))))
    struct.pack_into("<I", buf, _CRC_OFFSET, zlib.crc32(buf[:_CRC_OFFSET]))


def unpack_header(buf: memoryview | bytes | bytearray, total_size: int | None = None
                  ) -> Header:
    """Parse and check a header. ``total_size`` is the size of the whole message (header +
    payload) as delivered; the payload size in the header must match it exactly."""
    if len(buf) < HEADER_SIZE:
        raise WireFormatError(f"message of {len(buf)} bytes is shorter than the "
                              f"{HEADER_SIZE}-byte header")
    magic, version, wtype, _flags, payload_size, ts, seq, sid_len, sid = \
        _COMMON.unpack_from(buf, 0)
    if magic != MAGIC:
        raise WireFormatError(f"bad magic {bytes(magic)!r}: not a nodehost message")
    if version != VERSION:
        raise WireFormatError(f"wire format version {version} is not supported "
                              f"(this nodehost speaks {VERSION})")
    (crc,) = struct.unpack_from("<I", buf, _CRC_OFFSET)
    if crc != zlib.crc32(buf[:_CRC_OFFSET]):
        raise WireFormatError("header checksum mismatch: corrupted header")
    try:
        wire_type = WireType(wtype)
    except ValueError:
        raise WireFormatError(f"unknown data type code {wtype}") from None
    size = len(buf) if total_size is None else total_size
    if payload_size != size - HEADER_SIZE:
        raise WireFormatError(f"header says {payload_size} payload bytes, message carries "
                              f"{size - HEADER_SIZE}")
    if sid_len > MAX_SESSION_ID:
        raise WireFormatError(f"session id length {sid_len} exceeds {MAX_SESSION_ID}")
    session_id = _text(sid[:sid_len], "session_id")
    meta: dict[str, object] = {}
    if wire_type is WireType.AUDIO:
        rate, channels, fmt_code, frames = _AUDIO.unpack_from(buf, _TYPE_OFFSET)
        fmt = SAMPLE_FORMATS.get(fmt_code)
        if fmt is None:
            raise WireFormatError(f"unknown audio sample format code {fmt_code}")
        if rate == 0 or channels == 0:
            raise WireFormatError("audio sample rate and channels must be > 0")
        if frames * channels * SAMPLE_FORMAT_BYTES[fmt] != payload_size:
            raise WireFormatError(f"audio of {frames} frames × {channels} channels of {fmt} "
                                  f"does not fill {payload_size} payload bytes")
        meta = {"sample_rate": rate, "channels": channels, "sample_format": fmt,
                "frames": frames}
    elif wire_type is WireType.VIDEO:
        width, height, fmt_raw, fps = _VIDEO.unpack_from(buf, _TYPE_OFFSET)
        fmt = _text(fmt_raw, "format")
        if fmt not in PIXEL_FORMATS:
            raise WireFormatError(f"unknown pixel format {fmt!r}")
        if frame_bytes(fmt, width, height) != payload_size:
            raise WireFormatError(f"{width}x{height} {fmt} needs "
                                  f"{frame_bytes(fmt, width, height)} bytes (all planes), "
                                  f"payload has {payload_size}")
        if not fps > 0:
            raise WireFormatError("video fps must be > 0")
        meta = {"width": width, "height": height, "format": fmt, "fps": fps}
    elif wire_type is WireType.TEXT:
        enc_raw, lang_raw = _TEXT.unpack_from(buf, _TYPE_OFFSET)
        encoding = _text(enc_raw, "encoding")
        if encoding != "utf-8":
            raise WireFormatError(f"unsupported text encoding {encoding!r}")
        meta = {"encoding": encoding, "language": _text(lang_raw, "language") or None}
    elif wire_type is WireType.TENSOR:
        dtype_raw, ndim, *shape = _TENSOR.unpack_from(buf, _TYPE_OFFSET)
        dtype = _text(dtype_raw, "dtype")
        if dtype not in TENSOR_DTYPES:
            raise WireFormatError(f"unsupported tensor dtype {dtype!r}")
        if ndim > MAX_NDIM:
            raise WireFormatError(f"tensor ndim {ndim} exceeds {MAX_NDIM}")
        dims = tuple(shape[:ndim])
        count = 1
        for d in dims:
            count *= d
        itemsize = int(dtype[2:])  # every supported dtype string ends in its byte size
        if count * itemsize != payload_size:
            raise WireFormatError(f"tensor {dims} of {dtype} needs {count * itemsize} bytes, "
                                  f"payload has {payload_size}")
        meta = {"dtype": dtype, "shape": dims}
    elif payload_size != 0:
        raise WireFormatError("an end-of-stream message carries no payload")
    return Header(wire_type, payload_size, ts, seq, session_id, meta)
