from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("users/<int:user_id>", views.user),
    path("ping", views.ping),
    path("_demo/stats", views.stats),
    path("_demo/warm", views.warm),
]
