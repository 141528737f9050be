"""The broker transport against kombu's own, side by side in one session on the local Redis:
how fast one consumer takes and acknowledges messages, how fast a client sends them, and how
many messages consumers SIGKILLed while taking lose.

    python -m bench.broker [--messages 5000] [--rounds 3] [--kills 10]

``python -m bench.broker consume URL QUEUE TRANSPORT ACK COUNT`` is the consumer process
(also used by tests/integration/test_broker.py): it prints ``consuming``, then takes messages
as fast as it can, acknowledging each when ACK is 1, and prints the seconds it took to take
COUNT of them (COUNT 0: for ever).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from typing import Any

import redis
from kombu import Exchange, Queue

from bench.common import ROOT, machine, write_results
from plugin.celery_app import make_celery
from plugin.config import load_settings

TRANSPORTS = {"kombu": "redis", "project": "plugin.broker:RedisTransport"}
REDIS_URL = "redis://127.0.0.1:6379/9"


def app_for(url: str, prefix: str, transport: str) -> Any:
    app = make_celery(replace(load_settings({}), redis_url=url, index_prefix=prefix))
    app.conf.broker_transport = TRANSPORTS[transport]
    return app


def consume(url: str, queue: str, transport: str, ack: bool, count: int) -> None:
    app = app_for(url, queue, transport)
    taken = 0

    def on_message(body: Any, message: Any) -> None:
        nonlocal taken
        taken += 1
        if ack:
            message.ack()

    with app.connection_for_read() as conn, conn.Consumer(
            Queue(queue, Exchange(queue), routing_key=queue), callbacks=[on_message],
            accept=["json"]):
        print("consuming", flush=True)
        started = time.perf_counter()
        while not count or taken < count:
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=1)
        print(f"{time.perf_counter() - started:.6f}", flush=True)


def start_consumer(url: str, queue: str, transport: str, ack: bool, count: int
                   ) -> subprocess.Popen[str]:
    """A consumer process, returned once it consumes."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.broker", "consume", url, queue, transport,
         str(int(ack)), str(count)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if process.stdout is None or process.stdout.readline().strip() != "consuming":
        process.kill()
        raise RuntimeError("the consumer did not start")
    return process


def _send(app: Any, queue: str, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        app.send_task("es_interest.ping", queue=queue)
    return count / (time.perf_counter() - started)


def rates(transport: str, messages: int) -> tuple[float, float]:
    """Messages a second one client sends, and one consumer takes and acknowledges."""
    queue = f"bench-broker-{uuid.uuid4().hex[:6]}"
    app = app_for(REDIS_URL, queue, transport)
    sent = _send(app, queue, messages)
    consumer = start_consumer(REDIS_URL, queue, transport, True, messages)
    out, _ = consumer.communicate(timeout=600)
    _forget(queue)
    return sent, messages / float(out.split()[-1])


def lost_in_kills(transport: str, messages: int, kills: int, seed: int) -> tuple[int, int]:
    """Consumers that never acknowledge, each SIGKILLed 50-300 ms into taking: messages
    neither queued nor unacknowledged afterwards, and messages taken in all."""
    queue = f"bench-broker-{uuid.uuid4().hex[:6]}"
    app = app_for(REDIS_URL, queue, transport)
    prefix = app.conf.broker_transport_options["global_keyprefix"]
    client = redis.Redis.from_url(REDIS_URL)
    _send(app, queue, messages)
    rng = random.Random(seed)
    for _ in range(kills):
        consumer = start_consumer(REDIS_URL, queue, transport, False, 0)
        time.sleep(rng.uniform(0.05, 0.3))
        consumer.kill()
        consumer.wait(timeout=30)
    queued, held = client.llen(prefix + queue), client.hlen(prefix + "unacked")
    _forget(queue)
    return messages - queued - held, held


def _forget(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=f"es-interest:{prefix}:*", count=1000):
        client.delete(key)


def table(results: dict[str, Any]) -> str:
    rows = ["| transport | sent / s (median) | taken and acknowledged / s (median) | "
            "messages lost in kills |", "| --- | --- | --- | --- |"]
    for name, r in results["transports"].items():
        rows.append(f"| {name} | {r['sent_per_s']:,.0f} | {r['taken_per_s']:,.0f} | "
                    f"{r['lost']} of {r['taken_in_kills']} taken ({results['kills']} kills) |")
    ratio = results["project_vs_kombu_taken"]
    return (f"# Broker transport\n\n{results['messages']} messages a round, "
            f"{results['rounds']} rounds each, interleaved; one consumer process.\n\n"
            + "\n".join(rows) + f"\n\nProject / kombu, taken per second: {ratio:.2f}\n")


def main(messages: int, rounds: int, kills: int) -> None:
    found: dict[str, dict[str, list[float]]] = {t: {"sent": [], "taken": []}
                                                 for t in TRANSPORTS}
    for _ in range(rounds):
        for transport in TRANSPORTS:
            sent, taken = rates(transport, messages)
            found[transport]["sent"].append(sent)
            found[transport]["taken"].append(taken)
            print(f"{transport}: sent {sent:,.0f}/s, taken {taken:,.0f}/s", flush=True)
    results: dict[str, Any] = {"messages": messages, "rounds": rounds, "kills": kills,
                               "machine": machine(), "transports": {}}
    for transport in TRANSPORTS:
        lost, taken = lost_in_kills(transport, messages, kills, seed=7)
        print(f"{transport}: {lost} lost of {taken} taken in {kills} kills", flush=True)
        results["transports"][transport] = {
            "sent_per_s": statistics.median(found[transport]["sent"]),
            "taken_per_s": statistics.median(found[transport]["taken"]),
            "sent_runs": found[transport]["sent"], "taken_runs": found[transport]["taken"],
            "lost": lost, "taken_in_kills": taken}
    results["project_vs_kombu_taken"] = (results["transports"]["project"]["taken_per_s"]
                                         / results["transports"]["kombu"]["taken_per_s"])
    json_path, md_path = write_results("broker", results, table(results))
    print(table(results))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["consume"]:
        url, queue, transport, ack, count = sys.argv[2:7]
        consume(url, queue, transport, ack == "1", int(count))
    else:
        parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
        parser.add_argument("--messages", type=int, default=5000)
        parser.add_argument("--rounds", type=int, default=3)
        parser.add_argument("--kills", type=int, default=10)
        args = parser.parse_args()
        main(args.messages, args.rounds, args.kills)
