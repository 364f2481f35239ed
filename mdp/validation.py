"""Parameter validation that reports every offending parameter, with compiled schemas."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from connexion.utils import is_null, is_nullable
from connexion.validators import ParameterValidator
from jsonschema import Draft4Validator, FormatChecker

from mdp.problems import RequestValidationFailed, ValidationIssue

__all__ = ["CollectingParameterValidator"]


def _date_time(value: object) -> bool:
    if not Draft4Validator.FORMAT_CHECKER.conforms(value, "date-time"):
        return False
    if isinstance(value, str):
        datetime.fromisoformat(value.upper()).astimezone(UTC)
    return True


# RFC 3339 syntax is not enough: the value must also exist as a UTC datetime (no year 0000,
# nothing past 9999 once converted), so it is reported together with every other bad parameter.
_FORMATS = FormatChecker(formats=())
_FORMATS.checkers = dict(Draft4Validator.FORMAT_CHECKER.checkers)
_FORMATS.checks("date-time", raises=(ValueError, OverflowError))(_date_time)

# Connexion builds a validator per request; the compiled schemas are cached per operation,
# keyed by its parameter list (kept alive in the entry, so the id cannot be reused).
_compiled_by_operation: dict[int, tuple[list[Any], dict[int, Draft4Validator]]] = {}


def _compiled(parameters: list[Any]) -> dict[int, Draft4Validator]:
    entry = _compiled_by_operation.get(id(parameters))
    if entry is None or entry[0] is not parameters:
        compiled = {
            id(param): Draft4Validator(param.get("schema", param), format_checker=_FORMATS)
            for param in parameters
        }
        entry = _compiled_by_operation[id(parameters)] = (parameters, compiled)
    return entry[1]


class CollectingParameterValidator(ParameterValidator):  # type: ignore[misc]
    """Connexion's validator stops at the first error and pastes the JSON schema into the
    message; this one lists every parameter that is wrong, in `errors`, in plain words."""

    def __init__(self, parameters: list[Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(parameters, *args, **kwargs)
        self._compiled = _compiled(parameters)

    def _check(self, location: str, param: dict[str, Any], value: Any) -> ValidationIssue | None:
        name = param["name"]
        if value is None:
            if param.get("required"):
                return ValidationIssue(location, name, f"missing required {location} parameter")
            return None
        if is_nullable(param) and is_null(value):
            return None
        error = next(iter(self._compiled[id(param)].iter_errors(value)), None)
        return ValidationIssue(location, name, error.message) if error is not None else None

    def validate_request(self, request: Any) -> None:
        issues: list[ValidationIssue] = []
        if self.strict_validation:
            unknown = self.validate_query_parameter_list(
                request, security_params=self.security_query_params
            )
            issues.extend(
                ValidationIssue("query", name, "unknown query parameter")
                for name in sorted(unknown)
            )
        query = request.query_params
        path = request.path_params
        for param in self.parameters.get("query", []):
            issue = self._check("query", param, query.get(param["name"]))
            if issue:
                issues.append(issue)
        for param in self.parameters.get("path", []):
            issue = self._check("path", param, path.get(param["name"].replace("-", "_")))
            if issue:
                issues.append(issue)
        for param in self.parameters.get("header", []):
            issue = self._check("header", param, request.headers.get(param["name"]))
            if issue:
                issues.append(issue)
        if issues:
            raise RequestValidationFailed(issues)
