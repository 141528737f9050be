"""What the engine can store: checks shared by the document and event validators."""

from __future__ import annotations

import json
from typing import Any

# Identifiers become engine document ids (`_id`: at most 512 bytes of UTF-8) and keywords.
MAX_ID_BYTES = 512


def storable_text(value: str, name: str, error: type[ValueError],
                  max_bytes: int | None = None) -> str:
    """``value`` if the engine can store it: valid Unicode (no lone surrogate such as
    U+D800, which no UTF-8 encoder accepts) and, where given, at most ``max_bytes``."""
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise error(f"'{name}' is not valid Unicode (a lone surrogate?)") from None
    if max_bytes is not None and size > max_bytes:
        raise error(f"'{name}' is {size} bytes of UTF-8; at most {max_bytes}")
    return value


def storable_json(value: Any, name: str, error: type[ValueError]) -> Any:
    """``value`` if every string in it is valid Unicode."""
    storable_text(json.dumps(value, ensure_ascii=False, default=str), name, error)
    return value
