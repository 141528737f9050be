"""Request bodies, validated with pydantic: bounds here are the API's documented limits."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from plugin.config import BLEND_STRATEGIES
from plugin.storable import MAX_ID_BYTES, storable_text
from plugin.strategies import FILTER_FIELDS

if TYPE_CHECKING:
    StrategyName = str
else:  # the names' one list (plugin/config.py), as an enum in the OpenAPI schema
    StrategyName = Literal[BLEND_STRATEGIES]

MAX_WEIGHT = 100.0
MAX_BATCH = 10_000


class Weights(BaseModel):
    """Overrides of the strategy's shipped weights (plugin/ranking.json), term by term."""

    model_config = ConfigDict(extra="forbid")
    bm25: float | None = Field(None, ge=0, le=MAX_WEIGHT)
    query: float | None = Field(None, ge=0, le=MAX_WEIGHT)
    popularity: float | None = Field(None, ge=0, le=MAX_WEIGHT)
    interest_long: float | None = Field(None, ge=0, le=MAX_WEIGHT)
    interest_short: float | None = Field(None, ge=0, le=MAX_WEIGHT)
    behaviour: float | None = Field(None, ge=0, le=MAX_WEIGHT)
    behaviour_short: float | None = Field(None, ge=0, le=MAX_WEIGHT)
    seen: float | None = Field(None, ge=0, le=MAX_WEIGHT)
    seen_crowding: float | None = Field(None, ge=0, le=MAX_WEIGHT)
    ambiguity: float | None = Field(None, ge=0, le=MAX_WEIGHT)


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    q: str = Field(min_length=1, max_length=1000)
    user_id: str | None = None
    size: int = Field(10, ge=1, le=100)
    from_: int = Field(0, ge=0, le=1000, alias="from")
    filters: dict[str, list[str]] = Field(default_factory=dict)
    weights: Weights = Field(default_factory=lambda: Weights())
    strategy: StrategyName | None = None
    explain: bool = False
    cache: bool = True

    @field_validator("q")
    @classmethod
    def storable_query(cls, value: str) -> str:
        return storable_text(value, "q", ValueError)

    @field_validator("user_id")
    @classmethod
    def storable_user_id(cls, value: str | None) -> str | None:
        # The same bound as the events that make a user (plugin/events.py).
        return None if value is None else storable_text(value, "user_id", ValueError,
                                                         MAX_ID_BYTES)

    @field_validator("filters")
    @classmethod
    def known_filters(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        unknown = set(value) - set(FILTER_FIELDS)
        if unknown:
            raise ValueError(f"unknown filter field(s) {sorted(unknown)}; "
                             f"known: {list(FILTER_FIELDS)}")
        for name, values in value.items():
            for item in values:
                storable_text(item, f"filters.{name}", ValueError)
        return value


class DocumentsRequest(BaseModel):
    documents: list[Any] = Field(min_length=1, max_length=MAX_BATCH)


class EventsRequest(BaseModel):
    events: list[Any] = Field(min_length=1, max_length=MAX_BATCH)
