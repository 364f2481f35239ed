"""Breaking-change gate: compare the contract with the released copy of its major version.

`openapi/released/v<major>.yaml` is the contract as last released for that major version. A
change that could break a client written against it fails the gate, unless `info.version`'s major
was bumped past it and `CHANGELOG.md` has a section for the new version saying why.

Narrowing what the contract allows is breaking wherever it happens: a removed operation,
parameter, property, status code, media type or response header; a new required parameter; a
narrower type; a removed enum value; an added or lowered `maximum`, an added or raised `minimum`,
an added or changed `pattern` or `format`; a value no longer nullable; a changed parameter default.
What a client *receives* must not grow either where clients would fail to read it: a response
property no longer required, a wider type or a newly nullable value are breaking. Responses that
only take more values within their type (a new enum value, a raised `maximum`) are reported as
warnings: the contract asks clients to tolerate them, but code generators that model enums as
closed types (openapi-python-client does) reject unknown values, so mention them in CHANGELOG.md.
Widening what a client may *send* is additive. A renamed `operationId` is breaking: generated
clients name their methods, modules and types after it.

Breaking changes may also wait on main for the next major: the gate passes them when
`CHANGELOG.md`'s `## Unreleased` section announces that major with a `### Migrating to N.0.0`
heading and text under it. Releasing it then bumps `info.version` to N.0.0, turns the heading
into `## N.0.0` and copies the spec to `openapi/released/vN.yaml`.

Usage: python tools/contract_check.py [--spec PATH] [--released-dir DIR] [--changelog PATH]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "Change",
    "Direction",
    "Severity",
    "Verdict",
    "check",
    "compare",
    "main",
]

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
REPOSITORY = Path(__file__).resolve().parent.parent
# Keywords whose value bounds a number, a string or an array from above or below.
UPPER_BOUNDS = ("maximum", "maxLength", "maxItems", "maxProperties")
LOWER_BOUNDS = ("minimum", "minLength", "minItems", "minProperties")
EXCLUSIVE = {"maximum": "exclusiveMaximum", "minimum": "exclusiveMinimum"}

Json = Any


class Direction(Enum):
    """Who produces the value: the client (request) or the server (response)."""

    REQUEST = "request"
    RESPONSE = "response"


class Severity(Enum):
    BREAKING = "BREAKING"
    WARNING = "warning"
    ADDITIVE = "additive"


@dataclass(frozen=True)
class Change:
    location: str
    message: str
    severity: Severity

    @property
    def breaking(self) -> bool:
        return self.severity is Severity.BREAKING

    def __str__(self) -> str:
        return f"{self.severity.value}: {self.location}: {self.message}"


@dataclass(frozen=True)
class Verdict:
    ok: bool
    changes: tuple[Change, ...]
    reasons: tuple[str, ...]
    # The unreleased major the changelog announces, when breaking changes wait for it.
    pending_major: int | None = None

    @property
    def breaking(self) -> tuple[Change, ...]:
        return tuple(change for change in self.changes if change.breaking)


class _Resolver:
    """Follows local `$ref`s (`#/...`) inside one document."""

    def __init__(self, document: Mapping[str, Json]) -> None:
        self._document = document

    def __call__(self, node: Json) -> Json:
        seen: set[str] = set()
        while isinstance(node, Mapping) and isinstance(node.get("$ref"), str):
            ref = node["$ref"]
            if not ref.startswith("#/") or ref in seen:
                raise ValueError(f"unsupported or circular $ref: {ref}")
            seen.add(ref)
            node = self._document
            for token in ref[2:].split("/"):
                node = node[token.replace("~1", "/").replace("~0", "~")]
        return node


class _Comparer:
    def __init__(self, old: Mapping[str, Json], new: Mapping[str, Json]) -> None:
        self.old = _Resolver(old)
        self.new = _Resolver(new)
        self.old_doc = old
        self.new_doc = new
        self.changes: list[Change] = []
        # Schema pairs being compared further up the stack: recursive schemas terminate.
        self._in_progress: set[tuple[int, int, Direction]] = set()

    def breaking(self, where: str, message: str) -> None:
        self.changes.append(Change(where, message, Severity.BREAKING))

    def warning(self, where: str, message: str) -> None:
        self.changes.append(Change(where, message, Severity.WARNING))

    def additive(self, where: str, message: str) -> None:
        self.changes.append(Change(where, message, Severity.ADDITIVE))

    def widened(self, where: str, message: str, direction: Direction) -> None:
        """A schema now accepts more values of the same type."""
        if direction is Direction.REQUEST:
            self.additive(where, message)
        else:
            self.warning(where, f"{message} (clients must accept the new values)")

    def run(self) -> list[Change]:
        old_ops = dict(_operations(self.old_doc))
        new_ops = dict(_operations(self.new_doc))
        for key in sorted(old_ops.keys() - new_ops.keys()):
            self.breaking(_op_name(key), "operation removed")
        for key in sorted(new_ops.keys() - old_ops.keys()):
            self.additive(_op_name(key), "operation added")
        for key in sorted(old_ops.keys() & new_ops.keys()):
            self._operation(_op_name(key), old_ops[key], new_ops[key])
        return self.changes

    def _operation(self, where: str, old: Mapping[str, Json], new: Mapping[str, Json]) -> None:
        if old.get("operationId") != new.get("operationId"):
            self.breaking(
                where,
                f"operationId renamed from {old.get('operationId')!r} to "
                f"{new.get('operationId')!r} (generated clients name methods after it)",
            )
        self._parameters(where, self._params(self.old, old), self._params(self.new, new))
        self._request_body(where, old.get("requestBody"), new.get("requestBody"))
        # Unquoted status codes parse as YAML integers; compare them as the strings they mean.
        old_responses = {str(status): r for status, r in old.get("responses", {}).items()}
        new_responses = {str(status): r for status, r in new.get("responses", {}).items()}
        for status in sorted(old_responses.keys() - new_responses.keys()):
            self.breaking(f"{where} response {status}", "status code removed")
        for status in sorted(new_responses.keys() - old_responses.keys()):
            self.additive(f"{where} response {status}", "status code added")
        for status in sorted(old_responses.keys() & new_responses.keys()):
            self._response(
                f"{where} response {status}",
                self.old(old_responses[status]),
                self.new(new_responses[status]),
            )

    @staticmethod
    def _params(
        resolve: _Resolver, operation: Mapping[str, Json]
    ) -> dict[tuple[str, str], Mapping[str, Json]]:
        params = {}
        for raw in operation.get("parameters", []):
            param = resolve(raw)
            name = param["name"].lower() if param["in"] == "header" else param["name"]
            params[(param["in"], name)] = param
        return params

    def _parameters(
        self,
        where: str,
        old: Mapping[tuple[str, str], Mapping[str, Json]],
        new: Mapping[tuple[str, str], Mapping[str, Json]],
    ) -> None:
        for key in sorted(old.keys() - new.keys()):
            self.breaking(f"{where} parameter {key[0]}.{key[1]}", "parameter removed")
        for key in sorted(new.keys() - old.keys()):
            at = f"{where} parameter {key[0]}.{key[1]}"
            if new[key].get("required", False):
                self.breaking(at, "new required parameter")
            else:
                self.additive(at, "optional parameter added")
        for key in sorted(old.keys() & new.keys()):
            at = f"{where} parameter {key[0]}.{key[1]}"
            old_param, new_param = old[key], new[key]
            if new_param.get("required", False) and not old_param.get("required", False):
                self.breaking(at, "parameter became required")
            for field in ("style", "explode"):
                if old_param.get(field) != new_param.get(field):
                    self.breaking(at, f"{field} changed")
            old_schema = old_param.get("schema")
            new_schema = new_param.get("schema")
            if old_schema is not None and new_schema is not None:
                self._schema(at, old_schema, new_schema, Direction.REQUEST)
                old_default = self.old(old_schema).get("default")
                new_default = self.new(new_schema).get("default")
                if old_default != new_default:
                    self.breaking(at, f"default changed from {old_default!r} to {new_default!r}")

    def _request_body(self, where: str, old_raw: Json, new_raw: Json) -> None:
        at = f"{where} request body"
        if old_raw is None and new_raw is None:
            return
        if old_raw is None:
            if self.new(new_raw).get("required", False):
                self.breaking(at, "new required request body")
            else:
                self.additive(at, "optional request body added")
            return
        if new_raw is None:
            self.breaking(at, "request body removed")
            return
        old, new = self.old(old_raw), self.new(new_raw)
        if new.get("required", False) and not old.get("required", False):
            self.breaking(at, "request body became required")
        self._content(at, old.get("content", {}), new.get("content", {}), Direction.REQUEST)

    def _response(self, where: str, old: Mapping[str, Json], new: Mapping[str, Json]) -> None:
        old_headers = {name.lower(): h for name, h in old.get("headers", {}).items()}
        new_headers = {name.lower(): h for name, h in new.get("headers", {}).items()}
        for name in sorted(old_headers.keys() - new_headers.keys()):
            self.breaking(f"{where} header {name}", "response header removed")
        for name in sorted(new_headers.keys() - old_headers.keys()):
            self.additive(f"{where} header {name}", "response header added")
        for name in sorted(old_headers.keys() & new_headers.keys()):
            old_header = self.old(old_headers[name])
            new_header = self.new(new_headers[name])
            at = f"{where} header {name}"
            if old_header.get("required", False) and not new_header.get("required", False):
                self.breaking(at, "response header no longer required")
            if "schema" in old_header and "schema" in new_header:
                self._schema(at, old_header["schema"], new_header["schema"], Direction.RESPONSE)
        self._content(where, old.get("content", {}), new.get("content", {}), Direction.RESPONSE)

    def _content(
        self,
        where: str,
        old: Mapping[str, Json],
        new: Mapping[str, Json],
        direction: Direction,
    ) -> None:
        for media_type in sorted(old.keys() - new.keys()):
            self.breaking(f"{where} {media_type}", "media type removed")
        for media_type in sorted(new.keys() - old.keys()):
            self.additive(f"{where} {media_type}", "media type added")
        for media_type in sorted(old.keys() & new.keys()):
            old_schema = old[media_type].get("schema")
            new_schema = new[media_type].get("schema")
            at = f"{where} {media_type}"
            if old_schema is not None and new_schema is None:
                self.breaking(at, "schema removed")
            elif old_schema is not None and new_schema is not None:
                self._schema(at, old_schema, new_schema, direction)

    def _schema(self, where: str, old_raw: Json, new_raw: Json, direction: Direction) -> None:
        old, new = self.old(old_raw), self.new(new_raw)
        key = (id(old), id(new), direction)
        if key in self._in_progress:
            return
        self._in_progress.add(key)
        try:
            self._schema_pair(where, old, new, direction)
        finally:
            self._in_progress.discard(key)

    def _schema_pair(
        self, where: str, old: Mapping[str, Json], new: Mapping[str, Json], direction: Direction
    ) -> None:
        request = direction is Direction.REQUEST

        old_types, new_types = _types(old), _types(new)
        if old_types is not None or new_types is not None:
            # A missing `type` accepts anything: the widest possible type.
            if not _covers(new_types, old_types):
                self.breaking(where, f"type narrowed from {_show(old_types)} to {_show(new_types)}")
            elif not _covers(old_types, new_types):
                message = f"type widened from {_show(old_types)} to {_show(new_types)}"
                if request:
                    self.additive(where, message)
                else:
                    self.breaking(where, message)
            if old_types is not None and new_types is not None and not (old_types & new_types):
                return  # Unrelated types: the finer checks below would only repeat it.

        was_nullable, is_nullable = old.get("nullable", False), new.get("nullable", False)
        if was_nullable and not is_nullable:
            self.breaking(where, "no longer nullable")
        elif is_nullable and not was_nullable:
            if request:
                self.additive(where, "became nullable")
            else:
                self.breaking(where, "became nullable")

        self._enum(where, old.get("enum"), new.get("enum"), direction)
        self._bounds(where, old, new, direction)
        for keyword in ("pattern", "format"):
            before, after = old.get(keyword), new.get(keyword)
            if before == after:
                continue
            if before is not None and after is not None:
                self.breaking(where, f"{keyword} changed from {before!r} to {after!r}")
            elif after is not None:
                self.breaking(where, f"{keyword} {after!r} added")
            else:
                self.widened(where, f"{keyword} {before!r} removed", direction)

        self._object(where, old, new, direction)
        if "items" in old and "items" in new:
            self._schema(f"{where}[]", old["items"], new["items"], direction)
        for keyword in ("allOf", "oneOf", "anyOf"):
            before, after = old.get(keyword), new.get(keyword)
            if before is None and after is None:
                continue
            if before is None or after is None or len(before) != len(after):
                self.breaking(where, f"{keyword} changed")
                continue
            for index, (old_part, new_part) in enumerate(zip(before, after, strict=True)):
                self._schema(f"{where}.{keyword}[{index}]", old_part, new_part, direction)

    def _enum(self, where: str, old: Json, new: Json, direction: Direction) -> None:
        if old == new:
            return
        if old is None:
            self.breaking(where, f"enum {new!r} added")
            return
        if new is None:
            self.widened(where, "enum removed", direction)
            return
        removed = [value for value in old if value not in new]
        added = [value for value in new if value not in old]
        if removed:
            self.breaking(where, f"enum values removed: {removed!r}")
        if added:
            self.widened(where, f"enum values added: {added!r}", direction)

    def _bounds(
        self, where: str, old: Mapping[str, Json], new: Mapping[str, Json], direction: Direction
    ) -> None:
        for keyword in UPPER_BOUNDS + LOWER_BOUNDS:
            upper = keyword in UPPER_BOUNDS
            before, after = old.get(keyword), new.get(keyword)
            exclusive = EXCLUSIVE.get(keyword)
            was_exclusive = bool(exclusive and old.get(exclusive, False))
            is_exclusive = bool(exclusive and new.get(exclusive, False))
            if before == after and was_exclusive == is_exclusive:
                continue
            if before is None:
                narrowed = True
            elif after is None:
                narrowed = False
            elif before == after:
                narrowed = is_exclusive
            else:
                narrowed = after < before if upper else after > before
            describe = f"{keyword} {_describe_bound(before, after)}"
            if narrowed:
                self.breaking(where, describe)
            else:
                self.widened(where, describe, direction)

    def _object(
        self, where: str, old: Mapping[str, Json], new: Mapping[str, Json], direction: Direction
    ) -> None:
        request = direction is Direction.REQUEST
        old_props: Mapping[str, Json] = old.get("properties", {})
        new_props: Mapping[str, Json] = new.get("properties", {})
        old_required = set(old.get("required", []))
        new_required = set(new.get("required", []))
        for name in sorted(old_props.keys() - new_props.keys()):
            self.breaking(f"{where}.{name}", "property removed")
        for name in sorted(new_props.keys() - old_props.keys()):
            if request and name in new_required:
                self.breaking(f"{where}.{name}", "new required property")
            else:
                self.additive(f"{where}.{name}", "property added")
        for name in sorted(old_props.keys() & new_props.keys()):
            at = f"{where}.{name}"
            if request and name in new_required and name not in old_required:
                self.breaking(at, "property became required")
            if not request and name in old_required and name not in new_required:
                self.breaking(at, "property no longer required")
            self._schema(at, old_props[name], new_props[name], direction)
        if request and old.get("additionalProperties", True) is not False:
            if new.get("additionalProperties", True) is False:
                self.breaking(where, "additional properties no longer allowed")


def _operations(document: Mapping[str, Json]) -> Iterator[tuple[tuple[str, str], Json]]:
    for path, item in document.get("paths", {}).items():
        for method in HTTP_METHODS:
            if method in item:
                yield (path, method), item[method]


def _op_name(key: tuple[str, str]) -> str:
    return f"{key[1].upper()} {key[0]}"


def _types(schema: Mapping[str, Json]) -> frozenset[str] | None:
    declared = schema.get("type")
    if declared is None:
        return None
    return frozenset({declared} if isinstance(declared, str) else declared)


def _covers(wide: frozenset[str] | None, narrow: frozenset[str] | None) -> bool:
    """Whether every value of type `narrow` is also of type `wide` (None: any type)."""
    if wide is None:
        return True
    if narrow is None:
        return False
    return all(name in wide or (name == "integer" and "number" in wide) for name in narrow)


def _show(types: frozenset[str] | None) -> str:
    return "any" if types is None else "|".join(sorted(types))


def _describe_bound(before: Json, after: Json) -> str:
    if before is None:
        return f"{after!r} added"
    if after is None:
        return f"{before!r} removed"
    if before == after:
        return f"{before!r} changed exclusiveness"
    return f"changed from {before!r} to {after!r}"


def compare(old: Mapping[str, Json], new: Mapping[str, Json]) -> list[Change]:
    """Every difference between two OpenAPI 3.0 documents that a client could notice."""
    return _Comparer(old, new).run()


_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:[-+].*)?$")


def _version(document: Mapping[str, Json], name: str) -> tuple[int, int, int]:
    raw = str(document.get("info", {}).get("version", ""))
    match = _SEMVER.match(raw)
    if match is None:
        raise ValueError(f"{name}: info.version {raw!r} is not semver")
    return int(match[1]), int(match[2]), int(match[3])


def _changelog_explains(changelog: str, major: int) -> bool:
    """A `## <major>.y.z` section with at least one line of text under it."""
    heading = re.compile(rf"^##\s+\[?{major}\.\d+\.\d+\b.*$", re.MULTILINE)
    match = heading.search(changelog)
    if match is None:
        return False
    body = changelog[match.end() :].split("\n## ", 1)[0]
    return bool(body.strip())


def _unreleased_major(changelog: str) -> int | None:
    """The major that `## Unreleased` announces with `### Migrating to N.0.0` and text under it."""
    unreleased = re.search(r"^##\s+\[?Unreleased\b.*$", changelog, re.MULTILINE | re.IGNORECASE)
    if unreleased is None:
        return None
    section = changelog[unreleased.end() :].split("\n## ", 1)[0]
    heading = re.search(r"^###\s+Migrating to (\d+)\.0\.0\b.*$", section, re.MULTILINE)
    if heading is None or not section[heading.end() :].split("\n### ", 1)[0].strip():
        return None
    return int(heading[1])


def _released(released_dir: Path) -> dict[int, Path]:
    found = {}
    for path in released_dir.glob("v*.yaml"):
        if re.fullmatch(r"v\d+", path.stem):
            found[int(path.stem[1:])] = path
    return found


def check(spec: Path, released_dir: Path, changelog: Path) -> Verdict:
    """Compare `spec` with the released copy of its major version (or of the last major)."""
    new = yaml.safe_load(spec.read_text(encoding="utf-8"))
    new_version = _version(new, str(spec))
    major = new_version[0]
    released = _released(released_dir)
    candidates = [m for m in released if m <= major]
    if not candidates:
        return Verdict(False, (), (f"no released contract at or below v{major} in {released_dir}",))
    base_major = max(candidates)
    old = yaml.safe_load(released[base_major].read_text(encoding="utf-8"))
    old_version = _version(old, str(released[base_major]))
    changes = tuple(compare(old, new))
    reasons: list[str] = []
    if new_version < old_version:
        reasons.append(
            f"info.version {_dotted(new_version)} is lower than the released {_dotted(old_version)}"
        )
    bumped = major > old_version[0]
    text = changelog.read_text(encoding="utf-8") if changelog.exists() else ""
    explained = _changelog_explains(text, major)
    pending = _unreleased_major(text) if not bumped else None
    if pending is not None and pending != old_version[0] + 1:
        reasons.append(
            f"{changelog.name} announces {pending}.0.0 under Unreleased, but the next major "
            f"after {_dotted(old_version)} is {old_version[0] + 1}.0.0"
        )
    if bumped and not explained:
        reasons.append(
            f"info.version's major was bumped to {major}, but {changelog.name} has no "
            f"'## {major}.x.y' section explaining why"
        )
    if any(change.breaking for change in changes) and not bumped and pending is None:
        reasons.append(
            f"breaking changes against {released[base_major].name} ({_dotted(old_version)}): "
            f"bump info.version to {old_version[0] + 1}.0.0 and explain it in {changelog.name}, "
            "or make the change additive (or announce the next major under Unreleased with "
            "'### Migrating to N.0.0')"
        )
    breaking = any(change.breaking for change in changes)
    return Verdict(
        not reasons, changes, tuple(reasons), pending if breaking and not bumped else None
    )


def _dotted(version: tuple[int, int, int]) -> str:
    return ".".join(map(str, version))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--spec", type=Path, default=REPOSITORY / "openapi" / "openapi.yaml")
    parser.add_argument("--released-dir", type=Path, default=REPOSITORY / "openapi" / "released")
    parser.add_argument("--changelog", type=Path, default=REPOSITORY / "CHANGELOG.md")
    args = parser.parse_args(argv)
    try:
        verdict = check(args.spec, args.released_dir, args.changelog)
    except (OSError, ValueError, KeyError, yaml.YAMLError) as error:
        print(f"contract-check: cannot compare: {error}", file=sys.stderr)
        return 2
    for change in verdict.changes:
        print(change)
    for reason in verdict.reasons:
        print(f"contract-check: FAIL: {reason}", file=sys.stderr)
    if verdict.ok:
        breaking = len(verdict.breaking)
        warnings = sum(change.severity is Severity.WARNING for change in verdict.changes)
        allowed_by = (
            f"waiting for {verdict.pending_major}.0.0, announced under Unreleased"
            if verdict.pending_major
            else "allowed by the major bump"
        )
        notes = [f"{breaking} breaking, {allowed_by}"] if breaking else []
        notes += [f"{warnings} warning(s)"] if warnings else []
        note = f" ({'; '.join(notes)})" if notes else ""
        print(f"contract-check: OK, {len(verdict.changes)} change(s){note}")
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
