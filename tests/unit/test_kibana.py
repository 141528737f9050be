"""kibana/es-interest.ndjson, checked against the mappings without a Kibana (none runs here):
the shape the import API takes, and every field an object reads exists in the index it reads,
with an aggregatable type where it is aggregated or sorted."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from plugin.config import REPO_ROOT, load_settings
from plugin.kibana import SAVED_OBJECTS, objects

AGGREGATABLE = {"keyword", "date", "long", "integer", "float", "double", "boolean"}
NUMERIC = {"long", "integer", "float", "double"}
METRICS = {"average", "sum", "min", "max", "median", "percentile"}
KINDS = {"es-interest-docs": "documents", "es-interest-events": "events",
         "es-interest-interests": "interests"}


def _field_types(kind: str) -> dict[str, str]:
    versions = sorted((REPO_ROOT / "mappings").glob(f"{kind}.v*.json"),
                      key=lambda p: int(p.stem.rsplit(".v", 1)[1]))
    mapping = json.loads(versions[-1].read_text())  # the newest: what setup creates
    found: dict[str, str] = {}

    def walk(props: dict[str, Any], prefix: str) -> None:
        for name, spec in props.items():
            found[prefix + name] = spec.get("type", "object")
            for sub, sub_spec in spec.get("fields", {}).items():
                found[f"{prefix}{name}.{sub}"] = sub_spec["type"]
            walk(spec.get("properties", {}), f"{prefix}{name}.")

    walk(mapping["mappings"]["properties"], "")
    return found


@pytest.fixture(scope="module")
def saved() -> list[dict[str, Any]]:
    return objects(load_settings({}))


def test_one_object_per_line_in_the_import_format() -> None:
    lines = SAVED_OBJECTS.read_text().splitlines()
    assert lines and all(line.strip() for line in lines)
    for line in lines:
        obj = json.loads(line)  # one whole object per line
        assert set(obj) == {"type", "id", "attributes", "references"}, obj.get("id")
        assert isinstance(obj["references"], list) and obj["attributes"]["title"]


def test_references_resolve_within_the_file(saved: list[dict[str, Any]]) -> None:
    ids = {(o["type"], o["id"]) for o in saved}
    for obj in saved:
        for ref in obj["references"]:
            assert (ref["type"], ref["id"]) in ids, (obj["id"], ref)
    dashboard = next(o for o in saved if o["type"] == "dashboard")
    panels = json.loads(dashboard["attributes"]["panelsJSON"])
    names = {r["name"] for r in dashboard["references"]}
    assert {p["panelRefName"] for p in panels} == names and len(panels) >= 5


def test_every_field_exists_with_a_usable_type(saved: list[dict[str, Any]]) -> None:
    views = {o["id"]: _field_types(KINDS[o["attributes"]["title"]])
             for o in saved if o["type"] == "index-pattern"}
    assert set(views) == set(KINDS)  # one data view per alias
    for obj in saved:
        attrs = obj["attributes"]
        if obj["type"] == "index-pattern":
            assert views[obj["id"]][attrs["timeFieldName"]] == "date"
        elif obj["type"] == "search":
            fields = views[obj["references"][0]["id"]]
            assert all(c in fields for c in attrs["columns"])
            assert all(fields[f] in AGGREGATABLE for f, _ in attrs["sort"])
        elif obj["type"] == "lens":
            fields = views[obj["references"][0]["id"]]
            layers = attrs["state"]["datasourceStates"]["formBased"]["layers"]
            for layer in layers.values():
                for column in layer["columns"].values():
                    source = column["sourceField"]
                    if source == "___records___":
                        continue
                    assert fields.get(source) in AGGREGATABLE, (obj["id"], source)
                    if column["operationType"] in METRICS:
                        assert fields[source] in NUMERIC, (obj["id"], source)


def test_titles_follow_the_deployments_prefix() -> None:
    renamed = objects(replace(load_settings({}), index_prefix="shop"))
    titles = {o["attributes"]["title"] for o in renamed if o["type"] == "index-pattern"}
    assert titles == {"shop-docs", "shop-events", "shop-interests"}
