"""openapi-typescript generates types from the contract (as `make clients` does), a strict `tsc`
accepts a consumer (tests/contract/ts/usage.ts) written against them, and that consumer runs
against the live server (tests/contract/ts/live.ts)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.contract.support import REPOSITORY, SPEC_PATH, load_spec, node_tool, run_tool
from tests.support import Service

USAGE = REPOSITORY / "tests" / "contract" / "ts" / "usage.ts"
LIVE = REPOSITORY / "tests" / "contract" / "ts" / "live.ts"
TSC_OPTIONS = [
    "--noEmit",
    "--strict",
    "--target",
    "es2022",
    "--lib",
    "es2022,dom",
    "--module",
    "esnext",
    "--moduleResolution",
    "bundler",
]


def _typecheck_usage(spec: Path, directory: Path) -> tuple[int, str]:
    """Generate `schema.d.ts` from `spec` next to a copy of usage.ts and type-check it."""
    generated = run_tool([node_tool("openapi-typescript"), spec, "-o", directory / "schema.d.ts"])
    assert generated.returncode == 0, generated.stdout + generated.stderr
    shutil.copy(USAGE, directory / "usage.ts")
    checked = run_tool([node_tool("tsc"), *TSC_OPTIONS, directory / "usage.ts"])
    return checked.returncode, checked.stdout + checked.stderr


def test_usage_type_checks_against_the_generated_types(tmp_path: Path) -> None:
    returncode, output = _typecheck_usage(SPEC_PATH, tmp_path)
    assert returncode == 0, output
    schema = (tmp_path / "schema.d.ts").read_text(encoding="utf-8")
    assert "\n    getLatestPrice: {" in schema


def test_usage_fails_to_compile_when_a_property_disappears_or_an_enum_loosens(
    tmp_path: Path,
) -> None:
    # Both defects in one spec: each tsc run costs seconds.
    spec = load_spec()
    latest = spec["components"]["schemas"]["LatestPrice"]
    del latest["properties"]["price"]
    latest["required"].remove("price")
    for param in spec["paths"]["/trades"]["get"]["parameters"]:
        if param.get("name") == "order":
            del param["schema"]["enum"]
    seeded = tmp_path / "openapi.yaml"
    seeded.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    returncode, output = _typecheck_usage(seeded, tmp_path)
    assert returncode != 0
    assert "Property 'price' does not exist" in output
    # usage.ts expects `order: 'sideways'` to be rejected; with a plain string it is not.
    assert "Unused '@ts-expect-error' directive" in output


def test_usage_runs_against_the_live_server(tmp_path: Path, live_service: Service) -> None:
    generated = run_tool(
        [node_tool("openapi-typescript"), SPEC_PATH, "-o", tmp_path / "schema.d.ts"]
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    for source in (USAGE, LIVE):
        shutil.copy(source, tmp_path / source.name)
    emitting = [option for option in TSC_OPTIONS if option != "--noEmit"]
    emitting[emitting.index("esnext")] = "commonjs"
    emitting[emitting.index("bundler")] = "node10"
    compiled = run_tool(
        [node_tool("tsc"), *emitting, "--outDir", tmp_path / "out", tmp_path / "live.ts"]
    )
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    # The key travels in the environment, so it never shows in a process list.
    driver = (
        "require('./live.js').run(process.env.MDP_URL, process.env.MDP_API_KEY)"
        ".then((summary) => console.log(JSON.stringify(summary)))"
        ".catch((error) => { console.error(error); process.exitCode = 1; });"
    )
    result = subprocess.run(
        ["node", "-e", driver],
        cwd=tmp_path / "out",
        env={**os.environ, "MDP_URL": live_service.base, "MDP_API_KEY": str(live_service.api_key)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert summary["interval"] == "1m"
    assert 1 <= summary["candles"] <= 5
    assert summary["trades"] >= 1 and summary["pages"] >= 1
    assert summary["latest"] == "MSFT"
    assert summary["problem"][0] == "symbol_not_found"
    assert summary["refused"] == ["unauthenticated", "send a valid API key in X-API-Key"]
