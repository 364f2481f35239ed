"""The breaking-change gate (tools/contract_check.py) gives the right verdict on known pairs."""

from __future__ import annotations

import copy
import functools
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.contract.support import REPOSITORY
from tests.contract.support import load_spec as _load_spec
from tools.contract_check import Change, Severity, check, compare

Spec = dict[str, Any]
RELEASED = REPOSITORY / "openapi" / "released"
CHANGELOG = """# Changelog

## 1.0.0 — 2026-11-24

First contract.
"""


# The gate is tried on pairs made from the contract as if it were the released 1.0.0,
# whatever version the repository's contract has reached.
BASE_VERSION = "1.0.0"


@functools.cache
def _parsed() -> Spec:
    spec: Spec = copy.deepcopy(_load_spec())
    spec["info"]["version"] = BASE_VERSION
    return spec


def load_spec() -> Spec:
    """A fresh, mutable copy of the contract (parsed once per session)."""
    spec: Spec = copy.deepcopy(_parsed())
    return spec


def _get(spec: Spec, path: str) -> Spec:
    operation: Spec = spec["paths"][path]["get"]
    return operation


def _param(spec: Spec, path: str, name: str) -> Spec:
    for param in _get(spec, path)["parameters"]:
        if param.get("name") == name:
            parameter: Spec = param
            return parameter
    raise KeyError(name)


def _schema(spec: Spec, name: str) -> Spec:
    schema: Spec = spec["components"]["schemas"][name]
    return schema


def _remove_operation(spec: Spec) -> None:
    del spec["paths"]["/candles"]


def _remove_parameter(spec: Spec) -> None:
    params = _get(spec, "/trades")["parameters"]
    params.remove(_param(spec, "/trades", "order"))


def _remove_response_property(spec: Spec) -> None:
    del _schema(spec, "Trade")["properties"]["volume"]
    _schema(spec, "Trade")["required"].remove("volume")


def _response_property_no_longer_required(spec: Spec) -> None:
    _schema(spec, "LatestPrice")["required"].remove("volume")


def _new_required_parameter(spec: Spec) -> None:
    _get(spec, "/symbols")["parameters"].append(
        {"name": "exchange", "in": "query", "required": True, "schema": {"type": "string"}}
    )


def _parameter_becomes_required(spec: Spec) -> None:
    _param(spec, "/trades", "limit")["required"] = True


def _narrow_parameter_type(spec: Spec) -> None:
    _param(spec, "/trades", "order")["schema"]["type"] = "integer"


def _narrow_response_type_to_wider(spec: Spec) -> None:
    _schema(spec, "Candle")["properties"]["trade_count"]["type"] = "number"


def _remove_enum_value(spec: Spec) -> None:
    _param(spec, "/candles", "interval")["schema"]["enum"].remove("4h")


def _add_response_enum_value(spec: Spec) -> None:
    _schema(spec, "IngestionState")["enum"].append("paused")


def _lower_maximum(spec: Spec) -> None:
    _param(spec, "/trades", "limit")["schema"]["maximum"] = 500


def _raise_minimum(spec: Spec) -> None:
    _param(spec, "/candles", "limit")["schema"]["minimum"] = 10


def _add_pattern(spec: Spec) -> None:
    _param(spec, "/trades", "order")["schema"]["pattern"] = "^(asc|desc)$"


def _change_status_code(spec: Spec) -> None:
    responses = _get(spec, "/price/latest")["responses"]
    responses["410"] = responses.pop("404")


def _change_media_type(spec: Spec) -> None:
    content = _get(spec, "/price/latest")["responses"]["200"]["content"]
    content["application/vnd.mdp+json"] = content.pop("application/json")


def _remove_response_header(spec: Spec) -> None:
    spec["components"]["responses"]["ServiceUnavailable"]["headers"].pop("Retry-After")


def _rename_operation_id(spec: Spec) -> None:
    _get(spec, "/candles")["operationId"] = "getCandles"


def _change_default(spec: Spec) -> None:
    _param(spec, "/trades", "order")["schema"]["default"] = "asc"


def _narrow_response_bound(spec: Spec) -> None:
    _schema(spec, "TradeList")["properties"]["count"]["maximum"] = 999


def _add_response_pattern(spec: Spec) -> None:
    _schema(spec, "Symbol")["properties"]["name"]["pattern"] = "^[A-Za-z .]+$"


def _response_becomes_nullable(spec: Spec) -> None:
    _schema(spec, "LatestPrice")["properties"]["timestamp"]["nullable"] = True


BREAKING: dict[str, tuple[Callable[[Spec], None], str]] = {
    "removed operation": (_remove_operation, "GET /candles: operation removed"),
    "removed parameter": (_remove_parameter, "parameter removed"),
    "removed response property": (_remove_response_property, "volume: property removed"),
    "response property optional": (_response_property_no_longer_required, "no longer required"),
    "new required parameter": (_new_required_parameter, "new required parameter"),
    "parameter became required": (_parameter_becomes_required, "parameter became required"),
    "narrowed parameter type": (_narrow_parameter_type, "type narrowed"),
    "widened response type": (_narrow_response_type_to_wider, "type widened"),
    "removed enum value": (_remove_enum_value, "enum values removed: ['4h']"),
    "lowered response maximum": (_narrow_response_bound, "count: maximum changed from 1000 to 999"),
    "added pattern to a response": (_add_response_pattern, "name: pattern '^[A-Za-z .]+$' added"),
    "lowered maximum": (_lower_maximum, "maximum changed from 1000 to 500"),
    "raised minimum": (_raise_minimum, "minimum changed from 1 to 10"),
    "added pattern": (_add_pattern, "pattern '^(asc|desc)$' added"),
    "changed status code": (_change_status_code, "response 404: status code removed"),
    "changed media type": (_change_media_type, "application/json: media type removed"),
    "removed response header": (_remove_response_header, "header retry-after: response header"),
    "renamed operationId": (_rename_operation_id, "operationId renamed from 'listCandles'"),
    "changed parameter default": (_change_default, "default changed from 'desc' to 'asc'"),
    "response became nullable": (_response_becomes_nullable, "became nullable"),
}


def _add_optional_parameter(spec: Spec) -> None:
    _get(spec, "/trades")["parameters"].append(
        {
            "name": "min_volume",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": 1000000},
        }
    )


def _add_response_property(spec: Spec) -> None:
    _schema(spec, "Trade")["properties"]["venue"] = {"type": "string", "example": "XNAS"}


def _add_operation(spec: Spec) -> None:
    spec["paths"]["/symbols/{symbol}"] = {"get": copy.deepcopy(_get(spec, "/price/latest"))}


def _add_request_enum_value(spec: Spec) -> None:
    _param(spec, "/candles", "interval")["schema"]["enum"].append("1w")


def _raise_request_maximum(spec: Spec) -> None:
    _param(spec, "/trades", "limit")["schema"]["maximum"] = 5000


def _add_status_code(spec: Spec) -> None:
    _get(spec, "/symbols")["responses"]["409"] = {"$ref": "#/components/responses/BadRequest"}


def _edit_descriptions_and_examples(spec: Spec) -> None:
    _get(spec, "/trades")["description"] = "Trades, newest first."
    _schema(spec, "Trade")["properties"]["price"] = {"$ref": "#/components/schemas/Price"}
    _param(spec, "/trades", "limit")["example"] = 10


ADDITIVE: dict[str, Callable[[Spec], None]] = {
    "optional parameter": _add_optional_parameter,
    "response property": _add_response_property,
    "operation": _add_operation,
    "request enum value": _add_request_enum_value,
    "raised request maximum": _raise_request_maximum,
    "status code": _add_status_code,
    "descriptions and examples": _edit_descriptions_and_examples,
}


def _write(directory: Path, spec: Spec, *, changelog: str = CHANGELOG) -> tuple[Path, Path, Path]:
    released = directory / "released"
    released.mkdir(exist_ok=True)
    (released / "v1.yaml").write_text(
        yaml.safe_dump(load_spec(), sort_keys=False), encoding="utf-8"
    )
    spec_path = directory / "openapi.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    changelog_path = directory / "CHANGELOG.md"
    changelog_path.write_text(changelog, encoding="utf-8")
    return spec_path, released, changelog_path


def _breaking(changes: list[Change]) -> list[str]:
    return [str(change) for change in changes if change.breaking]


def test_released_copies_are_valid_and_named_by_their_major() -> None:
    from openapi_spec_validator import validate

    copies = sorted(RELEASED.glob("v*.yaml"))
    assert copies, "openapi/released/ holds no released contract"
    for path in copies:
        released = yaml.safe_load(path.read_text(encoding="utf-8"))
        validate(released)
        assert path.stem == f"v{str(released['info']['version']).split('.')[0]}"


def test_identical_specs_have_no_changes() -> None:
    assert compare(load_spec(), load_spec()) == []


@pytest.mark.parametrize("name", BREAKING)
def test_breaking_change_is_reported(name: str) -> None:
    seed, expected = BREAKING[name]
    new = load_spec()
    seed(new)
    breaking = _breaking(compare(load_spec(), new))
    assert any(expected in change for change in breaking), breaking


@pytest.mark.parametrize("name", ADDITIVE)
def test_additive_change_is_not_breaking(name: str) -> None:
    new = load_spec()
    ADDITIVE[name](new)
    changes = compare(load_spec(), new)
    assert _breaking(changes) == []


def _raise_response_maximum(spec: Spec) -> None:
    _schema(spec, "SymbolList")["properties"]["count"]["maximum"] = 5000


WARNINGS: dict[str, tuple[Callable[[Spec], None], str]] = {
    "added response enum value": (_add_response_enum_value, "enum values added: ['paused']"),
    "raised response maximum": (_raise_response_maximum, "maximum changed from 1000 to 5000"),
}


@pytest.mark.parametrize("name", WARNINGS)
def test_response_taking_more_values_is_a_warning_not_a_failure(name: str) -> None:
    seed, expected = WARNINGS[name]
    new = load_spec()
    seed(new)
    changes = compare(load_spec(), new)
    assert _breaking(changes) == []
    warnings = [str(c) for c in changes if c.severity is Severity.WARNING]
    assert any(expected in warning for warning in warnings), warnings


def test_adding_a_maximum_to_a_request_parameter_is_breaking() -> None:
    old, new = load_spec(), load_spec()
    del _param(old, "/symbols", "limit")["schema"]["maximum"]
    assert _breaking(compare(old, new)) == [
        "BREAKING: GET /symbols parameter query.limit: maximum 1000 added"
    ]


def test_gate_fails_on_a_breaking_change_without_a_major_bump(tmp_path: Path) -> None:
    spec = load_spec()
    _lower_maximum(spec)
    verdict = check(*_write(tmp_path, spec))
    assert not verdict.ok
    assert any("bump info.version to 2.0.0" in reason for reason in verdict.reasons)


def test_gate_passes_an_additive_change(tmp_path: Path) -> None:
    spec = load_spec()
    _add_optional_parameter(spec)
    verdict = check(*_write(tmp_path, spec))
    assert verdict.ok, verdict.reasons
    assert verdict.changes and not verdict.breaking


def test_gate_passes_a_breaking_change_with_a_major_bump_and_changelog(tmp_path: Path) -> None:
    spec = load_spec()
    _remove_operation(spec)
    spec["info"]["version"] = "2.0.0"
    changelog = CHANGELOG.replace(
        "# Changelog\n", "# Changelog\n\n## 2.0.0\n\n- Remove `GET /candles`: replaced by bars.\n"
    )
    verdict = check(*_write(tmp_path, spec, changelog=changelog))
    assert verdict.ok, verdict.reasons
    assert verdict.breaking


def test_gate_passes_a_breaking_change_waiting_for_an_announced_major(tmp_path: Path) -> None:
    spec = load_spec()
    _rename_operation_id(spec)
    changelog = CHANGELOG.replace(
        "# Changelog\n",
        "# Changelog\n\n## Unreleased\n\n### Migrating to 2.0.0\n\n- Renamed `listCandles`.\n",
    )
    verdict = check(*_write(tmp_path, spec, changelog=changelog))
    assert verdict.ok, verdict.reasons
    assert verdict.breaking and verdict.pending_major == 2


def test_gate_fails_an_unreleased_section_without_a_migration_note(tmp_path: Path) -> None:
    spec = load_spec()
    _rename_operation_id(spec)
    changelog = CHANGELOG.replace(
        "# Changelog\n", "# Changelog\n\n## Unreleased\n\n### Migrating to 2.0.0\n\n## 1.0.0\n"
    )
    verdict = check(*_write(tmp_path, spec, changelog=changelog))
    assert not verdict.ok


def test_gate_fails_an_announced_major_that_is_not_the_next(tmp_path: Path) -> None:
    changelog = CHANGELOG.replace(
        "# Changelog\n", "# Changelog\n\n## Unreleased\n\n### Migrating to 3.0.0\n\nText.\n"
    )
    verdict = check(*_write(tmp_path, load_spec(), changelog=changelog))
    assert not verdict.ok
    assert any("next major after" in reason for reason in verdict.reasons)


def test_gate_fails_a_major_bump_the_changelog_does_not_explain(tmp_path: Path) -> None:
    spec = load_spec()
    _remove_operation(spec)
    spec["info"]["version"] = "2.0.0"
    verdict = check(*_write(tmp_path, spec))
    assert not verdict.ok
    assert any("no '## 2.x.y' section" in reason for reason in verdict.reasons)


def test_gate_fails_a_version_lower_than_released(tmp_path: Path) -> None:
    spec = load_spec()
    spec["info"]["version"] = "0.9.0"
    verdict = check(*_write(tmp_path, spec))
    assert not verdict.ok


def test_gate_compares_with_the_released_copy_of_the_same_major(tmp_path: Path) -> None:
    spec = load_spec()
    spec["info"]["version"] = "2.0.0"
    spec_path, released, changelog = _write(tmp_path, spec)
    # Once 2.0.0 is released its copy is the baseline: a later removal needs 3.0.0.
    (released / "v2.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    _remove_parameter(spec)
    spec["info"]["version"] = "2.1.0"
    spec_path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    verdict = check(spec_path, released, changelog)
    assert not verdict.ok
    assert any("v2.yaml" in reason for reason in verdict.reasons)


def test_make_contract_check_command_passes_on_the_repository() -> None:
    result = subprocess.run(
        [sys.executable, str(REPOSITORY / "tools" / "contract_check.py")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "contract-check: OK" in result.stdout


def test_command_exits_non_zero_on_a_breaking_change(tmp_path: Path) -> None:
    spec = load_spec()
    _remove_response_property(spec)
    spec_path, released, changelog = _write(tmp_path, spec)
    result = subprocess.run(
        [
            sys.executable,
            str(REPOSITORY / "tools" / "contract_check.py"),
            "--spec",
            str(spec_path),
            "--released-dir",
            str(released),
            "--changelog",
            str(changelog),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "BREAKING: GET /trades response 200 application/json.trades[].volume" in result.stdout
