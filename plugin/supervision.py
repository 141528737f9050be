"""Keep a long-running loop (the Celery worker) alive the way a process supervisor would:
start it again after it stopped on its own with a failure, with a capped backoff, and give
up only when it keeps failing right after each start (a configuration error, say)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def supervise(run: Callable[[], int], stopping: Callable[[], bool],
              sleep: Callable[[float], None] = time.sleep,
              clock: Callable[[], float] = time.monotonic,
              quick_failure_s: float = 30.0, max_quick_failures: int = 5,
              max_backoff_s: float = 30.0) -> int:
    """Run ``run`` until it returns 0 or ``stopping()`` (a shutdown was asked for) is true
    after it returned; returns the last exit code."""
    quick_failures = 0
    while True:
        started = clock()
        code = run()
        if code == 0 or stopping():
            return code
        quick_failures = quick_failures + 1 if clock() - started < quick_failure_s else 1
        if quick_failures > max_quick_failures:
            log.critical("the worker failed %d times right after starting; giving up",
                         quick_failures)
            return code
        delay = min(max_backoff_s, 2.0 ** (quick_failures - 1))
        log.error("the worker stopped with exit code %s; starting it again in %.0f s",
                  code, delay)
        sleep(delay)
