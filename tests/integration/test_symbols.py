"""Queries on `symbols`, inside a transaction that is rolled back after each test."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from persistence.connections import driver_connection
from persistence.symbols import ensure_symbols, list_symbols, symbol_exists


async def _names(conn: AsyncConnection, *codes: str) -> dict[str, tuple[str, object]]:
    rows = await conn.execute(
        text("SELECT symbol, name, created_at FROM symbols WHERE symbol = ANY(:codes)"),
        {"codes": list(codes)},
    )
    return {symbol: (name, created_at) for symbol, name, created_at in rows}


async def test_ensure_symbols_inserts_missing_and_keeps_existing_names(
    conn: AsyncConnection,
) -> None:
    await ensure_symbols(conn, [("SYMA", "Alpha"), ("SYMB", "Beta")])
    before = await _names(conn, "SYMA", "SYMB")

    await ensure_symbols(conn, [("SYMA", "Renamed"), ("SYMC", "Gamma")])

    after = await _names(conn, "SYMA", "SYMB", "SYMC")
    assert after["SYMA"] == before["SYMA"]
    assert after["SYMA"][0] == "Alpha"
    assert after["SYMB"] == before["SYMB"]
    assert after["SYMC"][0] == "Gamma"


async def test_ensure_symbols_with_no_pairs_changes_nothing(conn: AsyncConnection) -> None:
    count = "SELECT count(*) FROM symbols"
    before = (await conn.execute(text(count))).scalar_one()

    await ensure_symbols(conn, [])

    assert (await conn.execute(text(count))).scalar_one() == before


async def test_list_symbols_pages_in_code_order_after_cursor(conn: AsyncConnection) -> None:
    # Only this test's rows: whatever other suites committed is hidden until the rollback.
    await conn.execute(text("DELETE FROM symbols"))
    await ensure_symbols(
        conn,
        [("MSFT", "Microsoft"), ("AAPL", "Apple"), ("TSLA", "Tesla"), ("GOOG", "Alphabet")]
        + [("A1", "A one"), ("BRK", "Berkshire")],
    )

    pages = []
    after = None
    while True:
        page = await list_symbols(await driver_connection(conn), limit=2, after=after)
        if not page:
            break
        pages.append([row["symbol"] for row in page])
        after = page[-1]["symbol"]

    assert pages == [["A1", "AAPL"], ["BRK", "GOOG"], ["MSFT", "TSLA"]]
    first = (await list_symbols(await driver_connection(conn), limit=1, after=None))[0]
    assert (first["symbol"], first["name"]) == ("A1", "A one")
    assert first["created_at"].tzinfo is not None


async def test_list_symbols_after_a_code_that_does_not_exist_starts_at_the_next_one(
    conn: AsyncConnection,
) -> None:
    await conn.execute(text("DELETE FROM symbols"))
    await ensure_symbols(conn, [("AAPL", "Apple"), ("GOOG", "Alphabet"), ("MSFT", "Microsoft")])

    page = await list_symbols(await driver_connection(conn), limit=10, after="B")

    assert [row["symbol"] for row in page] == ["GOOG", "MSFT"]


async def test_list_symbols_walk_returns_punctuated_codes_exactly_once(
    conn: AsyncConnection,
) -> None:
    # The contract allows . _ - in codes; whatever order the collation gives them, a keyset
    # walk must neither skip nor repeat one.
    await conn.execute(text("DELETE FROM symbols"))
    codes = ["BRK.B", "BRK-B", "BRKB", "BRK_B", "BRK.A", "B.RK", "X-1", "X.1", "X1", "X_1", "9"]
    await ensure_symbols(conn, [(code, code.lower()) for code in codes])

    seen: list[str] = []
    after = None
    while page := await list_symbols(await driver_connection(conn), limit=3, after=after):
        seen.extend(row["symbol"] for row in page)
        after = page[-1]["symbol"]

    assert sorted(seen) == sorted(codes)
    assert len(seen) == len(set(seen))


async def test_symbol_exists_only_for_stored_codes(conn: AsyncConnection) -> None:
    await ensure_symbols(conn, [("EXST", "Exists")])

    assert await symbol_exists(await driver_connection(conn), "EXST") is True
    assert await symbol_exists(await driver_connection(conn), "NOPE") is False
    # Codes are stored upper case; callers normalise before asking.
    assert await symbol_exists(await driver_connection(conn), "exst") is False
