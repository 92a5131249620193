"""Fixtures for the example's test; ``redis_url`` comes from the root conftest.py."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def namespace() -> str:
    """A namespace no other test uses."""
    return "ex" + uuid.uuid4().hex[:12]
