"""One operation's parameters and media types from the contract, compiled once per operation."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Protocol
from urllib.parse import parse_qsl

from connexion.utils import is_null, is_nullable
from jsonschema import Draft4Validator

from errors import NotAcceptable, RequestValidationFailed, ValidationIssue
from web.negotiation import media_range

__all__ = ["OperationParameters", "accepts"]


# RFC 3339 date-times as rfc3339-validator checks them (Connexion's checker does not run here).
_FORMATS = Draft4Validator.FORMAT_CHECKER


class UriParser(Protocol):
    """What Connexion's URI parser does for us: style, explode and type coercion per the spec."""

    def resolve_query(self, query_data: dict[str, list[str]]) -> dict[str, Any]: ...

    def resolve_path(self, path_data: dict[str, Any]) -> dict[str, Any]: ...


def accepts(accept: str, produces: Iterable[str]) -> bool:
    """Whether an `Accept` header admits at least one of `produces` (RFC 9110 §12.5.1)."""
    offered = [media_range(media)[0] for media in produces]
    for item in accept.split(","):
        media, quality = media_range(item)
        if quality <= 0 or not media:
            continue
        kind, _, subtype = media.partition("/")
        for offer in offered:
            offer_kind, _, offer_subtype = offer.partition("/")
            if kind == "*" or (kind == offer_kind and subtype in ("*", offer_subtype)):
                return True
    return False


class OperationParameters:
    """Checks a request's query, path and header parameters against the operation's contract
    and returns the query and path values, coerced, for the handler's arguments.

    Every offending parameter is reported (Connexion stops at the first), in plain words, and
    the JSON schemas are compiled once here instead of per request.
    """

    # Each distinct Accept value is judged once; clients send few distinct ones.
    _ACCEPT_CACHE_SIZE = 64
    # Distinct valid requests remembered per operation; more empty the memo, never grow it.
    _VALID_CACHE_SIZE = 1024

    def __init__(
        self,
        parameters: Iterable[Mapping[str, Any]],
        *,
        uri_parser: UriParser,
        produces: Iterable[str],
        strict: bool,
        allowed_extra_query: Iterable[str] = (),
    ) -> None:
        self.uri_parser = uri_parser
        self.strict = strict
        self.by_location: dict[str, list[Mapping[str, Any]]] = {}
        self.compiled: dict[int, Draft4Validator] = {}
        for param in parameters:
            self.by_location.setdefault(param["in"], []).append(param)
            self.compiled[id(param)] = Draft4Validator(
                param.get("schema", param), format_checker=_FORMATS
            )
        query = self.by_location.get("query", [])
        self.known_query = {p["name"] for p in query} | set(allowed_extra_query)
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
        self.produces = tuple(produces)
        # Per location, each parameter with the key its value is found under.
        self.checked = {
            location: [
                (p["name"].replace("-", "_") if location == "path" else p["name"], p)
                for p in params
            ]
            for location, params in self.by_location.items()
        }
        self.checks_path = "path" in self.by_location
        self._accepted: dict[bytes, bool] = {}
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

    def _check_accept(self, accept: bytes | None) -> None:
        if accept is None or not self.produces:
            return
        verdict = self._accepted.get(accept)
        if verdict is None:
            verdict = accepts(accept.decode("latin-1"), self.produces)
            if len(self._accepted) >= self._ACCEPT_CACHE_SIZE:
                self._accepted.clear()
            self._accepted[accept] = verdict
        if not verdict:
            offered = ", ".join(self.produces)
            raise NotAcceptable(f"Accept {accept.decode('latin-1')!r} admits none of: {offered}.")

    def check(self, scope: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The request's (query, path) values, coerced; RequestValidationFailed naming every
        offending parameter otherwise, NotAcceptable when no response type is acceptable."""
        accept = None
        header_values: dict[str, str] = {}
        for key, value in scope["headers"]:
            if key == b"accept":
                accept = value if accept is None else accept + b"," + value
            elif key in self.headers:
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
        self._check_accept(accept)
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
