"""API keys: their format, hashing and scopes, and creating, listing and revoking them.

A key reads `mdp_<id>_<secret>`: a fixed prefix that secret scanners can match, a 12-hex-digit
public id (what `mdp keys list` shows and revocation names; lookups go by it) and 256 random
bits from `secrets`, base64url-encoded. Only SHA-256 of the whole key is stored. A slow KDF
(bcrypt, scrypt, Argon2) makes guessing a low-entropy *password* from its hash expensive;
a 256-bit random secret cannot be guessed at any hash speed, so a plain SHA-256 is as safe
here and keeps checking a request's key to about a microsecond.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import api_keys
from persistence.api_keys import KeyRow, insert_key, list_keys, revoke_key

__all__ = [
    "AUTH_MODES",
    "KEY_PREFIX",
    "AuthMode",
    "SCOPES",
    "RateLimit",
    "create_key",
    "hash_key",
    "key_id_of",
    "keys",
    "parse_rate_limit",
    "parse_scopes",
    "redact",
    "redact_line",
    "revoke",
    "set_caps",
]

audit_logger = logging.getLogger("mdp.audit")

KEY_PREFIX = "mdp_"
SCOPES = ("read", "stream", "export", "ops")
# Whether data operations need a key at all (AUTH_MODE); "off" is for local development.
AuthMode = Literal["required", "off"]
AUTH_MODES: tuple[AuthMode, ...] = ("required", "off")
_ID_HEX_DIGITS = 12
_SECRET_BYTES = 32
# prefix, 12 lowercase hex digits, `_`, 43 base64url characters (32 bytes, unpadded).
_KEY = re.compile(r"mdp_([0-9a-f]{12})_[A-Za-z0-9_-]{43}")
_WINDOWS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600}
_WINDOW_NAMES = {1: "s", 60: "min", 3600: "h"}
MAX_RATE_LIMIT = 1_000_000


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket of `requests` tokens, refilled at `requests` per `window_seconds`."""

    requests: int
    window_seconds: int

    def __str__(self) -> str:
        return f"{self.requests}/{_WINDOW_NAMES[self.window_seconds]}"


DEFAULT_RATE_LIMIT = RateLimit(50, 1)


def parse_rate_limit(raw: str) -> RateLimit:
    """`50/s`, `600/min`, `10000/h`; raises ValueError with a message a user can act on."""
    count, _, window = raw.strip().partition("/")
    seconds = _WINDOWS.get(window.strip().lower())
    if not count.strip().isdigit() or seconds is None:
        raise ValueError(f"rate limit must look like 50/s, 600/min or 10000/h, got {raw!r}")
    requests = int(count)
    if not 1 <= requests <= MAX_RATE_LIMIT:
        raise ValueError(f"rate limit must be between 1 and {MAX_RATE_LIMIT} requests")
    return RateLimit(requests, seconds)


def parse_scopes(raw: str) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(part.strip().lower() for part in raw.split(",") if part.strip()))
    unknown = [scope for scope in chosen if scope not in SCOPES]
    if not chosen or unknown:
        raise ValueError(f"scopes must be a comma-separated subset of {','.join(SCOPES)}")
    return chosen


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_id_of(presented: str) -> str | None:
    """The id of a well-formed key, else None; looks at the shape only, never at a database."""
    match = _KEY.fullmatch(presented)
    return match.group(1) if match else None


# Anything that starts like a key, to its end: what a client pasted into the wrong place.
_KEY_LIKE = re.compile(r"mdp_[0-9a-f]{12}_\S*")


def redact(text: str) -> str:
    """`text` with every key-like token cut to its public id (for values a client sent)."""
    return _KEY_LIKE.sub(lambda m: m.group(0)[:17] + "[redacted]", text) if "mdp_" in text else text


# The same within a formatted log line (JSON): only the characters a key is made of, so the
# quote and the fields after it stay.
_KEY_IN_LINE = re.compile(r"mdp_[0-9a-f]{12}_[A-Za-z0-9_-]*")


def redact_line(line: str) -> str:
    """A whole log line with every key-like token cut to its public id."""
    return (
        _KEY_IN_LINE.sub(lambda m: m.group(0)[:17] + "[redacted]", line) if "mdp_" in line else line
    )


def _new_key() -> tuple[str, str]:
    key_id = secrets.token_hex(_ID_HEX_DIGITS // 2)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(_SECRET_BYTES)}"


async def create_key(
    engine: AsyncEngine,
    *,
    name: str,
    scopes: Sequence[str],
    rate_limit: RateLimit,
    max_exports: int | None = None,
    max_streams: int | None = None,
) -> tuple[KeyRow, str]:
    """Store a new key's hash; returns the row and the key, which exists nowhere else."""
    name = name.strip()
    if not 1 <= len(name) <= 100:
        raise ValueError("name must be 1 to 100 characters")
    key_id, key = _new_key()
    async with engine.begin() as conn:
        row = await insert_key(
            conn,
            key_id=key_id,
            name=name,
            key_hash=hash_key(key),
            scopes=scopes,
            rate_limit=rate_limit.requests,
            rate_window_seconds=rate_limit.window_seconds,
            max_exports=max_exports,
            max_streams=max_streams,
        )
    audit_logger.info(
        "API key %s (%s) created",
        row.id,
        row.name,
        extra={
            "audit": {
                "event": "key_created",
                "key_id": row.id,
                "key_name": row.name,
                "scopes": row.scopes,
                "rate_limit": str(rate_limit),
            }
        },
    )
    return row, key


async def revoke(engine: AsyncEngine, key_id: str) -> KeyRow | None:
    async with engine.begin() as conn:
        row = await revoke_key(conn, key_id)
    if row is not None:
        audit_logger.info(
            "API key %s (%s) revoked",
            row.id,
            row.name,
            extra={"audit": {"event": "key_revoked", "key_id": row.id, "key_name": row.name}},
        )
    return row


async def set_caps(
    engine: AsyncEngine, key_id: str, *, max_exports: int | None, max_streams: int | None
) -> KeyRow | None:
    """Give a key its own caps on concurrent exports and streams (None: the settings')."""
    async with engine.begin() as conn:
        row = await api_keys.set_caps(
            conn, key_id, max_exports=max_exports, max_streams=max_streams
        )
    if row is not None:
        audit_logger.info(
            "API key %s (%s) caps set",
            row.id,
            row.name,
            extra={
                "audit": {
                    "event": "key_caps_set",
                    "key_id": row.id,
                    "max_exports": row.max_exports,
                    "max_streams": row.max_streams,
                }
            },
        )
    return row


async def keys(engine: AsyncEngine) -> list[KeyRow]:
    async with engine.connect() as conn:
        return await list_keys(conn)
