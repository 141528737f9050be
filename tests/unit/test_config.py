from __future__ import annotations

import json
from pathlib import Path

import pytest

from plugin.config import (
    FROM_RANKING,
    SHIPPED_RANKING,
    ConfigError,
    Settings,
    load_settings,
    without_ranking,
)


def test_defaults_and_overrides() -> None:
    assert load_settings({}).engine_url == "http://127.0.0.1:9200"
    s = load_settings({"ES_INTEREST_ENGINE_URL": "http://e:9200",
                       "ES_INTEREST_HALF_LIFE_SHORT_DAYS": "0.5",
                       "ES_INTEREST_EVENT_WEIGHTS": "like=5,rate=1"})
    assert s.engine_url == "http://e:9200"
    assert s.half_life_short_s == 43200.0
    assert s.event_weights["like"] == 5.0 and s.event_weights["rate"] == 1.0
    assert s.docs_alias == "es-interest-docs"
    assert load_settings({}).model_backend == "onnx"
    assert load_settings({"ES_INTEREST_MODEL_BACKEND": "torch"}).model_backend == "torch"
    assert load_settings({"ES_INTEREST_POPULARITY_FLUSH_MAX_DOCS": "0"}
                         ).popularity_flush_max_docs == 0


@pytest.mark.parametrize("env", [{"ES_INTEREST_HALF_LIFE_LONG_DAYS": "long"},
                                 {"ES_INTEREST_EVENT_WEIGHTS": "like"},
                                 {"ES_INTEREST_POPULARITY_TOLERANCE": "-0.1"},
                                 {"ES_INTEREST_POPULARITY_FLUSH_MAX_DOCS": "-1"},
                                 {"ES_INTEREST_MODEL_BACKEND": "tensorflow"},
                                 {"ES_INTEREST_VECTOR_QUANTIZED": "maybe"},
                                 {"ES_INTEREST_ERASE_TOMBSTONE_DAYS": "-1"},
                                 {"ES_INTEREST_API_PORT": "eighty"}])
def test_bad_values_are_named(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="ES_INTEREST_"):
        load_settings(env)


def test_every_field_has_its_variable() -> None:
    """Each setting reads ES_INTEREST_<FIELD> (or its unit's name), parsed by its type."""
    s = load_settings({"ES_INTEREST_CORS_ORIGINS": "https://a, https://b",
                       "ES_INTEREST_UI_SECURE_COOKIE": "yes", "ES_INTEREST_API_PORT": "9000",
                       "ES_INTEREST_BEHAVIOUR_TRAIN_HOURS": "2",
                       "ES_INTEREST_ERASE_TOMBSTONE_DAYS": "1", "ES_INTEREST_UI_SECRET": "s",
                       "ES_INTEREST_MAPPINGS_DIR": "/srv/mappings"})
    assert s.cors_origins == ("https://a", "https://b") and s.ui_secure_cookie is True
    assert s.api_port == 9000 and isinstance(s.api_port, int)
    assert (s.behaviour_train_interval_s, s.erase_tombstone_s) == (7200.0, 86400.0)
    assert s.ui_secret == "s" and load_settings({}).ui_secret is None
    assert str(s.mappings_dir) == "/srv/mappings"


def test_the_ranking_file_gives_item2vecs_settings(tmp_path: Path) -> None:
    ranking = json.loads(SHIPPED_RANKING.read_text())
    path = tmp_path / "ranking.json"
    path.write_text(json.dumps({**ranking, "behaviour_item2vec_window": 5,
                                "behaviour_item2vec_ns_exponent": -0.5}))
    chosen = load_settings({"ES_INTEREST_RANKING_FILE": str(path)})
    assert (chosen.behaviour_item2vec_window, chosen.behaviour_item2vec_ns_exponent) == (5, -0.5)
    assert load_settings({"ES_INTEREST_RANKING_FILE": str(path),
                          "ES_INTEREST_BEHAVIOUR_ITEM2VEC_WINDOW": "7"}
                         ).behaviour_item2vec_window == 7
    path.write_text(json.dumps({**ranking, "behaviour_item2vec_epochs": 0}))
    with pytest.raises(ConfigError, match="behaviour_item2vec_epochs must be a whole number"):
        load_settings({"ES_INTEREST_RANKING_FILE": str(path)})
    with pytest.raises(ConfigError, match="must be at least 1"):
        load_settings({"ES_INTEREST_BEHAVIOUR_ITEM2VEC_WINDOW": "0"})


def test_the_ranking_file_gives_the_users_a_behaviour_vector_needs(tmp_path: Path) -> None:
    ranking = json.loads(SHIPPED_RANKING.read_text())
    path = tmp_path / "ranking.json"
    path.write_text(json.dumps({**ranking, "behaviour_min_interactions": 1}))
    assert load_settings({"ES_INTEREST_RANKING_FILE": str(path)}
                         ).behaviour_min_interactions == 1
    assert load_settings({"ES_INTEREST_RANKING_FILE": str(path),
                          "ES_INTEREST_BEHAVIOUR_MIN_INTERACTIONS": "4"}
                         ).behaviour_min_interactions == 4
    path.write_text(json.dumps({k: v for k, v in ranking.items()
                                if k != "behaviour_min_interactions"}))
    assert load_settings({"ES_INTEREST_RANKING_FILE": str(path)}
                         ).behaviour_min_interactions == 3
    path.write_text(json.dumps({**ranking, "behaviour_min_interactions": 0}))
    with pytest.raises(ConfigError, match="behaviour_min_interactions must be a whole number"):
        load_settings({"ES_INTEREST_RANKING_FILE": str(path)})


@pytest.mark.parametrize(("key", "variable"), [
    ("behaviour_als_regularization", "ES_INTEREST_BEHAVIOUR_ALS_REGULARIZATION"),
    ("behaviour_support_exponent", "ES_INTEREST_BEHAVIOUR_SUPPORT_EXPONENT")])
def test_the_ranking_file_gives_a_behaviour_number(tmp_path: Path, key: str,
                                                   variable: str) -> None:
    ranking = json.loads(SHIPPED_RANKING.read_text())
    path = tmp_path / "ranking.json"
    path.write_text(json.dumps({**ranking, key: 0.5}))
    assert getattr(load_settings({"ES_INTEREST_RANKING_FILE": str(path)}), key) == 0.5
    assert getattr(load_settings({"ES_INTEREST_RANKING_FILE": str(path), variable: "2"}),
                   key) == 2.0
    path.write_text(json.dumps({**ranking, key: -1}))
    with pytest.raises(ConfigError, match=f"{key} must be a number >= 0"):
        load_settings({"ES_INTEREST_RANKING_FILE": str(path)})
    with pytest.raises(ConfigError, match="must be at least 0"):
        load_settings({variable: "-1"})


def test_the_text_maps_confidence_is_a_share(tmp_path: Path) -> None:
    ranking = json.loads(SHIPPED_RANKING.read_text())
    path = tmp_path / "ranking.json"
    path.write_text(json.dumps({**ranking, "behaviour_text_map_confidence": 0.3}))
    chosen = {"ES_INTEREST_RANKING_FILE": str(path)}
    assert load_settings(chosen).behaviour_text_map_confidence == 0.3
    assert load_settings({**chosen, "ES_INTEREST_BEHAVIOUR_TEXT_MAP_CONFIDENCE": "1"}
                         ).behaviour_text_map_confidence == 1.0
    for wrong in ("0", "1.5"):
        with pytest.raises(ConfigError, match="CONFIDENCE must be in \\(0, 1\\]"):
            load_settings({**chosen, "ES_INTEREST_BEHAVIOUR_TEXT_MAP_CONFIDENCE": wrong})
    path.write_text(json.dumps({**ranking, "behaviour_text_map_confidence": 0}))
    with pytest.raises(ConfigError, match="behaviour_text_map_confidence must be a number"):
        load_settings(chosen)


def test_the_ranking_file_chooses_the_seen_policy_and_title_cleanup(tmp_path: Path) -> None:
    ranking = json.loads(SHIPPED_RANKING.read_text())
    path = tmp_path / "ranking.json"
    path.write_text(json.dumps({**ranking, "seen_policy": "own",
                                "embed_title_cleanup": "none"}))
    chosen = load_settings({"ES_INTEREST_RANKING_FILE": str(path)})
    assert (chosen.seen_policy, chosen.embed_title_cleanup) == ("own", "none")
    # The environment still has the last word, and an older file without them gets defaults.
    assert load_settings({"ES_INTEREST_RANKING_FILE": str(path),
                          "ES_INTEREST_SEEN_POLICY": "neutral"}).seen_policy == "neutral"
    path.write_text(json.dumps({k: v for k, v in ranking.items()
                                if k not in ("seen_policy", "embed_title_cleanup")}))
    older = load_settings({"ES_INTEREST_RANKING_FILE": str(path)})
    assert (older.seen_policy, older.embed_title_cleanup) == ("neutral", "years")
    path.write_text(json.dumps({**ranking, "seen_policy": "sometimes"}))
    with pytest.raises(ConfigError, match="seen_policy must be one of neutral, keep, floor, own"):
        load_settings({"ES_INTEREST_RANKING_FILE": str(path)})
    assert load_settings({"ES_INTEREST_EMBED_FIELDS": "tags, title"}).embed_fields == (
        "tags", "title")
    with pytest.raises(ConfigError, match="EMBED_FIELDS takes a comma-separated list"):
        load_settings({"ES_INTEREST_EMBED_FIELDS": "title,summary"})


def test_the_ranking_file_orders_the_strategies_auto_prefers(tmp_path: Path) -> None:
    ranking = json.loads(SHIPPED_RANKING.read_text())
    path = tmp_path / "ranking.json"
    order = ["script_score", "knn_linear", "linear_retriever"]
    path.write_text(json.dumps({**ranking, "strategy_order": order}))
    assert load_settings({"ES_INTEREST_RANKING_FILE": str(path)}).strategy_order == tuple(order)
    path.write_text(json.dumps({k: v for k, v in ranking.items() if k != "strategy_order"}))
    assert load_settings({"ES_INTEREST_RANKING_FILE": str(path)}).strategy_order == (
        "linear_retriever", "knn_linear", "script_score")  # an older file: BLEND_STRATEGIES
    path.write_text(json.dumps({**ranking, "strategy_order": ["knn_linear", "knn_linear"]}))
    with pytest.raises(ConfigError, match="strategy_order must list"):
        load_settings({"ES_INTEREST_RANKING_FILE": str(path)})


def test_the_evaluation_starts_from_the_codes_defaults_not_the_last_file(tmp_path: Path) -> None:
    """`make eval` chooses from the same starting point whatever ranking file it last wrote."""
    ranking = json.loads(SHIPPED_RANKING.read_text())
    path = tmp_path / "ranking.json"
    path.write_text(json.dumps({**ranking, "behaviour_model": "item2vec", "seen_policy": "keep",
                                "behaviour_support_exponent": 2.0,
                                "half_life_short_days": 3.0}))
    other = load_settings({"ES_INTEREST_RANKING_FILE": str(path)})
    assert (other.behaviour_model, other.seen_policy) == ("item2vec", "keep")
    start, shipped, code = without_ranking(other), without_ranking(load_settings({})), Settings()
    for name in FROM_RANKING:
        assert getattr(start, name) == getattr(shipped, name) == getattr(code, name)
    # What the ranking file does not give stays the deployment's own.
    assert start.engine_url == other.engine_url and start.blend_weights == other.blend_weights
