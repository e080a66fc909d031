"""The RuntimeData wire format: a fixed 256-byte header in front of the payload.

One message is one shared-memory sample: ``header (256 bytes) | payload (payload_size bytes)``.
Every byte of the header is documented in ``docs/wire-format.md``; this module is the only code
that packs or parses it. A header read from a channel is untrusted input: ``unpack_header``
checks the CRC first, then every field, and raises ``WireFormatError`` rather than return
anything it could not fully verify.
"""

from __future__ import annotations

import functools
import math
import struct
import zlib
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from nodehost.errors import InvalidRuntimeData as InvalidRuntimeData
from nodehost.errors import WireFormatError

HEADER_SIZE = 256
MAGIC = b"NHRD"
VERSION = 1
MAX_SESSION_ID = 64      # UTF-8 bytes
MAX_LANGUAGE = 35        # BCP 47 tags are at most 35 characters in practice
MAX_TENSOR_NDIM = 8
CRC_OFFSET = HEADER_SIZE - 4
ORIGIN_OFFSET = CRC_OFFSET - 12  # origin_ns: u64 at 240..247, then 4 zero bytes, then the CRC

# data_type byte
AUDIO, VIDEO, TEXT, TENSOR, EOS = 1, 2, 3, 4, 15
KIND_NAMES = {AUDIO: "audio", VIDEO: "video", TEXT: "text", TENSOR: "tensor", EOS: "eos"}
KIND_CODES = {name: code for code, name in KIND_NAMES.items()}

# flags byte
FLAG_ACK = 0x01          # channel protocol: the writer asks readers to report progress
KNOWN_FLAGS = FLAG_ACK

SAMPLE_FORMATS: dict[int, tuple[str, np.dtype[Any]]] = {
    1: ("f32", np.dtype("<f4")), 2: ("s16", np.dtype("<i2"))}
SAMPLE_FORMAT_CODES = {name: code for code, (name, _dt) in SAMPLE_FORMATS.items()}
SAMPLE_FORMAT_OF_DTYPE = {dt: code for code, (_name, dt) in SAMPLE_FORMATS.items()}

TEXT_ENCODINGS = {1: "utf-8"}


class PixelFormat(NamedTuple):
    code: int
    name: str
    channels: int        # bytes per pixel of a packed format; 0 for planar 4:2:0
    planar_420: bool

    def frame_bytes(self, width: int, height: int) -> int:
        if self.planar_420:  # Y plane w*h, then chroma at quarter resolution: w*h/2 more
            return width * height * 3 // 2
        return width * height * self.channels

    def shape(self, width: int, height: int) -> tuple[int, ...]:
        if self.planar_420:  # the usual (OpenCV, ffmpeg) layout: chroma rows below luma
            return (height * 3 // 2, width)
        if self.channels == 1:
            return (height, width)
        return (height, width, self.channels)


PIXEL_FORMATS = {pf.code: pf for pf in (
    PixelFormat(1, "RGB24", 3, False),
    PixelFormat(2, "BGR24", 3, False),
    PixelFormat(3, "RGBA", 4, False),
    PixelFormat(4, "BGRA", 4, False),
    PixelFormat(5, "GRAY8", 1, False),
    PixelFormat(6, "I420", 0, True),
    PixelFormat(7, "NV12", 0, True),
)}
PIXEL_FORMAT_NAMES = {pf.name: pf for pf in PIXEL_FORMATS.values()}
PIXEL_FORMAT_NAMES["YUV420P"] = PIXEL_FORMAT_NAMES["I420"]

# numpy kinds a tensor may carry: bool, signed, unsigned, float, complex (no objects, strings)
TENSOR_KINDS = frozenset("biufc")


# -- metadata, as users see it ---------------------------------------------------------------
class AudioMetadata(NamedTuple):
    sample_rate: int
    channels: int
    sample_format: str   # "f32" | "s16" (little-endian, interleaved)
    frames: int

    @property
    def dtype(self) -> str:
        return "float32" if self.sample_format == "f32" else "int16"


class VideoMetadata(NamedTuple):
    width: int
    height: int
    format: str          # a PIXEL_FORMATS name
    fps: float

    @property
    def pixel_format(self) -> str:
        return self.format


class TextMetadata(NamedTuple):
    encoding: str
    language: str | None


class TensorMetadata(NamedTuple):
    shape: tuple[int, ...]
    dtype: str           # numpy dtype name, e.g. "float32"


class EosMetadata(NamedTuple):
    pass


Metadata = AudioMetadata | VideoMetadata | TextMetadata | TensorMetadata | EosMetadata


class Header(NamedTuple):
    kind: int
    flags: int
    payload_size: int
    timestamp_ns: int
    seq: int
    session_id: str
    meta: Metadata
    origin_ns: int = 0   # when the data this message derives from was created; 0: unknown


# -- byte layout -----------------------------------------------------------------------------
# magic, version, header_size, data_type, flags, session_id_len, reserved8, reserved32,
# payload_size, timestamp_ns, seq, session_id
_COMMON = "<4sHHBBBBIQQQ64s"
_TAILS = {
    # sample_rate, channels, sample_format, reserved8, frames
    AUDIO: "IHBBQ",
    # width, height, pixel_format, 3 reserved, fps
    VIDEO: "IIB3xd",
    # encoding, language_len, language
    TEXT: "BB35s",
    # dtype str, ndim, 7 reserved, shape[8]
    TENSOR: "8sB7x8Q",
    EOS: "",
}


def _layout(tail: str) -> struct.Struct:
    fmt = _COMMON + tail
    pad = ORIGIN_OFFSET - struct.calcsize(fmt)
    return struct.Struct(fmt + f"{pad}xQ4x")


STRUCTS = {kind: _layout(tail) for kind, tail in _TAILS.items()}
COMMON_FIELDS = 12
_CRC = struct.Struct("<I")
assert all(s.size == CRC_OFFSET for s in STRUCTS.values())


# -- metadata <-> wire fields ----------------------------------------------------------------
# The metadata functions are pure and a channel repeats the same metadata message after
# message, so they are memoized: parsing a header then costs a CRC, one struct unpack and
# dictionary lookups (failures are never cached: every bad header is checked in full).
_memo = functools.lru_cache(maxsize=1024)
_MAX_ARRAY_BYTES = np.iinfo(np.intp).max


@_memo
def meta_fields(kind: int, meta: Metadata) -> tuple[Any, ...]:
    """The type-specific header fields of ``meta``, in wire order."""
    if kind == AUDIO:
        assert isinstance(meta, AudioMetadata)
        return (meta.sample_rate, meta.channels, SAMPLE_FORMAT_CODES[meta.sample_format], 0,
                meta.frames)
    if kind == VIDEO:
        assert isinstance(meta, VideoMetadata)
        return (meta.width, meta.height, PIXEL_FORMAT_NAMES[meta.format].code, meta.fps)
    if kind == TEXT:
        assert isinstance(meta, TextMetadata)
        lang = (meta.language or "").encode("ascii")
        return (1, len(lang), lang)
    if kind == TENSOR:
        assert isinstance(meta, TensorMetadata)
        dt = np.dtype(meta.dtype)
        shape = tuple(meta.shape) + (0,) * (MAX_TENSOR_NDIM - len(meta.shape))
        return (dt.str.encode("ascii"), len(meta.shape), *shape)
    return ()


def _bad(message: str) -> WireFormatError:
    return WireFormatError(f"invalid RuntimeData header: {message}")


@_memo
def _meta_from_fields(kind: int, f: tuple[Any, ...], payload_size: int) -> Metadata:
    """Rebuild metadata from untrusted wire fields, checking them against the payload size."""
    if kind == AUDIO:
        rate, channels, fmt_code, reserved, frames = f
        fmt = SAMPLE_FORMATS.get(fmt_code)
        if fmt is None:
            raise _bad(f"unknown audio sample format code {fmt_code}")
        if rate == 0 or channels == 0 or reserved:
            raise _bad(f"audio sample_rate={rate} channels={channels} reserved={reserved}")
        if frames * channels * fmt[1].itemsize != payload_size:
            raise _bad(f"audio of {frames} frames x {channels} channels of {fmt[0]} is "
                       f"{frames * channels * fmt[1].itemsize} bytes, payload_size says "
                       f"{payload_size}")
        return AudioMetadata(rate, channels, fmt[0], frames)
    if kind == VIDEO:
        width, height, code, fps = f
        pf = PIXEL_FORMATS.get(code)
        if pf is None:
            raise _bad(f"unknown pixel format code {code}")
        check_video_size(pf, width, height, payload_size)
        if not fps > 0.0 or fps == float("inf"):
            raise _bad(f"video fps {fps}")
        return VideoMetadata(width, height, pf.name, fps)
    if kind == TEXT:
        enc, lang_len, lang = f
        if enc not in TEXT_ENCODINGS:
            raise _bad(f"unknown text encoding code {enc}")
        if lang_len > MAX_LANGUAGE or any(lang[lang_len:]):
            raise _bad(f"text language length {lang_len}")
        try:
            language = lang[:lang_len].decode("ascii") or None
        except UnicodeDecodeError:
            raise _bad("text language is not ASCII") from None
        return TextMetadata(TEXT_ENCODINGS[enc], language)
    if kind == TENSOR:
        raw_dtype, ndim, *dims = f
        if ndim > MAX_TENSOR_NDIM or any(dims[ndim:]):
            raise _bad(f"tensor ndim {ndim}")
        dt = tensor_dtype(raw_dtype.rstrip(b"\0").decode("ascii", "replace"))
        shape = tuple(dims[:ndim])
        if math.prod(shape) * dt.itemsize != payload_size:  # Python ints: no overflow
            raise _bad(f"tensor {shape} of {dt.name} does not fill payload_size {payload_size}")
        # An empty tensor fills a 0-byte payload whatever its other dimensions; numpy still
        # refuses a shape whose non-zero dimensions overflow its index type.
        if math.prod(d for d in shape if d) * dt.itemsize > _MAX_ARRAY_BYTES:
            raise _bad(f"tensor shape {shape} is larger than any array can be")
        return TensorMetadata(shape, dt.name)
    if payload_size:
        raise _bad(f"end-of-stream carries payload_size {payload_size}")
    return EosMetadata()


def tensor_dtype(text: str) -> np.dtype[Any]:
    try:
        dt = np.dtype(text)
    except TypeError:
        raise _bad(f"tensor dtype {text!r}") from None
    if dt.kind not in TENSOR_KINDS or dt.byteorder == ">" or dt.str.encode() != text.encode():
        raise _bad(f"tensor dtype {text!r} (little-endian numeric dtypes only)")
    return dt


def check_video_size(pf: PixelFormat, width: int, height: int, payload_size: int) -> None:
    if width == 0 or height == 0:
        raise _bad(f"video size {width}x{height}")
    if pf.planar_420 and (width % 2 or height % 2):
        raise _bad(f"{pf.name} needs an even width and height, got {width}x{height}")
    need = pf.frame_bytes(width, height)
    if need != payload_size:
        raise _bad(f"{pf.name} {width}x{height} needs {need} bytes, payload_size is "
                   f"{payload_size}")


# -- pack / unpack ---------------------------------------------------------------------------
def pack_header_into(buf: Any, kind: int, flags: int, payload_size: int, timestamp_ns: int,
                     seq: int, session_id: bytes, fields: tuple[Any, ...],
                     origin_ns: int = 0) -> None:
    """Write a complete header (CRC included) at the start of the writable buffer ``buf``."""
    STRUCTS[kind].pack_into(buf, 0, MAGIC, VERSION, HEADER_SIZE, kind, flags, len(session_id),
                            0, 0, payload_size, timestamp_ns, seq, session_id, *fields,
                            origin_ns)
    _CRC.pack_into(buf, CRC_OFFSET, zlib.crc32(memoryview(buf)[:CRC_OFFSET]))


def pack_header(kind: int, flags: int, payload_size: int, timestamp_ns: int, seq: int,
                session_id: str, meta: Metadata, origin_ns: int = 0) -> bytes:
    sid = encode_session_id(session_id)
    buf = bytearray(HEADER_SIZE)
    pack_header_into(buf, kind, flags, payload_size, timestamp_ns, seq, sid,
                     meta_fields(kind, meta), origin_ns)
    return bytes(buf)


def encode_session_id(session_id: str) -> bytes:
    raw = session_id.encode("utf-8")
    if len(raw) > MAX_SESSION_ID:
        raise InvalidRuntimeData(f"session id {session_id[:20]!r}... is {len(raw)} bytes of "
                                 f"UTF-8; at most {MAX_SESSION_ID} fit in the header")
    return raw


@_memo
def _session_id(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("session id is not UTF-8") from None


# A channel repeats the same header message after message except for flags (bit 0 follows
# the channel's fill), timestamp_ns, seq, origin_ns and the CRC. Bytes 0..23 (magic to
# payload_size) and 40..239 (session id, type-specific fields, padding) of every header that
# verified are remembered with what they decoded to, so the next message of the stream costs
# a CRC, one dictionary lookup and one small unpack instead of the full check. The key is the
# bytes themselves: a header differing anywhere in them takes the full check.
_VARYING = struct.Struct("<24xQQ200xQ")  # timestamp_ns, seq (bytes 24..39); origin_ns (240)
_verified: dict[bytes, tuple[int, int, int, str, Metadata]] = {}
_VERIFIED_MAX = 1024
# a Header from a tuple of its fields without NamedTuple's Python-level __new__
_new_header: Callable[[tuple[Any, ...]], Header] = functools.partial(tuple.__new__, Header)


def unpack_header(raw: bytes, available: int) -> Header:
    """Parse and verify a header. ``raw`` holds (at least) the first 256 bytes of the message;
    ``available`` is how many payload bytes really follow it (the sample's length − 256)."""
    if len(raw) < HEADER_SIZE:
        raise _bad(f"truncated: {len(raw)} bytes, a header is {HEADER_SIZE}")
    if not raw.startswith(MAGIC):
        raise _bad(f"bad magic {bytes(raw[:4])!r} (expected {MAGIC!r})")
    if zlib.crc32(raw[:CRC_OFFSET]) != _CRC.unpack_from(raw, CRC_OFFSET)[0]:
        raise _bad("CRC mismatch (corrupted header)")
    key = raw[:24] + raw[40:ORIGIN_OFFSET]
    known = _verified.get(key)
    if known is not None and known[2] == available:
        timestamp_ns, seq, origin_ns = _VARYING.unpack_from(raw)
        if origin_ns <= timestamp_ns:
            kind, flags, payload_size, session_id, meta = known
            return _new_header((kind, flags, payload_size, timestamp_ns, seq, session_id, meta,
                                origin_ns))
    header = _verify(raw, available)
    if len(_verified) >= _VERIFIED_MAX:
        _verified.clear()
    _verified[key] = (header.kind, header.flags, header.payload_size, header.session_id,
                      header.meta)
    return header


def _verify(raw: bytes, available: int) -> Header:
    """Every field of a header whose CRC matched, checked (``unpack_header``'s full path)."""
    kind = raw[8]
    layout = STRUCTS.get(kind)
    if layout is None:
        raise _bad(f"unknown data type code {kind}")
    (_magic, version, header_size, _kind, flags, sid_len, res8, res32, payload_size,
     timestamp_ns, seq, sid, *fields, origin_ns) = layout.unpack_from(raw)
    if version != VERSION or header_size != HEADER_SIZE:
        raise _bad(f"version {version} / header size {header_size} "
                   f"(this nodehost speaks version {VERSION}, {HEADER_SIZE} bytes)")
    if flags & ~KNOWN_FLAGS or res8 or res32:
        raise _bad(f"unknown flags 0x{flags:02x} or non-zero reserved fields")
    if payload_size != available:
        raise _bad(f"payload_size {payload_size} but {available} payload bytes follow "
                   "(truncated or padded message)")
    if sid_len > MAX_SESSION_ID or sid.count(0, sid_len) != MAX_SESSION_ID - sid_len:
        raise _bad(f"session id length {sid_len} (at most {MAX_SESSION_ID})")
    if origin_ns > timestamp_ns:
        raise _bad(f"origin_ns {origin_ns} after timestamp_ns {timestamp_ns} (data cannot be "
                   "sent before it was created)")
    session_id = _session_id(sid[:sid_len])
    meta = _meta_from_fields(kind, tuple(fields), payload_size)
    return Header(kind, flags, payload_size, timestamp_ns, seq, session_id, meta, origin_ns)


@_memo
def array_spec(kind: int, meta: Metadata, payload_size: int
               ) -> tuple[np.dtype[Any], tuple[int, ...]]:
    """The dtype and shape ``as_array()`` presents a payload with."""
    if kind == AUDIO:
        assert isinstance(meta, AudioMetadata)
        dt = SAMPLE_FORMATS[SAMPLE_FORMAT_CODES[meta.sample_format]][1]
        if meta.channels == 1:
            return dt, (meta.frames,)
        return dt, (meta.frames, meta.channels)
    if kind == VIDEO:
        assert isinstance(meta, VideoMetadata)
        return _U8, PIXEL_FORMAT_NAMES[meta.format].shape(meta.width, meta.height)
    if kind == TENSOR:
        assert isinstance(meta, TensorMetadata)
        return np.dtype(meta.dtype), meta.shape
    return _U8, (payload_size,)


_U8 = np.dtype(np.uint8)
