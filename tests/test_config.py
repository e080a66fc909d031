"""Pipeline configs: loading, structure and validation against node types, every error located."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import yaml
from pipeline_cases import BAD_CONFIGS, BAD_FILES, VALID, Edit, catalog_types, edited, make_file

from nodehost.config import (
    DEFAULT_CAPACITY,
    Endpoint,
    PipelineConfig,
    ValidatedPipeline,
    format_loc,
    load_config,
    load_document,
    parse_config,
    validate_pipeline,
)
from nodehost.errors import ConfigError

TYPES = catalog_types()


def validate(config: Any) -> ValidatedPipeline:
    return validate_pipeline(load_config(config), TYPES)


def problems(config: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate(config)
    return [str(issue) for issue in info.value.issues]


def test_valid_config_resolves_nodes_connections_and_order() -> None:
    pipeline = validate(VALID)
    assert list(pipeline.nodes) == ["mic", "gain", "resample", "speaker"]
    assert pipeline.order == ["mic", "gain", "resample", "speaker"]
    first, second, third = pipeline.connections
    assert (first.source, first.target) == (Endpoint("mic", "out"), Endpoint("gain", "in"))
    assert first.capacity == DEFAULT_CAPACITY and first.backpressure is True
    assert second.capacity == 1024
    assert str(third.source) == "resample.out" and third.backpressure is False
    gain = pipeline.nodes["gain"]
    assert (gain.params.gain, gain.params.mode) == (2.0, "db")  # type: ignore[attr-defined]
    assert pipeline.nodes["mic"].params.count == 3  # type: ignore[attr-defined]


def test_params_defaults_are_filled_in() -> None:
    config = edited(lambda c: c["nodes"][1].update(params={}))
    params = validate(config).nodes["gain"].params
    assert (params.gain, params.mode) == (1.0, "linear")  # type: ignore[attr-defined]


def test_operator_sandbox_grant_is_merged_with_the_manifest() -> None:
    speaker = validate(VALID).nodes["speaker"]
    assert speaker.sandbox.fs_write == ["/tmp/out.wav"]
    assert speaker.sandbox.network is False


def test_fan_out_from_one_output_to_several_inputs_is_allowed() -> None:
    config = {
        "nodes": [{"id": "mic", "type": "Mic"}, {"id": "a", "type": "Gain"},
                  {"id": "b", "type": "Gain"}],
        "connections": [{"from": "mic", "to": "a"}, {"from": "mic.out", "to": "b.in"}],
    }
    pipeline = validate(config)
    assert pipeline.order[0] == "mic" and set(pipeline.order[1:]) == {"a", "b"}


@pytest.mark.parametrize(("edit", "expected"), BAD_CONFIGS)
def test_bad_config_is_reported_with_its_location(edit: Edit, expected: list[str]) -> None:
    found = problems(edited(edit))
    located = expected[0]
    assert any(issue.startswith(located) for issue in found), found
    rendered = "\n".join(found)
    for fragment in expected[1:]:
        assert fragment in rendered


def test_every_problem_is_reported_in_one_pass() -> None:
    def edit(config: dict[str, Any]) -> None:
        config["nodes"][0]["params"]["count"] = -5
        config["nodes"][1]["params"]["gain"] = "x"
        config["connections"][1]["capacity"] = 1000

    with pytest.raises(ConfigError) as info:
        validate(edited(edit))
    # structure first: the capacity is a structural error, params need the node types
    assert [i.loc for i in info.value.issues] == ["connections[1].capacity"]
    edit_params = edited(lambda c: (c["nodes"][0]["params"].update(count=-5),
                                    c["nodes"][1]["params"].update(gain="x")))
    with pytest.raises(ConfigError) as info:
        validate(edit_params)
    assert [i.loc for i in info.value.issues] == ["nodes[0].params.count",
                                                  "nodes[1].params.gain"]
    assert info.value.render().startswith("2 problems:")


def test_an_invalid_node_is_reported_once_not_again_by_its_connections() -> None:
    found = problems(edited(_set_type("gain", "Gian")))
    assert len(found) == 1 and found[0].startswith("nodes[1].type: unknown node type")


def test_duplicate_id_is_found_even_when_the_first_node_is_invalid() -> None:
    def edit(config: dict[str, Any]) -> None:
        config["nodes"][1]["type"] = "Nope"
        config["nodes"][3]["id"] = "gain"

    found = problems(edited(edit))
    assert any(i.startswith("nodes[3].id: duplicate node id 'gain'") for i in found), found


def test_unknown_type_without_close_match_suggests_nothing() -> None:
    found = problems(edited(_set_type("gain", "Zzzzzz")))
    assert "did you mean" not in found[0]


def _set_type(node_id: str, node_type: str) -> Edit:
    def edit(config: dict[str, Any]) -> None:
        for node in config["nodes"]:
            if node["id"] == node_id:
                node["type"] = node_type
    return edit


def test_derived_rate_follows_the_param() -> None:
    pipeline = validate(VALID)
    resample = pipeline.nodes["resample"]
    from nodehost.config import output_rates

    assert output_rates(resample, resample.manifest.outputs["out"]) == [48000]


# ------------------------------------------------------------------------------ loading

@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json", ".toml"])
def test_the_same_config_loads_from_yaml_json_and_toml(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"pipeline{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(VALID))
    elif suffix == ".toml":
        path.write_text(tomli_w.dumps(VALID))
    else:
        path.write_text(yaml.safe_dump(VALID))
    assert load_config(path).model_dump() == PipelineConfig.model_validate(VALID).model_dump()
    assert validate(path).order == ["mic", "gain", "resample", "speaker"]


@pytest.mark.parametrize(("name", "content", "expected"), BAD_FILES)
def test_unreadable_config_file(tmp_path: Path, name: str, content: Any,
                                expected: list[str]) -> None:
    path = make_file(tmp_path, name, content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    for fragment in expected:
        assert fragment in str(info.value)


def test_parse_errors_name_the_file(tmp_path: Path) -> None:
    path = make_file(tmp_path, "bad.json", "{")
    with pytest.raises(ConfigError) as info:
        load_document(path)
    assert info.value.source == str(path)
    assert str(info.value).startswith(f"{path}: line 1, column 2: invalid JSON")


def test_structural_errors_name_the_file(tmp_path: Path) -> None:
    path = make_file(tmp_path, "p.yaml", "nodes: []\n")
    with pytest.raises(ConfigError, match=r"p\.yaml: nodes: List should have at least 1 item"):
        load_config(path)


def test_load_config_accepts_a_mapping_and_a_model() -> None:
    model = load_config(VALID)
    assert load_config(model) is model
    assert parse_config(model) is model
    assert model.connections[0].from_ == "mic"


def test_config_defaults() -> None:
    config = load_config({"nodes": [{"id": "mic", "type": "Mic"}]})
    assert (config.name, config.max_processes, config.init_timeout_s) == ("pipeline", None, 300)


@pytest.mark.parametrize(("loc", "text"), [
    (("nodes", 2, "params", "sample_rate"), "nodes[2].params.sample_rate"),
    (("connections", 0, "from"), "connections[0].from"),
    ((), ""),
    (("max_processes",), "max_processes"),
])
def test_format_loc(loc: tuple[int | str, ...], text: str) -> None:
    assert format_loc(loc) == text
