"""HTTP handlers, one module per tag; the spec's `listCandles` is `async def list_candles`."""
