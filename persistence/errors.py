"""Domain errors: raised below the HTTP layer, turned into problems in one central place."""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "DatabaseUnavailable",
    "DomainError",
    "ExportTooLarge",
    "InvalidCursor",
    "InvalidTimeRange",
    "NoTrades",
    "Overloaded",
    "SymbolNotFound",
    "SymbolsNotFound",
]


class DomainError(Exception):
    """An error with a stable machine `code`; the HTTP layer maps codes to statuses."""

    code: ClassVar[str]

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class SymbolNotFound(DomainError):
    code = "symbol_not_found"

    def __init__(self, symbol: str) -> None:
        super().__init__(f"Symbol {symbol!r} is not known to this service.")
        self.symbol = symbol


class SymbolsNotFound(DomainError):
    """Several symbols asked for at once, some unknown: the detail names every one."""

    code = "symbol_not_found"

    def __init__(self, symbols: list[str]) -> None:
        names = ", ".join(repr(symbol) for symbol in symbols)
        verb = "Symbol {} is" if len(symbols) == 1 else "Symbols {} are"
        super().__init__(f"{verb.format(names)} not known to this service.")
        self.symbols = symbols


class NoTrades(DomainError):
    code = "no_trades"

    def __init__(self, symbol: str) -> None:
        super().__init__(f"Symbol {symbol!r} has no trades yet.")
        self.symbol = symbol


class InvalidTimeRange(DomainError):
    code = "invalid_time_range"


class InvalidCursor(DomainError):
    code = "invalid_cursor"


class DatabaseUnavailable(DomainError):
    """The database cannot be reached (or is not migrated yet); clients should retry."""

    code = "database_unavailable"


class Overloaded(DomainError):
    """More requests wait for the database than this instance can serve in time: refused
    before any work, so clients retry elsewhere or later instead of timing out here."""

    code = "overloaded"


class ExportTooLarge(DomainError):
    """An export window over the configured maximum of rows or days; refused before streaming."""

    code = "export_too_large"
