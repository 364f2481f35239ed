"""Schemathesis against the live server: every operation, every check, valid and invalid data."""

from __future__ import annotations

import schemathesis

schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_every_operation_conforms_to_the_contract(case: schemathesis.Case) -> None:
    case.call_and_validate()
