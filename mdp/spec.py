"""The contract file, loaded once: served verbatim and used to route and validate."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import orjson
import yaml

__all__ = ["Contract", "load_contract"]


@dataclass(frozen=True, slots=True)
class Contract:
    path: Path
    yaml_text: bytes
    document: dict[str, Any]
    json_text: bytes

    @property
    def version(self) -> str:
        return str(self.document["info"]["version"])


@cache
def load_contract() -> Contract:
    path = Path(str(files("openapi") / "openapi.yaml"))
    raw = path.read_bytes()
    document = yaml.safe_load(raw)
    return Contract(path, raw, document, orjson.dumps(document))
