"""Request bodies are read by this JSON provider: JSON nested deeper than Python's parser
can follow is a clear 400 before any handler runs, never a 500 (whose traceback would carry
the body into the logs)."""

from __future__ import annotations

import json
from typing import Any

from flask import current_app, request
from flask.json.provider import DefaultJSONProvider


class UnreadableJson(ValueError):
    """The body is JSON that this service cannot read; the message says why, not what."""


class RequestJsonProvider(DefaultJSONProvider):
    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return json.loads(s, **kwargs)
        except RecursionError:
            raise UnreadableJson("the JSON body nests too deeply") from None


def request_json(force: bool = False) -> Any:
    """The request's JSON body, or None when there is none or it is not JSON (the caller
    says what it wanted); :class:`UnreadableJson` when it is JSON this service cannot read."""
    if not force and not request.is_json:
        return None
    data = request.get_data(cache=True)
    try:
        return current_app.json.loads(data)
    except UnreadableJson:
        raise
    except ValueError:
        return None
