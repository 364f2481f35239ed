"""The contract's access declarations, as the service reads them at start-up."""

from __future__ import annotations

import copy

import pytest

from access.security import required_scopes
from mdp.spec import load_contract

PUBLIC = {
    "getRoot",
    "getHealth",
    "getOpenapiJson",
    "getOpenapiYaml",
    "getRedoc",
    "getChart",
}


def _operations(document: dict) -> dict[str, dict]:  # type: ignore[type-arg]
    return {
        operation["operationId"]: operation
        for item in document["paths"].values()
        for operation in item.values()
        if isinstance(operation, dict) and "operationId" in operation
    }


def test_every_operation_is_public_or_names_its_scopes() -> None:
    document = load_contract().document
    scopes = required_scopes(document)
    operations = _operations(document)
    assert set(scopes) | PUBLIC == set(operations)
    assert not set(scopes) & PUBLIC
    assert scopes["listTrades"] == {"read"}
    assert scopes["getMetrics"] == {"ops"}


def test_each_secured_operation_documents_its_scope_and_refusals() -> None:
    document = load_contract().document
    for name, scopes in required_scopes(document).items():
        operation = _operations(document)[name]
        for scope in scopes:
            assert f"`{scope}` scope" in operation["description"], name
        assert {"401", "403", "429"} <= set(operation["responses"]), name


def test_an_operation_that_forgets_its_scopes_stops_the_service() -> None:
    document = copy.deepcopy(load_contract().document)
    del document["paths"]["/trades"]["get"]["x-required-scopes"]
    with pytest.raises(ValueError, match="listTrades needs x-required-scopes"):
        required_scopes(document)


def test_unknown_scopes_and_scopes_on_public_operations_are_refused() -> None:
    document = copy.deepcopy(load_contract().document)
    document["paths"]["/trades"]["get"]["x-required-scopes"] = ["admin"]
    document["paths"]["/health"]["get"]["x-required-scopes"] = ["ops"]
    with pytest.raises(ValueError) as raised:
        required_scopes(document)
    assert "listTrades needs" in str(raised.value)
    assert "getHealth declares x-required-scopes but no security" in str(raised.value)
