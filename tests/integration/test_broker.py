"""The broker transport (plugin/broker.py): a consumer killed at any moment leaves every
message in its queue or in the unacknowledged set, where the visibility sweep finds it; a
message that came without a wake-up token is delivered all the same. A private real Redis,
real consumer processes (``python -m bench.broker consume``) on the project's Celery app."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Exchange, Queue

from bench.broker import app_for, start_consumer
from plugin.broker import RedisTransport
from plugin.celery_app import make_celery
from plugin.config import load_settings
from tests.faults import PrivateRedis

pytestmark = pytest.mark.integration


def test_consumers_killed_while_taking_lose_no_message(tmp_path: Path) -> None:
    """Kombu's own transport loses a message in most such kills (the first kill, in a run of
    this test on it); here the queue and the unacknowledged set hold every message sent after
    each kill."""
    private = PrivateRedis(tmp_path)
    try:
        app = app_for(private.url, "kills", "project")
        prefix = app.conf.broker_transport_options["global_keyprefix"]
        client = redis.Redis.from_url(private.url)
        sent = 3000
        for _ in range(sent):
            app.send_task("es_interest.ping", queue="kills")
        rng = random.Random(7)
        taken = []
        for kill in range(6):
            # Never acknowledging, it spends its life taking: the kill lands anywhere in a take.
            consumer = start_consumer(private.url, "kills", "project", ack=False, count=0)
            before = client.hlen(prefix + "unacked")
            time.sleep(rng.uniform(0.05, 0.3))
            consumer.kill()
            consumer.wait(timeout=30)
            queued, held = client.llen(prefix + "kills"), client.hlen(prefix + "unacked")
            assert queued + held == sent, f"kill {kill}: {sent - queued - held} messages lost"
            taken.append(held - before)
        assert sum(taken) > 0, "the consumers took nothing: the kills tested nothing"
    finally:
        private.stop()


def test_a_message_without_a_wake_up_token_is_delivered(tmp_path: Path) -> None:
    """A message the sweep restored, or one another client sent without a token: the next
    take finds it, and the wake-up list is set back to the queue's length. Something that is
    not a message is kept aside, not dropped."""
    private = PrivateRedis(tmp_path)
    try:
        app = app_for(private.url, "quiet", "project")
        prefix = app.conf.broker_transport_options["global_keyprefix"]
        client = redis.Redis.from_url(private.url)
        wake = f"{prefix}quiet\x06\x16wake"
        ids = [app.send_task("es_interest.ping", queue="quiet").id for _ in range(3)]
        assert client.llen(wake) == 3  # one token a message
        client.delete(wake)
        client.rpush(prefix + "quiet", b"not a message")  # the next one a take pops
        delivered: list[str] = []
        with app.connection_for_read() as conn, conn.Consumer(
                Queue("quiet", Exchange("quiet"), routing_key="quiet"),
                callbacks=[lambda body, message: delivered.append(message.headers["id"])],
                accept=["json"]):
            def tokens_follow_the_queue() -> None:
                if delivered:
                    assert client.llen(wake) == client.llen(prefix + "quiet")

            _drain_until(conn, lambda: len(delivered) >= 3, tokens_follow_the_queue)
            assert client.hlen(prefix + "unacked") == 3  # taken, not acknowledged
        assert sorted(delivered) == sorted(ids)
        assert client.lrange(prefix + "quiet:unreadable", 0, -1) == [b"not a message"]
        # The consumer closed holding them: they went back to their queue from their records.
        assert client.llen(prefix + "quiet") == 3 and client.hlen(prefix + "unacked") == 0
    finally:
        private.stop()


def test_a_tls_deployment_takes_in_one_step_too(tmp_path: Path) -> None:
    """``rediss://`` (with the TLS settings the result backend requires anyway) runs the
    project's transport over TLS: the message comes with its wake-up token and its take
    records it, as on plain Redis."""
    private = PrivateRedis(tmp_path, tls=True)
    try:
        app = make_celery(replace(load_settings({}), redis_url=private.url,
                                  index_prefix="tls"))
        prefix = app.conf.broker_transport_options["global_keyprefix"]
        client = redis.Redis.from_url(private.url)
        sent = app.send_task("es_interest.ping", queue="secure").id
        assert client.llen(f"{prefix}secure\x06\x16wake") == 1
        delivered: list[str] = []
        with app.connection_for_read() as conn, conn.Consumer(
                Queue("secure", Exchange("secure"), routing_key="secure"),
                callbacks=[lambda body, message: delivered.append(message.headers["id"])],
                accept=["json"]):
            assert isinstance(conn.transport, RedisTransport)
            _drain_until(conn, lambda: len(delivered) == 1)
            assert delivered == [sent]
            # Held, not acknowledged: the take recorded it, and the queue is empty.
            assert client.hlen(prefix + "unacked") == 1 and client.llen(prefix + "secure") == 0
    finally:
        private.stop()


def _drain_until(conn: Any, done: Callable[[], bool], each: Callable[[], None] = lambda: None,
                 timeout_s: float = 30.0) -> None:
    """Consume until ``done()`` or the timeout, calling ``each()`` after every wait."""
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=1)
        each()
