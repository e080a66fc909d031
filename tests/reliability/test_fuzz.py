"""Fuzzing with hypothesis: pipeline configs, manifests and RuntimeData messages.

What the host may do with bad input is narrow: a config is valid or a ``ConfigError`` whose
every issue says where (``nodes[2].params.count``), or names the file when the document as a
whole is unreadable; a manifest is valid or a pydantic ``ValidationError`` (and a plugin
returning it is reported, never fatal); a message is a RuntimeData or a ``WireFormatError``.
Anything else — TypeError, KeyError, RecursionError, a traceback from the CLI — is a defect.
Hangs are caught by the suite's watchdog. ``--fuzz-examples`` sets the examples per test.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w
import yaml
from conftest import ManifestsPlugin
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import nodehost
from nodehost import wire
from nodehost.data import RuntimeData
from nodehost.discovery import discover
from nodehost.errors import ConfigError, WireFormatError
from nodehost.manifest import NodeManifest
from nodehost.plan import plan_session

from .conftest import option
from .support import record

CONFIG_FIELDS = {"name", "max_processes", "init_timeout_s", "nodes", "connections"}
# Params named json, copy, schema... work (they shadow deprecated BaseModel methods); pydantic
# warns about each, which is noise here.
pytestmark = pytest.mark.filterwarnings("ignore:Field name .* shadows an attribute:UserWarning")


def fuzz_settings(request: pytest.FixtureRequest) -> settings:
    return settings(max_examples=option(request.config, "--fuzz-examples"), deadline=None,
                    database=None, derandomize=not option(request.config, "--fuzz-random"),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def host() -> Iterator[Any]:
    with nodehost.Host() as h:  # validation only: no session is started
        yield h


VALID_CONFIG: dict[str, Any] = {
    "name": "fuzz", "init_timeout_s": 30, "max_processes": 8,
    "nodes": [
        {"id": "src", "type": "ProbeSource",
         "params": {"count": 10, "payload_bytes": 64, "seed": 1, "interval_ms": 0.5}},
        {"id": "fwd", "type": "Forward"},
        {"id": "sink", "type": "ProbeSink", "params": {"out_path": "/tmp/fuzz.json"},
         "sandbox": {"fs_write": ["/tmp/fuzz.json"], "fs_read": ["/tmp"], "network": False}},
    ],
    "connections": [
        {"from": "src.out", "to": "fwd", "capacity": 65536, "backpressure": True},
        {"from": "fwd", "to": "sink.in"},
    ],
}

VOCABULARY = ["name", "nodes", "connections", "id", "type", "params", "sandbox", "from", "to",
              "capacity", "backpressure", "max_processes", "init_timeout_s", "fs_read",
              "fs_write", "network", "count", "payload_bytes", "seed", "out_path", "src",
              "fwd", "sink", "src.out", "sink.in", "ProbeSource", "Forward", "ProbeSink",
              "Faulty", "mode", "in", "out", "", "a.b.c", "9x", "/tmp/x", "relative/path"]
keys = st.sampled_from(VOCABULARY) | st.text(max_size=8)
scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
           | st.text(max_size=12) | st.sampled_from(VOCABULARY)
           | st.sampled_from([0, -1, 1, 3, 2**24, 2**24 + 1, 1e400, float("nan")]))
json_like = st.recursive(scalars, lambda children: st.lists(children, max_size=4)
                         | st.dictionaries(keys, children, max_size=4), max_leaves=24)


def _slots(value: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) in a nested structure of dicts and lists."""
    found = []
    if isinstance(value, dict):
        for k, v in value.items():
            found.append((value, k))
            found += _slots(v)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found.append((value, i))
            found += _slots(v)
    return found


def mutate(draw: Any, document: dict[str, Any], ops: list[str],
           apply: Callable[[Any, str, Any, Any], None]) -> dict[str, Any]:
    """A deep copy of ``document`` with 1-4 mutations: each picks a slot (a container and a
    key in it) and an op, and ``apply(draw, op, container, key)`` carries it out."""
    document = copy.deepcopy(document)
    for _ in range(draw(st.integers(1, 4))):
        slots = _slots(document)
        if not slots:
            break
        container, key = draw(st.sampled_from(slots))
        apply(draw, draw(st.sampled_from(ops)), container, key)
    return document


def _mutate_config_slot(draw: Any, op: str, container: Any, key: Any) -> None:
    if op == "replace":
        container[key] = draw(json_like)
    elif op == "delete":
        del container[key]
    elif op == "add":
        if isinstance(container, dict):
            container[draw(keys)] = draw(json_like)
        else:
            container.insert(key, draw(json_like))
    elif op == "duplicate":
        if isinstance(container, list):
            container.append(copy.deepcopy(container[key]))
        else:
            container[draw(keys)] = copy.deepcopy(container[key])
    else:  # the same value as another type
        value = container[key]
        container[key] = draw(st.sampled_from([str(value), [value], {"v": value},
                                               None, True, 1.5]))


@st.composite
def mutated_config(draw: Any) -> dict[str, Any]:
    return mutate(draw, VALID_CONFIG, ["replace", "delete", "add", "duplicate", "retype"],
                  _mutate_config_slot)


def check_located(exc: ConfigError, data: Any, source: str | None = None) -> None:
    assert exc.issues, exc
    for issue in exc.issues:
        assert issue.message, exc
        if source is not None and source in str(exc):
            continue  # a file that cannot be read or parsed as a whole: the file is named
        assert isinstance(data, Mapping) or issue.loc or "must be a mapping" in issue.message, \
            f"unlocated issue {issue!r} for {data!r}"
        if isinstance(data, Mapping):
            assert issue.loc, f"unlocated issue {issue!r} for {data!r}"
            root = re.match(r"[^.\[]*", issue.loc)
            assert root is not None
            assert root[0] in CONFIG_FIELDS | {"", *map(str, data)}, \
                f"issue located at {issue.loc!r}, which is not in {sorted(map(str, data))}"


def validate_or_reject(host: Any, data: Any, tally: Counter[str],
                       source: str | None = None) -> None:
    try:
        pipeline = host.validate(data)
    except ConfigError as exc:
        check_located(exc, data, source)
        tally["rejected"] += 1
        return
    plan_session(pipeline, "fuzz-00000000")  # what validation accepts can be planned
    tally["accepted"] += 1


def test_fuzz_pipeline_configs(request: pytest.FixtureRequest, host: Any,
                               tmp_path: Path) -> None:
    tally: Counter[str] = Counter()

    @fuzz_settings(request)
    @given(data=json_like | st.dictionaries(keys, json_like, max_size=6))
    def random_documents(data: Any) -> None:
        if isinstance(data, Mapping):  # the embedding API takes a mapping (or a path)
            validate_or_reject(host, data, tally)
        else:  # any other document can only come from a file
            path = tmp_path / "document.json"
            path.write_text(json.dumps(data))
            validate_or_reject(host, path, tally, source=str(path))

    @fuzz_settings(request)
    @given(data=mutated_config())
    def mutated_documents(data: dict[str, Any]) -> None:
        validate_or_reject(host, data, tally)

    validate_or_reject(host, copy.deepcopy(VALID_CONFIG), tally)
    assert tally["accepted"] == 1
    random_documents()
    mutated_documents()
    record("fuzzing", configs=sum(tally.values()), configs_rejected=tally["rejected"],
           configs_accepted=tally["accepted"], config_unexpected_exceptions=0)


def test_fuzz_config_files_truncated_and_corrupted(request: pytest.FixtureRequest, host: Any,
                                                   tmp_path: Path) -> None:
    texts = {".yaml": yaml.safe_dump(VALID_CONFIG).encode(),
             ".json": json.dumps(VALID_CONFIG, indent=1).encode(),
             ".toml": tomli_w.dumps(VALID_CONFIG).encode()}
    tally: Counter[str] = Counter()

    @fuzz_settings(request)
    @given(suffix=st.sampled_from(sorted(texts)), data=st.data())
    def corrupted(suffix: str, data: st.DataObject) -> None:
        raw = bytearray(texts[suffix])
        raw = raw[:data.draw(st.integers(0, len(raw)), label="cut")]
        for _ in range(data.draw(st.integers(0, 3), label="flips")):
            if raw:
                raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        raw += data.draw(st.binary(max_size=8), label="junk")
        path = tmp_path / f"config{suffix}"
        path.write_bytes(bytes(raw))
        validate_or_reject(host, path, tally, source=str(path))

    corrupted()
    record("fuzzing", config_files=sum(tally.values()),
           config_files_rejected=tally["rejected"])


# ------------------------------------------------------------------------------ manifests

VALID_MANIFEST: dict[str, Any] = {
    "node_type": "FuzzNode", "version": "1.2.3-rc.1", "description": "fuzzed",
    "entrypoint": "fuzz_pkg.nodes:FuzzNode",
    "inputs": {"in": {"data_type": "audio", "sample_rate": [16000, 48000], "channels": 1,
                      "sample_format": "f32"}},
    "outputs": {"out": {"data_type": "audio", "sample_rate_from_param": "rate"},
                "text": {"data_type": "text", "language": ["en", "fr"]}},
    "params": {
        "rate": {"type": "integer", "default": 16000, "enum": [16000, 48000]},
        "gain": {"type": "number", "default": 1.0, "minimum": 0, "maximum": 10},
        "path": {"type": "string", "format": "path"},
        "flags": {"type": "array", "default": []},
        "options": {"type": "object"},
        "on": {"type": "boolean", "default": False},
    },
    "resources": {"memory_mb": 256},
    "sandbox": {"network": False, "fs_read": ["/data"], "fs_write": []},
    "runtime": {"python": "3.12", "requirements": ["numpy>=1"]},
}
MANIFEST_WORDS = ["node_type", "version", "entrypoint", "inputs", "outputs", "params",
                  "resources", "sandbox", "runtime", "data_type", "type", "default", "required",
                  "minimum", "maximum", "enum", "format", "path", "audio", "tensor", "integer",
                  "number", "string", "array", "object", "boolean", "memory_mb", "python",
                  "sample_rate", "channels", "sample_rate_from_param", "_x", "model_config",
                  "model_post_init", "schema", "json", "copy", "in", "out", "1.0.0"]
manifest_keys = st.sampled_from(MANIFEST_WORDS) | st.text(max_size=8)
manifest_values = st.recursive(
    scalars | st.sampled_from(MANIFEST_WORDS),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(manifest_keys, children, max_size=4), max_leaves=20)


def _mutate_manifest_slot(draw: Any, op: str, container: Any, key: Any) -> None:
    if op == "replace":
        container[key] = draw(manifest_values)
    elif op == "delete":
        del container[key]
    elif op == "add" and isinstance(container, dict):
        container[draw(manifest_keys)] = draw(manifest_values)
    elif op == "rename" and isinstance(container, dict):
        container[draw(manifest_keys)] = container.pop(key)


@st.composite
def mutated_manifest(draw: Any) -> dict[str, Any]:
    return mutate(draw, VALID_MANIFEST, ["replace", "delete", "add", "rename"],
                  _mutate_manifest_slot)


GOOD_SIBLING = {"node_type": "FuzzSibling", "version": "1.0.0", "entrypoint": "a.b:C",
                "outputs": {"out": {"data_type": "text"}}}


def check_manifest(data: Any, tally: Counter[str]) -> None:
    try:
        manifest = NodeManifest.model_validate(data)
    except ValidationError as exc:
        assert exc.errors(), exc
        tally["rejected"] += 1
    else:
        tally["accepted"] += 1
        model = manifest.params_model  # builds for every manifest validation accepted
        if not any(spec.required for spec in manifest.params.values()):
            model.model_validate({})  # the declared defaults satisfy the declared params
        again = NodeManifest.model_validate(manifest.model_dump())
        assert again == manifest
    # A plugin returning the same thing: reported, never fatal, the sibling still loads.
    registry = discover(plugins=[ManifestsPlugin([data, GOOD_SIBLING])], entry_points=False)
    assert "FuzzSibling" in registry.node_types
    for failure in registry.failures:
        assert failure.reason.startswith("invalid manifest"), failure.reason


def test_fuzz_manifests(request: pytest.FixtureRequest) -> None:
    tally: Counter[str] = Counter()

    @fuzz_settings(request)
    @given(data=mutated_manifest())
    def mutated(data: dict[str, Any]) -> None:
        check_manifest(data, tally)

    @fuzz_settings(request)
    @given(data=st.dictionaries(manifest_keys, manifest_values, max_size=8) | manifest_values)
    def random(data: Any) -> None:
        check_manifest(data, tally)

    check_manifest(copy.deepcopy(VALID_MANIFEST), tally)
    assert tally["accepted"] == 1
    mutated()
    random()
    record("fuzzing", manifests=sum(tally.values()), manifests_rejected=tally["rejected"],
           manifests_accepted=tally["accepted"])


@pytest.mark.parametrize("name", ["_private", "__dunder", "model_config", "model_post_init",
                                  "model_fields", "schema", "copy", "json", "dict"])
def test_param_names_that_would_break_the_params_model(name: str) -> None:
    data = copy.deepcopy(VALID_MANIFEST)
    data["params"][name] = {"type": "integer", "default": 1}
    try:
        manifest = NodeManifest.model_validate(data)
    except ValidationError as exc:
        assert name in str(exc)
        return
    assert manifest.params_model.model_validate({name: 2}).model_dump()[name] == 2


# ------------------------------------------------------------------------------ RuntimeData

VIDEO_FORMATS = {"RGB24": 3, "BGR24": 3, "RGBA": 4, "BGRA": 4, "GRAY8": 1, "I420": 0,
                 "NV12": 0}
TENSOR_DTYPES = ["<u1", "<i1", "<i2", "<u2", "<i4", "<u4", "<i8", "<f4", "<f8", "|b1"]


@st.composite
def messages(draw: Any) -> RuntimeData:
    kind = draw(st.sampled_from(["audio", "video", "text", "tensor"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "audio":
        channels = draw(st.integers(1, 4))
        frames = draw(st.integers(0, 32))
        dtype = draw(st.sampled_from(["<f4", "<i2"]))
        samples = rng.integers(-1000, 1000, (frames, channels)).astype(dtype)
        if channels == 1:
            samples = samples.reshape(frames)
        return RuntimeData.audio(samples, sample_rate=draw(st.integers(1, 192000)),
                                 channels=channels)
    if kind == "video":
        fmt = draw(st.sampled_from(sorted(VIDEO_FORMATS)))
        width, height = draw(st.integers(1, 4)) * 2, draw(st.integers(1, 4)) * 2
        planes = VIDEO_FORMATS[fmt]
        shape = ((height * 3 // 2, width) if planes == 0 else
                 (height, width) if planes == 1 else (height, width, planes))
        frame = rng.integers(0, 256, shape, dtype=np.uint8)
        return RuntimeData.video(frame, format=fmt,
                                 fps=draw(st.floats(0.5, 240, allow_nan=False)))
    if kind == "text":
        return RuntimeData.text(draw(st.text(max_size=40)),
                                language=draw(st.sampled_from([None, "en", "fr-CA"])))
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    dtype = draw(st.sampled_from(TENSOR_DTYPES))
    return RuntimeData.tensor(rng.integers(0, 100, shape).astype(dtype))


def crc_offset() -> int:
    return int(getattr(wire, "CRC_OFFSET", getattr(wire, "_CRC_OFFSET", 248)))


def with_crc(header: bytearray) -> bytearray:
    at = crc_offset()
    header[at:at + 4] = zlib.crc32(bytes(header[:at])).to_bytes(4, "little")
    return header


def parse(raw: bytes, tally: Counter[str]) -> RuntimeData | None:
    try:
        data = RuntimeData.from_bytes(raw)
    except WireFormatError:
        tally["rejected"] += 1
        return None
    tally["accepted"] += 1
    assert data.payload_size == len(raw) - wire.HEADER_SIZE
    array = data.as_array()
    assert array.nbytes == data.payload_size
    if data.data_type == "text":  # the payload is not checksummed: a flip may break UTF-8
        try:
            data.as_text()
        except WireFormatError as exc:  # reported as a damaged message, never a bare error
            assert "not valid UTF-8" in str(exc)
    return data


def test_fuzz_runtime_data(request: pytest.FixtureRequest) -> None:
    tally: Counter[str] = Counter()
    header = wire.HEADER_SIZE

    @fuzz_settings(request)
    @given(message=messages(), data=st.data())
    def mutations(message: RuntimeData, data: st.DataObject) -> None:
        raw = message.to_bytes()
        back = parse(raw, tally)  # the valid message round-trips
        assert back is not None
        assert back.data_type == message.data_type
        assert repr(back.metadata) == repr(message.metadata)
        assert back.as_array().tobytes() == message.as_array().tobytes()

        cut = data.draw(st.integers(0, len(raw) - 1), label="truncate")
        assert parse(raw[:cut], tally) is None, f"a message truncated at {cut} was accepted"
        extra = data.draw(st.binary(min_size=1, max_size=64), label="oversize")
        assert parse(raw + extra, tally) is None, "a message with trailing bytes was accepted"

        flipped = bytearray(raw)
        at = data.draw(st.integers(0, len(raw) - 1), label="flip")
        flipped[at] ^= 1 << data.draw(st.integers(0, 7))
        parsed = parse(bytes(flipped), tally)
        if at < header:
            assert parsed is None, f"a header with bit {at} flipped was accepted"

        # Header fields rewritten with a valid CRC: reaches every check behind the CRC.
        forged = bytearray(raw)
        for _ in range(data.draw(st.integers(1, 6), label="fields")):
            pos = data.draw(st.integers(6, crc_offset() - 1))
            forged[pos] = data.draw(st.integers(0, 255))
        with_crc(forged)
        parse(bytes(forged), tally)

    @fuzz_settings(request)
    @given(raw=st.binary(max_size=600), valid_crc=st.booleans())
    def garbage(raw: bytes, valid_crc: bool) -> None:
        if valid_crc and len(raw) >= header:
            forged = bytearray(raw)
            forged[:4] = wire.MAGIC
            forged[4:6] = (1).to_bytes(2, "little")
            raw = bytes(with_crc(forged))
        parse(raw, tally)

    mutations()
    garbage()
    record("fuzzing", wire_messages=sum(tally.values()), wire_rejected=tally["rejected"],
           wire_accepted=tally["accepted"])


# ------------------------------------------------------------------------------ CLI

def garbage_files(folder: Path) -> dict[str, Path]:
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n"
        for i in range(8))
    files: dict[str, bytes | str] = {
        "random.yaml": bytes(range(256)) * 4,
        "nul.yaml": b"nodes:\x00\x01\n - id",
        "latin1.yaml": "name: caf\xe9\n".encode("latin-1"),
        "empty.yaml": "",
        "list.json": "[1, 2, 3]",
        "truncated.yaml": yaml.safe_dump(VALID_CONFIG)[:97],
        "truncated.json": json.dumps(VALID_CONFIG)[:120],
        "truncated.toml": tomli_w.dumps(VALID_CONFIG)[:80],
        "unhashable_key.yaml": "? [a, b]\n: c\nnodes: []\n",
        "python_tag.yaml": "!!python/object/apply:os.system ['echo pwned']\n",
        "deep.json": '{"nodes": ' + "[" * 100_000 + "]" * 100_000 + "}",
        "deep.toml": "nodes = " + "[" * 100_000 + "]" * 100_000 + "\n",
        "deep.yaml": "nodes: " + "[" * 20_000 + "]" * 20_000 + "\n",
        "long_int.yaml": "nodes: [{id: s, type: ProbeSource, params: {count: "
                         + "9" * 5000 + "}}]\n",
        "billion_laughs.yaml": laughs + "name: *i\nnodes: [{id: s, type: ProbeSource}]\n",
        "wrong_types.yaml": "name: [1]\nnodes: {id: 3}\nconnections: 7\n",
    }
    paths = {}
    for name, content in files.items():
        path = folder / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        paths[name] = path
    (folder / "a_directory.yaml").mkdir()
    paths["a_directory.yaml"] = folder / "a_directory.yaml"
    paths["missing.yaml"] = folder / "missing.yaml"
    return paths


def test_validate_cli_on_garbage_files_exits_2_without_traceback(tmp_path: Path) -> None:
    paths = garbage_files(tmp_path)

    def validate(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "nodehost.cli", "validate", str(path)],
                              capture_output=True, text=True, timeout=120)

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(zip(paths, pool.map(validate, paths.values()), strict=True))
    wrong = {name: (r.returncode, r.stderr[-400:]) for name, r in results.items()
             if r.returncode != 2 or "Traceback" in r.stderr
             or not r.stderr.startswith("error: ") or str(paths[name]) not in r.stderr}
    record("fuzzing", cli_garbage_files=len(paths), cli_exit_2_no_traceback=len(paths)
           - len(wrong))
    assert not wrong, wrong
