"""Node manifests and the params models built from them."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from nodehost.config import pydantic_issues
from nodehost.manifest import NodeManifest, ParamSpec, PortSpec, SandboxPolicy

BASE: dict[str, Any] = {
    "node_type": "Gain",
    "version": "1.0.0",
    "description": "Multiply audio by a constant factor",
    "entrypoint": "nodehost_audio.gain:Gain",
    "inputs": {"in": {"data_type": "audio", "sample_rate": [16000, 24000, 48000],
                      "channels": 1}},
    "outputs": {"out": {"data_type": "audio"}},
    "params": {"gain": {"type": "number", "default": 1.0, "minimum": 0.0,
                        "description": "linear factor"}},
    "resources": {"memory_mb": 256},
    "sandbox": {"network": False, "fs_read": [], "fs_write": []},
    "runtime": {"python": "3.12", "requirements": ["liquid-audio==1.3.0"]},
}


def manifest(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    for key, value in changes.items():
        if value is ...:
            del data[key]
        else:
            data[key] = value
    return data


def issues_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as info:
        NodeManifest.model_validate(data)
    return [str(issue) for issue in pydantic_issues(info.value)]


def test_the_design_example_is_valid() -> None:
    m = NodeManifest.model_validate(BASE)
    assert m.inputs["in"].channels == [1]
    assert m.inputs["in"].sample_rate == [16000, 24000, 48000]
    assert m.runtime is not None and m.runtime.python == "3.12"
    assert m.resources.memory_mb == 256
    assert not m.is_source and not m.is_sink


def test_minimal_manifest_defaults() -> None:
    m = NodeManifest.model_validate({"node_type": "Src", "version": "0.1.0",
                                     "entrypoint": "pkg.mod:Src",
                                     "outputs": {"out": {"data_type": "text"}}})
    assert m.is_source and not m.is_sink
    assert m.sandbox == SandboxPolicy() and m.sandbox.network is False
    assert m.runtime is None and m.params == {} and m.resources.memory_mb is None


@pytest.mark.parametrize("version", ["0.0.0", "1.2.3", "10.20.30", "1.0.0-alpha.1",
                                     "1.0.0+build.5", "1.0.0-rc.1+sha.abc"])
def test_semver_accepted(version: str) -> None:
    assert NodeManifest.model_validate(manifest(version=version)).version == version


@pytest.mark.parametrize("version", ["1", "1.0", "v1.0.0", "01.0.0", "1.0.0.0", "1.0.0-",
                                     "one", "", "1.0.0\n"])
def test_semver_rejected(version: str) -> None:
    assert issues_of(manifest(version=version)) == [
        f"version: {version!r} is not a semantic version (e.g. 1.0.0)"
    ]


@pytest.mark.parametrize("node_type", ["Gain", "_private", "Whisper2", "speech_to_text"])
def test_node_type_identifier_accepted(node_type: str) -> None:
    NodeManifest.model_validate(manifest(node_type=node_type))


@pytest.mark.parametrize("node_type", ["2Gain", "Gain-2", "Gain node", "", "Gain.x", "Gain\n"])
def test_node_type_identifier_rejected(node_type: str) -> None:
    assert issues_of(manifest(node_type=node_type)) == [
        f"node_type: {node_type!r} is not a valid node type (letters, digits and _, not "
        "starting with a digit)"
    ]


@pytest.mark.parametrize("entrypoint", ["pkg:Cls", "pkg.mod:Cls", "a.b.c_d:_Cls2"])
def test_entrypoint_accepted(entrypoint: str) -> None:
    NodeManifest.model_validate(manifest(entrypoint=entrypoint))


@pytest.mark.parametrize("entrypoint", ["pkg.mod", "pkg.mod:", ":Cls", "pkg.mod:Cls.attr",
                                        "pkg..mod:Cls", "pkg/mod:Cls", "1pkg:Cls",
                                        "pkg.mod:Cls extra", "pkg.mod:Cls\n"])
def test_entrypoint_rejected(entrypoint: str) -> None:
    assert issues_of(manifest(entrypoint=entrypoint)) == [
        f'entrypoint: {entrypoint!r} is not of the form "package.module:Class"'
    ]


@pytest.mark.parametrize("section", ["inputs", "outputs"])
@pytest.mark.parametrize("name", ["in-put", "1st", "a b", "", "in\n"])
def test_port_names_must_be_identifiers(section: str, name: str) -> None:
    found = issues_of(manifest(**{section: {name: {"data_type": "audio"}}}))
    assert found == [f"{section}: {name!r} is not a valid name (letters, digits, _)"]


def test_param_names_must_be_identifiers() -> None:
    assert issues_of(manifest(params={"my-gain": {"type": "number"}})) == [
        "params: 'my-gain' is not a valid name (letters, digits, _)"
    ]


def test_unknown_data_type_rejected() -> None:
    (issue,) = issues_of(manifest(outputs={"out": {"data_type": "midi"}}))
    assert issue.startswith("outputs.out.data_type: Input should be 'audio', 'video', 'text'")


@pytest.mark.parametrize(("field", "scalar"), [
    ("sample_rate", 16000), ("channels", 2), ("sample_format", "f32"), ("format", "RGB24"),
    ("dtype", "float32"), ("language", "en"),
])
def test_port_constraint_scalar_is_normalised_to_a_list(field: str, scalar: Any) -> None:
    port = PortSpec.model_validate({"data_type": "audio", field: scalar})
    assert getattr(port, field) == [scalar]
    listed = PortSpec.model_validate({"data_type": "audio", field: [scalar]})
    assert getattr(listed, field) == [scalar]
    assert PortSpec.model_validate({"data_type": "audio"}).model_dump()[field] is None


@pytest.mark.parametrize("field", ["sample_rate", "channels"])
@pytest.mark.parametrize("value", [0, -16000, [16000, 0]])
def test_rates_and_channels_must_be_positive(field: str, value: Any) -> None:
    found = issues_of(manifest(inputs={"in": {"data_type": "audio", field: value}}))
    assert found == [f"inputs.in.{field}: every value must be greater than 0"]


def test_unknown_sample_format_rejected() -> None:
    (issue,) = issues_of(manifest(inputs={"in": {"data_type": "audio",
                                                 "sample_format": "f64"}}))
    assert issue.startswith("inputs.in.sample_format[0]: Input should be 'f32' or 's16'")


@pytest.mark.parametrize("field", ["sample_rate_from_param", "channels_from_param"])
def test_derived_from_param_must_name_a_param(field: str) -> None:
    outputs = {"out": {"data_type": "audio", field: "rate"}}
    assert issues_of(manifest(outputs=outputs)) == [
        f"outputs.out.{field} names unknown param 'rate'"
    ]
    params = {"rate": {"type": "integer", "default": 16000}}
    m = NodeManifest.model_validate(manifest(outputs=outputs, params=params))
    assert getattr(m.outputs["out"], field) == "rate"


@pytest.mark.parametrize("field", ["sample_rate_from_param", "channels_from_param"])
def test_derived_from_param_is_refused_on_inputs(field: str) -> None:
    inputs = {"in": {"data_type": "audio", field: "gain"}}
    assert issues_of(manifest(inputs=inputs)) == [
        f"inputs.in: {field} is only meaningful on outputs"
    ]


def test_access_applies_to_path_params_only() -> None:
    params = {"n": {"type": "string", "access": "write"}}
    (issue,) = issues_of(manifest(params=params))
    assert issue == 'params.n: access applies to params of format "path"'
    params = {"out": {"type": "string", "format": "path", "access": "write"},
              "model": {"type": "string", "format": "path"}}
    m = NodeManifest.model_validate(manifest(params=params))
    assert (m.params["out"].path_access, m.params["model"].path_access) == ("write", "read")


@pytest.mark.parametrize(("field", "paths"), [("fs_read", ["data"]),
                                              ("fs_write", ["/tmp/ok", "./rel"])])
def test_sandbox_paths_must_be_absolute(field: str, paths: list[str]) -> None:
    assert issues_of(manifest(sandbox={field: paths})) == [
        f"sandbox.{field}: sandbox paths must be absolute: {paths[-1]!r}"
    ]


def test_sandbox_merge_with_operator_grant() -> None:
    policy = SandboxPolicy(fs_read=["/data"], fs_write=["/tmp/b"])
    merged = policy.merged(SandboxPolicy(network=True, fs_write=["/tmp/a", "/tmp/b"]))
    assert merged == SandboxPolicy(network=True, fs_read=["/data"],
                                   fs_write=["/tmp/a", "/tmp/b"])
    assert policy.merged(None) is policy


@pytest.mark.parametrize("python", ["3", "3.12.1", "python3.12", "2.7", "3.x", "3.12\n"])
def test_runtime_python_pattern(python: str) -> None:
    assert issues_of(manifest(runtime={"python": python})) == [
        f'runtime.python: {python!r} is not a Python version like "3.12"'
    ]


def test_runtime_python_is_required_when_runtime_is_given() -> None:
    assert issues_of(manifest(runtime={"requirements": []})) == ["runtime.python: Field required"]


@pytest.mark.parametrize("memory", [0, -1])
def test_memory_limit_positive(memory: int) -> None:
    assert issues_of(manifest(resources={"memory_mb": memory})) == [
        "resources.memory_mb: Input should be greater than 0"
    ]


@pytest.mark.parametrize(("where", "data"), [
    ("entry_point", manifest(entry_point="x:Y")),
    ("inputs.in.rate", manifest(inputs={"in": {"data_type": "audio", "rate": 1}})),
    ("params.gain.default_value", manifest(params={"gain": {"type": "number",
                                                             "default_value": 1}})),
    ("sandbox.net", manifest(sandbox={"net": True})),
    ("resources.cpu", manifest(resources={"cpu": 1})),
    ("runtime.pip", manifest(runtime={"python": "3.12", "pip": []})),
])
def test_unknown_keys_rejected(where: str, data: dict[str, Any]) -> None:
    assert issues_of(data) == [f"{where}: Extra inputs are not permitted"]


@pytest.mark.parametrize("missing", ["node_type", "version", "entrypoint"])
def test_required_manifest_fields(missing: str) -> None:
    assert issues_of(manifest(**{missing: ...})) == [f"{missing}: Field required"]


# ------------------------------------------------------------------------------ param specs

@pytest.mark.parametrize("spec", [
    {"type": "number", "default": 1},
    {"type": "number", "default": 0.5, "minimum": 0, "maximum": 1},
    {"type": "integer", "default": 3, "enum": [1, 3, 5]},
    {"type": "string", "default": "a", "enum": ["a", "b"]},
    {"type": "boolean", "default": False},
    {"type": "array", "default": [1, 2]},
    {"type": "object", "default": {"k": "v"}},
    {"type": "string", "required": True},
    {"type": "string", "required": True, "default": None},  # null: no default, as a dump writes
    {"type": "string", "default": None},
    {"type": "integer", "minimum": 1, "maximum": 1},
])
def test_param_spec_accepted(spec: dict[str, Any]) -> None:
    ParamSpec.model_validate(spec)


@pytest.mark.parametrize(("spec", "message"), [
    ({"type": "float"}, "type: Input should be 'number', 'integer', 'string', 'boolean', "
                        "'array' or 'object'"),
    ({"type": "number", "required": True, "default": 1.0},
     "a required param cannot have a default"),
    ({"type": "number", "minimum": 2, "maximum": 1}, "minimum is greater than maximum"),
    ({"type": "string", "minimum": 1}, "minimum/maximum apply to number and integer params, "
                                       "not string"),
    ({"type": "boolean", "maximum": 1}, "minimum/maximum apply to number and integer params, "
                                        "not boolean"),
    ({"type": "number", "default": "loud"}, "default 'loud' is not of type number"),
    ({"type": "integer", "default": 1.5}, "default 1.5 is not of type integer"),
    ({"type": "integer", "default": True}, "default True is not of type integer"),
    ({"type": "boolean", "default": 1}, "default 1 is not of type boolean"),
    ({"type": "string", "default": 3}, "default 3 is not of type string"),
    ({"type": "array", "default": "x"}, "default 'x' is not of type array"),
    ({"type": "object", "default": []}, "default [] is not of type object"),
    ({"type": "number", "default": -1, "minimum": 0}, "default -1 is less than the minimum 0"),
    ({"type": "number", "default": 2, "maximum": 1}, "default 2 is greater than the maximum 1"),
    ({"type": "string", "default": "c", "enum": ["a", "b"]},
     "default 'c' is not one of ['a', 'b']"),
    ({"type": "string", "enum": []}, "enum must list at least one value"),
    ({"type": "integer", "enum": [1, "two"]}, "enum value 'two' is not of type integer"),
    ({"type": "array", "enum": [[1]]}, "enum applies to scalar params, not array"),
    ({"type": "number", "deafult": 1}, "deafult: Extra inputs are not permitted"),
])
def test_param_spec_rejected(spec: dict[str, Any], message: str) -> None:
    found = issues_of(manifest(params={"p": spec}))
    assert len(found) == 1, found
    assert found[0].startswith("params.p") and found[0].endswith(message), found


# ------------------------------------------------------------------------------ params models

PARAMS: dict[str, Any] = {
    "gain": {"type": "number", "default": 1.0, "minimum": 0.0, "maximum": 10.0,
             "description": "linear factor"},
    "taps": {"type": "integer", "default": 4, "minimum": 1},
    "mode": {"type": "string", "enum": ["linear", "db"], "default": "linear"},
    "voice": {"type": "string", "required": True, "description": "voice name"},
    "enabled": {"type": "boolean", "default": True},
    "bands": {"type": "array", "default": [100, 1000]},
    "extra": {"type": "object", "default": {}},
    "label": {"type": "string"},
    "seed": {"type": "integer", "default": None},
}


def params_model() -> type[BaseModel]:
    return NodeManifest.model_validate(manifest(params=PARAMS)).params_model


def params_issues(values: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as info:
        params_model().model_validate(values)
    return [str(i) for i in pydantic_issues(info.value)]


def test_params_model_defaults_and_optional() -> None:
    params = params_model().model_validate({"voice": "amy"})
    assert params.model_dump() == {"gain": 1.0, "taps": 4, "mode": "linear", "voice": "amy",
                                   "enabled": True, "bands": [100, 1000], "extra": {},
                                   "label": None, "seed": None}


def test_params_model_is_cached_and_frozen() -> None:
    m = NodeManifest.model_validate(manifest(params=PARAMS))
    assert m.params_model is m.params_model
    params = m.params_model.model_validate({"voice": "amy"})
    with pytest.raises(ValidationError):
        params.gain = 2.0  # type: ignore[attr-defined]


def test_params_model_accepts_valid_values() -> None:
    params = params_model().model_validate({"voice": "amy", "gain": 10, "taps": 1,
                                            "mode": "db", "enabled": False, "label": "x",
                                            "seed": 7})
    assert (params.gain, params.mode, params.seed) == (10.0, "db", 7)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("values", "expected"), [
    ({}, "voice: Field required"),
    ({"voice": "a", "gain": "loud"}, "gain: Input should be a valid number"),
    ({"voice": "a", "gain": -0.5}, "gain: Input should be greater than or equal to 0"),
    ({"voice": "a", "gain": 10.5}, "gain: Input should be less than or equal to 10"),
    ({"voice": "a", "taps": 0}, "taps: Input should be greater than or equal to 1"),
    ({"voice": "a", "taps": 2.5}, "taps: Input should be a valid integer"),
    ({"voice": "a", "mode": "cubic"}, "mode: Input should be 'linear' or 'db'"),
    ({"voice": 5}, "voice: Input should be a valid string"),
    ({"voice": "a", "bands": 3}, "bands: Input should be a valid list"),
    ({"voice": "a", "extra": [1]}, "extra: Input should be a valid dictionary"),
    ({"voice": "a", "gian": 2}, "gian: Extra inputs are not permitted"),
])
def test_params_model_rejects(values: dict[str, Any], expected: str) -> None:
    found = params_issues(values)
    assert any(issue.startswith(expected) for issue in found), found


def test_params_json_schema_carries_descriptions_bounds_and_required() -> None:
    schema = params_model().model_json_schema()
    props = schema["properties"]
    assert props["gain"]["description"] == "linear factor"
    assert (props["gain"]["minimum"], props["gain"]["maximum"]) == (0.0, 10.0)
    assert props["voice"]["description"] == "voice name"
    assert props["mode"]["enum"] == ["linear", "db"]
    assert "description" not in props["taps"]
    assert schema["required"] == ["voice"]
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("params", [{}, {"voice": {"type": "string", "required": True}}])
def test_manifest_round_trips_through_json(params: dict[str, Any]) -> None:
    m = NodeManifest.model_validate({**BASE, "params": params})
    again = NodeManifest.model_validate_json(m.model_dump_json())
    assert again == m
    assert NodeManifest.model_validate(m.model_dump()) == m
