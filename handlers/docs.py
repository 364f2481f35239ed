"""Documentation operations (tag `docs`): the contract as served, the ReDoc page, and a chart."""

from __future__ import annotations

import functools
from html import escape
from pathlib import Path

from starlette.responses import HTMLResponse, Response

from handlers.context import app_state

__all__ = ["get_chart", "get_openapi_json", "get_openapi_yaml", "get_redoc"]

# TradingView's lightweight-charts, vendored (served offline, like Swagger UI), and the page's app.
_STATIC = Path(__file__).with_name("static")


async def get_openapi_json() -> Response:
    return Response(app_state().contract.json_text, media_type="application/json")


async def get_openapi_yaml() -> Response:
    # Verbatim: reviewers and generators see exactly the file in the repository.
    return Response(app_state().contract.yaml_text, media_type="application/yaml")


async def get_redoc() -> Response:
    settings = app_state().settings
    integrity = (
        f' integrity="{escape(settings.redoc_script_integrity)}" crossorigin="anonymous"'
        if settings.redoc_script_integrity
        else ""
    )
    page = f"""<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>Market Data Platform API — ReDoc</title>
    <style>body {{ margin: 0; padding: 0; }}</style>
  </head>
  <body>
    <redoc spec-url="/openapi.json"></redoc>
    <script src="{escape(settings.redoc_script_url)}"{integrity}></script>
  </body>
</html>
"""
    return HTMLResponse(page)


@functools.cache
def _chart_page() -> str:
    library = (_STATIC / "lightweight-charts.standalone.production.js").read_text("utf-8")
    app = (_STATIC / "chart.js").read_text("utf-8")
    return f"""<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>Chart — Market Data Platform</title>
    <link rel="icon" href="data:,">
    <style>
      html, body {{ margin: 0; height: 100%; font: 14px system-ui, sans-serif; }}
      body {{ display: flex; flex-direction: column; }}
      header {{ display: flex; gap: 12px; align-items: center; padding: 8px 12px;
                border-bottom: 1px solid #ddd; flex-wrap: wrap; }}
      header label {{ display: flex; gap: 4px; align-items: center; }}
      #status {{ color: #666; }}
      #live {{ margin-left: auto; color: #26a69a; }}
      #key-form {{ padding: 8px 12px; background: #fff8e1; border-bottom: 1px solid #ddd; }}
      #chart {{ flex: 1; min-height: 300px; }}
    </style>
  </head>
  <body>
    <header>
      <label>Symbol <select id="symbol"></select></label>
      <label>Interval <select id="interval"></select></label>
      <label>Time zone <select id="timezone"></select></label>
      <span id="status"></span>
      <span id="live"></span>
    </header>
    <form id="key-form" hidden>
      <span id="key-message"></span>
      <input id="key" type="password" placeholder="mdp_…" autocomplete="off" size="40">
      <button type="submit">Use this key</button>
      <small>Kept in this tab only (sessionStorage), sent in the X-API-Key header.</small>
    </form>
    <div id="chart"></div>
    <script>{library}</script>
    <script>{app}</script>
  </body>
</html>
"""


async def get_chart() -> Response:
    return HTMLResponse(_chart_page())
