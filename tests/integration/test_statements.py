"""Statements: parameters typed as declared, one statement run alike by asyncpg and SQLAlchemy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Integer, Interval, String
from sqlalchemy.ext.asyncio import AsyncConnection

from persistence.connections import driver_connection
from persistence.statements import TIMESTAMP, statement

MOMENT = datetime(2026, 2, 3, 4, 5, 6, tzinfo=UTC)


def test_a_parameter_without_a_declared_type_is_refused() -> None:
    with pytest.raises(TypeError, match="lo"):
        statement("SELECT :lo + :step", step=Interval)


def test_each_parameter_is_cast_to_its_declared_type_whatever_its_name() -> None:
    # `lo` a text and `symbol` a number: the names say nothing, the declaration decides.
    declared = statement("SELECT :lo, :symbol, :lo", lo=String, symbol=Integer)

    assert declared.sql == "SELECT $1::VARCHAR, $2::INTEGER, $1::VARCHAR"
    assert declared.names == ("lo", "symbol")


async def test_one_statement_answers_alike_through_both_stacks(conn: AsyncConnection) -> None:
    shifted = statement(
        "SELECT :moment + :step * :times, upper(:symbol)",
        moment=TIMESTAMP,
        step=Interval,
        times=Integer,
        symbol=String,
    )
    values = {"moment": MOMENT, "step": timedelta(minutes=1), "times": 3, "symbol": "aapl"}
    driver = await driver_connection(conn)

    through_asyncpg = await shifted.fetchrow(driver, **values)
    through_sqlalchemy = await shifted.fetchrow(conn, **values)

    expected = (MOMENT + timedelta(minutes=3), "AAPL")
    assert tuple(through_asyncpg) == tuple(through_sqlalchemy) == expected
