"""Trade sources: `synthetic` (the walk in ingestion/generator.py) or a venue, one module each.

A third venue is one more module with a class satisfying `base.Venue`, registered in `VENUES`.
"""

from __future__ import annotations

from ingestion.sources.base import Venue
from ingestion.sources.binance import Binance
from ingestion.sources.coinbase import Coinbase

__all__ = ["FEEDS", "VENUES", "venue"]

VENUES: dict[str, type[Venue]] = {"coinbase": Coinbase, "binance": Binance}
FEEDS = ("synthetic", *VENUES)


def venue(name: str) -> Venue:
    return VENUES[name]()
