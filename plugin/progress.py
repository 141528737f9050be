"""Progress of long commands (ingest, rebuild, eval, demo, bench).

On a terminal: a tqdm bar. Elsewhere (a log file, CI, `make eval-quick > log`): one plain line
every ``PLAIN_INTERVAL_S`` seconds and a last one at the end, never carriage-return frames.
``--quiet`` on the command line (or ``set_quiet``) shows nothing.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

PLAIN_INTERVAL_S = 30.0
PLAIN_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed}, {rate_fmt}]"
_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


class _PlainLines(tqdm):
    """tqdm that writes whole lines at its refreshes: what a log file can hold."""

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg == "":  # tqdm clearing a finished bar: nothing to clear in a log
            return True
        self.fp.write((msg if msg is not None else str(self)).strip() + "\n")
        self.fp.flush()
        return True


def progress(*args: Any, **kwargs: Any) -> tqdm:
    """A tqdm bar, or plain periodic lines when stderr is not a terminal."""
    kwargs.setdefault("disable", False)
    kwargs["disable"] = kwargs["disable"] or _quiet
    if sys.stderr.isatty():
        return tqdm(*args, **kwargs)
    kwargs.update(mininterval=PLAIN_INTERVAL_S, maxinterval=PLAIN_INTERVAL_S,
                  bar_format=PLAIN_FORMAT, leave=True)
    return _PlainLines(*args, **kwargs)
