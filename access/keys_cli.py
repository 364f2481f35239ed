"""`mdp keys create|list|revoke`: the operator's side of API keys."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from access.apikeys import (
    DEFAULT_RATE_LIMIT,
    SCOPES,
    RateLimit,
    create_key,
    keys,
    parse_rate_limit,
    parse_scopes,
    revoke,
    set_caps,
)
from persistence.api_keys import KeyRow

__all__ = ["add_commands", "run"]


def _argument(parse: Any) -> Any:
    def convert(value: str) -> Any:
        try:
            return parse(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def add_commands(commands: Any) -> None:
    parser = commands.add_parser("keys", help="create, list and revoke API keys")
    actions = parser.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", help="create a key and print it (only this once)")
    create.add_argument("--name", required=True, help="who or what uses the key")
    create.add_argument(
        "--scopes",
        required=True,
        type=_argument(parse_scopes),
        help=f"comma-separated, from {','.join(SCOPES)}",
    )
    create.add_argument(
        "--rate-limit",
        type=_argument(parse_rate_limit),
        default=DEFAULT_RATE_LIMIT,
        help=f"per instance, e.g. 50/s, 600/min, 10000/h (default {DEFAULT_RATE_LIMIT})",
    )
    _add_caps(create)
    caps = actions.add_parser("caps", help="set a key's own caps on concurrent exports and streams")
    caps.add_argument("id", help="the key's id, as `mdp keys list` shows it")
    _add_caps(caps)
    actions.add_parser("list", help="list keys (never their secrets)")
    revoke_parser = actions.add_parser("revoke", help="revoke a key by its id")
    revoke_parser.add_argument("id", help="the key's id, as `mdp keys list` shows it")


def _cap(value: str) -> int | None:
    if value == "default":
        return None
    if not value.isdigit() or int(value) > 100_000:
        raise argparse.ArgumentTypeError(f"a whole number 0..100000 or `default`, got {value!r}")
    return int(value)


def _add_caps(parser: argparse.ArgumentParser) -> None:
    for what, setting in (("exports", "EXPORT_MAX_PER_KEY"), ("streams", "STREAM_MAX_PER_KEY")):
        parser.add_argument(
            f"--max-{what}",
            type=_cap,
            default=None,
            help=f"concurrent {what} this key may hold per instance "
            f"(default: the instance's {setting}; `default` goes back to it)",
        )


async def run(engine: AsyncEngine, args: argparse.Namespace) -> int:
    if args.keys_command == "create":
        row, key = await create_key(
            engine,
            name=args.name,
            scopes=args.scopes,
            rate_limit=args.rate_limit,
            max_exports=args.max_exports,
            max_streams=args.max_streams,
        )
        print(
            f"Created API key {row.id} ({row.name}): scopes {','.join(row.scopes)}, "
            f"rate limit {args.rate_limit} per instance. Store it now (e.g. in Secret "
            "Manager): it is shown only this once.",
            file=sys.stderr,
        )
        # Alone on stdout, so that `KEY=$(mdp keys create ...)` captures just the key.
        print(key)
    elif args.keys_command == "caps":
        changed = await set_caps(
            engine, args.id, max_exports=args.max_exports, max_streams=args.max_streams
        )
        if changed is None:
            print(f"mdp keys caps: no key with id {args.id!r}", file=sys.stderr)
            return 1
        print(
            f"API key {changed.id} ({changed.name}): at most {_shown(changed.max_exports)} "
            f"exports and {_shown(changed.max_streams)} streams at once per instance; "
            "instances apply it within 5 s."
        )
    elif args.keys_command == "revoke":
        revoked = await revoke(engine, args.id)
        if revoked is None:
            print(f"mdp keys revoke: no key with id {args.id!r}", file=sys.stderr)
            return 1
        print(f"Revoked API key {revoked.id} ({revoked.name}); instances refuse it within 5 s.")
    else:
        print(table(await keys(engine)))
    return 0


def _shown(cap: int | None) -> str:
    return "default" if cap is None else str(cap)


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if moment else "-"


def table(rows: list[KeyRow]) -> str:
    lines = [
        (
            "ID",
            "NAME",
            "SCOPES",
            "RATE LIMIT",
            "EXPORTS",
            "STREAMS",
            "CREATED",
            "LAST USED",
            "REVOKED",
        )
    ]
    lines += [
        (
            row.id,
            row.name,
            ",".join(row.scopes),
            str(RateLimit(row.rate_limit, row.rate_window_seconds)),
            _shown(row.max_exports),
            _shown(row.max_streams),
            _when(row.created_at),
            _when(row.last_used_at),
            _when(row.revoked_at),
        )
        for row in rows
    ]
    widths = [max(len(line[column]) for line in lines) for column in range(len(lines[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
