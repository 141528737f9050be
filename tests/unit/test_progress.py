"""Progress off a terminal: whole lines a log file can hold, or nothing when quiet."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> str:
    # stderr is a pipe here, not a terminal: the plain-lines mode.
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    return done.stderr


def test_plain_lines_without_carriage_returns() -> None:
    out = _run("from plugin.progress import progress\n"
               "for _ in progress(range(5000), desc='indexing', unit='doc'): pass\n")
    assert "\r" not in out
    lines = [line for line in out.splitlines() if line]
    assert lines and lines[-1].startswith("indexing: 5000/5000 doc")


def test_quiet_prints_nothing() -> None:
    out = _run("from plugin.progress import progress, set_quiet\n"
               "set_quiet(True)\n"
               "for _ in progress(range(50), desc='x'): pass\n")
    assert out == ""
