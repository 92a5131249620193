"""``cachelayer.django.metrics_view``: one Prometheus scrape as a Django response."""

from __future__ import annotations

from django.test import RequestFactory
from prometheus_client.parser import text_string_to_metric_families

from cachelayer.django import metrics_view
from tests.conftest import make_cache


def test_metrics_view_serves_the_scrape(redis_url: str, namespace: str) -> None:
    """The view answers with the exposition format, our namespace's figures in it."""
    cache = make_cache("redis", redis_url, namespace)
    try:
        cache.get("absent")
        response = metrics_view(RequestFactory().get("/metrics"))
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/plain")
        misses = {
            tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.content.decode())
            for s in family.samples
            if s.name == "cachelayer_misses_total"
        }
        assert misses[(("function", "(direct)"), ("namespace", namespace))] == 1
        openmetrics = metrics_view(
            RequestFactory().get("/metrics", HTTP_ACCEPT="application/openmetrics-text")
        )
        assert openmetrics["Content-Type"].startswith("application/openmetrics-text")
        assert openmetrics.content.rstrip().endswith(b"# EOF")
    finally:
        cache.clear()
        cache.close()
