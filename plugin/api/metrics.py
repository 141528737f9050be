"""GET /metrics in Prometheus format, and the counters the other blueprints update."""

from __future__ import annotations

import time

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

bp = Blueprint("metrics", __name__)

REQUESTS = Counter("es_interest_http_requests_total", "HTTP requests",
                   ["endpoint", "method", "status"])
LATENCY = Histogram("es_interest_http_request_seconds", "HTTP request latency", ["endpoint"],
                    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5))
PERSONALIZED = Counter("es_interest_search_personalized_total",
                       "searches by whether they were personalized", ["personalized"])


@bp.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)


def instrument(app: Flask) -> None:
    @app.before_request
    def start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def record(response: Response) -> Response:
        # The route's pattern, never the URL: paths carry user ids and index names.
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        REQUESTS.labels(endpoint, request.method, str(response.status_code)).inc()
        if "started" in g:
            LATENCY.labels(endpoint).observe(time.perf_counter() - g.started)
        return response
