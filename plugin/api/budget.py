"""One time budget per request: every engine call a request makes (the proxy's best-score
search and its search, a user page's reads) shares ES_INTEREST_SEARCH_TIMEOUT_S, so a stalled
engine is a 503 after that long on every path, never after the sum of the calls' timeouts."""

from __future__ import annotations

import contextlib

from flask import Flask, g

from plugin import engine


def register(app: Flask, seconds: float) -> None:
    @app.before_request
    def start() -> None:
        g.engine_budget = contextlib.ExitStack()
        g.engine_budget.enter_context(engine.deadline(seconds))

    @app.teardown_request
    def end(_: BaseException | None) -> None:
        stack = g.pop("engine_budget", None)
        if stack is not None:
            stack.close()
