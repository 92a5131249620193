"""``metrics_view``: cachelayer's Prometheus metrics as a Django view.

::

    # urls.py
    from cachelayer.django import metrics_view

    urlpatterns = [path("metrics/cachelayer", metrics_view)]

Needs ``pip install "cachelayer[prometheus]"``; prometheus_client is imported at the
first request, so importing ``cachelayer.django`` does not need it. Every Cache of the
process is reported (the backends of every thread, summed by namespace): see
docs/observability.md. Protect the URL as you would any internal endpoint.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

__all__ = ["metrics_view"]


def metrics_view(request: HttpRequest) -> HttpResponse:
    """One Prometheus scrape of cachelayer's metrics (OpenMetrics when asked for)."""
    from ..prometheus import exposition

    body, content_type = exposition(request.headers.get("Accept", ""))
    return HttpResponse(body, content_type=content_type)
