"""Reliability pieces without services: the worker's supervision loop, the request budget,
the namespace of Redis keys, per-item limits and retry waits (issue 19)."""

from __future__ import annotations

from plugin.config import load_settings
from plugin.supervision import supervise


class Script:
    """Exit codes to return in turn, and a clock that advances as the loop runs."""

    def __init__(self, codes: list[int], run_s: float = 100.0) -> None:
        self.codes, self.run_s, self.now, self.sleeps = list(codes), run_s, 0.0, []

    def run(self) -> int:
        self.now += self.run_s
        return self.codes.pop(0)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_a_worker_that_failed_on_its_own_starts_again_until_it_ends_cleanly() -> None:
    script = Script([1, 1, 0])
    code = supervise(script.run, stopping=lambda: False, sleep=script.sleep,
                     clock=lambda: script.now)
    assert code == 0 and script.codes == [] and len(script.sleeps) == 2


def test_a_worker_asked_to_stop_is_not_started_again() -> None:
    script = Script([1, 0])
    assert supervise(script.run, stopping=lambda: True, sleep=script.sleep,
                     clock=lambda: script.now) == 1
    assert script.codes == [0] and script.sleeps == []


def test_failing_right_after_every_start_gives_up_with_a_capped_backoff() -> None:
    script = Script([1] * 10, run_s=1.0)
    assert supervise(script.run, stopping=lambda: False, sleep=script.sleep,
                     clock=lambda: script.now, max_quick_failures=3, max_backoff_s=3) == 1
    assert script.sleeps == [1.0, 2.0, 3.0] and len(script.codes) == 6


def test_every_redis_key_of_a_deployment_sits_in_its_namespace() -> None:
    staging = load_settings({"ES_INTEREST_INDEX_PREFIX": "staging"})
    production = load_settings({"ES_INTEREST_INDEX_PREFIX": "prod"})
    assert staging.redis_key("user", "u1") == "es-interest:staging:user:u1"
    assert staging.redis_key("user", "u1") != production.redis_key("user", "u1")


def test_an_engine_call_past_the_request_budget_fails_before_it_is_sent() -> None:
    """Every engine call of one API request shares one budget (plugin/api/budget.py)."""
    import pytest

    from plugin.engine import ElasticsearchEngine, EngineError, deadline

    engine = ElasticsearchEngine(client=None, version="9.5.3")
    with deadline(0.0), pytest.raises(EngineError, match="time budget"):
        engine.search("docs", {"query": {"match_all": {}}})


def test_a_tag_longer_than_a_keyword_may_be_is_refused_per_document() -> None:
    """Issue 19: a 40 kB tag was accepted (202) and then failed the worker's bulk item."""
    import pytest

    from plugin.documents import InvalidDocument, parse_document

    with pytest.raises(InvalidDocument, match="'tags' is 40000 bytes"):
        parse_document({"id": "d", "title": "x", "tags": ["t" * 40_000]})
    assert parse_document({"id": "d", "title": "x", "tags": ["t" * 512]}).tags


def test_every_retry_wait_stays_below_the_visibility_timeout() -> None:
    """A retry that waits longer than the visibility timeout is delivered twice (issue 19:
    rebuild_users waited Celery's default 180 s)."""
    from plugin.config import Settings
    from workers.tasks import RETRY

    visibility = Settings.task_visibility_s
    assert float(RETRY["retry_backoff_max"]) < visibility  # type: ignore[arg-type]
    assert float(RETRY["default_retry_delay"]) < visibility  # type: ignore[arg-type]
