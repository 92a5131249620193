from __future__ import annotations

from django.apps import AppConfig


class DjappConfig(AppConfig):
    name = "tests.integrations.djapp"
    label = "djapp"
    default_auto_field = "django.db.models.AutoField"
