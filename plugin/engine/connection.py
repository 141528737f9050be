"""Connecting to an engine: which one it is comes from its own `GET /`."""

from __future__ import annotations

from typing import Any

from plugin.config import Settings
from plugin.engine.base import JSON, Engine, EngineError
from plugin.engine.elasticsearch import ElasticsearchEngine
from plugin.engine.opensearch import OpenSearchEngine


def transient_errors() -> tuple[type[Exception], ...]:
    """Either client's errors worth a retry with backoff (connection trouble, timeouts)."""
    import elastic_transport
    import opensearchpy

    return (elastic_transport.ConnectionError, elastic_transport.ConnectionTimeout,
            opensearchpy.ConnectionError, opensearchpy.ConnectionTimeout)


def _opensearch_orjson() -> Any:
    """opensearch-py's JSON serializer on orjson: 384-float vectors make JSON the hot path."""
    import orjson
    from opensearchpy.serializer import JSONSerializer

    class OrjsonSerializer(JSONSerializer):
        def dumps(self, data: Any) -> Any:
            if isinstance(data, str | bytes):
                return data
            return orjson.dumps(data, default=self.default,
                                option=orjson.OPT_SERIALIZE_NUMPY).decode("utf-8")

        def loads(self, s: Any) -> Any:
            return orjson.loads(s)

    return OrjsonSerializer()


def _client_options(settings: Settings) -> JSON:
    options: JSON = {"request_timeout": 30}
    if settings.engine_ca_file:
        options["ca_certs"] = settings.engine_ca_file
    return options


def connect(settings: Settings, url: str | None = None) -> Engine:
    """Connect to the engine at ``url`` (default: settings), detecting which one it is."""
    from opensearchpy import OpenSearch

    url = url or settings.engine_url
    options = _client_options(settings)
    auth = (
        (settings.engine_username, settings.engine_password or "")
        if settings.engine_username
        else None
    )
    # opensearch-py sends no product or compatibility headers, so it can read any engine's `GET /`.
    probe = OpenSearch(hosts=[url], http_auth=auth, timeout=options["request_timeout"],
                       ca_certs=settings.engine_ca_file,
                       headers={"Authorization": f"ApiKey {settings.engine_api_key}"}
                       if settings.engine_api_key else None,
                       serializer=_opensearch_orjson())
    try:
        info = probe.info(request_timeout=settings.search_timeout_s)
    except Exception as exc:  # any transport error means the same thing here
        raise EngineError(f"cannot reach the engine at {url}: {exc}") from exc
    version = info.get("version", {})
    cluster_uuid = str(info.get("cluster_uuid") or "")
    if version.get("distribution") == "opensearch":
        return OpenSearchEngine(probe, str(version.get("number")), settings.search_timeout_s,
                                cluster_uuid)
    probe.close()

    from elasticsearch import Elasticsearch
    from elasticsearch.serializer import OrjsonSerializer

    client = Elasticsearch(
        url,
        api_key=settings.engine_api_key,
        basic_auth=auth,
        serializer=OrjsonSerializer(),
        **options,
    )
    return ElasticsearchEngine(client, str(version.get("number")), settings.search_timeout_s,
                               cluster_uuid)
