"""The contract passes Spectral (spectral:oas plus .spectral.yaml) and openapi-spec-validator,
and each project rule really catches the defect it exists for."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.contract.support import REPOSITORY, SPEC_PATH, load_spec, node_tool, run_tool

Spec = dict[str, Any]


def _spectral(*documents: Path) -> list[dict[str, Any]]:
    result = run_tool(
        [
            node_tool("spectral"),
            "lint",
            "--ruleset",
            REPOSITORY / ".spectral.yaml",
            "--format",
            "json",
            "--quiet",
            "--fail-severity",
            "warn",
            *documents,
        ]
    )
    assert result.stdout.strip(), result.stderr
    findings: list[dict[str, Any]] = json.loads(result.stdout)
    assert (result.returncode != 0) == bool(findings), result.stderr
    return findings


def test_spec_passes_spectral() -> None:
    findings = _spectral(SPEC_PATH)
    assert findings == []


def test_spec_passes_openapi_spec_validator() -> None:
    from openapi_spec_validator import validate
    from openapi_spec_validator.readers import read_from_filename

    spec, _ = read_from_filename(str(SPEC_PATH))
    validate(spec)


def test_openapi_spec_validator_rejects_an_invalid_spec(tmp_path: Path) -> None:
    from openapi_spec_validator import validate
    from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

    spec = load_spec()
    spec["paths"]["/trades"]["get"]["parameters"][0] = {"name": "symbol", "in": "body"}
    with pytest.raises(OpenAPIValidationError):
        validate(spec)


def _operation(spec: Spec, path: str) -> Spec:
    operation: Spec = spec["paths"][path]["get"]
    return operation


def _rename_operation_id(spec: Spec) -> None:
    _operation(spec, "/")["operationId"] = "getRooot"


def _dotted_operation_id(spec: Spec) -> None:
    # The 1.x style: a module path in the id, which generated clients turn into method names.
    _operation(spec, "/metrics")["operationId"] = "handlers.meta.get_metrics"


def _operation_id_naming_a_helper(spec: Spec) -> None:
    # handlers/params.py has `def symbol_code`: a helper, not an `async def` handler.
    _operation(spec, "/symbols")["operationId"] = "symbolCode"


def _drop_summary(spec: Spec) -> None:
    del _operation(spec, "/metrics")["summary"]


# Each on an operation of its own: an operation's findings point at the operation itself.
def _drop_description(spec: Spec) -> None:
    del _operation(spec, "/health")["description"]


def _drop_tags(spec: Spec) -> None:
    del _operation(spec, "/status/ingestion")["tags"]


def _drop_response_example(spec: Spec) -> None:
    del _operation(spec, "/metrics")["responses"]["200"]["content"]["application/json"]["example"]


def _plain_json_404(spec: Spec) -> None:
    _operation(spec, "/trades")["responses"]["404"] = {
        "description": "Not found.",
        "content": {"application/json": {"schema": {"type": "object"}, "example": {}}},
    }


def _inline_problem_look_alike(spec: Spec) -> None:
    problem = copy.deepcopy(spec["components"]["schemas"]["Problem"])
    _operation(spec, "/candles")["responses"]["400"] = {
        "description": "Bad request.",
        "content": {"application/problem+json": {"schema": problem, "example": {}}},
    }


def _camel_case_property(spec: Spec) -> None:
    spec["components"]["schemas"]["Trade"]["properties"]["tradeId"] = {
        "type": "string",
        "example": "t-1",
    }


def _camel_case_query_parameter(spec: Spec) -> None:
    _operation(spec, "/trades")["parameters"].append(
        {"name": "pageSize", "in": "query", "schema": {"type": "string"}}
    )


def _timestamp_without_format(spec: Spec) -> None:
    del spec["components"]["schemas"]["Trade"]["properties"]["timestamp"]["format"]


def _at_suffix_without_format(spec: Spec) -> None:
    del spec["components"]["schemas"]["Metrics"]["properties"]["started_at"]["format"]


def _start_parameter_without_format(spec: Spec) -> None:
    del spec["components"]["parameters"]["Start"]["schema"]["format"]


def _integer_without_maximum(spec: Spec) -> None:
    del spec["components"]["schemas"]["Trade"]["properties"]["id"]["maximum"]


def _parameter_integer_without_maximum(spec: Spec) -> None:
    limit = next(p for p in _operation(spec, "/trades")["parameters"] if p.get("name") == "limit")
    del limit["schema"]["maximum"]


def _invalid_example(spec: Spec) -> None:
    example = _operation(spec, "/price/latest")["responses"]["200"]["content"]["application/json"]
    example["example"]["price"] = "187.42"


SEEDED_DEFECTS: dict[str, tuple[Callable[[Spec], None], str]] = {
    "renamed operationId": (_rename_operation_id, "mdp-operation-id-handler"),
    "dotted operationId": (_dotted_operation_id, "mdp-operation-id-handler"),
    "operationId naming a helper": (_operation_id_naming_a_helper, "mdp-operation-id-handler"),
    "operation without summary": (_drop_summary, "mdp-operation-summary"),
    "operation without description": (_drop_description, "operation-description"),
    "operation without tag": (_drop_tags, "operation-tags"),
    "response without example": (_drop_response_example, "mdp-response-example"),
    "404 as plain JSON": (_plain_json_404, "mdp-error-responses-use-problem"),
    "400 with a copy of Problem": (_inline_problem_look_alike, "mdp-error-responses-use-problem"),
    "camelCase property": (_camel_case_property, "mdp-properties-snake-case"),
    "camelCase query parameter": (_camel_case_query_parameter, "mdp-query-parameters-snake-case"),
    "timestamp without date-time": (_timestamp_without_format, "mdp-timestamp-date-time"),
    "*_at without date-time": (_at_suffix_without_format, "mdp-timestamp-date-time"),
    "start parameter without date-time": (
        _start_parameter_without_format,
        "mdp-timestamp-date-time",
    ),
    "integer property without maximum": (_integer_without_maximum, "mdp-integer-maximum"),
    "integer parameter without maximum": (
        _parameter_integer_without_maximum,
        "mdp-integer-maximum",
    ),
    "example not matching its schema": (_invalid_example, "oas3-valid-media-example"),
}


Location = tuple[str, ...]


def _changes(before: Any, after: Any, at: Location = ()) -> list[Location]:
    """Where `after` differs from `before`: the locations of added, removed or changed values."""
    if isinstance(before, dict) and isinstance(after, dict):
        keys = [*before, *(key for key in after if key not in before)]
        return [
            change
            for key in keys
            for change in _changes(before.get(key), after.get(key), (*at, str(key)))
        ]
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [
            change
            for index, (old, new) in enumerate(zip(before, after, strict=True))
            for change in _changes(old, new, (*at, str(index)))
        ]
    if isinstance(before, list) and isinstance(after, list) and after[: len(before)] == before:
        return [(*at, str(index)) for index in range(len(before), len(after))]
    return [] if before == after else [at]


def _related(finding: Location, change: Location) -> bool:
    """A rule reports a defect at the value that changed or at what holds it."""
    shorter = min(len(finding), len(change))
    return finding[:shorter] == change[:shorter]


@pytest.fixture(scope="module")
def seeded_findings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Spectral's rule codes per seeded defect. Spectral takes seconds per document, so one
    run lints one copy carrying every defect (the spec itself has no finding), and a finding
    counts for the defect whose change it points at."""
    spec = load_spec()
    changed: dict[str, list[Location]] = {}
    for name, (seed, _) in SEEDED_DEFECTS.items():
        before = copy.deepcopy(spec)
        seed(spec)
        changed[name] = _changes(before, spec)
        assert changed[name], f"seeding {name!r} changed nothing"
    document = tmp_path_factory.mktemp("seeded-specs") / "defects.yaml"
    document.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    findings = [
        (finding["code"], tuple(map(str, finding["path"]))) for finding in _spectral(document)
    ]
    return {
        name: {
            code
            for code, path in findings
            if any(_related(path, change) for change in changed[name])
        }
        for name in SEEDED_DEFECTS
    }


def test_a_defect_is_located_where_its_seed_changed_the_spec() -> None:
    spec: Spec = {"paths": {"/a": {"get": {"summary": "x", "parameters": [{"name": "p"}]}}}}
    seeded = copy.deepcopy(spec)
    del seeded["paths"]["/a"]["get"]["summary"]
    seeded["paths"]["/a"]["get"]["parameters"].append({"name": "q"})
    changes = _changes(spec, seeded)
    assert changes == [
        ("paths", "/a", "get", "summary"),
        ("paths", "/a", "get", "parameters", "1"),
    ]
    assert _related(("paths", "/a", "get"), changes[0])
    assert not _related(("paths", "/b", "get"), changes[0])


@pytest.mark.parametrize("defect", SEEDED_DEFECTS)
def test_spectral_catches_seeded_defect(defect: str, seeded_findings: dict[str, set[str]]) -> None:
    _, rule = SEEDED_DEFECTS[defect]
    assert rule in seeded_findings[defect]
