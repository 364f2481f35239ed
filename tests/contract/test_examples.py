"""Every example in the contract validates against its own schema, and the live server's answers
to the requests the parameter examples describe validate against the documented responses."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import pytest
import yaml
from openapi_schema_validator import OAS30Validator, oas30_format_checker

from tests.contract.support import load_spec, operations, resolve
from tests.support import Service

Spec = dict[str, Any]
SCHEMA_CHILDREN = ("items", "not", "additionalProperties")
SCHEMA_LISTS = ("allOf", "oneOf", "anyOf")


def _errors(spec: Spec, schema: Any, value: Any) -> list[str]:
    """Why `value` does not match the OpenAPI 3.0 `schema` (nullable, formats and all)."""
    validator = OAS30Validator(resolve(spec, schema), format_checker=oas30_format_checker)
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
        for error in validator.iter_errors(value)
    ]


def _schema_examples(spec: Spec, schema: Any, where: str) -> Iterator[tuple[str, Any, Any]]:
    """(location, schema, example) for `schema` and every schema nested in it."""
    if not isinstance(schema, Mapping) or "$ref" in schema:
        return
    if "example" in schema:
        yield where, schema, schema["example"]
    for name, child in schema.get("properties", {}).items():
        yield from _schema_examples(spec, child, f"{where}.{name}")
    for keyword in SCHEMA_CHILDREN:
        yield from _schema_examples(spec, schema.get(keyword), f"{where}.{keyword}")
    for keyword in SCHEMA_LISTS:
        for index, child in enumerate(schema.get(keyword, [])):
            yield from _schema_examples(spec, child, f"{where}.{keyword}[{index}]")


def _holder_examples(holder: Mapping[str, Any], where: str) -> Iterator[tuple[str, Any]]:
    """`example` and every `examples[*].value` of a media type, parameter or header."""
    if "example" in holder:
        yield where, holder["example"]
    for name, example in holder.get("examples", {}).items():
        yield f"{where}.examples.{name}", example["value"]


def all_examples(spec: Spec) -> Iterator[tuple[str, Any, Any]]:
    """(location, schema, example) for every example of the spec, with its own schema."""
    components = spec.get("components", {})
    for name, schema in components.get("schemas", {}).items():
        yield from _schema_examples(spec, schema, f"components.schemas.{name}")
    holders: list[tuple[str, Any]] = []
    for name, param in components.get("parameters", {}).items():
        holders.append((f"components.parameters.{name}", param))
    for name, header in components.get("headers", {}).items():
        holders.append((f"components.headers.{name}", header))
    for name, response in components.get("responses", {}).items():
        for media_type, content in response.get("content", {}).items():
            holders.append((f"components.responses.{name}.{media_type}", content))
    for method, path, operation in operations(spec):
        at = f"{method} {path}"
        for param in operation.get("parameters", []):
            if "$ref" not in param:
                holders.append((f"{at} parameter {param['name']}", param))
        for status, response in operation["responses"].items():
            for media_type, content in response.get("content", {}).items():
                holders.append((f"{at} {status} {media_type}", content))
            for name, header in response.get("headers", {}).items():
                if "$ref" not in header:
                    holders.append((f"{at} {status} header {name}", header))
    for where, holder in holders:
        if "schema" not in holder:
            continue  # A media type without a schema (none today) has nothing to check against.
        for location, example in _holder_examples(holder, where):
            yield location, holder["schema"], example
        yield from _schema_examples(spec, holder["schema"], f"{where}.schema")


def invalid_examples(spec: Spec) -> list[str]:
    return [
        f"{where}: {error}"
        for where, schema, example in all_examples(spec)
        for error in _errors(spec, schema, example)
    ]


def test_every_example_validates_against_its_schema() -> None:
    spec = load_spec()
    checked = list(all_examples(spec))
    # Guard against a walk that silently finds nothing.
    assert len(checked) > 100
    assert invalid_examples(spec) == []


def _response_example(spec: Spec, path: str) -> Any:
    return spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["example"]


@pytest.mark.parametrize(
    ("defect", "expected"),
    [
        ("price as a string", "price: '187.42' is not of type 'number'"),
        ("timestamp without offset", "timestamp: '2026-01-02T03:04:05' is not a 'date-time'"),
        ("null where not nullable", "symbol: None is not of type 'string'"),
        ("unknown enum value", "order: 'newest' is not one of ['asc', 'desc']"),
        ("missing required property", "(root): 'volume' is a required property"),
    ],
)
def test_seeded_bad_example_is_caught(defect: str, expected: str) -> None:
    spec = load_spec()
    if defect == "price as a string":
        _response_example(spec, "/price/latest")["price"] = "187.42"
    elif defect == "timestamp without offset":
        _response_example(spec, "/price/latest")["timestamp"] = "2026-01-02T03:04:05"
    elif defect == "null where not nullable":
        _response_example(spec, "/price/latest")["symbol"] = None
    elif defect == "unknown enum value":
        _response_example(spec, "/trades")["order"] = "newest"
    else:
        del _response_example(spec, "/price/latest")["volume"]
    assert any(expected in error for error in invalid_examples(spec)), invalid_examples(spec)


def test_nullable_examples_are_accepted() -> None:
    spec = load_spec()
    schema = spec["components"]["schemas"]["TradeList"]["properties"]["end"]
    assert schema["nullable"] is True
    assert _errors(spec, schema, None) == []
    assert _errors(spec, schema, "2026-01-02T04:00:00Z") == []


def _example_requests(spec: Spec) -> Iterator[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """Per operation: one request with only the required parameters' examples, and one with
    every parameter that has an example."""
    for method, path, operation in operations(spec):
        params = [resolve(spec, param) for param in operation.get("parameters", [])]
        for variant in ("required", "all"):
            query: dict[str, Any] = {}
            headers: dict[str, Any] = {}
            for param in params:
                if "example" not in param or (variant == "required" and not param.get("required")):
                    continue
                target = query if param["in"] == "query" else headers
                value = param["example"]
                if isinstance(value, list) and param.get("explode") is False:
                    # OpenAPI's form style without explode: one comma-separated value.
                    value = ",".join(map(str, value))
                target[param["name"]] = value
            yield method, path, query, headers


def _decode(media_type: str, response: httpx.Response) -> Any:
    if media_type == "text/event-stream":
        # One event (what the schema describes): its `id`, `event` and `data` fields.
        fields = (line.partition(": ") for line in response.text.splitlines())
        return {name: value for name, _, value in fields if name and not name.startswith(":")}
    if media_type.endswith("json"):
        return response.json()
    if media_type == "application/yaml":
        return yaml.safe_load(response.content)
    return response.text


def _request(
    http: httpx.Client, method: str, path: str, query: dict[str, Any], headers: dict[str, Any]
) -> httpx.Response:
    """The answer; of an event stream (which may never end), only its first event."""
    with http.stream(method, path, params=query, headers=headers) as response:
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            response.read()
            return response
        lines: list[str] = []
        for line in response.iter_lines():
            lines.append(line)
            if not line and any(seen.startswith("data:") for seen in lines):
                break
        body = "\n".join(lines).encode()
        return httpx.Response(
            response.status_code, headers=response.headers, content=body, request=response.request
        )


def live_failures(spec: Spec, live_service: Service) -> list[str]:
    """What the live server's answers to the example requests (sent with a key that has every
    scope) break of `spec`."""
    failures: list[str] = []
    requests = list(_example_requests(spec))
    assert len(requests) == 2 * len(list(operations(spec)))
    with httpx.Client(base_url=live_service.base, headers=live_service.headers, timeout=10) as http:
        for method, path, query, headers in requests:
            response = _request(http, method, path, query, headers)
            at = f"{method} {path} {json.dumps(query)} -> {response.status_code}"
            documented = spec["paths"][path][method.lower()]["responses"]
            if str(response.status_code) not in documented:
                failures.append(f"{at}: status not documented")
                continue
            declared = resolve(spec, documented[str(response.status_code)])
            media_type = response.headers["content-type"].split(";")[0].strip()
            if media_type not in declared.get("content", {}):
                failures.append(f"{at}: undocumented media type {media_type}")
                continue
            schema = declared["content"][media_type]["schema"]
            body = _decode(media_type, response)
            failures += [f"{at}: {error}" for error in _errors(spec, schema, body)]
            for name, header in declared.get("headers", {}).items():
                value = response.headers.get(name)
                if value is None:
                    if header.get("required"):
                        failures.append(f"{at}: header {name} missing")
                    continue
                typed: Any = value
                if header["schema"].get("type") == "integer" and value.isdigit():
                    typed = int(value)  # headers are text; the schema types what they say
                failures += [f"{at} {name}: {e}" for e in _errors(spec, header["schema"], typed)]
            if response.status_code != 200:
                failures.append(f"{at}: example request not answered with 200: {response.text}")
    return failures


def test_live_responses_to_example_requests_validate(live_service: Service) -> None:
    assert live_failures(load_spec(), live_service) == []


def test_live_check_catches_a_spec_the_server_does_not_meet(live_service: Service) -> None:
    spec = load_spec()
    spec["components"]["schemas"]["Price"]["maximum"] = 1
    del spec["components"]["schemas"]["Symbol"]["properties"]["created_at"]["format"]
    spec["components"]["schemas"]["Symbol"]["properties"]["created_at"]["type"] = "integer"
    failures = live_failures(spec, live_service)
    assert any("GET /price/latest" in f and "price:" in f and "maximum" in f for f in failures)
    assert any("GET /symbols" in f and "is not of type 'integer'" in f for f in failures)
