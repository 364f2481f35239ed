"""The contract as served (/openapi.json, /openapi.yaml) and its documentation pages."""

from __future__ import annotations

import re
from html import escape

import yaml
from sqlalchemy.engine import URL
from starlette.testclient import TestClient

from mdp.settings import Settings
from mdp.spec import load_contract
from tests.api.support import app_settings, error_names, running_app

SPEC_FILE = load_contract().path


def test_openapi_json_is_the_yaml_contract(client: TestClient):
    response = client.get("/openapi.json")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == yaml.safe_load(SPEC_FILE.read_bytes())


def test_openapi_json_is_an_openapi_3_0_document(client: TestClient):
    document = client.get("/openapi.json").json()

    assert document["openapi"] == "3.0.3"
    assert document["info"]["version"] == load_contract().version


def test_openapi_yaml_is_the_file_byte_for_byte(client: TestClient):
    response = client.get("/openapi.yaml")

    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == "application/yaml"
    assert response.content == SPEC_FILE.read_bytes()


def test_redoc_page_loads_the_pinned_script_with_integrity(client: TestClient):
    defaults = Settings()
    assert defaults.redoc_script_integrity

    response = client.get("/redoc")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert '<redoc spec-url="/openapi.json"></redoc>' in page
    # Pinned to an exact release, never a moving tag such as @latest or @next.
    assert re.search(r"/redoc@\d+\.\d+\.\d+/", defaults.redoc_script_url)
    script = re.search(r"<script [^>]*></script>", page)
    assert script is not None
    tag = script.group(0)
    assert f'src="{escape(defaults.redoc_script_url)}"' in tag
    assert f'integrity="{escape(defaults.redoc_script_integrity)}"' in tag
    assert 'crossorigin="anonymous"' in tag


def test_redoc_page_uses_a_configured_script_without_integrity(api_database_url: URL):
    settings = app_settings(
        api_database_url,
        redoc_script_url="/static/redoc.standalone.js?v=1&x=<2>",
        redoc_script_integrity=None,
    )
    with running_app(settings) as client:
        page = client.get("/redoc").text

    assert 'src="/static/redoc.standalone.js?v=1&amp;x=&lt;2&gt;"' in page
    assert "integrity=" not in page


def test_swagger_ui_redirects_to_its_page(client: TestClient):
    response = client.get("/docs", follow_redirects=False)

    assert response.status_code in {301, 302, 307, 308}
    assert response.headers["location"].endswith("/docs/")


def test_swagger_ui_page_loads_the_served_contract(client: TestClient):
    response = client.get("/docs")

    assert response.status_code == 200
    assert response.url.path == "/docs/"
    assert response.headers["content-type"].startswith("text/html")
    assert "swagger-ui" in response.text
    assert '"/openapi.json"' in response.text


def test_the_chart_page_carries_its_library_and_needs_no_key(client: TestClient):
    response = client.get(
        "/chart", params={"symbol": "msft", "interval": "1h"}, headers={"X-API-Key": ""}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    # Served offline: lightweight-charts is in the page, nothing is loaded from elsewhere.
    assert "TradingView Lightweight Charts" in page
    assert "<script src=" not in page
    assert 'id="chart"' in page and 'id="key-form"' in page


def test_the_chart_refuses_parameters_it_does_not_know(client: TestClient):
    response = client.get("/chart", params={"interval": "2m", "colour": "red"})
    assert sorted(error_names(response)) == ["colour", "interval"]
