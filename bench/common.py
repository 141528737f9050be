"""Shared pieces of the benchmarks: an isolated setup, a worker process, result files."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from plugin.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
# Short search queries, shared by the search and model benchmarks.
QUERIES = ["adventure", "space war", "romantic comedy", "crime thriller", "animated family",
           "horror", "documentary", "musical", "western", "time travel", "dark comedy",
           "superhero", "heist", "coming of age", "zombies", "mafia", "pixar", "dystopia",
           "war drama", "detective"]


def isolated_settings(name: str, redis_db: int = 9) -> Settings:
    """The configured engine, with a throwaway index prefix and its own Redis database."""
    base = load_settings()
    return replace(base, index_prefix=f"bench-{name}-{uuid.uuid4().hex[:6]}",
                   redis_url=f"redis://127.0.0.1:6379/{redis_db}")


def child_env(settings: Settings) -> dict[str, str]:
    return {**os.environ, "ES_INTEREST_ENGINE_URL": settings.engine_url,
            "ES_INTEREST_REDIS_URL": settings.redis_url,
            "ES_INTEREST_INDEX_PREFIX": settings.index_prefix, "HF_HUB_OFFLINE": "1",
            "ES_INTEREST_BEHAVIOUR_FIRST_TRAINING_EVENTS": str(
                settings.behaviour_first_training_events)}


def start_worker(settings: Settings, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """`es-interest worker ARGS` as its own process, on this run's broker and indices."""
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "plugin.cli", "worker", *args, "--loglevel=warning",
         "-n", f"bench-{uuid.uuid4().hex[:6]}@%h", "--without-gossip", "--without-mingle"],
        cwd=ROOT, env=child_env(settings), stdout=log.open("w"), stderr=subprocess.STDOUT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_api(settings: Settings, workers: int | None = None, threads: int | None = None
              ) -> tuple[subprocess.Popen[bytes], str]:
    """The API under gunicorn with the shipped gunicorn.conf.py (or ``workers`` x ``threads``
    gthread) on a free port; returns it and its URL once it answers."""
    import requests

    port = free_port()
    env = {**child_env(settings), "ES_INTEREST_API_PORT": str(port)}
    shape = [*(["--workers", str(workers)] if workers else []),
             *(["--threads", str(threads)] if threads else [])]
    api = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", str(ROOT / "gunicorn.conf.py"),
         "--bind", f"127.0.0.1:{port}", *shape, "--log-level", "warning", "plugin.wsgi:app"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if requests.get(f"{url}/openapi.json", timeout=5).ok:
                return api, url
        except requests.ConnectionError:
            pass
        if api.poll() is not None or time.monotonic() > deadline:
            api.kill()
            raise RuntimeError("the API did not start")
        time.sleep(0.5)


def wait_for_worker(celery: Any, timeout_s: float = 180.0, queue: str | None = None,
                    load_model: bool = True) -> None:
    """Until a worker (of ``queue``) answers a ping; with ``load_model`` it loads the model."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            celery.send_task("es_interest.ping", kwargs={"load_model": load_model},
                             queue=queue).get(timeout=10)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise


def child_pids(pid: int) -> set[int]:
    """Direct children of a process (a Celery prefork pool), from /proc."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.add(int(entry))
            except OSError:
                continue
    return found


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its live children."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in {pid} | child_pids(pid):
        try:
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            continue
    return total / ticks


def engine_cpu_s(client: Any) -> float:
    """CPU seconds the engine's nodes used so far (their own process statistics)."""
    stats = client.nodes.stats(metric="process")
    return sum(n["process"]["cpu"]["total_in_millis"] for n in stats["nodes"].values()) / 1000


def process_rss_mb(pids: set[int]) -> dict[int, float]:
    """Resident memory of each process, in MiB (those gone are left out)."""
    found = {}
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        found[p] = int(line.split()[1]) / 1024
        except OSError:
            continue
    return found


def process_tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (prefork pool), in MiB."""
    return sum(process_rss_mb({pid} | child_pids(pid)).values())


class RssSampler(threading.Thread):
    """Peak resident memory of process trees, in total and of their largest process."""

    def __init__(self, *pids: int) -> None:
        super().__init__(daemon=True)
        self.pids, self.peak, self.peak_process = set(pids), 0.0, 0.0
        self.stop_flag = threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            each = process_rss_mb(self.pids.union(*(child_pids(p) for p in self.pids)))
            self.peak = max(self.peak, sum(each.values()))
            self.peak_process = max(self.peak_process, *each.values(), 0.0)
            time.sleep(0.5)


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}


def write_results(name: str, results: dict[str, Any], table: str) -> tuple[Path, Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path, md_path = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    json_path.write_text(json.dumps(results, indent=2))
    md_path.write_text(table)
    return json_path, md_path
