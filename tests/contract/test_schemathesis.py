"""Schemathesis against the live server: every operation, every check, valid and invalid data,
and the stateful phase that follows the contract's links from page to page."""

from __future__ import annotations

from typing import Any

import hypothesis
import schemathesis

schema = schemathesis.pytest.from_fixture("api_schema")

# What a request that fits the schema may still be refused for: the contract cannot express
# "start before end", "within the supported years" or "a cursor this service issued".
# Exports add "a window no longer than the export limit" (days or rows, a setting).
REFUSALS_OF_VALID_REQUESTS = {"invalid_cursor", "invalid_time_range", "export_too_large"}
# Nor can it list the IANA time zones (the service's tz database knows them): an unknown
# `timezone` is a validation failure naming only that parameter.
UNCHECKABLE_PARAMETERS = {"timezone"}


@schemathesis.check
def valid_requests_are_refused_only_for_what_the_schema_cannot_say(
    ctx: Any, response: Any, case: schemathesis.Case
) -> bool | None:
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 400:
        return None
    body = response.json()
    code = body.get("code")
    named = {error["name"] for error in body.get("errors", [])}
    if code == "validation_failed" and named and named <= UNCHECKABLE_PARAMETERS:
        return True
    if code not in REFUSALS_OF_VALID_REQUESTS:
        raise AssertionError(
            f"A request that fits the schema was refused with 400 {code!r}; only "
            f"{sorted(REFUSALS_OF_VALID_REQUESTS)} may refuse one."
        )
    return True


def bound_streams(case: schemathesis.Case) -> None:
    """A stream ends only when told to: give every generated stream request a short bound,
    keeping the values that are invalid on purpose (they must still get their 400)."""
    if not case.operation.path.startswith("/stream/") or not isinstance(case.query, dict):
        return
    for name, cap in (("limit", 2), ("duration", 1)):
        value = case.query.get(name)
        if value is None or (isinstance(value, int | float) and value > cap):
            case.query[name] = cap


@schema.parametrize()
def test_every_operation_conforms_to_the_contract(case: schemathesis.Case) -> None:
    bound_streams(case)
    case.call_and_validate()


def test_the_stateful_phase_walks_pages_through_the_next_cursor_links(
    api_schema: schemathesis.BaseSchema,
) -> None:
    followed: list[str] = []

    class Pages(api_schema.as_state_machine()):  # type: ignore[misc]
        def before_call(self, case: schemathesis.Case) -> None:
            # Pages of two, so the live server's five symbols span several pages.
            if case.operation.path == "/symbols" and case.query is not None:
                case.query["limit"] = 2
            bound_streams(case)
            # A 304 (say for `If-None-Match: *`) has no body, hence no link to follow.
            if case.headers is not None:
                case.headers.pop("If-None-Match", None)

        def after_call(self, response: Any, case: schemathesis.Case) -> None:
            if response.status_code == 200 and (case.query or {}).get("cursor"):
                followed.append(case.operation.path)

    Pages.run(
        settings=hypothesis.settings(
            max_examples=30,
            stateful_step_count=6,
            derandomize=True,
            deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
    )

    assert "/symbols" in followed
