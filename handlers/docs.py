"""Documentation operations (tag `docs`): the contract as served, and the ReDoc page."""

from __future__ import annotations

from html import escape

from starlette.responses import HTMLResponse, Response

from handlers.context import app_state

__all__ = ["get_openapi_json", "get_openapi_yaml", "get_redoc"]


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
