"""Request parameters checked against the contract: Connexion's parameter validator, replaced
through `add_api(validator_map={"parameter": ...})` so that a refusal names every parameter."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Protocol
from urllib.parse import parse_qsl

from connexion.datastructures import MediaTypeDict
from connexion.utils import is_null, is_nullable
from connexion.validators import VALIDATOR_MAP as CONNEXION_VALIDATORS
from jsonschema import Draft4Validator
from starlette.types import Scope, Send

from errors import RequestValidationFailed, ValidationIssue

__all__ = ["PARSED", "VALIDATOR_MAP", "ParameterValidator"]

# Where a request's parsed (query, path) values wait for the handler's arguments.
PARSED = "mdp_parameters"


# RFC 3339 date-times as rfc3339-validator checks them (Connexion's checker does not run here).
_FORMATS = Draft4Validator.FORMAT_CHECKER


class UriParser(Protocol):
    """What Connexion's URI parser does for us: style, explode and type coercion per the spec."""

    def resolve_query(self, query_data: dict[str, list[str]]) -> dict[str, Any]: ...

    def resolve_path(self, path_data: dict[str, Any]) -> dict[str, Any]: ...


class ParameterValidator:
    """Checks a request's query, path and header parameters against its operation's contract,
    with the signature and `validate(scope)` of Connexion's own, which it replaces.

    Every offending parameter is reported (Connexion's stops at the first), in plain words. The
    values are coerced by Connexion's URI parser and left in the scope (`PARSED`) for the
    handler's arguments. The JSON schemas are compiled here, so this is built once per
    operation (see mdp.connexion_adaptations), not per request.
    """

    # Distinct valid requests remembered per operation; more empty the memo, never grow it.
    _VALID_CACHE_SIZE = 1024

    def __init__(
        self,
        parameters: Iterable[Mapping[str, Any]],
        uri_parser: UriParser,
        strict_validation: bool = False,
        security_query_params: Iterable[str] | None = None,
    ) -> None:
        self.uri_parser = uri_parser
        self.strict = strict_validation
        self.by_location: dict[str, list[Mapping[str, Any]]] = {}
        self.compiled: dict[int, Draft4Validator] = {}
        for param in parameters:
            self.by_location.setdefault(param["in"], []).append(param)
            self.compiled[id(param)] = Draft4Validator(
                param.get("schema", param), format_checker=_FORMATS
            )
        query = self.by_location.get("query", [])
        self.known_query = {p["name"] for p in query} | set(security_query_params or ())
        # Only an exploded array may repeat (`ids=1&ids=2`); any other repeat is ambiguous.
        self.repeatable = {
            p["name"]
            for p in query
            if p.get("schema", {}).get("type") == "array" and p.get("explode", True)
        }
        self.headers = {p["name"].lower().encode(): p for p in self.by_location.get("header", [])}
        # The contract's defaults, which the handler gets for absent parameters (as Connexion).
        self.defaults = {
            p["name"]: p["schema"]["default"] for p in query if "default" in p.get("schema", {})
        }
        # Per location, each parameter with the key its value is found under.
        self.checked = {
            location: [
                (p["name"].replace("-", "_") if location == "path" else p["name"], p)
                for p in params
            ]
            for location, params in self.by_location.items()
        }
        self.checks_path = "path" in self.by_location
        self._valid: dict[tuple[Any, ...], tuple[dict[str, Any], dict[str, Any]]] = {}

    def _check(self, location: str, param: Mapping[str, Any], value: Any) -> ValidationIssue | None:
        name = param["name"]
        if value is None:
            if param.get("required"):
                return ValidationIssue(location, name, f"missing required {location} parameter")
            return None
        if is_nullable(param) and is_null(value):
            return None
        if isinstance(value, float) and not math.isfinite(value):
            # JSON Schema's bounds compare false with NaN, so `duration=NaN` would pass them.
            return ValidationIssue(location, name, f"{value!r} is not a finite number")
        error = next(iter(self.compiled[id(param)].iter_errors(value)), None)
        return ValidationIssue(location, name, error.message) if error is not None else None

    def validate(self, scope: Scope) -> None:
        """Leaves the request's (query, path) values in `scope`; RequestValidationFailed naming
        every offending parameter otherwise."""
        scope["extensions"][PARSED] = self.check(scope)

    def check(self, scope: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The request's (query, path) values, coerced, or RequestValidationFailed."""
        header_values: dict[str, str] = {}
        for key, value in scope["headers"]:
            if key in self.headers:
                header_values.setdefault(self.headers[key]["name"], value.decode("latin-1"))
        path_params = dict(scope.get("path_params") or {}) if self.checks_path else {}
        # Validation is a function of these alone, and clients repeat the same few requests
        # (a poll of one symbol's price): each distinct valid one is parsed once.
        memo = (scope["query_string"], tuple(header_values.items()), tuple(path_params.items()))
        parsed = self._valid.get(memo)
        if parsed is None:
            parsed = self._parse(scope["query_string"], header_values, path_params)
            if len(self._valid) >= self._VALID_CACHE_SIZE:
                self._valid.clear()
            self._valid[memo] = parsed
        query, path = parsed
        # Copies: the handler may change what it is given, never what the next request gets.
        return {
            name: list(value) if isinstance(value, list) else value for name, value in query.items()
        }, dict(path)

    def _parse(
        self, query_string: bytes, header_values: dict[str, str], path_params: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        issues: list[ValidationIssue] = []
        query = dict(self.defaults)
        if query_string:
            raw: dict[str, list[str]] = {}
            # As Starlette parses it (`request.query_params`), keeping every repeated value.
            for name, value in parse_qsl(query_string.decode("latin-1"), True):
                raw.setdefault(name, []).append(value)
            if self.strict:
                issues.extend(
                    ValidationIssue("query", name, "unknown query parameter")
                    for name in sorted(raw.keys() - self.known_query)
                )
            issues.extend(
                ValidationIssue("query", name, f"given {len(values)} times; give it once")
                for name, values in raw.items()
                if len(values) > 1 and name in self.known_query and name not in self.repeatable
            )
            query.update(self.uri_parser.resolve_query(raw))
        path: dict[str, Any] = {}
        if self.checks_path:
            path = self.uri_parser.resolve_path(path_params)
        for location, values in (("query", query), ("path", path), ("header", header_values)):
            for name, param in self.checked.get(location, ()):
                issue = self._check(location, param, values.get(name))
                if issue is not None:
                    issues.append(issue)
        if issues:
            raise RequestValidationFailed(issues)
        return query, path


class _StreamedFileValidator:
    """Export files pass response validation unchecked: Connexion would buffer the whole
    (maybe compressed) file and parse NDJSON as one JSON document. Tests read them back."""

    def __init__(self, scope: Scope, **_: Any) -> None:
        pass

    def wrap_send(self, send: Send) -> Send:
        return send


# For `add_api(validator_map=...)`. Connexion picks a response body validator by media type,
# and its `*/*json` matches NDJSON too.
VALIDATOR_MAP = {
    "parameter": ParameterValidator,
    "response": MediaTypeDict(
        {**CONNEXION_VALIDATORS["response"], "application/x-ndjson": _StreamedFileValidator}
    ),
}
