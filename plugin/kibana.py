"""Kibana saved objects of es-interest (kibana/es-interest.ndjson) and their import.

Data views for the three aliases, a saved search of recent events and an overview dashboard
(events per type over time, the interest-update lag, most active users, most interacted
documents, users' top tags, events per status). The file names the default prefix;
``objects`` renames the data views' titles to this deployment's aliases.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from plugin.config import REPO_ROOT, Settings

SAVED_OBJECTS = REPO_ROOT / "kibana" / "es-interest.ndjson"
DEFAULT_PREFIX = "es-interest"


def objects(settings: Settings, path: Path = SAVED_OBJECTS) -> list[dict[str, Any]]:
    """The saved objects, with data view titles for ``settings.index_prefix``."""
    loaded = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for obj in loaded:
        if obj["type"] == "index-pattern":
            title = obj["attributes"]["title"]
            obj["attributes"]["title"] = settings.index_prefix + title[len(DEFAULT_PREFIX):]
    return loaded


def import_objects(settings: Settings, kibana_url: str) -> dict[str, Any]:
    """POST the objects to Kibana's saved-objects import API (overwriting); Kibana's answer."""
    import requests

    body = "".join(json.dumps(o) + "\n" for o in objects(settings))
    auth = None
    headers = {"kbn-xsrf": "es-interest"}
    if settings.engine_api_key:
        headers["Authorization"] = f"ApiKey {settings.engine_api_key}"
    elif settings.engine_username:
        auth = (settings.engine_username, settings.engine_password or "")
    answer = requests.post(f"{kibana_url.rstrip('/')}/api/saved_objects/_import",
                           params={"overwrite": "true"}, headers=headers, auth=auth,
                           files={"file": ("es-interest.ndjson", body, "application/ndjson")},
                           verify=settings.engine_ca_file or True, timeout=60)
    answer.raise_for_status()
    result: dict[str, Any] = answer.json()
    return result
