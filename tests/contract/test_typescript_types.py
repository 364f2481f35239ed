"""openapi-typescript generates types from the contract, and a strict `tsc` accepts a consumer
(tests/contract/ts/usage.ts) written against them."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tests.contract.support import REPOSITORY, SPEC_PATH, load_spec, node_tool, run_tool

USAGE = REPOSITORY / "tests" / "contract" / "ts" / "usage.ts"
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
